"""What both decoders share: parameters, input checks, the output types and the public calls.

A decoder turns one image's part heatmap (K, H, W) and Part Affinity Fields (2E, H, W) into
skeletons, following the steps and parameter names of the Isaac ``OpenPoseDecoder`` (see
``inference.decoder.reference`` for the steps). ``DecoderBase`` checks and prepares the inputs
(layouts, batches, dtypes) and builds ``Skeleton`` / ``DecodeTrace`` objects from a ``Decoded``
result; a subclass supplies ``_decode(heat, paf, maxpool) -> Decoded`` on (K, H, W) float32 views.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from datasets.topology import Topology

DEFAULT_PARAMS: dict[str, Any] = {
    "threshold_heatmap": 0.2,
    "threshold_edge_score": 0.05,
    "threshold_edge_sampling_counter": 4,
    "edge_sampling_steps": 10,
    "threshold_part_counter": 0,
    "threshold_object_score": 0.02,
    "threshold_split_score": 2.0,
    "threshold_join_fragments": 2.0,
    "refine_parts_coordinates": True,
    "refine_method": "quadratic",
    "output_scale": None,
    "maxpool_kernel": 3,
    "max_peaks_per_part": 32,
    "max_objects": 20,
}
REFINE_METHODS = ("quadratic", "centroid")
LAYOUTS = ("chw", "hwc")


@dataclass
class Skeleton:
    """One detected object.

    ``keypoints``: (K, 3) float64 rows (x, y, score) in output pixels; a missing part has
    x = y = NaN and score 0. ``score``: object score. ``num_parts``: parts present.
    ``peaks``: (K,) index of each part's peak in the decoder's peak list (-1 if missing).
    """

    keypoints: np.ndarray
    score: float
    num_parts: int
    peaks: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: keypoints as [x, y, score] lists, ``None`` for missing parts."""
        kps = [
            None if not np.isfinite(x) else [float(x), float(y), float(s)]
            for x, y, s in self.keypoints
        ]
        return {"keypoints": kps, "score": float(self.score), "num_parts": int(self.num_parts)}


@dataclass
class Decoded:
    """Raw result of one decode in map units (what a decoder core returns).

    Peaks (P,): ``part``, ``row``, ``col`` (int64), ``score`` and ``xy`` (P, 2) refined map
    coordinates (u, v), grouped by part, raster order within a part. Candidates (T,): ``edge``,
    ``a``, ``b`` (peak indices), ``score``, ``count``, ``ok``; ``accepted`` (candidate indices in
    matching order). Objects (O,): ``objects`` (O, K) peak per part (-1: missing) and
    ``object_score``, filtered, sorted by descending score and capped at ``max_objects``.
    """

    part: np.ndarray
    row: np.ndarray
    col: np.ndarray
    score: np.ndarray
    xy: np.ndarray
    edge: np.ndarray
    a: np.ndarray
    b: np.ndarray
    cand_score: np.ndarray
    count: np.ndarray
    ok: np.ndarray
    accepted: np.ndarray
    objects: np.ndarray
    object_score: np.ndarray


@dataclass
class DecodeTrace:
    """Intermediate results of one decode, for visualisation and tests (map pixel units).

    peaks: (P,) arrays ``peak_part``, ``peak_row``, ``peak_col``, ``peak_score`` and refined
    ``peak_xy`` (P, 2) map coordinates (u, v). Edge candidates: (T,) ``cand_edge``, ``cand_a``,
    ``cand_b`` (peak indices), ``cand_score`` (mean sample score), ``cand_count`` (samples above
    threshold), ``cand_ok`` (bool, passed the thresholds); ``accepted``: indices into the
    candidates that joined objects.
    """

    peak_part: np.ndarray
    peak_row: np.ndarray
    peak_col: np.ndarray
    peak_score: np.ndarray
    peak_xy: np.ndarray
    cand_edge: np.ndarray
    cand_a: np.ndarray
    cand_b: np.ndarray
    cand_score: np.ndarray
    cand_count: np.ndarray
    cand_ok: np.ndarray
    accepted: np.ndarray
    skeletons: list[Skeleton]


