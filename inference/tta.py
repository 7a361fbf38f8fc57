"""Test-time augmentation in map space: mirror and scales, averaged, then one decode.

The network runs on the image and on transformed copies of it (a horizontal mirror, the content
scaled by ``s`` about the centre within the same input size: shrunk and padded with black, or
enlarged and cropped); each copy's maps are brought back into the plain image's map frame and
the maps are averaged where the copies saw the picture, then decoded once. It works on any
``run(batch) -> {"heatmap", "part_affinity_fields"}`` callable, so on every runtime (ONNX
Runtime, TensorRT, torch) and at the network's fixed input size.

Un-mirroring a copy's maps (``unflip_maps``): the W axis is reversed, the left/right parts of
``topology.flip_pairs`` swap heatmap channels, each edge takes the PAF of its mirror-image edge
(the edge between the mirrored parts; if the topology lists that edge the other way round, its
field points the other way and both components change sign), and the x component changes sign.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from datasets.errors import UsageError
from datasets.topology import Topology

Maps = dict[str, np.ndarray]


@dataclass(frozen=True)
class TTAConfig:
    """``flip``: also run the mirror image; ``scales``: content scales (1.0: the plain image)."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> TTAConfig:
        cfg = dict(cfg or {})
        raw = cfg.get("scales") or (1.0,)
        try:
            scales = tuple(float(s) for s in ([raw] if isinstance(raw, (int, float)) else raw))
        except (TypeError, ValueError):
            scales = ()
        if not scales or not all(0.1 <= s <= 4.0 for s in scales):
            raise UsageError(
                f"tta.scales must be numbers in [0.1, 4], e.g. [1.0,0.75,1.25]; got {raw!r}"
            )
        return cls(bool(cfg.get("flip", False)), scales)

    @property
    def active(self) -> bool:
        return self.flip or self.scales != (1.0,)


