"""Drawing skeletons, heatmaps and Part Affinity Fields on RGB images.

Every function takes and returns an RGB uint8 image (H, W, 3) and never changes its input. Map
coordinates follow ``datasets.targets``: map pixel ``j`` covers image span
``[j * sx, (j + 1) * sx)`` with ``sx = image_width / map_width``, so map index ``u`` sits at image
``x = (u + 0.5) * sx``. Colours are fixed per part and per limb (edge), so a limb keeps its
colour from image to image, as users of OpenPose-style tools expect.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datasets.geometry import compose, invert, warp_image
from datasets.topology import Topology

Color = tuple[int, int, int]


def palette(n: int, saturation: float = 0.9, value: float = 1.0) -> list[Color]:
    """``n`` distinct RGB colours spread around the hue circle (stable for a given ``n``)."""
    out = []
    for i in range(max(n, 0)):
        r, g, b = colorsys.hsv_to_rgb(i / max(n, 1), saturation, value)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def part_colors(topology: Topology) -> list[Color]:
    """One colour per part (label)."""
    return palette(topology.num_parts)


def limb_colors(topology: Topology) -> list[Color]:
    """One colour per edge (limb), offset from the part colours so joints stand out on limbs."""
    return palette(topology.num_edges, saturation=0.75, value=0.95)


def map_to_image(uv: np.ndarray, map_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Map index coordinates (..., 2) (u, v) -> image pixel coordinates (x, y)."""
    uv = np.asarray(uv, dtype=np.float64)
    sx = image_hw[1] / map_hw[1]
    sy = image_hw[0] / map_hw[0]
    return np.stack([(uv[..., 0] + 0.5) * sx, (uv[..., 1] + 0.5) * sy], axis=-1)


def _pt(xy: Sequence[float]) -> tuple[int, int]:
    return int(round(float(xy[0]) - 0.5)), int(round(float(xy[1]) - 0.5))


def _keypoints_of(skeleton: Any) -> np.ndarray:
    """(K, 3) (x, y, score) of a decoder Skeleton, or of a plain array."""
    kp = getattr(skeleton, "keypoints", skeleton)
    return np.asarray(kp, dtype=np.float64)