class DecoderBase:
    """Parameters, input preparation and output objects; subclasses implement ``_decode``."""

    def __init__(self, topology: Topology, **params: Any) -> None:
        unknown = sorted(set(params) - set(DEFAULT_PARAMS))
        if unknown:
            raise ValueError(
                f"unknown OpenPoseDecoder parameter(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}"
            )
        p = {**DEFAULT_PARAMS, **params}
        self.topology = topology
        self.threshold_heatmap = _number(p, "threshold_heatmap", float)
        self.threshold_edge_score = _number(p, "threshold_edge_score", float)
        self.threshold_edge_sampling_counter = _number(p, "threshold_edge_sampling_counter", int)
        self.edge_sampling_steps = _number(p, "edge_sampling_steps", int)
        self.threshold_part_counter = _number(p, "threshold_part_counter", int)
        self.threshold_object_score = _number(p, "threshold_object_score", float)
        self.threshold_split_score = _number(p, "threshold_split_score", float)
        self.threshold_join_fragments = _number(p, "threshold_join_fragments", float)
        self.refine_parts_coordinates = bool(p["refine_parts_coordinates"])
        self.refine_method = str(p["refine_method"])
        self.output_scale = as_scale(p["output_scale"])
        self.maxpool_kernel = _number(p, "maxpool_kernel", int)
        self.max_peaks_per_part = _number(p, "max_peaks_per_part", int)
        self.max_objects = _number(p, "max_objects", int)
        self._check()
        self.edges = np.asarray(topology.edges, np.int64).reshape(-1, 2)
        self.edges_paf = np.asarray(topology.edges_paf, np.int64).reshape(-1, 2)

    def _check(self) -> None:
        if self.edge_sampling_steps < 2:
            raise ValueError(f"edge_sampling_steps must be >= 2, got {self.edge_sampling_steps}")
        if self.maxpool_kernel < 1 or self.maxpool_kernel % 2 == 0:
            raise ValueError(
                f"maxpool_kernel must be a positive odd number, got {self.maxpool_kernel}"
            )
        if self.max_peaks_per_part < 1:
            raise ValueError(f"max_peaks_per_part must be >= 1, got {self.max_peaks_per_part}")
        if self.max_objects < 0:
            raise ValueError(f"max_objects must be >= 0 (0: unlimited), got {self.max_objects}")
        if self.refine_method not in REFINE_METHODS:
            raise ValueError(
                f"refine_method must be one of {REFINE_METHODS}, got {self.refine_method!r}"
            )

    @classmethod
    def from_config(cls, decoder_cfg: Mapping[str, Any] | None, topology: Topology):
        """Build from a ``conf/decoder`` node (plain dict or DictConfig); unknown keys are errors
        (``_target_`` is ``build_decoder``'s and ignored here)."""
        cfg = {k: v for k, v in (decoder_cfg or {}).items() if k != "_target_"}
        if cfg.get("output_scale") is not None:
            cfg["output_scale"] = list(cfg["output_scale"])
        return cls(topology, **cfg)

    @property
    def params(self) -> dict[str, Any]:
        """The parameters as plain data (for configs and model metadata)."""
        out = {k: getattr(self, k) for k in DEFAULT_PARAMS}
        if self.output_scale is not None:
            out["output_scale"] = list(self.output_scale)
        return out

    # ------------------------------------------------------------------ public calls
    def __call__(
        self,
        heatmap: Any,
        paf: Any,
        maxpool_heatmap: Any = None,
        layout: str = "chw",
        output_scale: Any = None,
    ) -> list[Skeleton] | list[list[Skeleton]]:
        """Decode one image (3-D maps) into skeletons, or a batch (4-D) into one list per image.

        ``heatmap`` (K, H, W) / ``paf`` (2E, H, W) for ``layout="chw"``; (H, W, K) / (H, W, 2E)
        for ``"hwc"``; ``maxpool_heatmap`` like ``heatmap`` or None. ``output_scale`` [rows, cols]
        overrides the configured one for this call.
        """
        heatmap = np.asarray(heatmap)
        if heatmap.ndim == 4:
            paf = np.asarray(paf)
            if paf.ndim != 4 or paf.shape[0] != heatmap.shape[0]:
                raise ValueError(
                    f"batched heatmap {heatmap.shape} needs a batched paf with the same batch size; "
                    f"got paf {np.shape(paf)}"
                )
            mp = None if maxpool_heatmap is None else np.asarray(maxpool_heatmap)
            return [
                self.decode(heatmap[i], paf[i], None if mp is None else mp[i], layout, output_scale)
                for i in range(heatmap.shape[0])
            ]
        return self.decode(heatmap, paf, maxpool_heatmap, layout, output_scale)

    def decode(
        self, heatmap, paf, maxpool_heatmap=None, layout: str = "chw", output_scale=None
    ) -> list[Skeleton]:
        """Decode one image's maps; skeletons sorted by descending score."""
        heat, pf, mp = self.prepare(heatmap, paf, maxpool_heatmap, layout)
        d = self._decode(heat, pf, mp)
        return self.skeletons(d, heat.shape[1:], output_scale)

    def warm_up(self) -> None:
        """Decode empty maps once: the fast decoder loads its compiled code on the first call
        (a few hundred ms from the disk cache), so a timed loop that calls this first measures
        decoding, not loading."""
        k, e = self.topology.num_parts, self.topology.num_edges
        self.decode(np.zeros((k, 4, 4), np.float32), np.zeros((2 * e, 4, 4), np.float32))

    def trace(
        self, heatmap, paf, maxpool_heatmap=None, layout: str = "chw", output_scale=None
    ) -> DecodeTrace:
        """Decode one image and keep every intermediate step (see ``DecodeTrace``)."""
        heat, pf, mp = self.prepare(heatmap, paf, maxpool_heatmap, layout)
        d = self._decode(heat, pf, mp)
        sk = self.skeletons(d, heat.shape[1:], output_scale)
        return DecodeTrace(
            d.part, d.row, d.col, d.score, d.xy, d.edge, d.a, d.b, d.cand_score, d.count,
            d.ok, d.accepted, sk,
        )  # fmt: skip

    def _decode(self, heat: np.ndarray, paf: np.ndarray, maxpool: np.ndarray | None) -> Decoded:
        raise NotImplementedError

    # ------------------------------------------------------------------ inputs and outputs
    def prepare(self, heatmap, paf, maxpool_heatmap, layout: str):
        """Checked (K, H, W) / (2E, H, W) C-contiguous float32 maps (HWC maps, other dtypes and
        byte orders are copied; CHW float32 maps are used in place)."""
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        heatmap, paf = np.asarray(heatmap), np.asarray(paf)
        if heatmap.ndim != 3:
            raise ValueError(
                f"heatmap must be 3-D ({layout}) for one image; got shape {heatmap.shape}"
            )
        if paf.ndim != 3:
            raise ValueError(f"paf must be 3-D ({layout}) for one image; got shape {paf.shape}")
        hs, ps = heatmap.shape, paf.shape
        heat, pf = (heatmap, paf) if layout == "chw" else (_to_chw(heatmap), _to_chw(paf))
        k, c = self.topology.num_parts, 2 * self.topology.num_edges
        if heat.shape[0] != k:
            raise ValueError(
                f"heatmap {hs} ({layout}) has {heat.shape[0]} part channels; topology "
                f"{self.topology.name!r} has {k} parts"
            )
        if pf.shape[0] != c:
            raise ValueError(
                f"paf {ps} ({layout}) has {pf.shape[0]} channels; topology "
                f"{self.topology.name!r} needs 2 x {self.topology.num_edges} edges = {c}"
            )
        if pf.shape[1:] != heat.shape[1:]:
            raise ValueError(f"heatmap {hs} and paf {ps} ({layout}) differ in H, W")
        if heat.shape[1] == 0 or heat.shape[2] == 0:
            raise ValueError(f"heatmap {hs} ({layout}) is empty")
        mp = None
        if maxpool_heatmap is not None:
            mp = np.asarray(maxpool_heatmap)
            if mp.shape != hs:
                raise ValueError(
                    f"maxpool_heatmap {mp.shape} must have the heatmap's shape {hs} ({layout})"
                )
            mp = _float32(mp if layout == "chw" else _to_chw(mp))
        return _float32(heat), _float32(pf), mp

    def skeletons(self, d: Decoded, hw: tuple[int, int], output_scale=None) -> list[Skeleton]:
        """Step 8: ``output_scale`` [rows, cols] maps map index coordinate u to image
        x = (u + 0.5) * cols / W (pixel i covers [i, i + 1)); default: map pixels."""
        h, w = hw
        rows, cols = as_scale(output_scale) or self.output_scale or (h, w)
        n = len(d.part)
        table = np.empty((n + 1, 3))  # one (x, y, score) row per peak, a last one for missing
        table[:n, 0] = (d.xy[:, 0] + 0.5) * (cols / w)
        table[:n, 1] = (d.xy[:, 1] + 0.5) * (rows / h)
        table[:n, 2] = d.score
        table[n] = (np.nan, np.nan, 0.0)
        kp = table[d.objects]  # (O, K, 3); -1 picks the last row
        nparts = (d.objects >= 0).sum(1).tolist()
        scores = d.object_score.tolist()
        return [Skeleton(kp[i], scores[i], nparts[i], d.objects[i]) for i in range(len(scores))]


