"""OpenPose decoder: part heatmaps + Part Affinity Fields -> skeletons (numpy only, no torch).

Follows the steps and parameter names of the Isaac ``OpenPoseDecoder`` (its steps 3-12):

1. NMS: a part candidate is a pixel equal to the max-pool of the heatmap over a
   ``maxpool_kernel`` window (the max-pool may come from the exported graph as
   ``maxpool_heatmap``, else it is computed here, with -inf beyond the border as torch pads).
   Plateaus (equal neighbours, e.g. a keypoint exactly between two pixels) keep only their first
   pixel in raster order, so one part gives one peak.
2. Peak confidence is the heatmap value; peaks must exceed ``threshold_heatmap``. There is no
   limit on the number of objects; ``max_peaks_per_part`` (default 64) keeps the best peaks of a
   part only to bound the time on noise maps (a random-noise 120x160 map has ~2000 local maxima
   per part, and edge candidates grow with their square).
3. Edge candidates: every (from-part peak, to-part peak) pair of every directed edge, all edges
   at once.
4. Edge score: ``edge_sampling_steps`` samples at the centres of equal pieces of the segment
   between the two (refined) peak positions, rounded to the nearest map pixel; each sample's
   score is the dot product of the PAF vector there with the unit edge vector. Centres, not the
   ends: the ends are the parts themselves, where the limb's field stops (oracle AP 0.865 ->
   0.879 at 56x56). A candidate becomes an edge when more than
   ``threshold_edge_sampling_counter`` samples exceed ``threshold_edge_score``; its score is the
   mean sample score. A limb shorter than one map pixel has no resolvable segment: its samples are
   the 3x3 window around its midpoint, each counting with the window's best dot product. No
   distance prior is used: the PAF alone decides.
5. Graph matching, the OpenPose way: edges in order of descending score over all edge types at
   once, one-to-one per edge type (a peak takes at most one edge of each type); a taken edge
   joins the objects of its two peaks unless they would then hold two peaks of one part
   (union-find with part bitmasks), which also settles the cycles of topologies such as coco18
   (nose-eyes, neck-hips) consistently.
6. Merging split graphs: two objects whose common parts all lie within ``threshold_split_score``
   map pixels of each other are one object split in two (a part seen as two nearby peaks, each
   grabbing some edges); they are merged, keeping the stronger peak of each common part. Objects
   with no part in common are never merged.
7. Filters: objects need more than ``threshold_part_counter`` parts and an object score of at
   least ``threshold_object_score``. The object score is ``(sum of part confidences + sum of
   edge scores) / (K + E)`` over the topology's K parts and E edges: 1.0 for a complete object
   seen with full confidence, lower for fragments, so COCOeval (which ranks detections by it)
   puts fragments last. (The mean over the object's own parts and edges ranks fragments too high:
   oracle AP 0.755 instead of 0.879 at 56x56.)
8. ``refine_parts_coordinates``: sub-pixel part positions. Targets are Gaussians, whose log is a
   parabola, so the default ``refine_method="quadratic"`` fits a parabola to the log of the peak's
   3x3 cross and recovers the exact centre of an isolated Gaussian (at a map border, the curvature
   of the other axis stands in for the missing side). ``"centroid"`` is trt_pose's weighted mean
   over the 3x3 window, biased towards the pixel centre. Offsets are clamped to +-0.5 pixel.
   Oracle AP at 56x56 / 120x160: quadratic 0.879 / 0.921, centroid 0.804 / 0.908, none
   0.528 / 0.840.
9. ``output_scale`` [rows, cols]: map index coordinate u goes to image x = (u + 0.5) * cols / W
   (pixel i covers [i, i + 1); see ``datasets.targets``). Without it, coordinates are in map
   pixels (u + 0.5).

Input maps are (K, H, W) / (2E, H, W) (``layout="chw"``) or (H, W, K) / (H, W, 2E)
(``layout="hwc"``, as the Isaac TensorRT codelet reads them), single images or batches with a
leading dimension. NaN never makes a peak or counts as edge evidence; +inf peaks count as
confidence 1 and infinite PAF values as +-1.

Speed: numpy calls on whole arrays, none per pixel or per candidate pair; the only Python loops
run over the accepted edge candidates (matching, with per-peak bitmasks of the edge types taken)
and the peaks (object labels and sums: on real maps a few dozen items, where each numpy call's
~0.5-1 us overhead would cost more than the loop). On real maps the time is numpy's per-call
overhead on tiny arrays, so the steps are written in few calls: the edge samples of up to 256
candidates are flat sample-major rows (per-candidate rows repeated by one gather; no broadcasting
over short axes), sums that must match numpy's are formed in the same order, and np.errstate
(whose context switch slows every later numpy call of the decode by ~5 us) is entered only
where NaN/inf/huge values can raise warnings. The maps are read in place (no padded copy):
candidates gather their window at fixed flat offsets, and a per-shape border class per pixel
marks the offsets beyond the border as -inf. A decoder keeps per-shape constants (offsets,
pixel columns/rows, validated shapes, output scales, sample index arrays) and a per-thread
scratch buffer between calls; one instance may be shared by threads.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

import numpy as np

from datasets.topology import Topology

DEFAULT_PARAMS: dict[str, Any] = {
    "threshold_heatmap": 0.05,
    "threshold_edge_score": 0.05,
    "threshold_edge_sampling_counter": 4,
    "edge_sampling_steps": 10,
    "threshold_part_counter": 0,
    "threshold_object_score": 0.0,
    "threshold_split_score": 2.0,
    "refine_parts_coordinates": True,
    "refine_method": "quadratic",
    "output_scale": None,
    "maxpool_kernel": 3,
    "max_peaks_per_part": 64,
}
REFINE_METHODS = ("quadratic", "centroid")
LAYOUTS = ("chw", "hwc")
# Own NMS gathers each candidate's neighbours while candidates are at most this fraction of the
# map (real heatmaps: ~1%); beyond it (noise, constant maps) whole-map comparisons are cheaper.
_SPARSE_FRACTION = 1 / 16
# more accepted edge candidates than this (noise maps) are thinned to one-to-one per edge type
# with whole-array rounds before the Python matching loop
_VECTOR_MATCH = 256
# up to this many peaks, edge candidates come from a (P, P) table of part pairs
_PAIR_TABLE = 256
# edge candidates are scored in blocks of this many (arrays of S x block stay in cache)
_CHUNK = 4096
# up to this many edge candidates, samples are flat rows (see _sample); more (noise maps) are
# scored in (2, S, T) blocks of _CHUNK; sample index arrays of that many are kept between calls
_FLAT_SAMPLES = 256
_TINY = 1e-12
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # native byte order
_MISSING = np.array([np.nan, np.nan, 0.0])  # (x, y, score) of a missing part
# PAF samples below this magnitude give finite scores without floating-point warnings
_SAFE = 1e30


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


DEFAULT_TARGET = "inference.decoder.OpenPoseDecoder"


def build_decoder(decoder_cfg: Mapping[str, Any] | None, topology: Topology) -> Any:
    """The one way to build a decoder from a ``conf/decoder`` node (plain dict or DictConfig).

    ``_target_`` (optional, default ``inference.decoder.OpenPoseDecoder``) names the decoder
    class as ``module.Name``; it is called as ``from_config(params, topology)`` when it has one,
    else ``cls(topology, **params)``. Every other key is a decoder parameter.
    """
    cfg = {str(k): v for k, v in (decoder_cfg or {}).items()}
    target = cfg.pop("_target_", None) or DEFAULT_TARGET
    module_name, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"decoder _target_ {target!r} cannot be imported: {e}") from e
    if hasattr(cls, "from_config"):
        return cls.from_config(cfg, topology)
    return cls(topology, **cfg)


class OpenPoseDecoder:
    """Decode heatmaps and PAFs of one topology into skeletons (see the module docstring)."""

    def __init__(self, topology: Topology, **params: Any) -> None:
        unknown = sorted(set(params) - set(DEFAULT_PARAMS))
        if unknown:
            raise ValueError(
                f"unknown OpenPoseDecoder parameter(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}"
            )
        p = {**DEFAULT_PARAMS, **{k: v for k, v in params.items()}}
        self.topology = topology
        self.threshold_heatmap = float(p["threshold_heatmap"])
        self.threshold_edge_score = float(p["threshold_edge_score"])
        self.threshold_edge_sampling_counter = int(p["threshold_edge_sampling_counter"])
        self.edge_sampling_steps = int(p["edge_sampling_steps"])
        self.threshold_part_counter = int(p["threshold_part_counter"])
        self.threshold_object_score = float(p["threshold_object_score"])
        self.threshold_split_score = float(p["threshold_split_score"])
        self.refine_parts_coordinates = bool(p["refine_parts_coordinates"])
        self.refine_method = str(p["refine_method"])
        self.output_scale = _as_scale(p["output_scale"], "output_scale")
        self.maxpool_kernel = int(p["maxpool_kernel"])
        self.max_peaks_per_part = int(p["max_peaks_per_part"])
        if self.edge_sampling_steps < 2:
            raise ValueError(f"edge_sampling_steps must be >= 2, got {self.edge_sampling_steps}")
        if self.maxpool_kernel < 1 or self.maxpool_kernel % 2 == 0:
            raise ValueError(
                f"maxpool_kernel must be a positive odd number, got {self.maxpool_kernel}"
            )
        if self.max_peaks_per_part < 1:
            raise ValueError(f"max_peaks_per_part must be >= 1, got {self.max_peaks_per_part}")
        if self.refine_method not in REFINE_METHODS:
            raise ValueError(
                f"refine_method must be one of {REFINE_METHODS}, got {self.refine_method!r}"
            )

        # fixed per-topology arrays, built once
        self._k = topology.num_parts
        self._e = topology.num_edges
        edges = np.asarray(topology.edges, dtype=np.intp).reshape(-1, 2)
        pafc = np.asarray(topology.edges_paf, dtype=np.intp).reshape(-1, 2)
        self._ea, self._eb = edges[:, 0].copy(), edges[:, 1].copy()
        self._pafx, self._pafy = pafc[:, 0].copy(), pafc[:, 1].copy()
        # (S,) sample positions: centres of S equal pieces of the segment. The endpoints are the
        # parts themselves, which the limb field need not cover (the field stops at the joint).
        self._t = (np.arange(self.edge_sampling_steps) + 0.5) / self.edge_sampling_steps
        self._reps: dict[tuple, tuple] = {}  # per candidate count, see _repeats
        self._ts = {  # (1, S, 1) sample positions by dtype char, for _sample_blocks
            np.dtype(t).char: self._t.astype(t)[None, :, None] for t in (np.float32, np.float64)
        }
        # a candidate of zero length has no unit vector (all dot products 0 or NaN, made 0), so
        # no sample above a threshold >= 0: then the sample counter alone decides
        self._count_needs_length = not (
            self.threshold_edge_score >= 0 and self.threshold_edge_sampling_counter >= 0
        )
        r = self.maxpool_kernel // 2
        offs = [
            (dr, dc) for dr in range(-r, r + 1) for dc in range(-r, r + 1) if (dr, dc) != (0, 0)
        ]
        # neighbours before the pixel in raster order must be strictly lower (plateau tie-break)
        self._offs = np.asarray(offs, dtype=np.intp).reshape(-1, 2)  # (k*k-1, 2) (drow, dcol)
        self._before = (self._offs[:, 0] < 0) | ((self._offs[:, 0] == 0) & (self._offs[:, 1] < 0))
        self._norm = float(self._k + self._e)
        self._eidx = np.arange(self._e)
        self._r = max(1, r)  # radius of the window gathered around candidates (refinement: 1)
        # The window gathered around each candidate: the pixel, the neighbours before it in
        # raster order, then those after it; left and up lead the first group, right and down the
        # second, so the refinement's cross is rows 0, 1:3 and after:after+2. NMS compares rows
        # 1:after (strictly lower) and after:nms_end (at most equal); a 1x1 max-pool compares none
        # but the 3x3 window is still gathered for the refinement.
        rr = self._r
        rest = [(dr, dc) for dr in range(-rr, rr + 1) for dc in range(-rr, rr + 1)]
        rest = [o for o in rest if o not in ((0, 0), (0, -1), (-1, 0), (0, 1), (1, 0))]
        before = [(0, -1), (-1, 0)] + [o for o in rest if o < (0, 0)]
        after = [(0, 1), (1, 0)] + [o for o in rest if o > (0, 0)]
        self._win_rc = np.asarray([(0, 0)] + before + after, np.intp)  # (Wn, 2) (drow, dcol)
        self._after = 1 + len(before)
        self._nms_end = len(self._win_rc) if r else 1
        self._nms_before = slice(1, self._after if r else 1)
        self._nms_after = slice(self._after if r else 1, self._nms_end)
        self._cross_rows = np.array([0, 1, 2, self._after, self._after + 1], np.intp)
        # the 3x3 window in raster order (centroid refinement), as rows of the gathered window
        rc = [tuple(o) for o in self._win_rc.tolist()]
        self._win3_rows = np.array(
            [rc.index((dr, dc)) for dr in (-1, 0, 1) for dc in (-1, 0, 1)], np.intp
        )
        self._win3_rc = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)], np.intp)
        # short limbs: the 3x3 window around the midpoint, cycled to S samples (2, S)
        win = np.array([(dc, dr) for dr in (-1, 0, 1) for dc in (-1, 0, 1)], np.float64)
        self._win_s = win[np.arange(self.edge_sampling_steps) % 9].T.copy()
        self._geometries: dict[tuple, _Geometry] = {}
        # K x K table of the edge joining two parts (-1: none); None when two edges join the
        # same parts (either way round), which the table cannot hold
        pairs = {frozenset(e) for e in topology.edges}
        self._edge_of = None
        if len(pairs) == self._e:
            self._edge_of = np.full((self._k, self._k), -1, np.intp)
            self._edge_of[self._ea, self._eb] = self._eidx
        self._scales: dict[tuple, tuple[float, float]] = {}  # see _scale
        self._bits = [1 << k for k in range(self._k)]  # part bitmasks for the matching
        self._checked: dict[tuple, _Geometry] = {}  # (heatmap, paf shape, layout) seen valid
        self._factors: dict[tuple, np.ndarray] = {}  # output scale factors, see _objects
        self._buffers = threading.local()  # per-thread scratch (split-merge marks) between calls

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls, decoder_cfg: Mapping[str, Any] | None, topology: Topology
    ) -> OpenPoseDecoder:
        """Build from a ``conf/decoder`` node (plain dict or DictConfig); unknown keys are errors
        (``_target_`` is ``build_decoder``'s and ignored here)."""
        cfg = {k: v for k, v in (decoder_cfg or {}).items() if k != "_target_"}
        if "output_scale" in cfg and cfg["output_scale"] is not None:
            cfg["output_scale"] = list(cfg["output_scale"])
        return cls(topology, **cfg)

    @property
    def params(self) -> dict[str, Any]:
        """The parameters as plain data (for configs and model metadata)."""
        return {
            k: (
                list(getattr(self, k))
                if k == "output_scale" and self.output_scale
                else getattr(self, k)
            )
            for k in DEFAULT_PARAMS
        }

    # ------------------------------------------------------------------ public API
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
        return self._trace(heatmap, paf, maxpool_heatmap, layout, output_scale, False)

    def decode(
        self,
        heatmap: Any,
        paf: Any,
        maxpool_heatmap: Any = None,
        layout: str = "chw",
        output_scale: Any = None,
    ) -> list[Skeleton]:
        """Decode one image's maps; skeletons sorted by descending score (as ``trace``, without
        keeping the intermediate steps)."""
        return self._trace(heatmap, paf, maxpool_heatmap, layout, output_scale, False)

    def trace(
        self,
        heatmap: Any,
        paf: Any,
        maxpool_heatmap: Any = None,
        layout: str = "chw",
        output_scale: Any = None,
    ) -> DecodeTrace:
        """Decode one image and keep every intermediate step (see ``DecodeTrace``)."""
        # NaN and inf inputs are handled explicitly where they matter (never a peak, no edge
        # evidence, sanitised scores); numpy's floating-point warnings about them are noise. The
        # few steps that can raise them (refinement of infinite or border peaks, scoring on
        # non-finite or huge PAF values) run under np.errstate only when that can happen: a
        # context switch per call costs ~5 us of numpy time on every later call of the decode
        return self._trace(heatmap, paf, maxpool_heatmap, layout, output_scale, True)

    def _trace(self, heatmap, paf, maxpool_heatmap, layout, output_scale, full: bool):
        """The decode; a ``DecodeTrace`` if ``full``, else only the skeletons."""
        m = self._prepare(heatmap, paf, maxpool_heatmap, layout)
        scale = self._scale(output_scale) or self.output_scale or (m.h, m.w)

        # ---- steps 1-2: candidates above threshold, NMS, confidence, cap per part
        # (small arrays: take / nonzero + take, cheaper than fancy or boolean indexing)
        part, cr, pflat, win = self._peaks(m)  # cr: (2, P) (col, row)
        if part.size == 0:
            if not full:
                return []
            z, f = np.zeros(0, np.intp), np.zeros(0)
            return DecodeTrace(z, z, z, f, np.zeros((0, 2)), z, z, z, f, z, z.astype(bool), z, [])
        score = win[0]  # (P,) peak confidences; NaN never is a peak, +inf counts as certain
        checked = False  # +inf clipped (done here for the cap, else after the refinement)
        if part.size > self.max_peaks_per_part and (
            np.bincount(part).max() > self.max_peaks_per_part
        ):
            if np.count_nonzero(np.isinf(score)):
                score = np.minimum(score, 1.0)
            checked = True
            sel = _cap_index(part, score, self.max_peaks_per_part)
            part, pflat, score = part.take(sel), pflat.take(sel), score.take(sel)
            cr, win = cr.take(sel, 1), win.take(sel, 1)
        if not m.sorted:  # group peaks by part (the flat order of a CHW map already is)
            o = np.argsort(part, kind="stable")
            part, pflat, score = part.take(o), pflat.take(o), score.take(o)
            cr, win = cr.take(o, 1), win.take(o, 1)

        # ---- step 8, for every peak up front (from the NMS windows): sub-pixel positions (u, v)
        finite = False  # the peaks' windows hold no inf (then neither do the scores)
        if self.refine_parts_coordinates:
            pos, finite = self._refine(win)  # (2, P) offsets, then map index coordinates
            np.add(pos, cr, out=pos)  # (cr: integers, float when from _from_flat)
        else:
            pos = cr.astype(np.float64)
        if not (checked or finite) and np.count_nonzero(np.isinf(score)):
            score = np.minimum(score, 1.0)

        # ---- steps 3-4: every candidate pair of every edge, scored on the PAF at once
        ce, ca, cb, cscore, ccount, cok = self._score_edges(m, part, pos)

        # ---- step 5: greedy matching by descending edge score: one-to-one per edge type,
        # and objects joined edge by edge unless a part would repeat
        part_l = part.tolist()
        if ce.size <= _FLAT_SAMPLES:  # few candidates: Python lists of all, visited in order
            cs_l, ok_l = cscore.tolist(), cok.tolist()
            order = list(compress(range(len(ok_l)), ok_l))  # stable sort, descending score
            order.sort(key=cs_l.__getitem__, reverse=True)  # (as argsort(-score, "stable"))
            ca_l = ca.tolist()
            roots, acc = _greedy_union(order, ce.tolist(), ca_l, cb.tolist(), part_l, self._bits)
            acc_a, acc_s = list(map(ca_l.__getitem__, acc)), list(map(cs_l.__getitem__, acc))
            accepted = np.array(acc, np.intp) if full else None
        else:  # noise maps: lists of the accepted candidates only, already in order
            okidx = cok.nonzero()[0]
            okidx = okidx.take((-cscore.take(okidx)).argsort(kind="stable"))
            if okidx.size > _VECTOR_MATCH:  # the one-to-one rounds as whole arrays
                key = ce[okidx] * part.size
                okidx = okidx[_one_to_one(key + ca[okidx], key + cb[okidx], self._e * part.size)]
            e_l, a_l, b_l = (x.take(okidx).tolist() for x in (ce, ca, cb))
            roots, acc = _greedy_union(range(len(e_l)), e_l, a_l, b_l, part_l, self._bits)
            accepted = okidx.take(acc)
            acc_a, acc_s = ca.take(accepted).tolist(), cscore.take(accepted).tolist()

        # ---- steps 6-7, 9: objects, merge split graphs, filters, output scaling
        skeletons = self._objects(
            part_l, score, pos, pflat, m.geo, roots, acc_a, acc_s, m.h, m.w, scale
        )
        if not full:
            return skeletons
        if cr.dtype != np.intp:
            cr = cr.astype(np.intp)
        col, row = cr[0], cr[1]
        return DecodeTrace(
            part, row, col, score, pos.T, ce, ca, cb, cscore, ccount, cok, accepted, skeletons
        )

    # ------------------------------------------------------------------ steps
    def _scale(self, value) -> tuple[float, float] | None:
        """``_as_scale(value)``, remembering the values seen (one image size per input size)."""
        if value is None:
            return None
        try:
            key = tuple(value)
            hit = self._scales.get(key)
        except TypeError:  # not iterable or not hashable: let _as_scale judge
            return _as_scale(value, "output_scale")
        if hit is None:
            hit = _as_scale(value, "output_scale")
            if len(self._scales) >= 256:
                self._scales.clear()
            self._scales[key] = hit
        return hit

    def _prepare(self, heatmap, paf, maxpool_heatmap, layout) -> _Maps:
        """Check shapes; flat heatmap and PAF (no copies of contiguous float maps); constants."""
        if maxpool_heatmap is None and type(heatmap) is np.ndarray and type(paf) is np.ndarray:
            g = self._checked.get((heatmap.shape, paf.shape, layout))
            if g is not None:  # shapes seen and checked before
                chw = g.key[0] == "c"
                return _Maps(_flat(heatmap), heatmap, None, _flat(paf), g.h, g.w, chw, g, chw)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        heatmap, paf = np.asarray(heatmap), np.asarray(paf)
        k, c = self._k, 2 * self._e
        if heatmap.ndim != 3:
            raise ValueError(
                f"heatmap must be 3-D ({layout}) for one image; got shape {heatmap.shape}"
            )
        if paf.ndim != 3:
            raise ValueError(f"paf must be 3-D ({layout}) for one image; got shape {paf.shape}")
        chw = layout == "chw"
        hs, ps = heatmap.shape, paf.shape
        kh, h, w = (hs[0], hs[1], hs[2]) if chw else (hs[2], hs[0], hs[1])
        pc, ph, pw = (ps[0], ps[1], ps[2]) if chw else (ps[2], ps[0], ps[1])
        if kh != k:
            raise ValueError(
                f"heatmap {hs} ({layout}) has {kh} part channels; topology "
                f"{self.topology.name!r} has {k} parts"
            )
        if pc != c:
            raise ValueError(
                f"paf {ps} ({layout}) has {pc} channels; topology {self.topology.name!r} "
                f"needs 2 x {self._e} edges = {c}"
            )
        if (ph, pw) != (h, w):
            raise ValueError(f"heatmap {hs} and paf {ps} ({layout}) differ in H, W")
        if h == 0 or w == 0:
            raise ValueError(f"heatmap {hs} ({layout}) is empty")
        if maxpool_heatmap is not None:
            maxpool_heatmap = np.asarray(maxpool_heatmap)
            if maxpool_heatmap.shape != hs:
                raise ValueError(
                    f"maxpool_heatmap {maxpool_heatmap.shape} must have the heatmap's shape "
                    f"{hs} ({layout})"
                )
        g = self._geometry(chw, h, w)
        if len(self._checked) < 256:
            self._checked[(hs, ps, layout)] = g
        return _Maps(_flat(heatmap), heatmap, maxpool_heatmap, _flat(paf), h, w, chw, g, chw)

    def _geometry(self, chw: bool, h: int, w: int) -> _Geometry:
        """Flat offsets, strides and border classes of one map shape and layout (cached)."""
        key = (chw, h, w)
        g = self._geometries.get(key)
        if g is not None:
            return g
        k, c = self._k, 2 * self._e
        if chw:
            strides, pstrides = (h * w, w, 1), (h * w, w, 1)
        else:
            strides, pstrides = (1, w * k, k), (1, w * c, c)
        sr, sc = strides[1], strides[2]
        sc_, sr_ = pstrides[2], pstrides[1]
        chan = np.stack([self._pafx, self._pafy])
        # border classes: which window offsets of a pixel fall outside the map. Class 0 is the
        # inside (all valid; an all-valid row is appended so that it exists on tiny maps).
        rows, cols = np.divmod(np.arange(h * w), w)
        dr, dc = self._win_rc[:, 0], self._win_rc[:, 1]
        rr, cc = rows[:, None] + dr, cols[:, None] + dc
        valid = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)  # (H*W, Wn)
        valid = np.concatenate([valid, np.ones((1, len(dr)), bool)])
        uniq, inv = np.unique(valid, axis=0, return_inverse=True)
        ncls = len(uniq)
        code = (inv.reshape(-1)[:-1] + 1) % ncls  # the all-valid row sorts last: class 0
        code = code.astype(np.min_scalar_type(ncls))
        g = _Geometry(
            key=f"{'chw' if chw else 'hwc'}_{h}_{w}",
            h=h,
            w=w,
            size=k * h * w,
            strides=strides,
            paf_strides=pstrides,
            window=(dr * sr + dc * sc).astype(np.intp),
            window_col=(dr * sr + dc * sc).astype(np.intp)[:, None].copy(),
            size_hw=h * w,
            col_row_f={t: np.stack([cols, rows]).astype(t) for t in "fd"},
            code=np.tile(code, k) if chw else np.repeat(code, k),
            invalid=~np.roll(uniq, 1, axis=0),
            chan=chan * pstrides[0],
            chan_f={t: (chan * pstrides[0]).astype(t) for t in "fd"},
            pick={t: np.array([[sc_, sr_, 1, 0], [sc_, sr_, 0, 1]], t) for t in "fd"},
            bounds={t: np.array([[w - 1], [h - 1]], t) for t in (np.float32, np.float64)},
            sample_type=np.float32 if c * h * w < 1 << 24 else np.float64,
        )
        self._geometries[key] = g
        return g

    def _peaks(self, m: _Maps):
        """Steps 1-2: (part, row, col, flat index) of the NMS peaks above threshold, and the
        (Wn, P) window of heatmap values around each (row 0: the peak; -inf beyond the border).
        """
        thr = self.threshold_heatmap
        if m.maxpool is not None:
            # Isaac's NMS: equality with the max-pooled heatmap computed inside the exported graph
            heat = m.heat if m.chw else m.heat.transpose(2, 0, 1)
            mp = m.maxpool if m.chw else m.maxpool.transpose(2, 0, 1)
            part, row, col = np.nonzero((heat > thr) & (heat == mp))  # NaN compares False
            if part.size > self.max_peaks_per_part * self._k:
                sel = _cap_index(part, heat[part, row, col], 4 * self.max_peaks_per_part)
                part, row, col = part[sel], row[sel], col[sel]
            m.sorted = True
            flat = self._to_flat(m, part, row, col)
            win = self._window(m, flat)
            if flat.size:  # plateau tie-break, as in the own NMS below
                keep = win[0] > np.fmax.reduce(win[self._nms_before], axis=0, initial=-np.inf)
                part, row, col, flat, win = (
                    part[keep],
                    row[keep],
                    col[keep],
                    flat[keep],
                    win[:, keep],
                )
            return part, np.stack([col, row]), flat, win
        cand = (m.flat > thr).nonzero()[0]  # (M,) NaN compares False
        if cand.size > m.flat.size * _SPARSE_FRACTION:
            part, row, col, flat = self._dense_nms(m)
            return part, np.stack([col, row]), flat, self._window(m, flat)
        # (Wn, M): the pixel, then its neighbours. Neighbours run along axis 0: numpy reduces a
        # short last axis ~30x slower than it combines whole rows.
        win = self._window(m, cand)
        v = win[0]
        keep = v > np.fmax.reduce(win[self._nms_before], axis=0, initial=-np.inf)
        keep &= v >= np.fmax.reduce(win[self._nms_after], axis=0, initial=-np.inf)
        keep = keep.nonzero()[0]
        flat = cand.take(keep)
        part, cr = self._from_flat(m, flat)
        return part, cr, flat, win.take(keep, 1)

    def _window(self, m: _Maps, flat):
        """(Wn, n) heatmap values of the window around each flat index; -inf beyond the border.

        Offsets that leave the map gather some other pixel (clipped at the array's ends), which
        the pixel's border class then overwrites with -inf.
        """
        g = m.geo
        win = m.flat.take(g.window_col + flat, mode="clip")
        code = g.code.take(flat)
        if np.count_nonzero(code):  # some pixels touch the border
            np.copyto(win, -np.inf, where=g.invalid.take(code, 0).T)
            return win
        m.inside = True  # (for these pixels; the sparse NMS passes all its candidates)
        return win

    def _to_flat(self, m: _Maps, part, row, col):
        sk, sr, sc = m.geo.strides
        return part * sk + row * sr + col * sc

    def _from_flat(self, m: _Maps, flat):
        """Part (P,) and (2, P) (col, row) of flat heatmap indices (pixel from a table), the
        latter in the heatmap's float type (exact integers; added to float offsets)."""
        g = m.geo
        if m.chw:  # flat = part * H * W + pixel
            part = flat // g.size_hw
            pix = flat - part * g.size_hw
        else:  # flat = pixel * K + part
            pix = flat // self._k
            part = flat - pix * self._k
        return part, g.col_row_f[m.flat.dtype.char].take(pix, 1)

    def _dense_nms(self, m: _Maps):
        """Whole-map NMS with the plateau tie-break, for maps with too many candidates."""
        h, w, r = m.h, m.w, self._r
        heat = m.flat.reshape(m.heat.shape)
        if not m.chw:
            heat = heat.transpose(2, 0, 1)  # view (K, H, W)
        p = np.full((self._k, h + 2 * r, w + 2 * r), -np.inf, heat.dtype)
        p[:, r : r + h, r : r + w] = heat
        p[np.isnan(p)] = -np.inf  # NaN neighbours do not suppress
        here = p[:, r : r + h, r : r + w]
        peak = here > self.threshold_heatmap
        for (dr, dc), before in zip(self._offs.tolist(), self._before.tolist(), strict=True):
            there = p[:, r + dr : r + dr + h, r + dc : r + dc + w]
            peak &= (here > there) if before else (here >= there)
        part, row, col = np.nonzero(peak)  # in part order
        m.sorted = True
        return part, row, col, self._to_flat(m, part, row, col)

    def _refine(self, win):
        """(2, P) sub-pixel offsets (du, dv) in [-0.5, 0.5] from the (Wn, P) peak windows, and
        whether the windows were seen to hold no infinite value (False: not checked or some)."""
        if self.refine_method == "centroid":
            vals = win.take(self._win3_rows, 0)  # (9, P) the 3x3 window in raster order
            wts = np.where(vals > 0, np.minimum(vals, 1e30), 0.0)  # border, NaN, < 0: none
            out = (self._win3_rc[:, ::-1].T @ wts) / np.maximum(wts.sum(0), _TINY)
            return np.minimum(np.maximum(out, -0.5), 0.5), False
        # parabola through the log values of the 3x3 cross: exact for a Gaussian peak
        vals = win.take(self._cross_rows, 0)  # (5, P): centre, left, up, right, down
        lv = np.log(np.maximum(vals, _TINY))  # no warnings: NaN stays NaN, inf gives inf
        minus, plus = lv[1:3], lv[3:5]  # (2, P): (left, up), (right, down)
        finite = not np.count_nonzero(np.isinf(vals))
        if not finite:  # at the map border (-inf) or infinite values
            with _quiet():
                curv = minus + plus - 2 * lv[0]
                if vals.min() == -np.inf:  # a peak on the map border: one neighbour is missing
                    out = _refine_border(vals, lv, curv)
                else:
                    out = np.where(curv < 0, (minus - plus) / (2 * curv), 0.0)  # NaN -> 0
        else:  # finite (or NaN: quiet) values; 0 where curv >= 0 or NaN, never 0 / 0
            curv = minus + plus - 2 * lv[0]
            out = np.zeros(curv.shape, curv.dtype)
            np.divide(minus - plus, 2 * curv, out=out, where=curv < 0)
        return np.minimum(np.maximum(out, -0.5), 0.5), finite  # (np.clip's wrapper is slow)

    def _repeats(self, t: int, dtype: str):
        """For T candidates: (S * T,) candidate of each sample (sample-major), (S * T,) sample
        positions along the segment and (2, S * T) short-limb window offsets in ``dtype``;
        cached for small T."""
        key = (t, dtype)
        r = self._reps.get(key)
        if r is None:
            s_ = self.edge_sampling_steps
            r = (
                np.tile(np.arange(t), s_),
                np.repeat(self._t.astype(dtype), t),
                np.repeat(self._win_s.astype(dtype), t, axis=1),
            )
            if t <= _FLAT_SAMPLES:
                self._reps[key] = r
        return r

    def _score_edges(self, m: _Maps, part, pos):
        """Steps 3-4 for every candidate pair of every edge at once.

        ``pos`` are the (refined) peak positions (2, P), so an edge's direction is its parts'
        true direction, not that of their rounded pixels. A limb shorter than one map pixel has
        its field within a pixel of its midpoint, not along a resolvable segment: its samples
        are the 3x3 window around the midpoint, and each counts with the window's best dot
        product.
        """
        g = m.geo
        n = part.size
        if self._edge_of is not None and n <= _PAIR_TABLE:
            # every (peak, peak) pair whose parts an edge joins, from a K x K table: a few
            # calls on P^2 elements instead of an enumeration per edge (take: cheaper than
            # fancy indexing on small arrays); pair q is peaks (q // P, q % P)
            table = self._edge_of.take(part, 0).take(part, 1).reshape(-1)  # (P * P,) edge or -1
            q = (table >= 0).nonzero()[0]
            ia = q // n
            ib, eid = q - ia * n, table.take(q)
        else:
            counts = np.bincount(part, minlength=self._k)
            starts = np.cumsum(counts) - counts
            nb = counts[self._eb]
            npairs = counts[self._ea] * nb  # (E,)
            eid = np.repeat(self._eidx, npairs)  # (T,) edge of each candidate
            local = np.arange(eid.size) - np.repeat(np.cumsum(npairs) - npairs, npairs)
            nbe = nb[eid]
            ia = starts[self._ea][eid] + local // nbe  # (T,) from-peak
            ib = starts[self._eb][eid] + local % nbe  # (T,) to-peak
        if eid.size == 0:
            z = np.zeros(0, np.intp)
            return z, z, z, np.zeros(0), z, np.zeros(0, bool)
        # positions clipped to the map (refined ones reach half a pixel past it), so that every
        # sample, a convex combination of two ends, rounds to a pixel inside; float32 (half the
        # memory traffic on noise maps) while it holds every flat offset exactly
        # (casting first is the same: the bounds are exact in both types)
        ft = g.sample_type
        p = pos if pos.dtype == ft else pos.astype(ft)
        if not m.inside:  # (peaks off the border: within [0.5, size - 1.5] already)
            p = np.minimum(np.maximum(p, 0), g.bounds[ft])
        t_ = eid.size
        if t_ <= _FLAT_SAMPLES:  # real maps: all samples as flat rows, see _sample
            score, count, length = self._sample(m, p, eid, ia, ib)
        else:  # noise maps: (2, S, T) blocks that stay in cache
            with _quiet():
                out = [
                    self._sample_blocks(
                        m, p, eid[i : i + _CHUNK], ia[i : i + _CHUNK], ib[i : i + _CHUNK]
                    )
                    for i in range(0, t_, _CHUNK)
                ]
            score, count, length = (np.concatenate(x) for x in zip(*out, strict=True))
        ok = count > self.threshold_edge_sampling_counter
        if self._count_needs_length:  # a zero-length candidate has no sample above 0
            ok &= length > 0
        return eid, ia, ib, score, count, ok

    def _sample(self, m: _Maps, p, eid, ia, ib):
        """Score, count of samples above threshold_edge_score, and length of T candidates.

        The per-candidate quantities (vector, start, PAF channels, unit vector) are computed once
        per candidate, as rows of one (8, T) array, and repeated to all S samples by one gather:
        samples are flat rows, sample-major (sample s of candidate t at s * T + t), so that every
        call combines long contiguous rows (numpy's broadcasting over short inner axes costs
        several times more).
        """
        g = m.geo
        t_, s_, ch = eid.size, self.edge_sampling_steps, p.dtype.char
        rep, ts, win_s = self._repeats(t_, ch)
        c = np.empty((8, t_), p.dtype)  # rows: vector (2), start (2), PAF channels (2), unit (2)
        p.take(ia, 1, out=c[2:4], mode="clip")  # (indices are valid: clip skips a buffer)
        np.subtract(p.take(ib, 1), c[2:4], out=c[:2])
        length = np.hypot(c[0], c[1])
        np.divide(c[:2], np.maximum(length, _TINY), out=c[6:])
        g.chan_f[ch].take(eid, 1, out=c[4:6], mode="clip")
        r = c.take(rep, 1)  # (8, N): the candidate's rows at each of its samples
        np.multiply(r[:2], ts, out=r[:2])
        pts = r[2:4]  # samples (u, v), rounded to map pixels below
        pts += r[:2]
        short = length < 1.0
        if np.count_nonzero(short):  # the window around the midpoint, cycled to S samples
            win = np.rint(c[2:4] + c[:2] * 0.5).take(rep, 1)  # (for all: fewer calls)
            win += win_s  # small integers: exact in either float type
            np.maximum(win, 0, out=win)
            np.copyto(pts, np.minimum(win, g.bounds[p.dtype.type], out=win), where=short.take(rep))
        else:
            short = None
        np.rint(pts, out=pts)
        # flat PAF indices of both components: col * col stride + row * row stride + channel
        # offset, integers below 2 ** 24 (float32) or 2 ** 53: exact in any order of summation
        v = m.paf.take(np.dot(g.pick[ch], r[2:6]).astype(np.intp))  # (2, N)
        if np.maximum.reduce(np.abs(v), axis=None) < _SAFE:  # no inf, NaN or overflow
            return self._score_samples(v, r[6:], short, length, s_, t_)
        with _quiet():
            return self._score_samples(v, r[6:], short, length, s_, t_)

    def _score_samples(self, v, unit, short, length, s_, t_):
        """Score, count and length of T candidates from their (2, S * T) PAF samples ``v``."""
        v *= unit
        dot = np.add(v[0], v[1]).reshape(s_, t_)  # (S, T) PAF . unit edge vector
        score, count = self._score_dot(dot, short, s_)
        return score, count, length

    def _score_dot(self, dot, short, s_):
        """Score and count of T candidates from their (S, T) samples of PAF . unit edge vector
        (``dot`` is overwritten); ``short``: the candidates sampled in a midpoint window."""
        if short is not None:  # each sample of a short limb counts with the window's best
            np.copyto(dot, np.maximum.reduce(dot, 0), where=short)
        score = np.add.reduce(dot, 0) / s_
        if not math.isfinite(np.add.reduce(score)):  # NaN/inf in the PAF: no evidence there
            dot = np.where(np.isnan(dot), 0.0, np.clip(dot, -1.0, 1.0))
            score = dot.sum(0) / s_
        count = np.add.reduce(dot > self.threshold_edge_score, 0)
        return score, count

    def _sample_blocks(self, m: _Maps, p, eid, ia, ib):
        """``_sample`` for many candidates: (2, S, T) arrays, broadcasting over long T rows, the
        per-candidate quantities computed once per candidate (caller: under ``_quiet``)."""
        g = m.geo
        pa = p.take(ia, 1)  # (2, T)
        d = p.take(ib, 1)
        d -= pa
        length = np.hypot(d[0], d[1])
        unit = d / np.maximum(length, _TINY)
        pts = d[:, None, :] * self._ts[p.dtype.char]  # (2, S, T) samples
        pts += pa[:, None, :]
        short = None
        if np.minimum.reduce(length) < 1.0:  # the window around the midpoint, cycled to S
            short = length < 1.0  # samples (computed for all T: fewer calls than a scatter)
            mid = np.rint(pa + d * 0.5)
            win = np.maximum(mid[:, None, :] + self._win_s[:, :, None], 0)
            np.copyto(pts, np.minimum(win, g.bounds[np.float64][:, :, None]), where=short)
        np.rint(pts, out=pts)
        # (S, T) flat sample pixels: row * row stride + col * col stride, exact in float
        off = (g.pick[p.dtype.char][0, :2] @ pts.reshape(2, -1)).astype(np.intp)
        chan = g.chan.take(eid, 1)  # (2, T) PAF x and y channel offsets
        s_, t_ = pts.shape[1], pts.shape[2]
        off = off.reshape(s_, t_)  # in place, one component at a time
        dot = m.paf.take(chan[0] + off)  # (S, T) PAF . unit edge vector
        dot *= unit[0]
        vy = m.paf.take(chan[1] + off)
        vy *= unit[1]
        dot += vy
        score, count = self._score_dot(dot, short, s_)
        return score, count, length

    def _objects(self, part, score, pos, pflat, geo, roots, acc_a, acc_s, h, w, scale):
        """Steps 6-7 and 9: objects from the matching, merged, filtered, scaled.

        ``part``: (P,) list of each peak's part; ``roots``: each peak's union-find root;
        ``acc_a``, ``acc_s``: from-peak and score of the accepted edges, in matching order.
        Objects are numbered by first appearance over the peaks. The bookkeeping runs on Python lists (a few
        peaks per image: cheaper than numpy calls), with the same float64 sums in the same order
        as ``np.bincount`` would form them; merging split objects works on arrays.
        """
        n = len(part)
        k = self._k
        if len(set(roots)) == 1:  # one object (an image with one person)
            row, ps, es = [-1] * k, 0.0, 0.0
            for i, (pt, sc) in enumerate(zip(part, score.tolist(), strict=True)):
                row[pt] = i
                ps += sc
            for sc in acc_s:
                es += sc
            peak_of, part_sum, edge_sum, nparts, nobj = [row], [ps], [es], [n], 1
        else:
            label: dict[int, int] = {}  # root -> object
            obj = []  # (P,) object of each peak
            peak_of = []  # (O, K) peak index per part
            part_sum, nparts = [], []
            for i, (r, pt, sc) in enumerate(zip(roots, part, score.tolist(), strict=True)):
                o = label.get(r)
                if o is None:
                    o = label[r] = len(peak_of)
                    peak_of.append([-1] * k)
                    part_sum.append(0.0)
                    nparts.append(0)
                obj.append(o)
                peak_of[o][pt] = i
                part_sum[o] += sc
                nparts[o] += 1
            nobj = len(peak_of)
            edge_sum = [0.0] * nobj
            for a, sc in zip(acc_a, acc_s, strict=True):
                edge_sum[obj[a]] += sc
        if nobj > 1 and self.threshold_split_score > 0 and self._near_peaks(pflat, geo):
            obj_a = np.array(obj, np.intp)
            po, ps, es = self._merge_split(
                np.array(peak_of, np.intp),
                np.array(part_sum),
                np.array(edge_sum),
                score,
                pos,
                np.array(part, np.intp),
                obj_a,
            )
            if len(po) != nobj:
                peak_of, part_sum, edge_sum = po.tolist(), ps.tolist(), es.tolist()
                nparts = (po >= 0).sum(1).tolist()
        norm = 1.0 / self._norm
        oscore = [(a + b) * norm for a, b in zip(part_sum, edge_sum, strict=True)]
        tp, ts = self.threshold_part_counter, self.threshold_object_score
        keep = [o for o in range(len(oscore)) if nparts[o] > tp and oscore[o] >= ts]
        if not keep:
            return []
        if len(keep) > 1:  # stable, by descending score
            keep.sort(key=lambda o: -oscore[o])
        # one (x, y, score) row per peak and a last row for missing parts (peak index -1);
        # the scale in pos's own type, as a Python float scalar would be
        key = (scale, h, w, pos.dtype.char)
        factor = self._factors.get(key)
        if factor is None:
            rows, cols = scale
            factor = np.array([[cols / w], [rows / h]], pos.dtype)
            if len(self._factors) >= 256:
                self._factors.clear()
            self._factors[key] = factor
        table = np.empty((n + 1, 3))
        np.multiply(pos + 0.5, factor, out=table[:n, :2].T)
        table[:n, 2] = score
        table[n] = _MISSING
        pk = np.array([peak_of[o] for o in keep], np.intp)  # (O', K)
        kp = table.take(pk, 0)  # (O', K, 3)
        return [Skeleton(kp[i], oscore[o], nparts[o], pk[i]) for i, o in enumerate(keep)]

    def _near_peaks(self, pflat, geo: _Geometry) -> bool:
        """Cheap necessary test for step 6: do two peaks of one part sit within
        threshold_split_score + 1 pixels (refinement moves each by at most half a pixel)?

        Peak pixels are marked in a per-thread boolean image of the heatmap and looked up at the
        offsets of that disc; offsets that wrap into another row or part only cause a needless
        exact check.
        """
        lim = self.threshold_split_score + 1.0
        offs = geo.near.get(lim)
        if offs is None:
            sr, sc, n = geo.strides[1], geo.strides[2], int(lim)
            offs = geo.near[lim] = np.array(
                [
                    dr * sr + dc * sc
                    for dr in range(0, n + 1)
                    for dc in range(-n, n + 1)
                    if (dr > 0 or dc > 0) and dr * dr + dc * dc <= lim * lim
                ],
                np.intp,
            )
            offs = geo.near[lim] = offs[:, None]  # (D, 1) column
        if offs.size == 0:
            return False
        key = "marks_" + geo.key
        marks = self._buffers.__dict__.get(key)
        if marks is None:  # margin: the largest offset past the end
            size = geo.size + int(offs.max()) + 1
            marks = self._buffers.__dict__[key] = np.zeros(size, bool)
        marks.put(pflat, True)
        hit = np.count_nonzero(marks.take(offs + pflat))
        marks.put(pflat, False)
        return hit > 0

    def _merge_split(self, peak_of, part_sum, edge_sum, score, pos, part, obj):
        """Step 6: merge objects whose common parts are all within threshold_split_score.

        Candidates come from pairs of same-part peaks in different objects closer than the
        threshold (peaks are grouped by part), so the work grows with the peaks, not with the
        square of the number of objects.
        """
        lim = self.threshold_split_score
        counts = np.bincount(part, minlength=self._k)
        npairs = counts * counts
        total = int(npairs.sum())
        if total == part.size:  # no part has two peaks
            return peak_of, part_sum, edge_sum
        pid = np.repeat(np.arange(self._k), npairs)
        local = np.arange(total) - np.repeat(np.cumsum(npairs) - npairs, npairs)
        n = counts[pid]
        first = (np.cumsum(counts) - counts)[pid]
        i, j = first + local // n, first + local % n
        sel = (i < j) & (obj[i] != obj[j])
        i, j = i[sel], j[sel]
        dx, dy = pos[0, i] - pos[0, j], pos[1, i] - pos[1, j]
        near = dx * dx + dy * dy <= lim * lim
        if not near.any():
            return peak_of, part_sum, edge_sum
        oi, oj = obj[i[near]], obj[j[near]]
        nobj = len(peak_of)
        key = np.sort(np.minimum(oi, oj) * nobj + np.maximum(oi, oj))
        key = key[np.r_[True, key[1:] != key[:-1]]]  # distinct object pairs (np.unique is slower)
        pairs = np.stack(np.divmod(key, nobj), 1)  # (C, 2)
        # keep the pairs whose common parts are all near (vectorised; most fail on noise maps)
        xy = pos.T
        a, b = peak_of[pairs[:, 0]], peak_of[pairs[:, 1]]  # (C, K)
        both = (a >= 0) & (b >= 0)
        dist2 = ((xy[a] - xy[b]) ** 2).sum(-1)  # junk where not both; masked next
        pairs = pairs[~(both & (dist2 > lim * lim)).any(1)]
        if pairs.size == 0:
            return peak_of, part_sum, edge_sum
        peak_of, part_sum, edge_sum = peak_of.copy(), part_sum.copy(), edge_sum.copy()
        alive = np.ones(len(peak_of), bool)
        for i, j in pairs.tolist():
            if not (alive[i] and alive[j]):
                continue
            a, b = peak_of[i], peak_of[j]
            both = (a >= 0) & (b >= 0)
            if np.any(np.hypot(*(xy[a[both]] - xy[b[both]]).T) > lim):
                continue  # an earlier merge moved a common part away
            # keep the stronger peak of each common part; drop the weaker one's confidence
            sa, sb = np.where(a >= 0, score[a], -1.0), np.where(b >= 0, score[b], -1.0)
            take_b = (b >= 0) & ((a < 0) | (sb > sa))
            peak_of[i] = np.where(take_b, b, a)
            part_sum[i] += part_sum[j] - np.where(both, np.minimum(sa, sb), 0.0).sum()
            edge_sum[i] += edge_sum[j]
            alive[j] = False
        return peak_of[alive], part_sum[alive], edge_sum[alive]


