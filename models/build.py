"""Pose networks built from config: ``build_model(cfg.model, topology)``, or rebuilt from a
checkpoint with ``build_from_checkpoint``.

A model config is a mapping with ``_target_`` (the callable, e.g. ``models.posenet.PoseNet``) and
its keyword arguments; ``build_model`` adds the channel counts from the topology. Every model's
``forward(x)`` takes (B, 3, H, W) RGB in [0, 1] and returns ``(heatmap (B, K, H/s, W/s),
paf (B, 2E, H/s, W/s))``; ``model.stride`` is s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from datasets.config import as_plain
from datasets.errors import UserError
from datasets.topology import Topology, topology_from_config
from models.checkpoint import load_checkpoint


def build_model(model_cfg: Mapping[str, Any], topology: Topology) -> nn.Module:
    """Instantiate ``model_cfg['_target_']`` with K = topology.num_parts and 2E PAF channels."""
    model_cfg = as_plain(model_cfg)
    if "_target_" not in model_cfg:
        raise ValueError(f"model config needs a _target_; got keys {sorted(model_cfg)}")
    # the config's _target_ is the registry; called directly (not hydra's instantiate) so the
    # constructor's own errors reach the user unwrapped
    if topology.num_edges == 0:  # a PAF head of 0 channels cannot be built or trained
        raise UserError(
            f"topology {topology.name!r} has no edges ({topology.num_parts} keypoint(s)): a "
            "part-affinity-field network needs at least one edge between two keypoints; give "
            "the category a skeleton (or topology.connect=auto with 2 or more keypoints)"
        )
    kwargs = {k: v for k, v in model_cfg.items() if not k.startswith("_")}
    model = get_object(model_cfg["_target_"])(
        num_parts=topology.num_parts, num_paf_channels=topology.num_paf_channels, **kwargs
    )
    if not isinstance(getattr(model, "stride", None), int):
        raise TypeError(f"{model_cfg['_target_']} built a model without an int `stride` attribute")
    return model


def build_from_checkpoint(
    ckpt_or_path: str | Path | Mapping[str, Any], map_location: str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint (path or loaded dict), pretrained download off.

    Returns ``(model in eval mode with the checkpoint's weights, the checkpoint's config dict)``.
    """
    if isinstance(ckpt_or_path, (str, Path)):
        ckpt = load_checkpoint(ckpt_or_path, map_location=map_location)
        where = str(ckpt_or_path)
    else:
        ckpt, where = ckpt_or_path, "checkpoint dict"
    config = ckpt.get("config") or {}
    for key in ("topology", "model"):
        if key not in config:
            raise ValueError(f"{where}: config has no {key!r} section (keys: {sorted(config)})")
    topology = topology_from_config(config["topology"])
    model = build_model(dict(config["model"], pretrained=False), topology)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise RuntimeError(f"{where}: weights do not fit the model its config builds: {e}") from e
    return model.eval(), config


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Multiply-accumulates of one eval-mode forward pass on a (1, 3, H, W) input.

    torch's ``FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of the convolutions
    (transposed ones included) and matrix products.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, *input_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