def _to_chw(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 0, 1)


def _float32(a: np.ndarray) -> np.ndarray:
    """C-contiguous native float32: networks emit float32; float16/float64, other byte orders
    and views (HWC maps) are converted, so the compiled core has one type to compile for."""
    if a.dtype != np.float32 or not a.dtype.isnative or not a.flags.c_contiguous:
        return np.ascontiguousarray(a, np.float32)
    return a


def _number(params: Mapping[str, Any], name: str, kind: type) -> Any:
    """``kind(params[name])``; a value that is not a number (or a float given for an int) is a
    ValueError naming the parameter."""
    value = params[name]
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):  # (int of inf overflows)
        number = None
    if number is None or isinstance(value, bool) or (kind is int and float(value) != number):
        raise ValueError(f"decoder parameter {name} must be {kind.__name__}, got {value!r}")
    return number


def as_scale(value: Any, name: str = "output_scale") -> tuple[float, float] | None:
    """``[rows, cols]`` as two positive floats, or None."""
    if value is None:
        return None
    vals = list(value)
    if len(vals) != 2 or not all(float(v) > 0 and math.isfinite(float(v)) for v in vals):
        raise ValueError(f"{name} must be [rows, cols] with positive sizes, got {value!r}")
    return float(vals[0]), float(vals[1])
