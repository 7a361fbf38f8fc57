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

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from datasets.errors import UsageError
from datasets.topology import Topology


@dataclass(frozen=True)
class TargetConfig:
    """How targets are rendered; stored in checkpoints so evaluation renders oracles the same way."""

    stride: int = 4
    sigma: float = 1.0  # heatmap Gaussian standard deviation, map pixels
    paf_width: float = 1.0  # half-width of the PAF band around a limb, map pixels
    truncate: float = 4.0  # heatmap is zero beyond truncate * sigma along either axis
    min_visibility: int = 1  # draw keypoints with COCO v >= this

    def __post_init__(self) -> None:
        # a config's values, checked and typed once: one line naming the targets.* override
        for name, kind, ok, what in (
            ("stride", int, lambda v: v >= 1, "a whole number >= 1"),
            ("sigma", float, lambda v: v > 0, "a number > 0 (map pixels)"),
            ("paf_width", float, lambda v: v > 0, "a number > 0 (map pixels)"),
            ("truncate", float, lambda v: v > 0, "a number > 0"),
            ("min_visibility", int, lambda v: v in (1, 2), "1 or 2 (COCO's v)"),
        ):
            value = getattr(self, name)
            try:
                typed = kind(value)
                good = not isinstance(value, bool) and ok(typed) and float(value) == typed
            except (TypeError, ValueError, OverflowError):  # (int of inf overflows)
                good = False
            if not good:
                raise UsageError(f"targets.{name} must be {what}, got {value!r}")
            object.__setattr__(self, name, typed)

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
    """Per topology (read-only): the edges (E, 2) and, transposed, their PAF channels (2, E)."""
    edges = np.asarray(topology.edges, dtype=np.int64).reshape(-1, 2)
    channels = np.asarray(topology.edges_paf, dtype=np.int64).reshape(-1, 2).T.copy()
    edges.flags.writeable = channels.flags.writeable = False
    return edges, channels


@functools.lru_cache(maxsize=64)
def _map_constants(map_size: tuple[int, int], stride: int) -> tuple[np.ndarray, ...]:
    """Per map size (read-only): the image limits ``[W*s, H*s]`` a present keypoint stays below
    and the last map pixel ``[W-1, H-1]``, both (2, 1, 1) to broadcast over (x|y, ...); and the
    (4, 1) column ``[W, H, 1, W]`` of the PAF limb table (map extent along x and y, step of the
    flat pixel index along x and y)."""
    h, w = map_size
    limits = np.array([w * stride, h * stride], np.float32).reshape(2, 1, 1)
    last = np.array([w - 1, h - 1], np.float32).reshape(2, 1, 1)
    size_steps = np.array([w, h, 1, w], np.float32).reshape(4, 1)
    for a in (limits, last, size_steps):
        a.flags.writeable = False
    return limits, last, size_steps


def _coords(kp: np.ndarray, map_size: tuple[int, int], cfg: TargetConfig):
    """(2, N, K) float32 map index coordinates ``x / s - 0.5`` (x row, then y row; pixel centres
    are integers) and the (N, K) bool mask of present keypoints.

    Present: labelled (v >= min_visibility) and inside the map's image. NaN coordinates compare
    False and infinities fall outside, so neither is present. Coordinates come first (x|y, object,
    part) so that every elementwise step runs over long contiguous rows.
    """
    limits = _map_constants(map_size, cfg.stride)[0]
    xyv = kp.transpose(2, 0, 1).copy()  # (3, N, K)
    xy = xyv[:2]
    inside = (xy >= 0) & (xy < limits)
    present = inside[0] & inside[1] & (xyv[2] >= cfg.min_visibility)
    return xy / np.float32(cfg.stride) - np.float32(0.5), present


def render_heatmaps(
    keypoints: Any, num_parts: int, map_size: tuple[int, int], cfg: TargetConfig = TargetConfig()
) -> np.ndarray:
    """(K, H, W) float32 part heatmaps for one sample's (N, K, 3) keypoints in input pixels."""
    kp = _as_keypoints(keypoints, num_parts)
    return _heatmaps(*_coords(kp, map_size, cfg), num_parts, map_size, cfg)


