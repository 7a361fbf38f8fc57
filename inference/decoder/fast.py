"""Fast decoder: the reference decoder's steps compiled with numba (``OpenPoseDecoder``).

Each ``_stepN`` function is the loop form of ``inference.decoder.reference.stepN`` and gives
bit-identical results (same operations in the same order; the tests compare the two on every
hand-built case and on the oracle maps of both coco-mini files). Why numba rather than a C++
extension: the loops stay Python that reads like the reference, nothing is built at install
time (a wheel for x86-64 and aarch64 Linux), and the measured per-call overhead (a few us) fits
the time goals (see scripts/bench_decoder.py). Compiled code is cached on disk (``cache=True``,
in ``__pycache__`` or ``NUMBA_CACHE_DIR``): the first call in a fresh checkout compiles for a
few seconds, later processes load it.

The heatmap is scanned row by row: a row is read pixel by pixel only if it holds a value above
``threshold_heatmap`` (a counting loop the compiler vectorises), and only up to the last such
value, so a real map costs little more than one pass over memory.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from inference.decoder.base import Decoded, DecoderBase, Skeleton, as_scale
from inference.decoder.reference import TINY, join_graph

_JIT = {"cache": True, "nogil": True}


# ---------------------------------------------------------------------- steps 1-2: peaks
@njit(**_JIT)
def _is_peak(heat, mp, use_mp, k, r, c, rad):
    v = heat[k, r, c]
    _, h, w = heat.shape
    for dr in range(-rad, rad + 1):
        for dc in range(-rad, rad + 1):
            rr, cc = r + dr, c + dc
            if (dr == 0 and dc == 0) or rr < 0 or rr >= h or cc < 0 or cc >= w:
                continue
            nb = heat[k, rr, cc]
            if nb != nb:  # NaN never suppresses
                continue
            if dr < 0 or (dr == 0 and dc < 0):  # before in raster order: strictly lower
                if not v > nb:
                    return False
            elif not use_mp and not v >= nb:
                return False
    return not use_mp or v == mp[k, r, c]


@njit(**_JIT)
def _is_peak3(up, line, down, c, v):
    """``_is_peak`` for the 3x3 window of the own max-pool (the default) inside the map, on
    row views and without branches (an above-threshold pixel's test is unpredictable)."""
    # "not nb >= v" is "v > nb or nb is NaN" (NaN never suppresses)
    return (
        (not up[c - 1] >= v) & (not up[c] >= v) & (not up[c + 1] >= v) & (not line[c - 1] >= v)
        & (not line[c + 1] > v) & (not down[c - 1] > v) & (not down[c] > v) & (not down[c + 1] > v)
    )  # fmt: skip


@njit(**_JIT)
def _step12_peaks(heat, mp, use_mp, thr, kernel, cap):
    """(part, row, col, score) of the peaks, grouped by part, at most ``cap`` per part.

    ``thr`` is compared in float32, as numpy compares a float32 map with a Python float."""
    kk, h, w = heat.shape
    t32 = np.float32(thr)
    rad = kernel // 2
    above = np.zeros((kk, h), np.int32)  # pixels above threshold per row
    for k in range(kk):
        for r in range(h):
            line = heat[k, r]
            n = np.int32(0)
            for c in range(w):  # vectorised count: most rows have no value above threshold
                n += np.int32(line[c] > t32)
            above[k, r] = n
    most = above.sum(1).max() if kk else 0
    buf_r, buf_c = np.empty(most + 1, np.int64), np.empty(most + 1, np.int64)
    buf_s = np.empty(most + 1, np.float64)  # (+1: the last write)
    m = min(cap, h * w)
    part, row, col = (
        np.empty(kk * m, np.int64),
        np.empty(kk * m, np.int64),
        np.empty(kk * m, np.int64),
    )
    score = np.empty(kk * m, np.float64)
    n = 0
    fast3 = rad == 1 and not use_mp and h >= 3 and w >= 3
    for k in range(kk):
        cnt = 0
        for r in range(h):
            if above[k, r] == 0:
                continue
            line = heat[k, r]
            inner = fast3 and 0 < r < h - 1
            up, down = heat[k, max(r - 1, 0)], heat[k, min(r + 1, h - 1)]
            left = above[k, r]  # values above threshold still ahead in this row
            for c in range(w):
                v = line[c]
                if not v > t32:
                    continue
                left -= 1
                if inner and 0 < c < w - 1:
                    ok = _is_peak3(up, line, down, c, v)
                else:
                    ok = _is_peak(heat, mp, use_mp, k, r, c, rad)
                # written always, kept by counting: no branch on the unpredictable test
                buf_r[cnt], buf_c[cnt] = r, c
                buf_s[cnt] = 1.0 if math.isinf(v) else np.float64(v)
                cnt += ok
                if left == 0:  # the rest of the row is at or below threshold
                    break
        if cnt > cap:  # the strongest (ties: earlier first), back in raster order
            sel = _strongest(buf_s, cnt, cap)
        else:
            sel = np.arange(cnt)
        for i in sel:
            part[n], row[n], col[n], score[n] = k, buf_r[i], buf_c[i], buf_s[i]
            n += 1
    return part[:n], row[:n], col[:n], score[:n]


@njit(**_JIT)
def _strongest(score, n, cap):
    """Indices of the ``cap`` largest of ``score[:n]`` (ties: the earlier), ascending: the
    reference's stable sort by descending score, cut at ``cap``, kept by insertion into a sorted
    list of ``cap`` (noise maps hold thousands of peaks per part, and most lose at once)."""
    top_s, top_i = np.empty(cap), np.empty(cap, np.int64)
    m = 0
    for i in range(n):
        v = score[i]
        if m == cap and not v > top_s[cap - 1]:
            continue
        if m < cap:
            pos = m
            m += 1
        else:
            pos = cap - 1  # the weakest kept one goes
        while pos > 0 and top_s[pos - 1] < v:  # behind every kept score >= v
            top_s[pos], top_i[pos] = top_s[pos - 1], top_i[pos - 1]
            pos -= 1
        top_s[pos], top_i[pos] = v, i
    return np.sort(top_i[:m])


# ---------------------------------------------------------------------- step 7: refinement
@njit(**_JIT)
def _log(v):
    return math.log(v) if v > TINY else math.log(TINY)


@njit(**_JIT)
def _axis_offset(l0, lm, has_m, lp, has_p, curv):
    if not curv < 0:
        return 0.0
    if has_m and has_p:
        off = (lm - lp) / (2 * curv)
    elif has_p:
        off = -(lp - l0 - curv / 2) / curv
    elif has_m:
        off = -(l0 - lm + curv / 2) / curv
    else:
        return 0.0
    return 0.0 if math.isnan(off) else min(max(off, -0.5), 0.5)


@njit(**_JIT)
def _refine_quadratic(heat, k, r, c):
    _, h, w = heat.shape
    l0 = _log(np.float64(heat[k, r, c]))
    has_l, has_r, has_u, has_d = c > 0, c < w - 1, r > 0, r < h - 1
    left = _log(np.float64(heat[k, r, c - 1])) if has_l else 0.0
    right = _log(np.float64(heat[k, r, c + 1])) if has_r else 0.0
    up = _log(np.float64(heat[k, r - 1, c])) if has_u else 0.0
    down = _log(np.float64(heat[k, r + 1, c])) if has_d else 0.0
    cu = left + right - 2 * l0 if has_l and has_r else math.nan
    cv = up + down - 2 * l0 if has_u and has_d else math.nan
    du = _axis_offset(l0, left, has_l, right, has_r, cu if not math.isnan(cu) else cv)
    dv = _axis_offset(l0, up, has_u, down, has_d, cv if not math.isnan(cv) else cu)
    return du, dv


@njit(**_JIT)
def _refine_centroid(heat, k, r, c):
    _, h, w = heat.shape
    total = su = sv = 0.0
    for dr in range(-1, 2):
        for dc in range(-1, 2):
            if 0 <= r + dr < h and 0 <= c + dc < w:
                v = np.float64(heat[k, r + dr, c + dc])
                if v > 0:
                    v = min(v, 1e30)
                    total += v
                    su += v * dc
                    sv += v * dr
    total = max(total, TINY)
    return min(max(su / total, -0.5), 0.5), min(max(sv / total, -0.5), 0.5)


@njit(**_JIT)
def _step7_refine(heat, part, row, col, refine, centroid):
    xy = np.empty((part.size, 2))
    for i in range(part.size):
        xy[i, 0], xy[i, 1] = col[i], row[i]
        if refine:
            if centroid:
                du, dv = _refine_centroid(heat, part[i], row[i], col[i])
            else:
                du, dv = _refine_quadratic(heat, part[i], row[i], col[i])
            xy[i, 0] += du
            xy[i, 1] += dv
    return xy


# ---------------------------------------------------------------------- steps 3-4: edges
@njit(**_JIT)
def _step3_candidates(part, edges, num_parts):
    start = np.zeros(num_parts + 1, np.int64)
    for p in part:
        start[p + 1] += 1
    start = np.cumsum(start)
    t = 0
    for e in range(edges.shape[0]):
        ka, kb = edges[e, 0], edges[e, 1]
        t += (start[ka + 1] - start[ka]) * (start[kb + 1] - start[kb])
    edge, a, b = np.empty(t, np.int64), np.empty(t, np.int64), np.empty(t, np.int64)
    t = 0
    for e in range(edges.shape[0]):
        ka, kb = edges[e, 0], edges[e, 1]
        for i in range(start[ka], start[ka + 1]):
            for j in range(start[kb], start[kb + 1]):
                edge[t], a[t], b[t] = e, i, j
                t += 1
    return edge, a, b


@njit(**_JIT)
def _dot(paf, cx, cy, r, c, ux, uy):
    d = np.float64(paf[cx, r, c]) * ux + np.float64(paf[cy, r, c]) * uy
    if d != d:
        return 0.0
    return min(max(d, -1.0), 1.0)


@njit(**_JIT)
def _step4_edge_scores(paf, xy, edge, a, b, edges_paf, steps, thr, counter, exact):
    """``exact`` false (the run-time call): a candidate stops being sampled once too few
    samples are left to pass ``threshold_edge_sampling_counter``; its score and count are then
    partial, but it is rejected all the same, and every candidate that passes is sampled in full,
    so the skeletons do not change. In crowds most candidates join two people and stop after
    ``steps - counter`` samples."""
    _, h, w = paf.shape
    t_ = edge.size
    score, count, ok = np.empty(t_), np.empty(t_, np.int64), np.empty(t_, np.bool_)
    frac = np.empty(steps)  # where the samples lie on every segment
    for s in range(steps):
        frac[s] = (s + 0.5) / steps
    px, py = np.empty(xy.shape[0]), np.empty(xy.shape[0])  # each peak clipped to the map once
    for i in range(xy.shape[0]):
        px[i] = min(max(xy[i, 0], 0.0), w - 1.0)
        py[i] = min(max(xy[i, 1], 0.0), h - 1.0)
    for t in range(t_):
        ax, ay = px[a[t]], py[a[t]]
        dx, dy = px[b[t]] - ax, py[b[t]] - ay
        length = math.sqrt(dx * dx + dy * dy)
        safe = length if length > 0 else 1.0
        ux, uy = dx / safe, dy / safe
        cx, cy = edges_paf[edge[t], 0], edges_paf[edge[t], 1]
        total, n = 0.0, 0
        if length < 1.0:  # short limb: the best of the 3x3 window around the midpoint
            mc = int(math.floor(ax + dx * 0.5 + 0.5))
            mr = int(math.floor(ay + dy * 0.5 + 0.5))
            best = -math.inf
            for dr in range(-1, 2):
                for dc in range(-1, 2):
                    if 0 <= mr + dr < h and 0 <= mc + dc < w:
                        best = max(best, _dot(paf, cx, cy, mr + dr, mc + dc, ux, uy))
            for _ in range(steps):
                total += best
                n += best > thr
        else:
            for s in range(steps):
                f = frac[s]
                c = int(ax + dx * f + 0.5)  # the sum is >= 0.5 (clipped ends): int() is floor()
                r = int(ay + dy * f + 0.5)
                v = _dot(paf, cx, cy, r, c, ux, uy)
                total += v
                n += v > thr
                if not exact and n + steps - 1 - s <= counter:  # cannot pass any more
                    break
        score[t], count[t], ok[t] = total / steps, n, n > counter
    return score, count, ok


# ---------------------------------------------------------------------- step 5: matching
@njit(**_JIT)
def _step5_match(part, score_e, edge, a, b, ok, num_parts, num_edges):
    n = part.size
    label = np.arange(n)
    table = np.full((n, num_parts), -1, np.int64)
    for i in range(n):
        table[i, part[i]] = i
    used = np.zeros((n, num_edges), np.bool_)
    edge_sum = np.zeros(n)
    okidx = np.flatnonzero(ok)
    order = okidx[np.argsort(-score_e[okidx], kind="mergesort")]
    accepted = np.empty(order.size, np.int64)
    na = 0
    for c in order:
        i, j, e = a[c], b[c], edge[c]
        if used[i, e] or used[j, e]:
            continue
        li, lj = label[i], label[j]
        if li != lj and _overlap(table[li], table[lj]):
            continue
        used[i, e] = used[j, e] = True
        if li != lj:
            lo, hi = min(li, lj), max(li, lj)
            for k in range(num_parts):
                if table[hi, k] >= 0:
                    table[lo, k] = table[hi, k]
                table[hi, k] = -1
            for p in range(n):
                if label[p] == hi:
                    label[p] = lo
            edge_sum[lo] += edge_sum[hi]
        edge_sum[label[i]] += score_e[c]
        accepted[na] = c
        na += 1
    alive = np.flatnonzero(label == np.arange(n))
    return table[alive], edge_sum[alive], accepted[:na]


@njit(**_JIT)
def _overlap(ta, tb):
    for k in range(ta.size):
        if ta[k] >= 0 and tb[k] >= 0:
            return True
    return False


# ---------------------------------------------------------------------- step 6: merging
@njit(**_JIT)
def _mergeable(ta, tb, xy, lim):
    common = False
    for k in range(ta.size):
        if ta[k] >= 0 and tb[k] >= 0:
            common = True
            dx = xy[ta[k], 0] - xy[tb[k], 0]
            dy = xy[ta[k], 1] - xy[tb[k], 1]
            if not dx * dx + dy * dy <= lim * lim:
                return False
    return common


@njit(**_JIT)
def _step6_merge_split(table, edge_sum, score, xy, lim):
    table, edge_sum = table.copy(), edge_sum.copy()
    o, kk = table.shape
    alive = np.ones(o, np.bool_)
    if lim <= 0:
        return table, edge_sum
    for i in range(o):
        for j in range(i + 1, o):
            if alive[i] and alive[j] and _mergeable(table[i], table[j], xy, lim):
                for k in range(kk):
                    si = score[table[i, k]] if table[i, k] >= 0 else -math.inf
                    sj = score[table[j, k]] if table[j, k] >= 0 else -math.inf
                    if sj > si:
                        table[i, k] = table[j, k]
                edge_sum[i] += edge_sum[j]
                alive[j] = False
    return table[alive], edge_sum[alive]


@njit(**_JIT)
def _limb_scale(t, xy, edges, unit):
    """Step 6b's size of an object (see ``reference._limb_scale``)."""
    best = math.nan
    for e in range(edges.shape[0]):
        ka, kb = edges[e, 0], edges[e, 1]
        if t[ka] >= 0 and t[kb] >= 0:
            dx = xy[t[kb], 0] - xy[t[ka], 0]
            dy = xy[t[kb], 1] - xy[t[ka], 1]
            v = math.sqrt(dx * dx + dy * dy) / unit[e]
            if math.isnan(best) or v > best:
                best = v
    return best


@njit(**_JIT)
def _fmin(a, b):
    return b if math.isnan(a) else a if math.isnan(b) else min(a, b)


@njit(**_JIT)
def _join_gap(ti, tj, si, sj, image, xy, paths, adjacent):
    """Step 6b's gap of two objects (see ``reference._join_gap``)."""
    if _overlap(ti, tj):
        return math.inf
    s = _fmin(si, sj)
    s = image if math.isnan(s) else s
    if math.isnan(s) or s <= 0:
        return math.inf
    q = math.inf
    kk = ti.size
    for ka in range(kk):
        if ti[ka] < 0:
            continue
        for kb in range(kk):
            if tj[kb] < 0:
                continue
            if adjacent[ka, kb]:  # a limb the PAF did not take
                return math.inf
            if math.isfinite(paths[ka, kb]):
                dx = xy[tj[kb], 0] - xy[ti[ka], 0]
                dy = xy[tj[kb], 1] - xy[ti[ka], 1]
                q = min(q, math.sqrt(dx * dx + dy * dy) / paths[ka, kb] / s)
    return q


@njit(**_JIT)
def _step6b_join_fragments(table, edge_sum, xy, edges, unit, paths, adjacent, threshold):
    n, kk = table.shape
    if threshold <= 0 or n < 2:
        return table, edge_sum
    table, edge_sum = table.copy(), edge_sum.copy()
    limb = np.empty(n)
    for o in range(n):
        limb[o] = _limb_scale(table[o], xy, edges, unit)
    fin = limb[np.isfinite(limb)]
    image = np.median(fin) if fin.size else math.nan
    q = np.full((n, n), math.inf)  # gaps of pairs i < j
    for i in range(n):
        for j in range(i + 1, n):
            q[i, j] = _join_gap(table[i], table[j], limb[i], limb[j], image, xy, paths, adjacent)
    alive = np.ones(n, np.bool_)
    while True:
        best, bi, bj = math.inf, -1, -1
        for i in range(n):  # the first smallest gap in (i, j) order
            for j in range(i + 1, n):
                if q[i, j] < best:
                    best, bi, bj = q[i, j], i, j
        if not best <= threshold:
            break
        for k in range(kk):
            if table[bj, k] >= 0:
                table[bi, k] = table[bj, k]
            table[bj, k] = -1
        edge_sum[bi] += edge_sum[bj]
        alive[bj] = False
        for m in range(n):
            q[bj, m] = q[m, bj] = math.inf
        limb[bi] = _limb_scale(table[bi], xy, edges, unit)
        for m in range(n):
            if alive[m] and m != bi:
                a, b = min(bi, m), max(bi, m)
                q[a, b] = _join_gap(
                    table[a], table[b], limb[a], limb[b], image, xy, paths, adjacent
                )
    return table[alive], edge_sum[alive]


# ---------------------------------------------------------------------- filters, whole decode
@njit(**_JIT)
def _step5_filter(table, edge_sum, score, num_edges, part_counter, object_score, max_objects):
    o, kk = table.shape
    oscore = np.empty(o)
    keep = np.zeros(o, np.bool_)
    for i in range(o):
        part_sum, nparts = 0.0, 0
        for k in range(kk):
            if table[i, k] >= 0:
                part_sum += score[table[i, k]]
                nparts += 1
        oscore[i] = (part_sum + edge_sum[i]) / (kk + num_edges)
        keep[i] = nparts > part_counter and oscore[i] >= object_score
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-oscore[idx], kind="mergesort")]
    if max_objects > 0:
        idx = idx[:max_objects]
    return table[idx], oscore[idx]