@dataclass
class _Geometry:
    """Constants of one map shape and layout."""

    key: str  # names the thread's split-merge marks buffer ("chw_H_W" or "hwc_H_W")
    h: int
    w: int
    size: int  # heatmap elements
    strides: tuple[int, int, int]  # (part, row, col) element strides of the heatmap
    paf_strides: tuple[int, int, int]  # (channel, row, col) element strides of the PAF
    window: np.ndarray  # (Wn,) flat offsets of the gathered window (rows as decoder._win_rc)
    window_col: np.ndarray  # the same as a (Wn, 1) column
    size_hw: int  # pixels of one channel
    col_row_f: dict  # (2, H * W) column and row of each pixel (raster order), by dtype char
    code: np.ndarray  # (size,) border class of every heatmap element (0: inside)
    invalid: np.ndarray  # (classes, Wn) window offsets beyond the border, per class
    chan: np.ndarray  # (2, E) flat offsets of each edge's PAF x and y channels
    chan_f: dict  # the same by float dtype char
    pick: dict  # (2, 4) PAF flat index of (u, v, x channel, y channel) rows, by dtype char
    bounds: dict  # (2, 1) largest map coordinates (u, v), by float type
    sample_type: type  # float type of the edge samples: float32 while it holds PAF offsets
    near: dict = field(default_factory=dict)  # split-merge pre-test offsets by radius