def _heatmaps(uv, present, num_parts, map_size, cfg) -> np.ndarray:
    """Heatmaps from (2, N, K) map coordinates and the (N, K) present mask."""
    h, w = map_size
    heat = np.zeros(num_parts * h * w, np.float32)
    # np.take and ndarray.nonzero: fancy indexing and the np.flatnonzero wrapper cost several
    # times more on arrays this small
    idx = present.ravel().nonzero()[0]  # object * K + part
    if idx.size == 0:
        return heat.reshape(num_parts, h, w)
    part = idx % num_parts
    uv = uv.reshape(2, -1).take(idx, axis=1)  # (2, M) map coordinates of the present keypoints
    r = cfg.truncate * cfg.sigma
    n = int(math.floor(2 * r)) + 1  # window length holding every pixel within r of the centre
    # (2, n, M) window columns (x) and rows (y) of every keypoint
    pos = np.ceil(uv - r)[:, None] + np.arange(n, dtype=np.float32)[:, None]
    d = pos - uv[:, None]
    # the window clipped to the map equals the window exactly where it is on the map; clipped
    # indices elsewhere land where the value is zero, which max leaves alone
    cell = np.minimum(np.maximum(pos, 0), _map_constants(map_size, cfg.stride)[1])
    g = np.exp(d * d * np.float32(-0.5 / cfg.sigma**2)) * ((d <= r) & (cell == pos))
    val = g[1, :, None] * g[0]  # (n rows, n columns, M) float32, zero outside the map
    cell = cell.astype(np.int64)
    row = part * h + cell[1]  # (n, M) rows of the stacked (K*H, W) maps
    key = (row * w)[:, None] + cell[0]
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
    return _pafs(*_coords(kp, map_size, cfg), topology, map_size, cfg)


# Rows of the per-limb table in _pafs. The first twelve are (x, y) pairs, swapped into (major,
# minor) for limbs that run mostly vertically (_SWAP_XY); a_m..step_n name them after the swap.
_A_M, _A_N, _B_M, _B_N, _U_M, _U_N, _MID_M, _MID_N, _SIZE_M, _SIZE_N, _STEP_M, _STEP_N = range(12)
_UX, _UY, _LENGTH, _SLOPE, _REACH_N = range(12, 17)  # float32 table only
_SWAP_XY = np.array([1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13, 14, 15, 16])
# float64 table: rows 0.._UY as above, the flat output index bases of the x and y channels, the
# float32 table's _LENGTH.._REACH_N, and the row-number offset of the major coordinate
_BASE_X, _BASE_Y, _LENGTH64, _SLOPE64, _REACH_N64, _M_START = range(14, 20)


def _pafs(uv, present, topology, map_size, cfg) -> np.ndarray:
    """PAFs from (2, N, K) map coordinates and the (N, K) present mask.

    The steps: the limbs to draw (both ends present, non-zero length); a per-limb table in each
    limb's (major, minor) frame; the candidate pixels along each limb; the exact band test; and
    the average of the unit vectors of the limbs covering each pixel.
    """
    h, w = map_size
    ne = topology.num_edges
    out = np.zeros(2 * ne * h * w, np.float32)
    if present.size == 0 or ne == 0:
        return out.reshape(2 * ne, h, w)
    edges, channels = _edge_arrays(topology)  # (E, 2) parts, (2, E) PAF channels
    limbs = _drawn_limbs(uv, present, edges)
    if limbs is None:
        return out.reshape(2 * ne, h, w)
    a, b, d, length, limb = limbs
    frame = _limb_frame(a, b, d, length, map_size, cfg)
    rows, m = _candidate_rows(frame, limb, channels, map_size, cfg)
    n_minor = math.floor(2 * float(np.maximum.reduce(frame[_REACH_N]))) + 1
    inside, pix = _band_pixels(rows, m, n_minor, cfg)
    _average_into(out, rows, inside, pix, n_minor)
    return out.reshape(2 * ne, h, w)