@njit(**_JIT)
def _keypoints(objects, xy, score, fx, fy):
    """Step 8: (O, K, 3) rows (x, y, score) in output pixels; NaN, NaN, 0 for missing parts."""
    o, kk = objects.shape
    kp = np.empty((o, kk, 3))
    for i in range(o):
        for k in range(kk):
            p = objects[i, k]
            if p >= 0:
                kp[i, k, 0] = (xy[p, 0] + 0.5) * fx
                kp[i, k, 1] = (xy[p, 1] + 0.5) * fy
                kp[i, k, 2] = score[p]
            else:
                kp[i, k, 0] = kp[i, k, 1] = math.nan
                kp[i, k, 2] = 0.0
    return kp


@njit(**_JIT)
def _decode_all(heat, paf, mp, use_mp, edges, edges_paf, graph, fparams, iparams, fx, fy, exact):
    """The whole decode (``exact``: every candidate's score and count in full). ``fparams``:
    threshold_heatmap, threshold_edge_score, threshold_split_score, threshold_object_score,
    threshold_join_fragments;
    ``iparams``: maxpool_kernel, max_peaks_per_part, refine (0/1), centroid (0/1),
    edge_sampling_steps, threshold_edge_sampling_counter, threshold_part_counter, max_objects."""
    kk = heat.shape[0]
    ne = edges.shape[0]
    part, row, col, score = _step12_peaks(heat, mp, use_mp, fparams[0], iparams[0], iparams[1])
    xy = _step7_refine(heat, part, row, col, iparams[2] == 1, iparams[3] == 1)
    edge, a, b = _step3_candidates(part, edges, kk)
    cscore, count, ok = _step4_edge_scores(
        paf, xy, edge, a, b, edges_paf, iparams[4], fparams[1], iparams[5], exact
    )
    table, edge_sum, accepted = _step5_match(part, cscore, edge, a, b, ok, kk, ne)
    table, edge_sum = _step6_merge_split(table, edge_sum, score, xy, fparams[2])
    unit, paths, adjacent = graph
    table, edge_sum = _step6b_join_fragments(
        table, edge_sum, xy, edges, unit, paths, adjacent, fparams[4]
    )
    objects, oscore = _step5_filter(table, edge_sum, score, ne, iparams[6], fparams[3], iparams[7])
    kp = _keypoints(objects, xy, score, fx, fy)
    return (part, row, col, score, xy, edge, a, b, cscore, count, ok, accepted, objects, oscore), kp


