"""Reference decoder: the Isaac ``OpenPoseDecoder`` steps in plain numpy and Python.

This module is the specification. It is written for reading, not speed; the run-time decoder
(``inference.decoder.fast``) must give identical results and is tested against it. Each step
is one function named after the Isaac step it implements, with Isaac's parameter names:

1. NMS: a part candidate is a pixel equal to the max-pool of its part's heatmap over a
   ``maxpool_kernel`` window (-inf beyond the border; NaN never suppresses). The max-pool may
   come from the exported graph (``maxpool_heatmap``). A plateau keeps only its first pixel in
   raster order, so one part gives one peak.
2. Peak confidence is the heatmap value (+inf counts as 1); peaks must exceed
   ``threshold_heatmap``. ``max_peaks_per_part`` keeps the strongest peaks of a part (a time
   guard for noise maps; real maps have far fewer).
7. ``refine_parts_coordinates`` (done before the edges, which are sampled between refined
   positions): ``quadratic`` fits a parabola to the log of the peak's 3x3 cross (exact for a
   Gaussian); ``centroid`` is trt_pose's weighted 3x3 mean. Offsets are clamped to +-0.5 px.
3. Edge candidates: every (from-part peak, to-part peak) pair of every directed edge.
4. Edge score: ``edge_sampling_steps`` samples at the centres of equal pieces of the segment,
   rounded to map pixels; each sample's score is dot(PAF there, unit edge vector), NaN counted
   as 0 and clipped to [-1, 1]. A candidate is an edge when more than
   ``threshold_edge_sampling_counter`` samples exceed ``threshold_edge_score``; its score is the
   mean. A limb shorter than one pixel has no resolvable segment: every sample takes the best
   dot product of the 3x3 window around its midpoint.
5. Graph matching: edges by descending score over all edge types, one-to-one per edge type (a
   peak takes at most one edge of each type); a taken edge joins the objects of its two peaks
   unless they would then hold two peaks of one part.
6. Merging split graphs: objects whose common parts all lie within ``threshold_split_score``
   map pixels are one object seen twice; they merge, keeping the stronger peak of each part.
6b. Joining fragments (beyond Isaac): part-disjoint objects that no PAF links, pieces of one
   object whose linking parts are not seen, are joined closest pair first while their gap (the
   distance of their closest parts per reach, the limb lengths along the topology path between
   them, in the smaller object's size) is at most ``threshold_join_fragments``.
5b. Filters: objects need more than ``threshold_part_counter`` parts and a score of at least
   ``threshold_object_score``; the score is (sum of part confidences + sum of edge scores) /
   (K + E), 1.0 for a complete object seen with full confidence. The ``max_objects`` best
   (0: all) are kept, by descending score.
8. ``output_scale`` (``DecoderBase.skeletons``): map coordinates to image pixels.

Sums are formed in a fixed order (sequentially, as the fast decoder's loops do) and roundings
as floor(x + 0.5), so both decoders agree to the last bit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from inference.decoder.base import Decoded, DecoderBase

TINY = 1e-12  # log floor of the refinement; below it a value is "no signal"


def step1_nms(heat: np.ndarray, kernel: int, maxpool: np.ndarray | None) -> np.ndarray:
    """(K, H, W) bool: pixels equal to their window's maximum, first pixel of a plateau."""
    k, h, w = heat.shape
    r = kernel // 2
    padded = np.full((k, h + 2 * r, w + 2 * r), -np.inf, np.float32)
    padded[:, r : r + h, r : r + w] = np.where(np.isnan(heat), -np.inf, heat)
    peak = np.ones(heat.shape, bool)
    for dr in range(-r, r + 1):
        for dc in range(-r, r + 1):
            other = padded[:, r + dr : r + dr + h, r + dc : r + dc + w]
            if (dr, dc) < (0, 0):  # before the pixel in raster order: must be strictly lower
                peak &= heat > other
            elif (dr, dc) > (0, 0) and maxpool is None:
                peak &= heat >= other
    if maxpool is not None:  # Isaac: heatmap == max-pooled heatmap from the graph
        peak &= heat == maxpool
    return peak