def _drawn_limbs(uv, present, edges):
    """The limbs to draw: ends ``a``, ``b`` and ``d = b - a`` (each (x|y, M)), ``length`` (M) and
    ``limb`` (M, object * E + edge, object-major), or None when there are none.

    A limb needs both ends present; zero-length limbs have no direction and are skipped.
    """
    # np.take and ndarray.nonzero: fancy indexing and the np.flatnonzero wrapper cost several
    # times more on arrays this small
    ends = present.take(edges, axis=1)  # (N, E, 2)
    limb = (ends[..., 0] & ends[..., 1]).ravel().nonzero()[0]  # object * E + edge, object-major
    if limb.size == 0:
        return None
    # (x|y, M, 2 ends) limb ends in map coordinates
    ab = uv.take(edges, axis=2).reshape(2, -1, 2).take(limb, axis=1)
    a, b = ab[..., 0], ab[..., 1]
    d = b - a
    sq = d * d
    length = np.sqrt(sq[0] + sq[1])
    if np.minimum.reduce(length) <= 1e-6:  # zero-length limbs have no direction: skipped
        nz = length > 1e-6
        a, b, d, length, limb = a[:, nz], b[:, nz], d[:, nz], length[nz], limb[nz]
        if limb.size == 0:
            return None
    return a, b, d, length, limb


def _limb_frame(a, b, d, length, map_size, cfg) -> np.ndarray:
    """The (17, M) float32 per-limb table (rows _A_M.._REACH_N) in each limb's (major, minor) frame.

    Candidate pixels are found by walking each limb along its major axis (the one it spans more
    of), so work happens in that frame: the per-limb values sit in one table of (x, y) pairs,
    swapped for limbs that run mostly vertically, together with the flat-index steps along x and
    y, so pixels never go back to (x, y). Rows of the tables are quantities and columns limbs
    (later candidate rows), so each step is one long loop.
    """
    table = np.empty((17, length.size), np.float32)
    table[_A_M : _A_N + 1] = a
    table[_B_M : _B_N + 1] = b
    np.divide(d, length, out=table[_U_M : _U_N + 1])  # unit vector
    # the pixel nearest the midpoint
    np.floor((a + b) * np.float32(0.5) + np.float32(0.5), out=table[_MID_M : _MID_N + 1])
    table[_SIZE_M:_UX] = _map_constants(map_size, cfg.stride)[2]
    table[_UX : _UY + 1] = table[_U_M : _U_N + 1]  # the unit vector again, never swapped
    table[_LENGTH] = length
    ad = np.abs(d)
    frame = np.where(ad[0] >= ad[1], table, table.take(_SWAP_XY, axis=0))  # x_major: no swap
    u_m, u_n = frame[_U_M], frame[_U_N]
    wd = np.float32(cfg.paf_width)
    slope = np.divide(u_n, u_m, out=frame[_SLOPE])  # |slope| <= 1; u_major != 0 (length > 0)
    # the band's half-extent along the minor axis; reach at least one pixel either way, so the
    # pixel nearest the midpoint is a candidate too
    np.maximum(wd * np.sqrt(1 + slope * slope), 1.0, out=frame[_REACH_N])
    return frame


def _candidate_rows(frame, limb, channels, map_size, cfg):
    """(20, T) float64 rows, one per (limb, major coordinate) candidate, and their (T) major
    coordinates.

    At every major coordinate a limb's band can reach, the few minor coordinates it reaches
    there are the candidates (_band_pixels): about 3 pixels per unit of limb length instead of
    the limb's whole bounding box. All limbs of all people are expanded into one flat list of
    rows, so the number of numpy calls does not grow with the number of people.
    """
    h, w = map_size
    ne = channels.shape[1]
    a_m, b_m, size_m = frame[_A_M], frame[_B_M], frame[_SIZE_M]
    reach_m = max(np.float32(cfg.paf_width), 1.0)
    m0 = np.maximum(np.ceil(np.minimum(a_m, b_m) - reach_m), 0)
    m1 = np.minimum(np.floor(np.maximum(a_m, b_m) + reach_m), size_m - 1)
    # never empty (m0 <= m1): a present end lies in [-0.5, size - 0.5] and both reaches are >= 1
    count = (m1 - m0 + 1).astype(np.int64)
    end = np.add.accumulate(count)
    total = int(end[-1])
    limb64 = np.empty((20, limb.size))
    limb64[:_BASE_X] = frame[:_BASE_X]
    np.multiply(channels.take(limb % ne, axis=1), h * w, out=limb64[_BASE_X : _BASE_Y + 1])
    limb64[_LENGTH64:_M_START] = frame[_LENGTH:]
    np.subtract(m0, end - count, out=limb64[_M_START])  # so m_start + row number = m0
    rows = np.repeat(limb64, count, axis=1)  # (20, T) the limb's values on each candidate row
    m = rows[_M_START] + np.arange(total, dtype=np.float64)  # major coordinate of each row
    return rows, m