@njit(**_JIT)
def decode_maps(heat, paf, mp, use_mp, edges, edges_paf, graph, fparams, iparams, fx, fy):
    """Every intermediate result (``Decoded``'s fields) and the keypoints (traces, tests)."""
    return _decode_all(
        heat, paf, mp, use_mp, edges, edges_paf, graph, fparams, iparams, fx, fy, True
    )


@njit(**_JIT)
def decode_objects(heat, paf, mp, use_mp, edges, edges_paf, graph, fparams, iparams, fx, fy):
    """Objects, their scores, keypoints and part counts only: the run-time call (each array
    handed back to Python costs about 0.3 us, and the 14 intermediate ones are not needed
    there); rejected edge candidates stop being sampled early (``_step4_edge_scores``)."""
    d, kp = _decode_all(
        heat, paf, mp, use_mp, edges, edges_paf, graph, fparams, iparams, fx, fy, False
    )
    objects = d[12]
    nparts = np.zeros(objects.shape[0], np.int64)  # counted here: ~2 us less than numpy's sum
    for i in range(objects.shape[0]):
        for k in range(objects.shape[1]):
            nparts[i] += objects[i, k] >= 0
    return objects, d[13], kp, nparts


class OpenPoseDecoder(DecoderBase):
    """The run-time decoder: ``decode_maps`` compiled, identical to ``ReferenceDecoder``."""

    def __init__(self, topology, **params) -> None:
        super().__init__(topology, **params)
        self.graph = tuple(join_graph(topology))  # (unit, paths, adjacent): numba takes tuples
        self._fparams = np.array(
            [
                self.threshold_heatmap,
                self.threshold_edge_score,
                self.threshold_split_score,
                self.threshold_object_score,
                self.threshold_join_fragments,
            ]
        )
        self._iparams = np.array(
            [
                self.maxpool_kernel,
                self.max_peaks_per_part,
                int(self.refine_parts_coordinates),
                int(self.refine_method == "centroid"),
                self.edge_sampling_steps,
                self.threshold_edge_sampling_counter,
                self.threshold_part_counter,
                self.max_objects,
            ],
            np.int64,
        )
        self._no_mp = np.zeros((1, 1, 1), np.float32)

    def _run(self, fn, heat, paf, maxpool, output_scale):
        h, w = heat.shape[1:]
        rows, cols = as_scale(output_scale) or self.output_scale or (h, w)
        use_mp = maxpool is not None
        return fn(
            heat, paf, maxpool if use_mp else self._no_mp, use_mp, self.edges, self.edges_paf,
            self.graph, self._fparams, self._iparams, cols / w, rows / h,
        )  # fmt: skip

    def _decode(self, heat, paf, maxpool) -> Decoded:
        return Decoded(*self._run(decode_maps, heat, paf, maxpool, None)[0])

    def decode(
        self, heatmap, paf, maxpool_heatmap=None, layout: str = "chw", output_scale=None
    ) -> list[Skeleton]:
        """Decode one image's maps; skeletons sorted by descending score."""
        heat, pf, mp = self.prepare(heatmap, paf, maxpool_heatmap, layout)
        objects, oscore, kp, nparts = self._run(decode_objects, heat, pf, mp, output_scale)
        rows = zip(kp, oscore.tolist(), nparts.tolist(), objects, strict=True)
        return [Skeleton(k, s, n, o) for k, s, n, o in rows]