def step2_peaks(heat: np.ndarray, is_peak: np.ndarray, threshold_heatmap: float, cap: int):
    """Peaks above ``threshold_heatmap``: (part, row, col, score), grouped by part, raster
    order within a part, at most ``cap`` (the strongest; ties: earlier first) per part."""
    part, row, col = np.nonzero(is_peak & (heat > threshold_heatmap))
    score = heat[part, row, col].astype(np.float64)
    score[np.isinf(score)] = 1.0  # (only +inf passes the threshold)
    keep = []
    for k in range(heat.shape[0]):
        idx = np.flatnonzero(part == k)
        if idx.size > cap:
            idx = np.sort(idx[np.argsort(-score[idx], kind="stable")[:cap]])
        keep.append(idx)
    keep = np.concatenate(keep)
    return (
        part[keep].astype(np.int64),
        row[keep].astype(np.int64),
        col[keep].astype(np.int64),
        score[keep],
    )


def _log(v: float) -> float:
    return math.log(v) if v > TINY else math.log(TINY)  # NaN and <= TINY: the floor


def _axis_offset(l0: float, lm: float | None, lp: float | None, curv: float) -> float:
    """Vertex of the parabola through (-1, lm), (0, l0), (1, lp); one side may be missing
    (None, at the map border): then ``curv`` (the other axis's) stands in for it."""
    if not curv < 0:  # flat, convex or unknown: no offset
        return 0.0
    if lm is not None and lp is not None:
        off = (lm - lp) / (2 * curv)
    elif lp is not None:
        off = -(lp - l0 - curv / 2) / curv
    elif lm is not None:
        off = -(l0 - lm + curv / 2) / curv
    else:
        return 0.0
    return 0.0 if math.isnan(off) else min(max(off, -0.5), 0.5)


def refine_quadratic(heat: np.ndarray, k: int, r: int, c: int) -> tuple[float, float]:
    """(du, dv) of one peak from the log of its 3x3 cross (missing sides at the border)."""
    _, h, w = heat.shape
    l0 = _log(float(heat[k, r, c]))
    left = _log(float(heat[k, r, c - 1])) if c > 0 else None
    right = _log(float(heat[k, r, c + 1])) if c < w - 1 else None
    up = _log(float(heat[k, r - 1, c])) if r > 0 else None
    down = _log(float(heat[k, r + 1, c])) if r < h - 1 else None
    nan = float("nan")
    cu = left + right - 2 * l0 if left is not None and right is not None else nan
    cv = up + down - 2 * l0 if up is not None and down is not None else nan
    # an isotropic Gaussian has one curvature: an axis cut by the border borrows the other's
    du = _axis_offset(l0, left, right, cu if not math.isnan(cu) else cv)
    dv = _axis_offset(l0, up, down, cv if not math.isnan(cv) else cu)
    return du, dv


def refine_centroid(heat: np.ndarray, k: int, r: int, c: int) -> tuple[float, float]:
    """(du, dv) of one peak: trt_pose's mean offset over the 3x3 window weighted by values > 0."""
    _, h, w = heat.shape
    total = su = sv = 0.0
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if 0 <= r + dr < h and 0 <= c + dc < w:
                v = float(heat[k, r + dr, c + dc])
                if v > 0:  # (NaN: no weight)
                    v = min(v, 1e30)
                    total += v
                    su += v * dc
                    sv += v * dr
    total = max(total, TINY)
    return min(max(su / total, -0.5), 0.5), min(max(sv / total, -0.5), 0.5)


def step7_refine(heat, part, row, col, refine: bool, method: str) -> np.ndarray:
    """(P, 2) map coordinates (u, v) of the peaks: pixel index + sub-pixel offset."""
    xy = np.stack([col, row], 1).astype(np.float64)
    if refine:
        fn = refine_quadratic if method == "quadratic" else refine_centroid
        for i, (k, r, c) in enumerate(zip(part.tolist(), row.tolist(), col.tolist(), strict=True)):
            du, dv = fn(heat, k, r, c)
            xy[i, 0] += du
            xy[i, 1] += dv
    return xy


def step3_candidates(part: np.ndarray, edges: np.ndarray):
    """(edge, from-peak, to-peak) of every pair of peaks of every edge's two parts."""
    out = [np.zeros(0, np.int64)] * 3
    for e, (ka, kb) in enumerate(edges.tolist()):
        ia, ib = np.flatnonzero(part == ka), np.flatnonzero(part == kb)
        a, b = np.meshgrid(ia, ib, indexing="ij")
        out = [
            np.concatenate([out[0], np.full(a.size, e, np.int64)]),
            np.concatenate([out[1], a.reshape(-1)]),
            np.concatenate([out[2], b.reshape(-1)]),
        ]
    return out[0], out[1], out[2]