def _band_pixels(rows, m, n_minor, cfg):
    """The exact test of the (T, n_minor) candidates: ``inside`` (bool) where the pixel centre lies
    on the limb's rectangle (or is the pixel nearest its midpoint) and on the map, and ``pix``
    its flat pixel index within a map (float64, exact)."""
    wd = np.float32(cfg.paf_width)
    a_m, a_n = rows[_A_M], rows[_A_N]
    u_m, u_n = rows[_U_M], rows[_U_N]
    dm = m - a_m
    minor = (
        np.ceil(a_n + dm * rows[_SLOPE64] - rows[_REACH_N64])
        + np.arange(n_minor, dtype=np.float64)[:, None]
    )  # (n_minor, T) candidate minor coordinates
    dn = minor - a_n
    along = dm * u_m + dn * u_n
    across = np.abs(dm * u_n - dn * u_m)
    # The last step of each grid writes into a transposed (T, n_minor) buffer, so the covered
    # pixels come out ordered by candidate row (limb, then major coordinate), then minor
    # coordinate, without a copy: limbs overlapping a pixel are summed in object order.
    inside = np.empty((m.size, n_minor), bool)
    np.logical_and(
        ((along >= 0) & (along <= rows[_LENGTH64]) & (across <= wd))
        | ((m == rows[_MID_M]) & (minor == rows[_MID_N])),
        (minor >= 0) & (minor < rows[_SIZE_N]),
        out=inside.T,
    )
    pix = np.empty((m.size, n_minor))  # flat pixel index, exact in float64
    np.add(m * rows[_STEP_M], minor * rows[_STEP_N], out=pix.T)
    return inside, pix


