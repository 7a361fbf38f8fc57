"""Oracle maps: ground-truth targets rendered at the model's output resolution, for the decoder.

Decoding them measures the decoder's upper bound for a resolution and a target convention (what
a perfect network would score). The geometry is evaluation's: the original image is fitted into
the network input with ``datasets.geometry.fit_matrix`` (squash or letterbox), the ground truth
follows through the same matrix, and targets are rendered with ``datasets.targets`` at
input / stride. ``decode_image`` maps the decoded skeletons back to the original image, and is
shared with the model mode of ``inference.eval``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from datasets.errors import UsageError
from datasets.geometry import apply, aspect_option, fit_matrix, invert
from datasets.targets import TargetConfig, render_targets
from datasets.topology import Topology
from inference.cocoeval import gt_keypoints, skeletons_to_coco
from inference.decoder import OpenPoseDecoder, Skeleton

DEFAULT_TARGETS = TargetConfig()


@dataclass
class OracleSample:
    """One image's oracle maps: heatmap (K, h, w), paf (2E, h, w), original -> input matrix."""

    image_id: int
    orig_hw: tuple[int, int]
    heatmap: np.ndarray
    paf: np.ndarray
    matrix: np.ndarray


def oracle_maps(
    keypoints: np.ndarray,
    orig_hw: tuple[int, int],
    input_hw: tuple[int, int],
    topology: Topology,
    targets: TargetConfig = DEFAULT_TARGETS,
    aspect: str = "squash",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render (K, h, w) heatmaps and (2E, h, w) PAFs of (N, K, 3) original-image keypoints."""
    ih, iw = int(input_hw[0]), int(input_hw[1])
    if ih % targets.stride or iw % targets.stride:
        raise ValueError(f"input size {[ih, iw]} is not a multiple of stride {targets.stride}")
    matrix = fit_matrix(orig_hw, (ih, iw), aspect)
    kp = np.array(keypoints, dtype=np.float64).reshape(-1, topology.num_parts, 3)
    kp[..., :2] = apply(matrix, kp[..., :2])
    heat, paf = render_targets(
        kp.astype(np.float32), topology, (ih // targets.stride, iw // targets.stride), targets
    )
    return heat, paf, matrix


def perturb(
    heat: np.ndarray, paf: np.ndarray, noise: float, blur: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blur (Gaussian, ``blur`` map pixels) then add Gaussian noise of std ``noise`` to both maps."""
    if blur > 0:
        heat = _blur(heat, blur)
        paf = _blur(paf, blur)
    if noise > 0:
        heat = heat + rng.normal(0.0, noise, heat.shape).astype(np.float32)
        paf = paf + rng.normal(0.0, noise, paf.shape).astype(np.float32)
    return heat, paf


def _blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    # cv2 blurs each channel of an (H, W, C) image; C = 2E stays below its 512-channel limit
    hwc = np.ascontiguousarray(maps.transpose(1, 2, 0))
    out = cv2.GaussianBlur(hwc, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    return np.ascontiguousarray(out.reshape(hwc.shape).transpose(2, 0, 1))


def iter_oracle(
    coco_gt,
    topology: Topology,
    category: Mapping[str, Any],
    input_hw: tuple[int, int],
    targets: TargetConfig = DEFAULT_TARGETS,
    aspect: str = "squash",
    image_ids: Sequence[int] | None = None,
    noise: float = 0.0,
    blur: float = 0.0,
    seed: int = 0,
) -> Iterator[OracleSample]:
    """Oracle maps for every image (default: all images of the file, in id order).

    Rendered: the non-crowd annotations of the category with at least one labelled keypoint.
    """
    rng = np.random.default_rng(seed)
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else list(image_ids)
    for image_id in ids:
        info = coco_gt.imgs[image_id]
        orig_hw = (int(info["height"]), int(info["width"]))
        anns = [
            a
            for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id], catIds=[category["id"]]))
            if not a.get("iscrowd", 0) and int(a.get("num_keypoints", 1)) > 0
        ]
        kp = gt_keypoints(anns, category, topology)
        heat, paf, matrix = oracle_maps(kp, orig_hw, input_hw, topology, targets, aspect)
        if noise > 0 or blur > 0:
            heat, paf = perturb(heat, paf, noise, blur, rng)
        yield OracleSample(image_id, orig_hw, heat, paf, matrix)