def _dot(paf, cx, cy, rows, cols, ux, uy):
    """PAF . unit vector at pixels; NaN gives 0, values clipped to [-1, 1]."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 is NaN, counted as 0 next
        px, py = paf[cx, rows, cols].astype(np.float64), paf[cy, rows, cols].astype(np.float64)
        d = px * ux + py * uy
    return np.clip(np.where(np.isnan(d), 0.0, d), -1.0, 1.0)


def step4_edge_scores(paf, xy, edge, a, b, edges_paf, steps: int, thr: float, counter: int):
    """Mean sample score, samples above ``threshold_edge_score`` and ok of every candidate."""
    _, h, w = paf.shape
    lo, hi = np.zeros(2), np.array([w - 1.0, h - 1.0])
    pa, pb = np.clip(xy[a], lo, hi), np.clip(xy[b], lo, hi)  # samples round to map pixels
    d = pb - pa  # (T, 2)
    length = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1])
    safe = np.where(length > 0, length, 1.0)
    ux, uy = d[:, 0] / safe, d[:, 1] / safe
    cx, cy = edges_paf[edge, 0], edges_paf[edge, 1]
    dots = np.empty((steps, edge.size))  # (S, T)
    for s in range(steps):
        t = (s + 0.5) / steps
        cols = np.floor(pa[:, 0] + d[:, 0] * t + 0.5).astype(np.int64)
        rows = np.floor(pa[:, 1] + d[:, 1] * t + 0.5).astype(np.int64)
        dots[s] = _dot(paf, cx, cy, rows, cols, ux, uy)
    short = np.flatnonzero(length < 1.0)
    if short.size:  # the best of the 3x3 window around the midpoint, for every sample
        mc = np.floor(pa[short, 0] + d[short, 0] * 0.5 + 0.5).astype(np.int64)
        mr = np.floor(pa[short, 1] + d[short, 1] * 0.5 + 0.5).astype(np.int64)
        best = np.full(short.size, -np.inf)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = mr + dr, mc + dc
                inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
                v = _dot(paf, cx[short], cy[short], rr.clip(0, h - 1), cc.clip(0, w - 1),
                         ux[short], uy[short])  # fmt: skip
                best = np.where(inside, np.maximum(best, v), best)
        dots[:, short] = best
    total = np.zeros(edge.size)
    for s in range(steps):  # sequential sum (the fast decoder's order)
        total += dots[s]
    count = (dots > thr).sum(0).astype(np.int64)
    return total / steps, count, count > counter


def step5_match(part, score_e, edge, a, b, ok, num_parts: int, num_edges: int):
    """Greedy matching by descending edge score. Returns the (P, K) part table of each object
    (indexed by its smallest peak; -1: no peak), its edge-score sum and the accepted edges."""
    n = part.size
    label = np.arange(n)  # object of each peak: the smallest peak index in it
    table = np.full((n, num_parts), -1, np.int64)
    table[label, part] = label
    used = np.zeros((n, num_edges), bool)  # edge types each peak already has
    edge_sum = np.zeros(n)
    accepted = []
    okidx = np.flatnonzero(ok)
    for c in okidx[np.argsort(-score_e[okidx], kind="stable")].tolist():
        i, j, e = a[c], b[c], edge[c]
        if used[i, e] or used[j, e]:
            continue
        li, lj = label[i], label[j]
        if li != lj and ((table[li] >= 0) & (table[lj] >= 0)).any():
            continue  # joining would give the object two peaks of one part
        used[i, e] = used[j, e] = True
        if li != lj:
            lo, hi = min(li, lj), max(li, lj)
            table[lo] = np.where(table[hi] >= 0, table[hi], table[lo])
            table[hi] = -1
            label[label == hi] = lo
            edge_sum[lo] += edge_sum[hi]
        edge_sum[label[i]] += score_e[c]
        accepted.append(c)
    alive = np.flatnonzero(label == np.arange(n))
    return table[alive], edge_sum[alive], np.array(accepted, np.int64)


def _mergeable(ta: np.ndarray, tb: np.ndarray, xy: np.ndarray, lim: float) -> bool:
    both = (ta >= 0) & (tb >= 0)
    if not both.any():
        return False
    d = xy[ta[both]] - xy[tb[both]]
    return bool((d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] <= lim * lim).all())


def step6_merge_split(table, edge_sum, score, xy, threshold_split_score: float):
    """Merge each object with every later one whose common parts are all within the threshold
    (in object order, the merged object growing as it goes); the stronger peak of a common part
    stays (ties: the earlier object's)."""
    table, edge_sum = table.copy(), edge_sum.copy()
    alive = np.ones(len(table), bool)
    if threshold_split_score <= 0:
        return table, edge_sum
    for i in range(len(table)):
        for j in range(i + 1, len(table)):
            if alive[i] and alive[j] and _mergeable(table[i], table[j], xy, threshold_split_score):
                ti, tj = table[i], table[j]
                si = np.where(ti >= 0, score[ti], -np.inf)
                sj = np.where(tj >= 0, score[tj], -np.inf)
                table[i] = np.where(sj > si, tj, ti)
                edge_sum[i] += edge_sum[j]
                alive[j] = False
    return table[alive], edge_sum[alive]


class JoinGraph(NamedTuple):
    """What step 6b uses of the topology: ``unit`` (E,) each edge's typical length relative to
    the mean edge (``Topology.limb_lengths``; all 1 without them), ``paths`` (K, K) the typical
    length of the shortest path of edges between two parts in those units (0 on the diagonal,
    inf where no path joins them) and ``adjacent`` (K, K) whether an edge joins two parts."""

    unit: np.ndarray
    paths: np.ndarray
    adjacent: np.ndarray


def join_graph(topology) -> JoinGraph:
    """The topology's ``JoinGraph`` (Floyd-Warshall over the edges' typical lengths)."""
    edges = np.asarray(topology.edges, np.int64).reshape(-1, 2)
    lengths = np.asarray(topology.limb_lengths or [1.0] * len(edges), np.float64)
    unit = lengths / lengths.mean() if len(lengths) else lengths
    k = topology.num_parts
    paths, adjacent = np.full((k, k), np.inf), np.zeros((k, k), bool)
    np.fill_diagonal(paths, 0.0)
    for (a, b), u in zip(edges.tolist(), unit.tolist(), strict=True):
        paths[a, b] = paths[b, a] = min(paths[a, b], u)
        adjacent[a, b] = adjacent[b, a] = True
    for m in range(k):
        paths = np.minimum(paths, paths[:, m : m + 1] + paths[m : m + 1, :])
    return JoinGraph(unit, paths, adjacent)


def _limb_scale(t: np.ndarray, xy: np.ndarray, edges: np.ndarray, unit: np.ndarray) -> float:
    """The object's size in limb units: the largest over its limbs (edges with both parts
    present) of length / the edge's typical length (a limb seen at an angle only looks
    shorter, so the longest is the least foreshortened); NaN without any limb."""
    best = math.nan
    for e, (ka, kb) in enumerate(edges.tolist()):
        if t[ka] >= 0 and t[kb] >= 0:
            d = xy[t[kb]] - xy[t[ka]]
            v = math.sqrt(d[0] * d[0] + d[1] * d[1]) / unit[e]
            if math.isnan(best) or v > best:
                best = v
    return best


def _fmin(a: float, b: float) -> float:
    """min that ignores NaN (NaN only if both are)."""
    return b if math.isnan(a) else a if math.isnan(b) else min(a, b)


def _join_gap(ti, tj, si: float, sj: float, image: float, xy, graph: JoinGraph) -> float:
    """How far apart two objects are for step 6b: the smallest distance / (typical length of
    the topology path) over pairs of their parts, in limb scales. inf: a common part, no path, or
    an edge of the topology between a part of each: step 4 scored that limb and step 5 did not
    take it, so the PAF says they are apart."""
    if ((ti >= 0) & (tj >= 0)).any():
        return math.inf
    s = _fmin(si, sj)  # the smaller size: a large object does not pull in far pieces
    s = image if math.isnan(s) else s
    if math.isnan(s) or s <= 0:
        return math.inf
    q = math.inf
    for ka in np.flatnonzero(ti >= 0).tolist():
        for kb in np.flatnonzero(tj >= 0).tolist():
            if graph.adjacent[ka, kb]:
                return math.inf
            if math.isfinite(graph.paths[ka, kb]):
                d = xy[tj[kb]] - xy[ti[ka]]
                q = min(q, math.sqrt(d[0] * d[0] + d[1] * d[1]) / graph.paths[ka, kb] / s)
    return q


def step6b_join_fragments(table, edge_sum, xy, edges, graph: JoinGraph, threshold: float):
    """Join fragments that no PAF links: pieces of one object whose linking parts are not
    seen (e.g. a person without a neck falls apart into head, arms and legs).

    Two objects with no part in common and no topology edge between their parts (the PAF
    already said no to that limb) are ``q`` apart (``_join_gap``): the distance of their
    closest parts per typical length of the topology path between them, in units of the
    smaller of their limb scales (``_limb_scale``; for two objects without limbs, the image's
    median). With ``Topology.limb_lengths`` a head seen alone (short limbs) and a leg are
    measured alike; without them every edge counts as one limb.
    The closest pair of objects is joined while ``q <= threshold``, then the joined object's
    gaps to the others are measured again (its parts and scale changed): pieces of one object
    find each other closest first, and a piece between two objects goes to the closer one.
    Ties: the pair first in (i, j) order. The joined object takes the lower index.
    """
    n = len(table)
    if threshold <= 0 or n < 2:
        return table, edge_sum
    table, edge_sum = table.copy(), edge_sum.copy()
    limb = np.array([_limb_scale(t, xy, edges, graph.unit) for t in table])
    image = float(np.median(limb[np.isfinite(limb)])) if np.isfinite(limb).any() else math.nan
    q = np.full((n, n), math.inf)  # gaps of pairs i < j; inf below the diagonal
    for i in range(n):
        for j in range(i + 1, n):
            q[i, j] = _join_gap(table[i], table[j], limb[i], limb[j], image, xy, graph)
    while True:
        i, j = np.unravel_index(int(np.argmin(q)), q.shape)  # first minimum in (i, j) order
        if not q[i, j] <= threshold:
            break
        table[i] = np.where(table[j] >= 0, table[j], table[i])
        table[j] = -1
        edge_sum[i] += edge_sum[j]
        q[j, :] = q[:, j] = math.inf
        limb[i] = _limb_scale(table[i], xy, edges, graph.unit)
        for m in np.flatnonzero((table >= 0).any(1)).tolist():
            if m != i:
                a, b = min(i, m), max(i, m)
                q[a, b] = _join_gap(table[a], table[b], limb[a], limb[b], image, xy, graph)
    alive = (table >= 0).any(1)
    return table[alive], edge_sum[alive]


def step5_filter(table, edge_sum, score, num_edges: int, dec: DecoderBase):
    """Object scores; filters by part count and score; sorted by descending score, capped."""
    k = table.shape[1]
    nparts = (table >= 0).sum(1)
    oscore = np.zeros(len(table))
    for o in range(len(table)):
        part_sum = 0.0
        for p in table[o].tolist():
            if p >= 0:
                part_sum += score[p]
        oscore[o] = (part_sum + edge_sum[o]) / (k + num_edges)
    keep = np.flatnonzero(
        (nparts > dec.threshold_part_counter) & (oscore >= dec.threshold_object_score)
    )
    keep = keep[np.argsort(-oscore[keep], kind="stable")]
    if dec.max_objects > 0:
        keep = keep[: dec.max_objects]
    return table[keep], oscore[keep]


class ReferenceDecoder(DecoderBase):
    """The reference decoder (slow, readable); same interface as ``OpenPoseDecoder``."""

    def __init__(self, topology, **params) -> None:
        super().__init__(topology, **params)
        self.graph = join_graph(topology)

    def _decode(self, heat, paf, maxpool) -> Decoded:
        is_peak = step1_nms(heat, self.maxpool_kernel, maxpool)
        part, row, col, score = step2_peaks(
            heat, is_peak, self.threshold_heatmap, self.max_peaks_per_part
        )
        xy = step7_refine(heat, part, row, col, self.refine_parts_coordinates, self.refine_method)
        edge, a, b = step3_candidates(part, self.edges)
        cscore, count, ok = step4_edge_scores(
            paf, xy, edge, a, b, self.edges_paf, self.edge_sampling_steps,
            self.threshold_edge_score, self.threshold_edge_sampling_counter,
        )  # fmt: skip
        k, e = self.topology.num_parts, self.topology.num_edges
        table, edge_sum, accepted = step5_match(part, cscore, edge, a, b, ok, k, e)
        table, edge_sum = step6_merge_split(table, edge_sum, score, xy, self.threshold_split_score)
        table, edge_sum = step6b_join_fragments(
            table, edge_sum, xy, self.edges, self.graph, self.threshold_join_fragments
        )
        objects, oscore = step5_filter(table, edge_sum, score, e, self)
        return Decoded(
            part, row, col, score, xy, edge, a, b, cscore, count, ok, accepted, objects, oscore
        )
