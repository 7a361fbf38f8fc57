"""TensorRT: engine build and runtime on a GPU (marked `gpu`); a clear refusal without one."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from datasets.errors import UsageError, UserError
from export.__main__ import run as export
from export.tensorrt import run as trt_run
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"precision": "fp8"}, "precision must be one of ['fp32', 'fp16', 'int8'], got 'fp8'"),
        ({"batch": {"min": 4, "opt": 2, "max": 8}}, "need batch.min <= batch.opt <= batch.max"),
        ({"batch": {"max": 0}}, "batch.max must be a whole number >= 1, got 0"),
        ({"calibration": {"batch_size": "x"}}, "calibration.batch_size must be a whole number"),
        ({"workspace_mib": -1}, "workspace_mib must be a whole number >= 1, got -1"),
    ],
)
def test_bad_build_options_are_refused_on_any_machine(onnx_model, override, message):
    """Checked before TensorRT and a GPU are needed: a CPU machine finds the mistake too."""
    _, onnx_path = onnx_model
    with pytest.raises(UsageError) as e:
        trt_run({"onnx": str(onnx_path), **override})
    assert str(e.value).startswith(message)
    assert not list(onnx_path.parent.glob("*.engine"))


def test_a_file_not_written_by_export_is_named(tmp_path):
    bad = tmp_path / "photo.onnx"
    bad.write_bytes(b"\xff\xd8 not onnx")
    with pytest.raises(UserError, match=r"photo.onnx: not an ONNX file .* python -m export"):
        trt_run({"onnx": str(bad)})
    bare = tmp_path / "bare.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["input"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
    )  # fmt: skip
    onnx.save(onnx.helper.make_model(graph), str(bare))
    with pytest.raises(UserError, match=r"bare.onnx: metadata lacks .*python -m export"):
        trt_run({"onnx": str(bare)})


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
