"""Runtime: model metadata round trip, pre-processing geometry, backends, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets.errors import UsageError, UserError
from datasets.geometry import apply
from datasets.topology import Topology
from export.__main__ import run as export
from inference.runtime import TensorRTRuntime, check_device, engine_sidecar, load_runtime
from models.contract import ModelInfo, preprocess_image, skeletons_to_original
from tests.deploy_fixtures import INPUT_SIZE, export_cfg, make_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtime")
    ckpt = make_checkpoint(d / "tiny.pth", aspect="letterbox")
    return ckpt, export(export_cfg(ckpt, output=str(d / "tiny.onnx")))["onnx"]


def _info(size=(64, 96), aspect="squash") -> ModelInfo:
    return ModelInfo(
        topology=Topology.named("coco18"),
        input_size=size,
        aspect=aspect,
        decoder={"maxpool_kernel": 5, "threshold_heatmap": 0.1},
        targets={"sigma": 1.5},
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        layout="nhwc",
    )


def test_metadata_round_trip():
    info = _info()
    props = info.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
    back = ModelInfo.from_metadata(props)
    assert back == info
    assert back.map_size == (16, 24) and back.maxpool_kernel == 5
    norm = json.loads(props["normalization"])
    assert norm["inside_graph"] is True and norm["std"] == [0.25, 0.25, 0.25]


def test_metadata_errors_name_the_problem():
    props = _info().to_metadata()
    del props["topology"]
    with pytest.raises(ValueError, match=r"model.onnx: metadata lacks \['topology'\]"):
        ModelInfo.from_metadata(props, source="model.onnx")
    props = _info().to_metadata()
    props["format_version"] = "99"
    with pytest.raises(ValueError, match="format_version 99 is newer"):
        ModelInfo.from_metadata(props)
    with pytest.raises(ValueError, match="not a multiple of stride"):
        ModelInfo(topology=Topology.named("coco18"), input_size=(65, 96))


@pytest.mark.parametrize("aspect", ["squash", "letterbox"])
@pytest.mark.parametrize(
    "shape", [(120, 200), (900, 700)]
)  # upscale, and a reduced-then-warped downscale
def test_preprocess_geometry(aspect, shape):
    """A bright square in the original lands where the returned matrix says."""
    h, w = shape
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, side = w * 0.6, h * 0.3, max(h, w) // 8
    img[int(y0) : int(y0) + side, int(x0) : int(x0) + side] = (255, 128, 0)
    info = _info(aspect=aspect)
    x, m = preprocess_image(img, info)
    assert x.shape == (3, 64, 96) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    red = x[0]
    ys, xs = np.nonzero(red > 0.5)
    # centroid of the square in input pixel-centre coordinates vs the mapped true centre
    got = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    want = apply(m, np.array([int(x0) + side / 2, int(y0) + side / 2]))
    assert np.abs(got - want).max() < 0.75
    if aspect == "letterbox":  # borders are black, the content keeps its aspect ratio
        s = m[0, 0]
        assert m[1, 1] == pytest.approx(s)
        assert np.isclose(x[:, :, 0], 0).all() or np.isclose(x[:, 0, :], 0).all()


def test_preprocess_rejects_bad_images():
    info = _info()
    with pytest.raises(ValueError, match=r"RGB \(h, w, 3\); got shape \(10, 10\)"):
        preprocess_image(np.zeros((10, 10), np.uint8), info)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(np.zeros((10, 10, 3), np.float32), info)


def test_skeletons_to_original_inverts_the_fit():
    class Sk:
        def __init__(self, kp):
            self.keypoints = kp

    info = _info(aspect="letterbox")
    _, m = preprocess_image(np.zeros((300, 200, 3), np.uint8), info)
    orig = np.array([[10.0, 20.0, 0.9], [150.5, 299.0, 0.5], [np.nan, np.nan, 0.0]])
    kp = orig.copy()
    kp[:2, :2] = apply(m, orig[:2, :2])
    (sk,) = skeletons_to_original([Sk(kp)], m)
    np.testing.assert_allclose(sk.keypoints[:2], orig[:2], atol=1e-9)
    assert np.isnan(sk.keypoints[2, :2]).all() and sk.keypoints[2, 2] == 0


def test_onnx_runtime_reads_its_metadata(exported):
    ckpt, onnx_path = exported
    rt = load_runtime(onnx_path)
    assert rt.backend == "onnxruntime"
    assert rt.info.aspect == "letterbox" and rt.info.input_size == INPUT_SIZE
    img = np.full((50, 300, 3), 200, np.uint8)
    x, m = rt.preprocess(img)
    maps = rt(np.stack([x, x]))
    assert set(maps) == {"heatmap", "part_affinity_fields", "maxpool_heatmap"}
    assert maps["heatmap"].shape == (2, 18, 16, 24) and maps["heatmap"].dtype == np.float32
    assert maps["heatmap"].flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError, match=r"input batch must be \(B, 3, 64, 96\)"):
        rt(x)
    dec = rt.make_decoder()
    assert dec.maxpool_kernel == 3 and dec.threshold_heatmap == 0.05


def test_torch_runtime_info_from_checkpoint(exported):
    ckpt, onnx_path = exported
    rt = load_runtime(ckpt)
    assert rt.backend == "torch" and rt.info.stride == 4 and rt.info.aspect == "letterbox"
    assert rt.info.topology == load_runtime(onnx_path).info.topology


def test_load_runtime_errors(tmp_path):
    with pytest.raises(UserError, match="model file not found: .*missing.onnx: give model=PATH"):
        load_runtime(tmp_path / "missing.onnx")
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"x")
    with pytest.raises(UsageError, match=r"unknown model type '\.tflite'"):
        load_runtime(bad)


def test_tensorrt_runtime_refuses_clearly_without_gpu(tmp_path):
    import torch

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: covered by test_tensorrt.py")
    with pytest.raises(UserError, match=r"(tensorrt|CUDA GPU)"):
        TensorRTRuntime(engine)
    assert engine_sidecar(engine).name == "m.engine.json"


def test_device_is_checked_before_a_model_is_opened(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read: the device is wrong first")
    for bad in ("gpu", "cuda:x", "cuda1"):
        with pytest.raises(UsageError, match=r"device=.*use device=cpu, cuda or cuda:N"):
            load_runtime(model, device=bad)
    assert check_device("CUDA:1") == "cuda:1" and check_device(None) == "cpu"
