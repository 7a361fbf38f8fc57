"""Training targets: part heatmaps, Part Affinity Fields and the ignore mask.

Conventions (checked by the ground-truth round trip targets -> decoder -> COCOeval):

* Keypoints are ``(x, y, v)`` in pixels of the network input image, continuous coordinates in
  which pixel ``i`` covers ``[i, i + 1)``, so its centre is ``i + 0.5``; ``v`` is COCO visibility
  (0 unlabelled, 1 labelled but occluded, 2 visible).
* Map pixel ``j`` at output stride ``s`` covers input pixels ``[j*s, (j+1)*s)``, so a keypoint at
  ``x`` sits at map index coordinate ``u = x / s - 0.5`` (map pixel centres are integers).
* A keypoint is drawn when ``v >= min_visibility`` (default 1: COCO's OKS scores occluded but
  labelled keypoints too) and it lies inside the image (``0 <= x < W*s``, ``0 <= y < H*s``). A
  keypoint that is unlabelled or outside the map is absent everywhere: no heatmap peak, and no PAF
  for an edge that ends at it.
* Heatmap: per part, ``exp(-d^2 / (2 sigma^2))`` with ``sigma`` in map pixels (default 1.0, i.e.
  4 input pixels at stride 4), cut to zero beyond ``truncate * sigma`` along either axis (value
  there <= exp(-8) for the default 4), max over objects (peaks of nearby people stay separate
  rather than summing into a false peak between them).
* PAF: for edge ``from -> to`` the unit vector from ``from`` to ``to`` on map pixels whose centre
  lies on the limb segment's rectangle: projection onto the limb in ``[0, L]`` and perpendicular
  distance ``<= paf_width`` (default 1.0 map pixel, a band 3 pixels wide on a 56x56 map; the
  OpenPose paper's hard band). Where limbs of several objects cover a pixel, their vectors are
  averaged (OpenPose's choice: the field stays unit-length where limbs agree and shrinks where
  they disagree, and no object dominates). Channel ``edges_paf[e][0]`` holds the x component and
  ``edges_paf[e][1]`` the y component. The map pixel nearest the limb's midpoint always gets
  the field too, so a limb shorter than a map pixel (a foreshortened forearm, an eye-ear link of a
  small person) still has one; zero-length limbs have no direction and are skipped.
* Ignore mask: regions of crowd annotations and of people with no labelled keypoints are not
  trained on (weight 0); everything else has weight 1.

Two implementations with the same results: ``render_targets`` (numpy, one sample, limited to each
keypoint's and limb's neighbourhood: for loader workers) and ``render_targets_torch`` (a padded
batch on any torch device: for rendering on the GPU per batch).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datasets.topology import Topology


@dataclass(frozen=True)
class TargetConfig:
    """How targets are rendered; stored in checkpoints so evaluation renders oracles the same way."""

    stride: int = 4
    sigma: float = 1.0  # heatmap Gaussian standard deviation, map pixels
    paf_width: float = 1.0  # half-width of the PAF band around a limb, map pixels
    truncate: float = 4.0  # heatmap is zero beyond truncate * sigma along either axis
    min_visibility: int = 1  # draw keypoints with COCO v >= this

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, **overrides: Any) -> TargetConfig:
        fields = {k: cfg[k] for k in cls.__dataclass_fields__ if cfg is not None and k in cfg}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)


def _as_keypoints(keypoints: Any, num_parts: int) -> np.ndarray:
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.size == 0:
        return np.zeros((0, num_parts, 3), np.float32)
    if kp.ndim == 2:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[1:] != (num_parts, 3):
        raise ValueError(f"keypoints must be (N, {num_parts}, 3) (x, y, v); got {kp.shape}")
    return kp


@functools.lru_cache(maxsize=32)
def _edge_arrays(topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """The topology's edges and PAF channels as int arrays, built once per topology (read-only)."""
    edges = np.asarray(topology.edges, dtype=np.int64).reshape(-1, 2)
    paf = np.asarray(topology.edges_paf, dtype=np.int64).reshape(-1, 2)
    edges.flags.writeable = paf.flags.writeable = False
    return edges, paf