def _average_into(out, rows, inside, pix, n_minor) -> None:
    """Write into ``out`` (flat, zero) the average of the unit vectors of the limbs (of different
    objects) covering each pixel."""
    flat = inside.ravel().nonzero()[0]
    sel = rows[_UX : _BASE_Y + 1].take(flat // n_minor, axis=1)  # (4, P) unit, index bases
    index = (sel[2:] + pix.ravel().take(flat)).astype(np.int64)  # (2, P) output x, y indices
    # Count the limbs first in the x channel itself (its index is unique per edge and pixel),
    # then clear it.
    np.add.at(out, index[0], np.float32(1.0))
    share = np.float32(1.0) / out.take(index[0])
    out[index[0]] = 0
    # both components in one scatter, float32 throughout: np.add.at takes a slow path when
    # value and array dtypes differ
    np.add.at(out, index.ravel(), (sel[:2].astype(np.float32) * share).ravel())


def render_targets(
    keypoints: Any,
    topology: Topology,
    map_size: tuple[int, int],
    cfg: TargetConfig = TargetConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (K, H, W) and PAFs (2E, H, W), float32, for one sample's (N, K, 3) keypoints."""
    kp = _as_keypoints(keypoints, topology.num_parts)
    uv, present = _coords(kp, map_size, cfg)
    return (
        _heatmaps(uv, present, topology.num_parts, map_size, cfg),
        _pafs(uv, present, topology, map_size, cfg),
    )


def render_targets_torch(
    keypoints, topology: Topology, map_size: tuple[int, int], cfg: TargetConfig = TargetConfig()
):
    """Batched targets on the keypoints' device.

    ``keypoints``: (B, N, K, 3) float tensor, objects padded with v = 0 (see ``pad_keypoints``).
    Returns heatmaps (B, K, H, W) and PAFs (B, 2E, H, W), float32, equal to ``render_targets``
    per sample. Dense over the map, one object slot at a time, so memory is O(B * E * H * W).
    """
    import torch  # the torch renderer only: the numpy path (loaders, eval's oracle) stays torch-free

    u, v, present = _torch_coords(keypoints, topology, map_size, cfg)
    h, w = map_size
    bsz, nobj, k, _ = keypoints.shape
    dev = keypoints.device
    cols = torch.arange(w, device=dev, dtype=torch.float32)
    rows = torch.arange(h, device=dev, dtype=torch.float32)

    heat = torch.zeros(bsz, k, h, w, device=dev)
    edges = torch.as_tensor(topology.edges, device=dev, dtype=torch.long).reshape(-1, 2)
    ne = edges.shape[0]
    sx = torch.zeros(bsz, ne, h, w, device=dev)
    sy = torch.zeros(bsz, ne, h, w, device=dev)
    cnt = torch.zeros(bsz, ne, h, w, device=dev)
    for n in range(nobj):
        un, vn, pn = u[:, n], v[:, n], present[:, n]
        heat = torch.maximum(heat, _torch_object_heatmaps(un, vn, pn, cols, rows, cfg))
        if ne == 0:
            continue
        inside, ux4, uy4 = _torch_object_bands(un, vn, pn, edges, cols, rows, cfg)
        sx += inside * ux4
        sy += inside * uy4
        cnt += inside
    # average over the objects covering each pixel
    cnt = cnt.clamp_min(1)
    paf = torch.zeros(bsz, 2 * ne, h, w, device=dev)
    if ne:
        ch = torch.as_tensor(topology.edges_paf, device=dev, dtype=torch.long)
        paf[:, ch[:, 0]] = sx / cnt
        paf[:, ch[:, 1]] = sy / cnt
    return heat, paf


def _torch_coords(keypoints, topology, map_size, cfg):
    """(B, N, K) map coordinates u, v (0 where absent) and the present mask, as ``_coords``."""
    import torch  # see render_targets_torch

    if keypoints.dim() != 4 or keypoints.shape[2:] != (topology.num_parts, 3):
        raise ValueError(
            f"keypoints must be (B, N, {topology.num_parts}, 3); got {tuple(keypoints.shape)}"
        )
    h, w = map_size
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
    return u, v, present


def _torch_object_heatmaps(u, v, present, cols, rows, cfg):
    """(B, K, H, W) heatmaps of one object slot from its (B, K) coordinates and present mask."""
    import torch  # see render_targets_torch

    r = cfg.truncate * cfg.sigma
    inv = -0.5 / cfg.sigma**2
    dx = cols - u[..., None]  # (B, K, W)
    dy = rows - v[..., None]  # (B, K, H)
    p = present[..., None]
    gx = torch.exp(dx * dx * inv) * ((dx.abs() <= r) & p)
    gy = torch.exp(dy * dy * inv) * ((dy.abs() <= r) & p)
    return gy[..., :, None] * gx[..., None, :]


def _torch_object_bands(u, v, present, edges, cols, rows, cfg):
    """One object slot's limbs: the (B, E, H, W) float coverage (1 on the limb's band or the pixel
    nearest its midpoint, for limbs with both ends present and non-zero length) and the unit
    vector's (B, E, 1, 1) x and y components."""
    import torch  # see render_targets_torch

    ax, ay = u[:, edges[:, 0]], v[:, edges[:, 0]]  # (B, E)
    bx, by = u[:, edges[:, 1]], v[:, edges[:, 1]]
    ddx, ddy = bx - ax, by - ay
    length = torch.sqrt(ddx * ddx + ddy * ddy)
    ok = present[:, edges[:, 0]] & present[:, edges[:, 1]] & (length > 1e-6)
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
    return inside, ux4, uy4


def pad_keypoints(samples: Sequence[Any], num_parts: int, min_objects: int = 1):
    """Stack per-sample (N_i, K, 3) keypoints into a (B, max N_i, K, 3) float tensor padded with v=0."""
    import torch  # see render_targets_torch: the numpy path stays torch-free

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
    h, w = map_size
    keep = 1.0 - mask.astype(np.float32)
    if keep.shape == (h, w):
        return keep
    return cv2.resize(keep, (w, h), interpolation=cv2.INTER_AREA)
