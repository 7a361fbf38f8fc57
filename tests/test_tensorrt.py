"""TensorRT: engine build and runtime on a GPU (marked `gpu`); a clear refusal without one."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from export.__main__ import run as export
from tests.deploy_fixtures import INPUT_SIZE, REPO, export_cfg, make_checkpoint

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    ckpt = make_checkpoint(d / "tiny.pth")
    return ckpt, export(export_cfg(ckpt, output=str(d / "tiny.onnx")))["onnx"]


def test_module_imports_without_importing_tensorrt():
    """tensorrt is an optional extra: importing the module (its CLI, its helpers) must not import
    it, so the command can refuse with a clear message where it is missing."""
    code = "import sys, export.tensorrt; assert 'tensorrt' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_refuses_clearly_without_gpu_or_tensorrt(onnx_model, tmp_path):
    import torch

    if torch.cuda.is_available() and HAS_TRT:
        pytest.skip("CUDA and tensorrt are present: the gpu tests below build real engines")
    _, onnx_path = onnx_model
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.tensorrt",
            f"onnx={onnx_path}",
            "precision=fp16",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-1500:])
    assert "export.tensorrt:" in proc.stderr
    # the message names what is missing here: the GPU first, else the package
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU, and torch sees none here" in proc.stderr
    else:
        assert "the `tensorrt` Python package is not installed" in proc.stderr
    assert not list(onnx_path.parent.glob("*.engine"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs the tensorrt package (pip install '.[trt]')")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnx(onnx_model, tmp_path, precision):
    from export.tensorrt import build_engine
    from inference.runtime import engine_sidecar, load_runtime

    ckpt, onnx_path = onnx_model
    engine = build_engine(
        onnx_path,
        tmp_path / f"m.{precision}.engine",
        precision=precision,
        max_batch=4,
        timing_cache=tmp_path / "timing.cache",
    )
    meta = json.loads(engine_sidecar(engine).read_text())
    assert meta["versions"]["tensorrt"] and meta["versions"]["gpu"]
    assert (tmp_path / "timing.cache").is_file()
    trt_rt, ort_rt = load_runtime(engine, device="cuda"), load_runtime(onnx_path)
    assert trt_rt.info == ort_rt.info
    x = np.random.default_rng(0).random((3, 3, *INPUT_SIZE), dtype=np.float32)
    a, b = trt_rt(x), ort_rt(x)
    tol = 1e-3 if precision == "fp32" else 5e-2
    for name in a:
        assert a[name].shape == b[name].shape
        assert np.abs(a[name] - b[name]).max() <= tol, name


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs the tensorrt package (pip install '.[trt]')")
def test_int8_calibration_writes_and_reuses_its_cache(onnx_model, tmp_path, coco_mini):
    from export.tensorrt import build_engine

    _, onnx_path = onnx_model
    kw = dict(
        precision="int8",
        calibration_images=coco_mini / "train2017",
        calibration_count=16,
        calibration_batch=8,
        calibration_cache=tmp_path / "calib.cache",
    )
    build_engine(onnx_path, tmp_path / "a.engine", **kw)
    assert (tmp_path / "calib.cache").stat().st_size > 0
    kw["calibration_images"] = tmp_path / "no-images"  # the cache alone must suffice now
    assert build_engine(onnx_path, tmp_path / "b.engine", **kw).is_file()