def _present(kp: np.ndarray, map_hw: tuple[int, int], cfg: TargetConfig) -> np.ndarray:
    """(N, K) bool: keypoint labelled (v >= min_visibility) and inside the map's image.

    NaN coordinates compare False and infinities fall outside, so neither is present.
    """
    h, w = map_hw
    x, y = kp[..., 0], kp[..., 1]
    return (
        (kp[..., 2] >= cfg.min_visibility)
        & (x >= 0)
        & (y >= 0)
        & (x < w * cfg.stride)
        & (y < h * cfg.stride)
    )


def render_heatmaps(
    keypoints: Any, num_parts: int, map_size: tuple[int, int], cfg: TargetConfig = TargetConfig()
) -> np.ndarray:
    """(K, H, W) float32 part heatmaps for one sample's (N, K, 3) keypoints in input pixels."""
    kp = _as_keypoints(keypoints, num_parts)
    return _heatmaps(kp, _present(kp, map_size, cfg), num_parts, map_size, cfg)


def _heatmaps(kp, present, num_parts, map_size, cfg) -> np.ndarray:
    h, w = map_size
    heat = np.zeros(num_parts * h * w, np.float32)
    obj, part = np.nonzero(present)
    if obj.size == 0:
        return heat.reshape(num_parts, h, w)
    uv = kp[obj, part, :2] / np.float32(cfg.stride) - np.float32(0.5)  # (M, 2) map coordinates
    r = cfg.truncate * cfg.sigma
    n = int(math.floor(2 * r)) + 1  # window length holding every pixel within r of the centre
    pos = np.ceil(uv - r)[:, :, None] + np.arange(n, dtype=np.float32)  # (M, 2, n) columns, rows
    d = pos - uv[:, :, None]
    size = np.array([[w], [h]], np.float32)
    g = np.exp(d * d * np.float32(-0.5 / cfg.sigma**2)) * ((d <= r) & (pos >= 0) & (pos < size))
    val = g[:, 1, :, None] * g[:, 0, None, :]  # (M, n, n) float32, zero outside the map
    # clipped indices land only where the value is zero, which max leaves alone
    cell = np.minimum(np.maximum(pos, 0), size - 1).astype(np.int64)
    key = (part[:, None, None] * h + cell[:, 1, :, None]) * w + cell[:, 0, None, :]
    np.maximum.at(heat, key.ravel(), val.ravel())
    return heat.reshape(num_parts, h, w)


def render_pafs(
    keypoints: Any,
    topology: Topology,
    map_size: tuple[int, int],
    cfg: TargetConfig = TargetConfig(),
) -> np.ndarray:
    """(2E, H, W) float32 Part Affinity Fields for one sample's (N, K, 3) keypoints."""
    kp = _as_keypoints(keypoints, topology.num_parts)
    return _pafs(kp, _present(kp, map_size, cfg), topology, map_size, cfg)


