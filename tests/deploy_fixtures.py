"""Helpers for the export/runtime/predict/visualize tests: a tiny checkpoint and its ONNX export.

Not a test module: imported by tests/test_export.py, test_runtime.py, test_predict.py and
test_visualize.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from datasets.topology import Topology

REPO = Path(__file__).resolve().parent.parent
INPUT_SIZE = (64, 96)  # (H, W): non-square, so H/W mix-ups show


def make_checkpoint(
    path: Path, input_size=INPUT_SIZE, aspect: str = "squash", seed: int = 0, decoder=None
) -> Path:
    """A checkpoint of conf/model/tiny.yaml with random weights and non-trivial BN statistics."""
    from models.build import build_model
    from train.checkpoint import save_checkpoint

    model_cfg = yaml.safe_load((REPO / "conf" / "model" / "tiny.yaml").read_text())
    model_cfg["pretrained"] = False
    topo = Topology.named("coco18")
    torch.manual_seed(seed)
    model = build_model(model_cfg, topo)
    for m in model.modules():  # BN folding must be exercised with non-identity statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    config = {
        "topology": topo.to_dict(),
        "model": model_cfg,
        "data": {"input_size": list(input_size), "aspect": aspect},
        "targets": {
            "stride": 4,
            "sigma": 1.0,
            "paf_width": 1.0,
            "truncate": 4.0,
            "min_visibility": 1,
        },
    }
    if decoder is not None:
        config["decoder"] = decoder
    save_checkpoint(path, {"epoch": 1, "step": 1, "model": model.state_dict(), "config": config})
    return path


def export_cfg(ckpt: Path, **overrides) -> dict:
    """A plain export config (what conf/export.yaml composes to), without Hydra."""
    cfg = {
        "ckpt": str(ckpt),
        "output": None,
        "layout": "nhwc",
        "dynamic_batch": True,
        "opset": 17,
        "deconv_as_conv": True,
        "decoder": {"maxpool_kernel": 3, "threshold_heatmap": 0.05},
        "parity": {"images": [], "count": 3, "atol": 1e-4},
        "int8": False,
    }
    cfg.update(overrides)
    return cfg


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB uint8 picture."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.uint8)
    import cv2

    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