def paf_flip_table(topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """For each edge: the edge whose mirror image it is, and +1/-1 if that edge is listed in the
    same / opposite direction. Raises ValueError if a mirrored edge is not in the topology."""
    perm = topology.flip_permutation()
    index = {tuple(e): i for i, e in enumerate(topology.edges)}
    src, sign = [], []
    for a, b in topology.edges:
        fa, fb = perm[a], perm[b]
        if (fa, fb) in index:
            src.append(index[(fa, fb)])
            sign.append(1.0)
        elif (fb, fa) in index:
            src.append(index[(fb, fa)])
            sign.append(-1.0)
        else:
            raise ValueError(
                f"topology {topology.name!r}: the mirror image of edge {[a, b]} is not an edge; "
                "tta.flip needs a topology closed under its flip_pairs"
            )
    return np.array(src), np.array(sign)


def unflip_maps(heat: np.ndarray, paf: np.ndarray, topology: Topology):
    """(B, K, h, w) / (B, 2E, h, w) maps of mirrored images -> maps of the plain images."""
    perm = topology.flip_permutation()
    heat = heat[:, perm, :, ::-1]
    src, sign = paf_flip_table(topology)
    ch = np.asarray(topology.edges_paf)  # (E, 2): x, y channel of each edge
    out = np.empty_like(paf)
    for e in range(len(src)):
        sx, sy = ch[src[e]]
        out[:, ch[e, 0]] = -sign[e] * paf[:, sx, :, ::-1]  # mirrored: x changes sign
        out[:, ch[e, 1]] = sign[e] * paf[:, sy, :, ::-1]
    return np.ascontiguousarray(heat), out


def _view_matrix(hw: tuple[int, int], scale: float, mirror: bool) -> np.ndarray:
    """2x3 affine of continuous coordinates (pixel i covers [i, i + 1)): plain -> view."""
    h, w = hw
    m = np.array([[scale, 0.0, (1 - scale) * w / 2], [0.0, scale, (1 - scale) * h / 2]])
    if mirror:
        m[0] = [-m[0, 0], 0.0, w - m[0, 2]]
    return m


def _index_matrix(m: np.ndarray, stride: float = 1.0) -> np.ndarray:
    """The affine ``m`` (continuous input pixels) on pixel indices of a map at ``stride``."""
    a = m[:, :2]
    t = m[:, 2] / stride + (a @ np.array([0.5, 0.5])) - 0.5
    return np.concatenate([a, t[:, None]], 1)


def _warp(chw: np.ndarray, m_idx: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Sample ``chw`` (C, H, W) at ``m_idx`` (index affine, output -> input), zero outside."""
    out = np.empty((chw.shape[0], *hw), np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for c0 in range(0, chw.shape[0], 256):  # cv2 takes at most 512 channels
        part = np.ascontiguousarray(chw[c0 : c0 + 256].transpose(1, 2, 0))
        res = cv2.warpAffine(part, m_idx, (hw[1], hw[0]), flags=flags, borderValue=0)
        out[c0 : c0 + 256] = res.reshape(hw[0], hw[1], -1).transpose(2, 0, 1)
    return out


def tta_maps(
    run: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    batch: np.ndarray,
    topology: Topology,
    tta: TTAConfig,
) -> Maps:
    """Averaged ``heatmap`` (B, K, h, w) and ``part_affinity_fields`` (B, 2E, h, w) of
    ``batch`` (B, 3, H, W) over the plain image, its mirror and the scaled copies."""
    b, _, h, w = batch.shape
    views = [(s, m) for s in tta.scales for m in ((False, True) if tta.flip else (False,))]
    total: Maps | None = None
    weight = None
    for scale, mirror in views:
        m = _view_matrix((h, w), scale, mirror)
        if scale == 1.0 and not mirror:
            x = batch
        else:  # the view: view(T x) = plain(x), sampled at every view pixel
            x = np.stack([_warp(img, _index_matrix(_invert(m)), (h, w)) for img in batch])
        out = run(np.ascontiguousarray(x, np.float32))
        heat, paf = (
            np.asarray(out["heatmap"], np.float32),
            np.asarray(out["part_affinity_fields"], np.float32),
        )
        mh, mw = heat.shape[2:]
        stride = h / mh
        if mirror:  # channels and x components back first; the mirror itself is undone below
            heat, paf = unflip_maps(heat, paf, topology)
            m = _view_matrix((h, w), scale, False)
        valid = np.ones((1, mh, mw), np.float32)
        if scale != 1.0:  # plain map pixel u samples the view map at T u
            idx = _index_matrix(m, stride)
            heat = np.stack([_warp(x_, idx, (mh, mw)) for x_ in heat])
            paf = np.stack([_warp(x_, idx, (mh, mw)) for x_ in paf])
            valid = _warp(valid, idx, (mh, mw))
        if total is None:
            total, weight = {"heatmap": heat * valid, "part_affinity_fields": paf * valid}, valid
        else:
            total["heatmap"] += heat * valid
            total["part_affinity_fields"] += paf * valid
            weight = weight + valid
    w_ = np.maximum(weight, 1e-6)[None]
    return {k: v / w_ for k, v in total.items()}


def _invert(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, (-a @ m[:, 2])[:, None]], 1)


def maxpool(heat: np.ndarray, kernel: int) -> np.ndarray:
    """(B, K, h, w) max-pool, stride 1, -inf padding (the graph's maxpool_heatmap)."""
    r = kernel // 2
    b, k, h, w = heat.shape
    p = np.full((b, k, h + 2 * r, w + 2 * r), -np.inf, np.float32)
    p[:, :, r : r + h, r : r + w] = heat
    out = np.full(heat.shape, -np.inf, np.float32)
    for dr in range(kernel):
        for dc in range(kernel):
            np.maximum(out, p[:, :, dr : dr + h, dc : dc + w], out=out)
    return out


class TTARuntime:
    """A runtime whose calls return the TTA-averaged maps (and their own max-pool)."""

    def __init__(self, runtime: Any, tta: TTAConfig) -> None:
        self.runtime, self.tta = runtime, tta
        self.info = runtime.info
        self.backend = f"{runtime.backend}+tta"
        if tta.flip:
            check_flip(self.info.topology)

    def preprocess(self, image: np.ndarray):
        return self.runtime.preprocess(image)

    def make_decoder(self, **overrides: Any):
        return self.runtime.make_decoder(**overrides)

    def __call__(self, batch: np.ndarray) -> Maps:
        maps = tta_maps(self.runtime, np.asarray(batch, np.float32), self.info.topology, self.tta)
        maps["maxpool_heatmap"] = maxpool(maps["heatmap"], self.info.maxpool_kernel)
        return maps

    def __getattr__(self, name: str) -> Any:  # everything else: the wrapped runtime's
        return getattr(self.runtime, name)


def check_flip(topology: Topology) -> None:
    """``tta.flip`` needs to know which parts a mirror swaps: a UsageError (one line) for a
    topology without left/right pairs (``hflip`` false: training did not flip either) or one
    whose mirrored edges are not edges."""
    if not topology.hflip:
        raise UsageError(
            f"tta.flip: topology {topology.name!r} has no left/right part pairs (flip_pairs), "
            "so a mirror image cannot be mapped back; run without tta.flip (tta.scales works)"
        )
    try:
        paf_flip_table(topology)
    except ValueError as e:
        raise UsageError(f"{e}; run without tta.flip (tta.scales works)") from e


def with_tta(runtime: Any, cfg: Mapping[str, Any] | None) -> Any:
    """``runtime`` itself, or wrapped in ``TTARuntime`` when ``cfg`` (``tta:``) asks for it."""
    tta = TTAConfig.from_config(cfg)
    return TTARuntime(runtime, tta) if tta.active else runtime