def _pafs(kp, present, topology, map_size, cfg) -> np.ndarray:
    h, w = map_size
    out = np.zeros((topology.num_paf_channels, h, w), np.float32)
    if kp.shape[0] == 0 or topology.num_edges == 0:
        return out
    edges, edges_paf = _edge_arrays(topology)  # (E, 2) parts, (E, 2) PAF channels
    ok = present[:, edges[:, 0]] & present[:, edges[:, 1]]  # (N, E)
    obj, edge = np.nonzero(ok)
    if obj.size == 0:
        return out
    # (M, 2 ends, 2) limb ends in map coordinates, gathered at once
    ab = kp[obj[:, None], edges[edge], :2] / np.float32(cfg.stride) - np.float32(0.5)
    d = ab[:, 1] - ab[:, 0]
    length = np.sqrt((d * d).sum(1))
    nz = length > 1e-6
    if not nz.all():
        ab, d, length, edge = ab[nz], d[nz], length[nz], edge[nz]
        if edge.size == 0:
            return out
    a, b = ab[:, 0], ab[:, 1]
    unit = d / length[:, None]
    wd = np.float32(cfg.paf_width)
    # Candidate pixels: walk each limb along its major axis (the one it spans more of) and take,
    # at every major coordinate, the few minor coordinates the band can reach there. That is about
    # 3 pixels per unit of limb length instead of the limb's whole bounding box, and all limbs of
    # all people are expanded into one flat list, so the number of numpy calls does not grow with
    # the number of people. The exact rectangle test below decides. Work happens in each limb's
    # (major, minor) frame; pixels go back to (x, y) only for the final index.
    x_major = np.abs(d[:, 0]) >= np.abs(d[:, 1])
    swap = x_major[:, None]
    a_mn = np.where(swap, a, a[:, ::-1])  # (M, 2) limb start as (major, minor)
    u_mn = np.where(swap, unit, unit[:, ::-1])
    b_major = np.where(x_major, b[:, 0], b[:, 1])
    slope = u_mn[:, 1] / u_mn[:, 0]  # |slope| <= 1; u_major != 0 since the limb has length
    half = wd * np.sqrt(1 + slope * slope)  # the band's half-extent along the minor axis
    # reach at least one pixel either way, so the pixel nearest the midpoint is a candidate too
    reach_m, reach_n = max(wd, 1.0), np.maximum(half, 1.0)
    m_size = np.where(x_major, w, h)
    m0 = np.maximum(np.ceil(np.minimum(a_mn[:, 0], b_major) - reach_m), 0)
    m1 = np.minimum(np.floor(np.maximum(a_mn[:, 0], b_major) + reach_m), m_size - 1)
    mid = np.floor((a + b) * np.float32(0.5) + np.float32(0.5))  # (M, 2) pixel nearest the midpoint
    mid = np.where(swap, mid, mid[:, ::-1])  # as (major, minor)
    count = np.maximum(m1 - m0 + 1, 0).astype(np.int64)
    total = int(count.sum())
    if total == 0:
        return out
    # per-limb parameters gathered once for every candidate major coordinate
    params = np.stack(
        [a_mn[:, 0], a_mn[:, 1], u_mn[:, 0], u_mn[:, 1], slope, reach_n, length,
         np.where(x_major, h, w), x_major, m0 - np.cumsum(count) + count, mid[:, 0], mid[:, 1]],
        axis=1,
    )  # fmt: skip
    limb = np.repeat(np.arange(edge.size), count)
    p = params[limb]  # (T, 12)
    m = p[:, 9] + np.arange(total)  # major coordinate of each candidate row
    dm = (m - p[:, 0])[:, None]
    minor = np.ceil(p[:, 1] + dm[:, 0] * p[:, 4] - p[:, 5])[:, None] + np.arange(
        int(np.floor(2 * reach_n.max())) + 1
    )  # (T, n_minor) candidate minor coordinates
    dn = minor - p[:, 1:2]
    along = dm * p[:, 2:3] + dn * p[:, 3:4]
    across = np.abs(dm * p[:, 3:4] - dn * p[:, 2:3])
    inside = (
        ((along >= 0) & (along <= p[:, 6:7]) & (across <= wd))
        | ((m == p[:, 10])[:, None] & (minor == p[:, 11:12]))
    ) & ((minor >= 0) & (minor < p[:, 7:8]))
    rows, cols = np.nonzero(inside)
    mm, nn = m[rows].astype(np.int64), minor[rows, cols].astype(np.int64)
    li = limb[rows]
    pix = np.where(p[rows, 8] > 0, nn * w + mm, mm * w + nn)
    # average the unit vectors of the limbs (of different objects) covering each pixel
    hw_ = h * w
    key = edge[li] * hw_ + pix
    hits = np.bincount(key, minlength=topology.num_edges * hw_)
    # float32 throughout: np.add.at takes a slow path when value and array dtypes differ
    share = np.float32(1.0) / hits[key].astype(np.float32)
    # both components in one scatter: channels (P, 2) from edges_paf, values the shared vectors
    index = edges_paf[edge[li]] * hw_ + pix[:, None]
    np.add.at(out.reshape(-1), index.ravel(), (unit[li] * share[:, None]).ravel())
    return out