def decode_image(
    decoder: OpenPoseDecoder,
    heatmap: np.ndarray,
    paf: np.ndarray,
    orig_hw: tuple[int, int],
    matrix: np.ndarray,
    input_hw: tuple[int, int],
    aspect: str = "squash",
    maxpool_heatmap: np.ndarray | None = None,
) -> list[Skeleton]:
    """Decode one image's (K, h, w) / (2E, h, w) maps into skeletons in original-image pixels.

    Squash: Isaac's way, ``output_scale`` = the original [rows, cols]. Letterbox (or any other
    fit): decode to network-input pixels, then map back with the inverse of ``matrix``; parts
    found in the border around the picture are moved onto its edge.
    """
    if aspect == "squash":
        return decoder(heatmap, paf, maxpool_heatmap, output_scale=list(orig_hw))
    skeletons = decoder(heatmap, paf, maxpool_heatmap, output_scale=list(input_hw))
    back = invert(matrix)
    h, w = orig_hw
    for sk in skeletons:
        xy = apply(back, sk.keypoints[:, :2])  # NaN stays NaN
        # a part found in the letterbox border lies outside the picture: onto its edge
        sk.keypoints[:, 0] = np.minimum(np.maximum(xy[:, 0], 0.0), w)
        sk.keypoints[:, 1] = np.minimum(np.maximum(xy[:, 1], 0.0), h)
    return skeletons


def oracle_results(
    coco_gt,
    topology: Topology,
    category: Mapping[str, Any],
    decoder: OpenPoseDecoder,
    input_hw: tuple[int, int],
    targets: TargetConfig = DEFAULT_TARGETS,
    aspect: str = "squash",
    image_ids: Sequence[int] | None = None,
    noise: float = 0.0,
    blur: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """COCO results of decoding the oracle maps of every image."""
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else list(image_ids)
    samples = iter_oracle(
        coco_gt, topology, category, input_hw, targets, aspect, ids, noise, blur, seed
    )
    results: list[dict[str, Any]] = []
    for s in tqdm(samples, total=len(ids), desc="oracle", disable=not progress, unit="img"):
        skeletons = decode_image(decoder, s.heatmap, s.paf, s.orig_hw, s.matrix, input_hw, aspect)
        results += skeletons_to_coco(skeletons, s.image_id, topology, category)
    return results


def oracle_settings(cfg: Mapping[str, Any]) -> tuple[tuple[int, int], str, TargetConfig]:
    """(input [H, W], aspect, targets) of oracle mode (eval, visualize) from a command's config,
    checked: one-line usage errors naming the override."""
    input_hw, aspect = input_size(cfg.get("input_size")), cfg.get("aspect") or "squash"
    targets = TargetConfig.from_config(cfg.get("targets"))
    if input_hw[0] % targets.stride or input_hw[1] % targets.stride:
        raise UsageError(
            f"input_size {list(input_hw)} must be a multiple of the maps' stride "
            f"{targets.stride} (e.g. 224 or [480,640])"
        )
    return input_hw, aspect_option(aspect), targets


def input_size(value: Any) -> tuple[int, int]:
    """``224`` or ``[H, W]`` -> (H, W)."""
    if value is None:
        raise UsageError("oracle mode needs input_size=N or input_size=[H,W] (or model=PATH)")
    vals = [value] * 2 if isinstance(value, int | float | str) else list(value)
    if len(vals) == 1:
        vals = vals * 2
    try:
        hw = tuple(int(v) for v in vals)
        ok = len(hw) == 2 and all(v > 0 and v == float(f) for v, f in zip(hw, vals, strict=True))
    except (TypeError, ValueError, OverflowError):  # (int of inf overflows)
        ok = False
    if not ok:
        raise UsageError(f"input_size must be N or [H, W] with positive sizes, got {value!r}")
    return hw[0], hw[1]
