"""Export: checkpoint -> ONNX names, layouts, metadata, BN folding, parity, decoder config."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from datasets.errors import UsageError
from export.__main__ import run
from export.onnx import (
    ParityError,
    SubPixelConvTranspose,
    convtranspose_to_conv,
    parity_check,
)
from inference.runtime import load_runtime
from models.contract import OUTPUT_NAMES, ModelInfo
from tests.deploy_fixtures import INPUT_SIZE, REPO, export_cfg, make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("export") / "tiny.pth")


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_export_nhwc_names_metadata_parity(ckpt, tmp_path, coco_mini):
    out = tmp_path / "model.onnx"
    cfg = export_cfg(ckpt, output=str(out))
    cfg["parity"]["images"] = [str(coco_mini / "val2017")]
    result = run(cfg)
    assert result["onnx"] == out and out.is_file()
    assert all(v <= 1e-4 for v in result["parity"].values()), result["parity"]

    proto = onnx.load(str(out))
    h, w = INPUT_SIZE
    k, c = 18, 42
    assert [i.name for i in proto.graph.input] == ["input"]
    assert _dims(proto.graph.input[0]) == ["batch", 3, h, w]
    outs = {o.name: _dims(o) for o in proto.graph.output}
    assert outs == {
        "part_affinity_fields": ["batch", h // 4, w // 4, c],
        "heatmap": ["batch", h // 4, w // 4, k],
        "maxpool_heatmap": ["batch", h // 4, w // 4, k],
    }
    ops = {n.op_type for n in proto.graph.node}
    # BN folded everywhere (including after transposed convs), which were rewritten as convs
    assert "BatchNormalization" not in ops and "ConvTranspose" not in ops

    info = ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props})
    assert info.input_size == INPUT_SIZE and info.stride == 4 and info.layout == "nhwc"
    assert info.topology.name == "coco18" and info.topology.num_edges == 21
    assert info.decoder["maxpool_kernel"] == 3 and info.decoder["threshold_heatmap"] == 0.05
    assert info.targets["sigma"] == 1.0

    dec = json.loads(result["decoder_config"].read_text())
    assert dec["labels"][17] == "neck" and dec["edges"][0] == [15, 13]
    assert dec["edges_paf"][20] == [41, 40] and dec["output_scale"] == list(INPUT_SIZE)
    assert dec["threshold_heatmap"] == 0.05


def test_onnx_runtime_matches_torch_runtime_in_nchw(ckpt, tmp_path):
    """The ONNX graph (NHWC) through the runtime equals the torch checkpoint backend (NCHW)."""
    out = run(export_cfg(ckpt, output=str(tmp_path / "m.onnx")))["onnx"]
    ort_rt, torch_rt = load_runtime(out), load_runtime(ckpt)
    assert ort_rt.info.layout == "nhwc" and torch_rt.info.layout == "nchw"
    x = np.random.default_rng(0).random((2, 3, *INPUT_SIZE), dtype=np.float32)
    a, b = ort_rt(x), torch_rt(x)
    for name in OUTPUT_NAMES:
        assert a[name].shape == b[name].shape == (2, 42 if name[0] == "p" else 18, 16, 24)
        assert np.abs(a[name] - b[name]).max() <= 1e-4, name
    # the max-pool is a real 3x3 NMS basis: >= the heatmap, equal at local maxima only
    assert (a["maxpool_heatmap"] >= a["heatmap"] - 1e-6).all()
    assert (a["maxpool_heatmap"] > a["heatmap"] + 1e-6).any()


def test_static_batch_nchw_export(ckpt, tmp_path):
    cfg = export_cfg(ckpt, output=str(tmp_path / "s.onnx"), layout="nchw", dynamic_batch=False)
    out = run(cfg)["onnx"]
    proto = onnx.load(str(out))
    assert _dims(proto.graph.input[0])[0] == 1
    assert {o.name: _dims(o) for o in proto.graph.output}["heatmap"] == [1, 18, 16, 24]
    rt = load_runtime(out)
    x = np.random.default_rng(1).random((3, 3, *INPUT_SIZE), dtype=np.float32)
    y = rt(x)  # the runtime runs a static-batch graph in chunks
    assert y["heatmap"].shape == (3, 18, 16, 24)
    ref = load_runtime(ckpt)(x)
    assert np.abs(y["part_affinity_fields"] - ref["part_affinity_fields"]).max() <= 1e-4


def test_parity_failure_names_the_tensor(ckpt, tmp_path):
    out = run(export_cfg(ckpt, output=str(tmp_path / "p.onnx")))["onnx"]
    from models.build import build_from_checkpoint

    model, _ = build_from_checkpoint(ckpt)
    info = load_runtime(out).info
    with torch.no_grad():
        model.head.paf_conv.bias += 0.01  # the PAF head differs from the exported graph
    x = np.random.default_rng(0).random((2, 3, *INPUT_SIZE), dtype=np.float32)
    with pytest.raises(ParityError, match=r"part_affinity_fields: max abs diff 0\.01") as e:
        parity_check(out, model, info, x)
    assert "heatmap" not in str(e.value).split("(")[-1]


def test_subpixel_convtranspose_is_exact():
    torch.manual_seed(0)
    for cin, cout, h, w in [(3, 5, 4, 7), (16, 8, 7, 7)]:
        ct = torch.nn.ConvTranspose2d(cin, cout, 4, 2, 1)
        x = torch.randn(2, cin, h, w)
        with torch.no_grad():
            ref, got = ct(x), SubPixelConvTranspose(ct)(x)
        assert got.shape == ref.shape == (2, cout, 2 * h, 2 * w)
        assert (got - ref).abs().max() < 1e-5
    # other transposed convolutions are left alone
    seq = torch.nn.Sequential(
        torch.nn.ConvTranspose2d(3, 3, 3, 2, 1), torch.nn.ConvTranspose2d(3, 3, 4, 2, 1)
    )
    convtranspose_to_conv(seq)
    assert isinstance(seq[0], torch.nn.ConvTranspose2d) and isinstance(
        seq[1], SubPixelConvTranspose
    )


def test_wrong_topology_for_weights_is_named(tmp_path):
    """A checkpoint whose maps do not fit its topology fails before writing anything."""
    from models.checkpoint import load_checkpoint
    from train.checkpoint import save_checkpoint

    path = make_checkpoint(tmp_path / "t.pth")
    ckpt = load_checkpoint(path)
    ckpt["config"]["data"]["input_size"] = [66, 96]  # not a multiple of the stride
    save_checkpoint(path, ckpt)
    with pytest.raises(ValueError, match=r"input size \(66, 96\) is not a multiple of stride 4"):
        run(export_cfg(path, output=str(tmp_path / "t.onnx")))
    assert not (tmp_path / "t.onnx").exists()


def test_cli_exports_and_exits_zero(ckpt, tmp_path):
    """`python -m export` through Hydra (config composition, decoder group, output path)."""
    out = tmp_path / "cli.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            f"ckpt={ckpt}",
            f"output={out}",
            "layout=nchw",
            "parity.count=2",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "onnx.checker: ok" in proc.stdout and out.is_file()
    assert (tmp_path / "cli.decoder.json").is_file()


def test_int8_export_keeps_names_and_metadata(ckpt, tmp_path):
    import cv2

    from tests.deploy_fixtures import random_image

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):
        cv2.imwrite(str(calib / f"{i}.jpg"), random_image(120, 160, seed=i))
    cfg = export_cfg(ckpt, output=str(tmp_path / "q.onnx"), int8=True)
    cfg["quantize"] = {"images": [str(tmp_path / "missing"), str(calib)], "count": 4}
    result = run(cfg)
    q = onnx.load(str(result["int8"]))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sorted(o.name for o in q.graph.output) == sorted(OUTPUT_NAMES)
    fp32, int8 = load_runtime(result["onnx"]), load_runtime(result["int8"])
    assert int8.info == fp32.info
    x = np.stack([fp32.preprocess(random_image(120, 160, seed=i))[0] for i in range(2)])
    a, b = fp32(x), int8(x)
    for name in OUTPUT_NAMES:
        scale = float(np.abs(a[name]).max())
        # 8-bit activations: errors of a few quantisation steps of the output's range
        assert np.abs(a[name] - b[name]).max() <= 0.1 * scale + 1e-3, name


def test_int8_without_calibration_images_is_refused(ckpt, tmp_path):
    cfg = export_cfg(ckpt, output=str(tmp_path / "q.onnx"), int8=True)
    cfg["quantize"] = {"images": [str(tmp_path / "nothing-here")], "count": 4}
    with pytest.raises(FileNotFoundError, match="INT8 calibration needs real images"):
        run(cfg)


@pytest.mark.parametrize("failure", ["checker", "parity"])
def test_failed_export_never_replaces_a_good_file(ckpt, tmp_path, monkeypatch, failure):
    import export.__main__ as export_main

    out = tmp_path / "good.onnx"
    run(export_cfg(ckpt, output=str(out)))
    good = out.read_bytes()

    def fail(*args, **kwargs):
        if failure == "checker":
            raise onnx.checker.ValidationError("broken graph")
        raise ParityError(f"{kwargs['name']}: ONNX Runtime differs from torch")

    monkeypatch.setattr(export_main, "check_onnx" if failure == "checker" else "parity_check", fail)
    with pytest.raises((onnx.checker.ValidationError, ParityError), match=r"broken|good\.onnx"):
        run(export_cfg(ckpt, output=str(out)))
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.decoder.json", "good.onnx"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"layout": "nwhc"}, "layout must be one of ['nhwc', 'nchw'], got 'nwhc'"),
        ({"opset": "abc"}, "opset must be a whole number >= 1, got 'abc'"),
        ({"opset": 8}, "opset must be >= 9 (default 17), got 8"),
        ({"parity": {"count": -1}}, "parity.count must be a whole number >= 1, got -1"),
        ({"parity": {"atol": "abc"}}, "parity.atol must be a number >= 0, got 'abc'"),
        ({"decoder": {"maxpool_kernel": 4}}, "maxpool_kernel must be a positive odd number"),
        ({"decoder": {"bogus": 1}}, "unknown OpenPoseDecoder parameter(s) ['bogus']"),
    ],
)
def test_bad_export_options_are_usage_errors_and_write_nothing(ckpt, tmp_path, override, message):
    out = tmp_path / "m.onnx"
    with pytest.raises(UsageError) as e:
        run(export_cfg(ckpt, output=str(out), **override))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