def render_targets(
    keypoints: Any,
    topology: Topology,
    map_size: tuple[int, int],
    cfg: TargetConfig = TargetConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (K, H, W) and PAFs (2E, H, W), float32, for one sample's (N, K, 3) keypoints."""
    kp = _as_keypoints(keypoints, topology.num_parts)
    present = _present(kp, map_size, cfg)
    return (
        _heatmaps(kp, present, topology.num_parts, map_size, cfg),
        _pafs(kp, present, topology, map_size, cfg),
    )


def render_targets_torch(
    keypoints, topology: Topology, map_size: tuple[int, int], cfg: TargetConfig = TargetConfig()
):
    """Batched targets on the keypoints' device.

    ``keypoints``: (B, N, K, 3) float tensor, objects padded with v = 0 (see ``pad_keypoints``).
    Returns heatmaps (B, K, H, W) and PAFs (B, 2E, H, W), float32, equal to ``render_targets``
    per sample. Dense over the map, one object slot at a time, so memory is O(B * E * H * W).
    """
    import torch

    if keypoints.dim() != 4 or keypoints.shape[2:] != (topology.num_parts, 3):
        raise ValueError(
            f"keypoints must be (B, N, {topology.num_parts}, 3); got {tuple(keypoints.shape)}"
        )
    h, w = map_size
    bsz, nobj, k, _ = keypoints.shape
    dev = keypoints.device
    kp = keypoints.float()
    x, y, vis = kp[..., 0], kp[..., 1], kp[..., 2]
    present = (
        (vis >= cfg.min_visibility)
        & torch.isfinite(x)
        & torch.isfinite(y)
        & (x >= 0)
        & (y >= 0)
        & (x < w * cfg.stride)
        & (y < h * cfg.stride)
    )  # (B, N, K)
    u = torch.where(present, x / cfg.stride - 0.5, torch.zeros_like(x))
    v = torch.where(present, y / cfg.stride - 0.5, torch.zeros_like(y))
    cols = torch.arange(w, device=dev, dtype=torch.float32)
    rows = torch.arange(h, device=dev, dtype=torch.float32)
    r = cfg.truncate * cfg.sigma
    inv = -0.5 / cfg.sigma**2

    heat = torch.zeros(bsz, k, h, w, device=dev)
    edges = torch.as_tensor(topology.edges, device=dev, dtype=torch.long).reshape(-1, 2)
    ne = edges.shape[0]
    sx = torch.zeros(bsz, ne, h, w, device=dev)
    sy = torch.zeros(bsz, ne, h, w, device=dev)
    cnt = torch.zeros(bsz, ne, h, w, device=dev)
    for n in range(nobj):
        dx = cols - u[:, n, :, None]  # (B, K, W)
        dy = rows - v[:, n, :, None]  # (B, K, H)
        p = present[:, n, :, None]
        gx = torch.exp(dx * dx * inv) * ((dx.abs() <= r) & p)
        gy = torch.exp(dy * dy * inv) * ((dy.abs() <= r) & p)
        heat = torch.maximum(heat, gy[..., :, None] * gx[..., None, :])
        if ne == 0:
            continue
        ax, ay = u[:, n, edges[:, 0]], v[:, n, edges[:, 0]]  # (B, E)
        bx, by = u[:, n, edges[:, 1]], v[:, n, edges[:, 1]]
        ddx, ddy = bx - ax, by - ay
        length = torch.sqrt(ddx * ddx + ddy * ddy)
        ok = present[:, n, edges[:, 0]] & present[:, n, edges[:, 1]] & (length > 1e-6)
        safe = torch.where(ok, length, torch.ones_like(length))
        ux, uy = ddx / safe, ddy / safe
        px = cols[None, None, None, :] - ax[..., None, None]  # (B, E, 1, W)
        py = rows[None, None, :, None] - ay[..., None, None]  # (B, E, H, 1)
        ux4, uy4 = ux[..., None, None], uy[..., None, None]
        along = px * ux4 + py * uy4
        across = (px * uy4 - py * ux4).abs()
        mid_x = torch.floor((ax + bx) * 0.5 + 0.5)[..., None, None]  # pixel nearest the midpoint
        mid_y = torch.floor((ay + by) * 0.5 + 0.5)[..., None, None]
        band = (along >= 0) & (along <= length[..., None, None]) & (across <= cfg.paf_width)
        at_mid = (cols[None, None, None, :] == mid_x) & (rows[None, None, :, None] == mid_y)
        inside = ((band | at_mid) & ok[..., None, None]).float()
        sx += inside * ux4
        sy += inside * uy4
        cnt += inside
    cnt = cnt.clamp_min(1)
    paf = torch.zeros(bsz, 2 * ne, h, w, device=dev)
    if ne:
        ch = torch.as_tensor(topology.edges_paf, device=dev, dtype=torch.long)
        paf[:, ch[:, 0]] = sx / cnt
        paf[:, ch[:, 1]] = sy / cnt
    return heat, paf


def pad_keypoints(samples: Sequence[Any], num_parts: int, min_objects: int = 1):
    """Stack per-sample (N_i, K, 3) keypoints into a (B, max N_i, K, 3) float tensor padded with v=0."""
    import torch

    arrays = [
        _as_keypoints(s if not hasattr(s, "numpy") else s.numpy(), num_parts) for s in samples
    ]
    n = max([min_objects] + [a.shape[0] for a in arrays])
    out = torch.zeros(len(arrays), n, num_parts, 3)
    for i, a in enumerate(arrays):
        if a.shape[0]:
            out[i, : a.shape[0]] = torch.from_numpy(a)
    return out


# --------------------------------------------------------------------------- ignore mask
def ignore_mask(annotations: Iterable[Mapping[str, Any]], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 image-level mask, 1 where training should ignore the pixels.

    Ignored: every crowd annotation's region, and the region of every non-crowd annotation with
    no labelled keypoint (a person nobody annotated must not be taught as background).
    Segmentations may be polygons, RLE or uncompressed RLE; an annotation without a
    segmentation falls back to its bbox.
    """
    from pycocotools import mask as mask_utils

    out = np.zeros((height, width), np.uint8)
    for ann in annotations:
        crowd = bool(ann.get("iscrowd", 0))
        unlabelled = int(ann.get("num_keypoints", _num_labelled(ann))) == 0
        if not (crowd or unlabelled):
            continue
        seg = ann.get("segmentation")
        if seg:
            if isinstance(seg, list):
                rles = mask_utils.frPyObjects(seg, height, width)
                m = mask_utils.decode(mask_utils.merge(rles))
            elif isinstance(seg.get("counts"), list):
                m = mask_utils.decode(mask_utils.frPyObjects(seg, height, width))
            else:
                m = mask_utils.decode(seg)
            out |= m.astype(np.uint8)
        elif ann.get("bbox"):
            x, y, bw, bh = ann["bbox"]
            x0, y0 = max(int(math.floor(x)), 0), max(int(math.floor(y)), 0)
            x1, y1 = min(int(math.ceil(x + bw)), width), min(int(math.ceil(y + bh)), height)
            out[y0:y1, x0:x1] = 1
    return out


def _num_labelled(ann: Mapping[str, Any]) -> int:
    kp = ann.get("keypoints") or []
    return sum(1 for v in kp[2::3] if v > 0)


def mask_to_weights(mask: np.ndarray, map_size: tuple[int, int]) -> np.ndarray:
    """Reduce an input-resolution ignore mask (1 = ignore) to (H, W) float32 loss weights.

    The weight of a map pixel is the fraction of its input pixels that are not ignored
    (area average), so a map pixel half covered by a crowd counts half.
    """
    import cv2

    h, w = map_size
    keep = 1.0 - mask.astype(np.float32)
    if keep.shape == (h, w):
        return keep
    return cv2.resize(keep, (w, h), interpolation=cv2.INTER_AREA)