def track_color(track_id: int) -> Color:
    """A stable, well-separated colour per track id (hue steps of the golden ratio)."""
    hue = (int(track_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_skeletons(
    image: np.ndarray,
    skeletons: Iterable[Any],
    topology: Topology,
    *,
    thickness: int | None = None,
    radius: int | None = None,
    min_part_score: float = 0.0,
    label_scores: bool = False,
    track_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """Draw each skeleton's limbs (one colour per limb) and joints (one colour per part).

    ``skeletons``: decoder ``Skeleton`` objects (``keypoints`` (K, 3) = (x, y, score) in this
    image's pixels, NaN/score 0 for missing parts) or plain (K, 3) arrays. With ``track_ids``
    (one per skeleton) every limb of a skeleton takes its track's colour and the id is written
    above it, so an object keeps its colour and number from frame to frame.
    """
    out = np.ascontiguousarray(image.copy())
    size = max(out.shape[:2])
    thickness = thickness or max(2, size // 240)
    radius = radius or max(3, size // 160)
    lc, pc = limb_colors(topology), part_colors(topology)
    for n, sk in enumerate(skeletons):
        kp = _keypoints_of(sk)
        ok = np.isfinite(kp[:, 0]) & np.isfinite(kp[:, 1]) & (kp[:, 2] > min_part_score)
        tc = track_color(track_ids[n]) if track_ids is not None else None
        for e, (a, b) in enumerate(topology.edges):
            if ok[a] and ok[b]:
                cv2.line(out, _pt(kp[a]), _pt(kp[b]), tc or lc[e], thickness, cv2.LINE_AA)
        for k in np.nonzero(ok)[0]:
            cv2.circle(out, _pt(kp[k]), radius, pc[k], -1, cv2.LINE_AA)
            cv2.circle(out, _pt(kp[k]), radius, (0, 0, 0), 1, cv2.LINE_AA)
        if tc is not None and ok.any():
            top = kp[ok][np.argmin(kp[ok][:, 1])]
            org = _pt((top[0] - radius, top[1] - 2 * radius))
            put_text(out, str(track_ids[n]), org, scale=max(0.5, size / 900), color=tc)
        if label_scores and ok.any():
            score = getattr(sk, "score", None)
            if score is not None:
                top = kp[ok][np.argmin(kp[ok][:, 1])]
                put_text(out, f"{float(score):.2f}", _pt(top), scale=0.4)
    return out


def colorize_maps(
    maps: np.ndarray, colors: Sequence[Color], image_hw: tuple[int, int]
) -> np.ndarray:
    """(C, h, w) maps in [0, 1] -> (H, W, 3) uint8: each channel in its colour, max over channels."""
    maps = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float32)), 0.0, 1.0)
    col = np.asarray(colors, dtype=np.float32)[: maps.shape[0]]  # (C, 3)
    rgb = (maps[:, :, :, None] * col[:, None, None, :]).max(axis=0)  # (h, w, 3)
    # nearest: each map pixel stays a visible square, as in the reference pictures
    rgb = cv2.resize(rgb, (image_hw[1], image_hw[0]), interpolation=cv2.INTER_NEAREST)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, layer: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend an RGB layer over the image where the layer is not black."""
    img = image.astype(np.float32)
    lay = layer.astype(np.float32)
    weight = alpha * (lay.max(axis=2, keepdims=True) / 255.0)  # black layer pixels leave the image
    out = img * (1 - weight) + lay * weight
    return np.clip(out, 0, 255).astype(np.uint8)


def heatmap_overlay(
    image: np.ndarray, heatmap: np.ndarray, topology: Topology, alpha: float = 0.7
) -> np.ndarray:
    """Heatmap (K, h, w) over the image, each part in its colour (the reference's Step 2 picture)."""
    layer = colorize_maps(heatmap, part_colors(topology), image.shape[:2])
    return overlay(darken(image), layer, alpha)


def maps_overlay(
    image: np.ndarray,
    matrix: np.ndarray,
    input_size: tuple[int, int],
    topology: Topology,
    heatmap: np.ndarray | None = None,
    paf: np.ndarray | None = None,
    alpha: float = 0.6,
) -> np.ndarray:
    """The network's maps over the original image: ``heatmap`` (K, h, w), each part in its
    colour, and/or ``paf`` (2E, h, w) as each edge's field strength in its limb colour.

    The maps cover the network input of ``input_size`` (H, W); ``matrix`` (2x3, original ->
    input pixels, from the pre-processing) is inverted to lay them over the original picture.
    """
    layers = []
    if heatmap is not None:
        layers.append((heatmap, part_colors(topology)))
    if paf is not None:
        pairs = np.asarray(topology.edges_paf)  # (E, 2) channels of each edge's x and y
        strength = np.hypot(paf[pairs[:, 0]], paf[pairs[:, 1]])  # (E, h, w)
        layers.append((strength, limb_colors(topology)))
    if not layers:
        return image
    h, w = layers[0][0].shape[1:]
    layer = np.zeros((h, w, 3), np.uint8)
    for maps, colors in layers:
        layer = np.maximum(layer, colorize_maps(maps, colors, (h, w)))
    # map -> network input is a pure scale (continuous coordinates); input -> original inverts
    # the pre-processing
    input_hw = np.array(input_size, dtype=np.float64)
    scale = np.array([[input_hw[1] / w, 0.0, 0.0], [0.0, input_hw[0] / h, 0.0]])
    warp = compose(invert(np.asarray(matrix, np.float64)), scale)
    return overlay(darken(image), warp_image(layer, warp, image.shape[:2]), alpha)


def darken(image: np.ndarray, factor: float = 0.5) -> np.ndarray:
    """A dimmed copy so coloured overlays read clearly."""
    return (image.astype(np.float32) * factor).astype(np.uint8)


def draw_points(
    image: np.ndarray,
    points: np.ndarray,
    colors: Sequence[Color],
    alphas: Sequence[float] | None = None,
    radius: int | None = None,
) -> np.ndarray:
    """Filled circles at image points (M, 2), each with its colour and opacity (default 1)."""
    out = image.copy()
    radius = radius or max(2, max(image.shape[:2]) // 160)
    alphas = np.ones(len(points)) if alphas is None else np.clip(np.asarray(alphas), 0, 1)
    for p, c, a in zip(points, colors, alphas, strict=True):
        if a <= 0 or not np.all(np.isfinite(p)):
            continue
        layer = out.copy()
        cv2.circle(layer, _pt(p), radius, c, -1, cv2.LINE_AA)
        out = cv2.addWeighted(layer, float(a), out, 1 - float(a), 0)
    return out


def draw_segments(
    image: np.ndarray,
    segments: np.ndarray,
    colors: Sequence[Color],
    thickness: int | None = None,
) -> np.ndarray:
    """Lines (M, 2, 2) [[x0, y0], [x1, y1]] in image pixels, one colour each."""
    out = image.copy()
    thickness = thickness or max(1, max(image.shape[:2]) // 320)
    for s, c in zip(segments, colors, strict=True):
        cv2.line(out, _pt(s[0]), _pt(s[1]), c, thickness, cv2.LINE_AA)
    return out


def draw_paf_arrows(
    image: np.ndarray,
    paf_x: np.ndarray,
    paf_y: np.ndarray,
    *,
    color: Color = (255, 255, 0),
    min_norm: float = 0.05,
    every: int = 1,
) -> np.ndarray:
    """One arrow per map pixel of a PAF edge field (h, w) x/y components, length ~ field norm."""
    out = image.copy()
    h, w = paf_x.shape
    sx, sy = image.shape[1] / w, image.shape[0] / h
    cell = min(sx, sy) * every
    for j in range(0, h, every):
        for i in range(0, w, every):
            vx, vy = float(paf_x[j, i]), float(paf_y[j, i])
            norm = math.hypot(vx, vy)
            if not norm >= min_norm:  # also skips NaN
                continue
            cx, cy = (i + 0.5) * sx, (j + 0.5) * sy
            # an arrow of a unit vector spans 90% of the cell, centred on the pixel
            dx, dy = 0.45 * cell * vx, 0.45 * cell * vy
            cv2.arrowedLine(
                out,
                _pt((cx - dx, cy - dy)),
                _pt((cx + dx, cy + dy)),
                color,
                1,
                cv2.LINE_AA,
                tipLength=0.35,
            )
    return out


def put_text(
    image: np.ndarray,
    text: str,
    org: tuple[int, int],
    scale: float = 0.5,
    color: Color = (255, 255, 255),
) -> np.ndarray:
    """Text with a dark outline, in place; returns the image."""
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    return image


def titled(image: np.ndarray, title: str) -> np.ndarray:
    """A copy of the image with a title bar on top."""
    bar = np.zeros((24, image.shape[1], 3), np.uint8)
    put_text(bar, title, (6, 17), scale=0.5)
    return np.vstack([bar, image])


def make_grid(images: Sequence[np.ndarray], cols: int = 3, pad: int = 4) -> np.ndarray:
    """Tile RGB images (resized to the first one's size) into a grid."""
    if not images:
        raise ValueError("make_grid: no images")
    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 32, np.uint8)
    for n, img in enumerate(images):
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        r, c = divmod(n, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def write_rgb(path: Any, image: np.ndarray) -> None:
    """Write an RGB image with OpenCV (which expects BGR); raise naming the file on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")
    os.replace(tmp, path)
