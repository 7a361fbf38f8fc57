"""TensorBoard pictures of training: input with predicted heatmaps, PAFs and decoded skeletons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from datasets.topology import Topology
from inference import draw


def to_uint8_rgb(image: Any) -> np.ndarray:
    """(3, H, W) float tensor/array in [0, 1] -> (H, W, 3) uint8."""
    arr = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    return (np.clip(arr.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)


def paf_magnitudes(paf: np.ndarray, topology: Topology) -> np.ndarray:
    """(2E, h, w) fields -> (E, h, w) per-edge vector length."""
    ch = np.asarray(topology.edges_paf, dtype=np.intp).reshape(-1, 2)
    return np.hypot(paf[ch[:, 0]], paf[ch[:, 1]])


def prediction_panel(
    image: Any,
    heatmap: np.ndarray,
    paf: np.ndarray,
    topology: Topology,
    skeletons: Sequence[Any] | None = None,
    target_heatmap: np.ndarray | None = None,
) -> np.ndarray:
    """One (H', W', 3) uint8 picture: [target heatmap |] predicted heatmap | PAF | skeletons.

    ``heatmap`` (K, h, w) and ``paf`` (2E, h, w) are one sample's predictions (numpy);
    ``skeletons`` are decoder skeletons in input-image pixels (panel omitted when None).
    """
    rgb = to_uint8_rgb(image)
    panels = []
    if target_heatmap is not None:
        panels.append(draw.titled(draw.heatmap_overlay(rgb, target_heatmap, topology), "target"))
    panels.append(draw.titled(draw.heatmap_overlay(rgb, heatmap, topology), "heatmap"))
    layer = draw.colorize_maps(
        paf_magnitudes(paf, topology), draw.limb_colors(topology), rgb.shape[:2]
    )
    panels.append(draw.titled(draw.overlay(draw.darken(rgb), layer, 0.7), "PAF |v|"))
    if skeletons is not None:
        panels.append(
            draw.titled(draw.draw_skeletons(rgb, skeletons, topology), f"{len(skeletons)} decoded")
        )
    return np.hstack(panels)