@dataclass
class _Maps:
    """One image's maps, prepared."""

    flat: np.ndarray  # flat heatmap, input layout (float32 or float64)
    heat: np.ndarray  # the heatmap as given, 3-D
    maxpool: np.ndarray | None  # maxpool_heatmap as given, or None
    paf: np.ndarray  # flat PAF, input layout
    h: int
    w: int
    chw: bool
    geo: _Geometry
    sorted: bool  # peaks come out grouped by part
    inside: bool = False  # every peak is off the map border (known from the own sparse NMS)


# ---------------------------------------------------------------------- helpers
def _flat(a: np.ndarray) -> np.ndarray:
    """Contiguous 1-D view (copy only if needed); float16/ints become float32."""
    if a.dtype not in _FLOAT_DTYPES:
        a = a.astype(np.float32)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a.reshape(-1)


def _quiet() -> np.errstate:
    """numpy's floating-point warnings off, for the steps that may meet NaN/inf (see trace)."""
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")


def _as_scale(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    vals = list(value)
    if len(vals) != 2 or not all(float(v) > 0 and math.isfinite(float(v)) for v in vals):
        raise ValueError(f"{name} must be [rows, cols] with positive sizes, got {value!r}")
    return float(vals[0]), float(vals[1])


def _refine_border(vals, lv, curv):
    """(2, P) quadratic refinement where peaks may touch the map border (one side missing)."""
    inside = vals[1:] != -np.inf  # (4, P): left, up, right, down
    both = inside[:2] & inside[2:]  # (2, P) per axis
    # an isotropic Gaussian has one curvature: borrow the other axis's at a border
    c = np.where(both, curv, np.nan)
    c = np.where(both, c, c[::-1])
    c0, minus, plus = lv[0], lv[1:3], lv[3:5]
    slope = np.where(
        both, (plus - minus) / 2, np.where(inside[2:], plus - c0 - c / 2, c0 - minus + c / 2)
    )
    one = inside[:2] | inside[2:]
    out = np.where((c < 0) & one, -slope / c, 0.0)
    return np.where(np.isnan(out), 0.0, out)  # an infinite peak: inf / inf, no offset


def _cap_index(part: np.ndarray, score: np.ndarray, cap: int) -> np.ndarray:
    """Sorted indices of the ``cap`` best entries of each part (ties: earlier first)."""
    score = np.where(np.isnan(score), -np.inf, score)
    by_part = np.argsort(part.astype(np.int16), kind="stable")  # radix sort, keeps order
    counts = np.bincount(part)
    ends = np.cumsum(counts)
    keep = []
    for k in np.flatnonzero(counts).tolist():  # a loop over parts, not peaks
        idx = by_part[ends[k] - counts[k] : ends[k]]
        if idx.size > cap:
            idx = idx[np.argsort(-score[idx], kind="stable")[:cap]]
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def _one_to_one(key_a: np.ndarray, key_b: np.ndarray, num_keys: int) -> np.ndarray:
    """Greedy one-to-one matching of pairs listed in descending score order.

    ``key_a``/``key_b`` (n,) identify each pair's two ends (here: edge type and peak). Returns the
    positions of the pairs that sequential greedy matching would keep, in the input order, with
    whole-array rounds: a pair that is the first alive pair of both its ends is kept by greedy,
    and removes every other pair touching those ends.
    """
    alive = np.arange(key_a.size)
    chosen = []
    used = np.zeros(num_keys, bool)
    first = np.empty(num_keys, np.intp)
    while alive.size:
        a, b = key_a[alive], key_b[alive]
        pos = np.arange(alive.size)
        first[a[::-1]] = pos[::-1]  # repeated indices: the last write (the first pair) wins
        mutual = first[a] == pos
        first[b[::-1]] = pos[::-1]
        mutual &= first[b] == pos
        if mutual.all():  # no conflicts left
            chosen.append(alive)
            break
        chosen.append(alive[mutual])
        used[a[mutual]] = True
        used[b[mutual]] = True
        alive = alive[~(used[a] | used[b])]
    if len(chosen) == 1:
        return chosen[0]
    return np.sort(np.concatenate(chosen)) if chosen else alive


def _greedy_union(
    order: Iterable[int],
    cand_e: list[int],
    cand_a: list[int],
    cand_b: list[int],
    part: list[int],
    bits: list[int],
):
    """Greedy matching over the candidates ``order`` (positions, sorted by descending score).

    An edge is taken unless one of its peaks already has an edge of its type (one-to-one per
    edge type, as ``_one_to_one``); a taken edge joins the objects of its two peaks unless they
    would then hold two peaks of one part. ``bits[k]`` is ``1 << k`` (part bitmasks). Returns
    each peak's union-find root and the accepted candidate positions, in matching order.
    """
    n = len(part)
    parent = list(range(n))
    mask = list(map(bits.__getitem__, part))  # parts of each root's object
    used = [0] * n  # edge types each peak already has, as bits
    accepted = []
    for i in order:
        a, b, bit = cand_a[i], cand_b[i], 1 << cand_e[i]
        ua, ub = used[a], used[b]
        if (ua | ub) & bit:
            continue
        used[a], used[b] = ua | bit, ub | bit
        ra = parent[a]
        while parent[ra] != ra:
            ra = parent[ra]
        rb = parent[b]
        while parent[rb] != rb:
            rb = parent[rb]
        parent[a], parent[b] = ra, rb  # shorten later walks
        if ra == rb or mask[ra] & mask[rb]:
            continue
        parent[rb] = ra
        mask[ra] |= mask[rb]
        accepted.append(i)
    return _roots(parent), accepted


def _roots(parent: list[int]) -> list[int]:
    """Root of every node of a union-find forest (compressing the paths in place)."""
    for i, r in enumerate(parent):
        if parent[r] != r:
            while parent[r] != r:
                r = parent[r]
            parent[i] = r
    return parent
