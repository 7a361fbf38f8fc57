"""Skeleton tracking across frames: each skeleton gets a ``track_id`` that stays with its object.

    tracker = Tracker(topology_sigmas(topology), max_age=30)
    ids = tracker.update([sk.keypoints for sk in skeletons], frame=i)  # one id per skeleton

Each frame, every live track predicts where its keypoints are now with a constant-velocity model
(one velocity per object: the mean displacement of the parts seen in both of its last two matches,
smoothed by ``velocity_momentum``), and tracks and detections are matched one-to-one by Object
Keypoint Similarity (OKS, COCO's keypoint distance with the topology's per-part ``sigmas``) with
the Hungarian algorithm, maximising the total OKS of the candidate pairs: those whose OKS reaches
``min_oks`` (a pair that cannot match takes no part, so it cannot take a track away from one
that can). Tracks left over are then offered the remaining detections once more at their last
*seen* position (not the extrapolated one): this catches an object that stopped or turned while
hidden or outside the picture. A track that misses more than ``max_age`` frames in a row is
dropped, and so is a track seen in one frame only that misses the next (false skeletons of a weak
model would otherwise pile up); a detection that matches no track starts a new one (ids count up
from 1 and are never reused).

``smooth=True`` adds a One Euro filter (Casiez et al., CHI 2012) per keypoint: little smoothing
at low speed (no jitter on a still object), little lag at high speed. The filtered keypoints are
written back into the arrays given to ``update``, so drawing and JSON show them.

Speed: the tracker must cost little beside the decoder (goal: 5% of its time; a few
microseconds per frame, scripts/bench_tracking.py), so a frame is one compiled call
(``_track_frame``) on preallocated track arrays: drop, OKS matrices, assignment, moves, births,
One Euro. Most pairs cost no exp (a box gate, then the closest part must reach ``min_oks``), and
a pair alone in its row and column only needs to reach ``min_oks``. Most rounds need no
Hungarian algorithm either: when every connected group of candidate pairs has one track or one
detection (a "star": objects apart, or one object and a false skeleton), its best pair is the
Hungarian one (``_star_pairs``); only the others (objects overlapping each other: 0.1% of the
bench's rounds) go back to ``scipy.optimize.linear_sum_assignment``. ``tests/_track_reference.py``
is the same tracker in plain numpy, which the tests compare with id for id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.optimize import linear_sum_assignment

from datasets.errors import UsageError
from datasets.topology import Topology

# OKS of a part is exp(-d^2 / (2 s^2 k^2)) with k = 2 sigma and s^2 the object's area (COCO);
# a small floor keeps a track of a few close parts from having a near-zero area
MIN_AREA = 32.0 * 32.0
# pairs that cannot reach this OKS are not computed (see oks_matrix); below any useful min_oks
GATE_OKS = 0.05


def topology_sigmas(topology: Topology) -> np.ndarray:
    """(K,) OKS sigmas of the topology's parts (``Topology.sigmas``: COCO's by name unless the
    topology sets its own), as the tracker's OKS uses them."""
    return np.asarray(topology.sigmas, dtype=np.float64)


def oks_matrix(
    tracks: np.ndarray, detections: np.ndarray, sigmas: np.ndarray, areas: np.ndarray
) -> np.ndarray:
    """(N, M) OKS between N track poses and M detections, both (., K, 2) with NaN for missing
    parts; ``areas`` (N,) are the tracks' object areas. Parts missing on either side are left
    out of the mean; a pair sharing no part scores 0.

    Pairs whose boxes are too far apart for any part to reach ``GATE_OKS`` are not computed (0):
    every shared part is at least the boxes' gap apart, so exp(-gap^2 / (2 (2 sigma_max)^2 s^2))
    bounds their OKS. A weak model's hundreds of scattered false skeletons stay cheap this way.
    """
    n, m = len(tracks), len(detections)
    out = np.zeros((n, m))
    if n == 0 or m == 0:
        return out
    scale2 = 2.0 * (2.0 * sigmas) ** 2  # (K,)
    s2 = np.maximum(areas, MIN_AREA)  # (N,)
    gap = _box_gap(_boxes(tracks), _boxes(detections))  # (N, M)
    bound = np.exp(-(gap**2) / (scale2.max() * s2[:, None]))
    rows, cols = np.nonzero(bound >= GATE_OKS)
    if rows.size == 0:
        return out
    d2 = ((tracks[rows] - detections[cols]) ** 2).sum(-1)  # (P, K)
    both = np.isfinite(d2)
    sim = np.exp(-np.where(both, d2, np.inf) / (scale2[None] * s2[rows, None]))
    count = both.sum(-1)
    out[rows, cols] = np.where(count > 0, sim.sum(-1) / np.maximum(count, 1), 0.0)
    return out


def _boxes(poses: np.ndarray) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 of each pose's present parts (NaN box for a pose with none)."""
    # fmin / fmax skip NaN (missing parts) without nanmin's warning on an all-NaN pose
    return np.concatenate([np.fmin.reduce(poses, axis=1), np.fmax.reduce(poses, axis=1)], axis=1)


def _box_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) distance between boxes (0 when they overlap; inf when one is empty)."""
    gx = np.maximum(0.0, np.maximum(b[None, :, 0] - a[:, None, 2], a[:, None, 0] - b[None, :, 2]))
    gy = np.maximum(0.0, np.maximum(b[None, :, 1] - a[:, None, 3], a[:, None, 1] - b[None, :, 3]))
    return np.nan_to_num(np.hypot(gx, gy), nan=np.inf)


def pose_areas(poses: np.ndarray) -> np.ndarray:
    """(N,) area of the bounding box of each pose's present parts (N, K, 2): COCO's object
    scale, at least ``MIN_AREA``."""
    box = _boxes(poses)
    area = np.nan_to_num((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]), nan=0.0)
    return np.maximum(area, MIN_AREA)


class OneEuro:
    """One Euro filter on an array of values (here (K, 2) keypoints), time in seconds.

    ``min_cutoff`` (Hz): smoothing of a still signal (lower: smoother, more lag); ``beta``: how
    fast the cutoff rises with speed (higher: less lag on fast motion); ``d_cutoff`` (Hz): the
    filter on the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.02, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t = 0.0

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.x is None or t <= self.t:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self.t
        fresh = np.isfinite(x) & ~np.isfinite(self.x)  # a part seen for the first time
        prev = np.where(fresh, x, self.x)
        dx = np.where(np.isfinite(x), (x - prev) / dt, 0.0)
        self.dx = self.dx + self._alpha(self.d_cutoff, dt) * (dx - self.dx)
        a = self._alpha(self.min_cutoff + self.beta * np.abs(self.dx), dt)
        out = np.where(np.isfinite(x), prev + a * (x - prev), np.nan)
        # a part missing now keeps its filtered value, so it restarts smoothly when it returns
        self.x = np.where(np.isfinite(out), out, self.x)
        self.t = t
        return out


@njit(cache=True, nogil=True)
def _oks_kernel(poses, dets, inv_scale2, gate, out, exact=True):  # pragma: no cover - compiled
    """``oks_matrix`` of (N, K, 2) poses and (M, K, 2+) detections into ``out`` (N, M) in one
    compiled pass, pairs whose OKS is below ``gate`` set to 0 (the tracker's candidates: gate
    = min_oks); ``inv_scale2`` (K,): 1 / (2 (2 sigma)^2) per part. Tested against a per-pair
    loop and ``oks_matrix``.

    Most pairs are left out without one exp: by the gap between the boxes (as ``oks_matrix``),
    then by the pair's closest part, since the mean of the parts' terms is at most the largest
    (objects whose boxes overlap, as in a crossing, pass the first test and fail the second).
    ``exact=False`` (the tracker's): a pair alone in its row and column only needs to reach
    the gate, not its value (see ``_settle_lone_pairs``)."""
    n, m, k = poses.shape[0], dets.shape[0], poses.shape[1]
    reach = -math.log(gate)  # a part's term exp(-a) reaches the gate iff a <= reach
    boxes = np.empty((n + m, 4))  # the poses', then the detections'
    _boxes_into(poses, boxes[:n])
    _boxes_into(dets, boxes[n:])
    for i in range(n):
        inv_s2 = _inv_area(boxes[i])
        gap_reach = reach / (inv_scale2.min() * inv_s2)  # the part with the largest sigma
        for j in range(m):
            out[i, j] = 0.0
            db = boxes[n + j]
            if not np.isfinite(boxes[i, 0] + boxes[i, 1] + db[0] + db[1]):
                continue  # a pose without parts (its box is empty): gap inf, OKS 0
            gx = max(0.0, max(db[0] - boxes[i, 2], boxes[i, 0] - db[2]))
            gy = max(0.0, max(db[1] - boxes[i, 3], boxes[i, 1] - db[3]))
            if gx * gx + gy * gy > gap_reach:
                continue
            near = False  # a part whose term reaches the gate
            for p in range(k):
                dx = poses[i, p, 0] - dets[j, p, 0]
                dy = poses[i, p, 1] - dets[j, p, 1]
                if (dx * dx + dy * dy) * inv_scale2[p] * inv_s2 <= reach:  # False for NaN
                    near = True
                    break
            if not near:
                continue
            if not exact:
                out[i, j] = -1.0  # a candidate, settled below
                continue
            oks = _pair_mean(poses[i], dets[j], inv_scale2, inv_s2, True)
            out[i, j] = oks if oks >= gate else 0.0
    if not exact:
        _settle_lone_pairs(poses, dets, inv_scale2, gate, boxes, out)


@njit(cache=True, nogil=True)
def _settle_lone_pairs(poses, dets, inv_scale2, gate, boxes, out):  # pragma: no cover
    """The OKS of the candidates (-1 in ``out``), 0 if below ``gate``; a candidate alone in its
    row and column (no other candidate for its track or its detection: any assignment takes it
    if it reaches the gate) gets exp(-mean a) instead when that reaches the gate, a lower bound
    of its OKS = mean exp(-a) (Jensen), without the parts' exps."""
    n, m = out.shape
    degrees = np.zeros(n + m, np.int64)
    for i in range(n):
        for j in range(m):
            if out[i, j] != 0.0:
                degrees[i] += 1
                degrees[n + j] += 1
    reach = -math.log(gate)
    for i in range(n):
        inv_s2 = _inv_area(boxes[i])
        for j in range(m):
            if out[i, j] != -1.0:
                continue
            if degrees[i] == 1 and degrees[n + j] == 1:
                mean_a = _pair_mean(poses[i], dets[j], inv_scale2, inv_s2, False)
                if mean_a <= reach:
                    out[i, j] = math.exp(-mean_a)
                    continue
            oks = _pair_mean(poses[i], dets[j], inv_scale2, inv_s2, True)
            out[i, j] = oks if oks >= gate else 0.0


@njit(cache=True, nogil=True)
def _pair_mean(pose, det, inv_scale2, inv_s2, oks):  # pragma: no cover - compiled
    """Over the parts present in both (K, 2+) poses, the mean of exp(-a) (their OKS) if
    ``oks``, else of a = d^2 / (2 (2 sigma)^2 s^2); NaN if none."""
    total, shared = 0.0, 0
    for p in range(pose.shape[0]):
        dx = pose[p, 0] - det[p, 0]
        dy = pose[p, 1] - det[p, 1]
        a = (dx * dx + dy * dy) * inv_scale2[p] * inv_s2
        if np.isfinite(a):
            total += math.exp(-a) if oks else a
            shared += 1
    return total / shared if shared > 0 else np.nan


@njit(cache=True, nogil=True)
def _inv_area(box):  # pragma: no cover - compiled
    """1 / s^2 of a pose's (4,) box: its area, at least MIN_AREA (an empty box counts as 0)."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    return 1.0 / max(area if np.isfinite(area) else 0.0, MIN_AREA)


@njit(cache=True, nogil=True)
def _boxes_into(poses, boxes):  # pragma: no cover - compiled
    """``_boxes`` of (N, K, 2+) poses into ``boxes`` (N, 4) (inf, -inf for a pose without parts)."""
    for i in range(poses.shape[0]):
        x0 = y0 = np.inf
        x1 = y1 = -np.inf
        for p in range(poses.shape[1]):
            x, y = poses[i, p, 0], poses[i, p, 1]
            if x == x:  # not NaN
                x0, x1 = min(x0, x), max(x1, x)
            if y == y:
                y0, y1 = min(y0, y), max(y1, y)
        boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3] = x0, y0, x1, y1


# The tracker's state, one row per live track in order of creation (the order the assignment
# sees them in), in three arrays the per-frame kernel updates in place:
#   pos (T, 4, K, 2): XY last known position of each part (NaN: never seen), SEEN the detection
#       of the last match (NaN: part missing then), FILT / FILT_SPEED the One Euro filter's
#       value and speed (smooth=True only)
#   vel (T, 3): velocity x, y (pixels per frame) and FILT_TIME, the filter's last time (NaN: new)
#   tint (T, 3): ID, LAST frame matched, HITS frames matched
XY, SEEN, FILT, FILT_SPEED = range(4)
FILT_TIME = 2
ID, LAST, HITS = range(3)
# idx (5, N >= 6): per-frame integers: each skeleton's track id (0: none) and track row (-1:
# none), this round's track rows and skeletons (the rows and columns of its OKS matrix); and in
# its COUNTS row the tracker's counters: live tracks, next id, frames seen, assignment rounds
# that had a matrix to solve
DET_ID, DET_ROW, ROUND_TRACK, ROUND_SKEL, COUNTS = range(5)
LIVE, NEXT_ID, FRAMES, ROUNDS = range(4)
# params (8 + K,): the tracker's settings, as the kernel reads them, then per part the inverse of
# the OKS denominator over s^2: 1 / (2 (2 sigma)^2)
MIN_OKS, MOMENTUM, MAX_AGE, SMOOTH, FPS, MIN_CUTOFF, BETA, D_CUTOFF, INV_SCALE2 = range(9)
_NO_PAIRS = np.zeros((2, 0), np.int64)  # phase 0: no Hungarian pairs yet


@njit(cache=True, nogil=True)
def _track_frame(
    pos, vel, tint, params, dets, frame, idx
):  # pragma: no cover - compiled; tested against tests/_track_reference.py
    """One frame of ``Tracker`` on ``dets`` (M, K, 2+): drop, the two assignment rounds,
    births, One Euro; each skeleton's track id ends in ``idx[DET_ID, :M]``. Returns 0 when the
    frame is done, -1 when the arrays need room for M more tracks, -2 for skeletons of another
    shape (nothing changed), or the round (1, 2) whose OKS matrix is not a set of stars
    (``_star_pairs``): the caller runs the Hungarian algorithm on it (``_round_oks``) and goes
    on with ``_resume_frame``. (Few arguments: numba's call costs ~0.1 us per array.)"""
    return _resume_frame(pos, vel, tint, params, dets, frame, idx, 0, _NO_PAIRS)


@njit(cache=True, nogil=True)
def _resume_frame(
    pos, vel, tint, params, dets, frame, idx, phase, pairs
):  # pragma: no cover - compiled
    """``_track_frame`` from ``phase``: 0 (or -1, after growing the arrays) from the start, 1
    or 2 from that round, with the Hungarian algorithm's (2, P) ``pairs`` of its matrix."""
    m, count = dets.shape[0], idx[COUNTS]
    if phase <= 0:
        if dets.shape[1] != params.shape[0] - INV_SCALE2 or dets.shape[2] < 2:
            return -2  # not (M, K, 2+): the caller says why
        _drop_tracks(pos, vel, tint, count, frame, params[MAX_AGE])
        if count[LIVE] + m > tint.shape[0] or m > idx.shape[1]:  # births need a row each
            return -1
        count[FRAMES] += 1
        idx[DET_ID, :m] = 0
        idx[DET_ROW, :m] = -1
    for rnd in range(max(phase, 1), 3):
        nr, nc = _round_members(tint, count, dets, frame, idx, rnd)
        if nr == 0 or nc == 0:
            continue
        oks = _round_matrix(pos, vel, tint, params, dets, frame, idx, rnd, nr, nc)
        if rnd == phase:  # the same matrix again: the caller's Hungarian pairs
            _apply_pairs(pos, vel, tint, params, dets, frame, oks, idx, pairs)
            continue
        count[ROUNDS] += 1
        stars = np.empty((2, min(nr, nc)), np.int64)
        n_pairs = _star_pairs(oks, stars)
        if n_pairs < 0:
            return rnd
        _apply_pairs(pos, vel, tint, params, dets, frame, oks, idx, stars[:, :n_pairs])
    _start_tracks(pos, vel, tint, count, dets, frame, idx)
    if params[SMOOTH] != 0.0:
        _smooth(pos, vel, params, dets, frame, idx)
    return 0


@njit(cache=True, nogil=True)
def _round_oks(pos, vel, tint, params, dets, frame, idx, rnd):  # pragma: no cover - compiled
    """The OKS matrix of round ``rnd`` that ``_track_frame`` left to the Hungarian algorithm."""
    nr, nc = _round_members(tint, idx[COUNTS], dets, frame, idx, rnd)
    return _round_matrix(pos, vel, tint, params, dets, frame, idx, rnd, nr, nc)


@njit(cache=True, nogil=True)
def _drop_tracks(pos, vel, tint, count, frame, max_age):  # pragma: no cover - compiled
    """A track that missed more than max_age frames is gone before it can match again; one seen
    in a single frame only (often a false skeleton) must match in the next frame. The rows left
    keep their order."""
    kept = 0
    for r in range(count[LIVE]):
        if frame - tint[r, LAST] <= (max_age if tint[r, HITS] > 1 else 1):
            if kept != r:
                pos[kept] = pos[r]
                vel[kept] = vel[r]
                tint[kept] = tint[r]
            kept += 1
    count[LIVE] = kept


@njit(cache=True, nogil=True)
def _round_members(tint, count, dets, frame, idx, rnd):  # pragma: no cover - compiled
    """The skeletons and tracks of one round, into ``idx[ROUND_SKEL]`` and ``idx[ROUND_TRACK]``:
    the skeletons not matched yet and the tracks not updated this frame (in round 2 only those
    that missed earlier frames: one seen in the previous frame was offered its prediction
    already). Returns their numbers."""
    nc = 0
    for j in range(dets.shape[0]):
        if idx[DET_ID, j] == 0:
            idx[ROUND_SKEL, nc] = j
            nc += 1
    nr = 0
    for r in range(count[LIVE]):
        if frame - tint[r, LAST] > (0 if rnd == 1 else 1):
            idx[ROUND_TRACK, nr] = r
            nr += 1
    return nr, nc


@njit(cache=True, nogil=True)
def _round_matrix(pos, vel, tint, params, dets, frame, idx, rnd, nr, nc):  # pragma: no cover
    """The (nr, nc) OKS matrix of one round (``_round_members``): round 1 at the tracks'
    constant-velocity predictions, round 2 at their last *seen* positions. Pairs below min_oks
    are 0: they are no candidates, so they cannot sway the assignment; a candidate alone in its
    row and column may hold a lower bound of its OKS (``_oks_kernel``'s ``exact=False``)."""
    oks = np.empty((nr, nc))
    k = dets.shape[1]
    poses = np.empty((nr, k, 2))
    for i in range(nr):
        r = idx[ROUND_TRACK, i]
        age = float(frame - tint[r, LAST])
        for p in range(k):
            for c in range(2):
                if rnd == 1:
                    poses[i, p, c] = pos[r, XY, p, c] + vel[r, c] * age
                else:
                    poses[i, p, c] = pos[r, SEEN, p, c]
    if nc == dets.shape[0]:  # all skeletons (round 1): no copy
        _oks_kernel(poses, dets, params[INV_SCALE2:], params[MIN_OKS], oks, False)
        return oks
    free = np.empty((nc, k, 2))
    for q in range(nc):
        free[q] = dets[idx[ROUND_SKEL, q], :, :2]
    _oks_kernel(poses, free, params[INV_SCALE2:], params[MIN_OKS], oks, False)
    return oks


@njit(cache=True, nogil=True)
def _star_pairs(oks, pairs):  # pragma: no cover - compiled; tested against scipy
    """The Hungarian algorithm's pairs of a (N, M) OKS matrix whose non-zero entries form stars
    (every connected group of tracks and skeletons has one track or one skeleton), or -1 when
    they do not. The groups are independent (zeros add nothing to the total), and a star's best
    assignment is its largest entry, so the pairs are exactly the Hungarian ones (up to ties of
    equal total OKS) without its call. Zero entries (pairs below min_oks) are no edge. A
    non-star group has an entry whose row and column both have two or more: that is the test.
    ``pairs`` (2, min(N, M)): out, the pairs' rows and columns; returns how many."""
    n, m = oks.shape
    degrees = np.zeros(n + m, np.int64)
    row_deg, col_deg = degrees[:n], degrees[n:]
    for i in range(n):
        for j in range(m):
            if oks[i, j] > 0.0:
                row_deg[i] += 1
                col_deg[j] += 1
    for i in range(n):
        for j in range(m):
            if oks[i, j] > 0.0 and row_deg[i] > 1 and col_deg[j] > 1:
                return -1
    found = 0
    for i in range(n):  # stars around a track, and single pairs
        best = -1
        for j in range(m):
            if oks[i, j] > 0.0 and (best < 0 or oks[i, j] > oks[i, best]):
                best = j
        if best >= 0 and (row_deg[i] > 1 or col_deg[best] == 1):
            pairs[0, found], pairs[1, found] = i, best
            found += 1
    for j in range(m):  # stars around a skeleton
        if col_deg[j] > 1:
            best = -1
            for i in range(n):
                if oks[i, j] > 0.0 and (best < 0 or oks[i, j] > oks[best, j]):
                    best = i
            pairs[0, found], pairs[1, found] = best, j
            found += 1
    return found


@njit(cache=True, nogil=True)
def _apply_pairs(pos, vel, tint, params, dets, frame, oks, idx, pairs):  # pragma: no cover
    """Matches the assigned ``pairs`` (2, P) (indices into the round's tracks and skeletons,
    ``idx[ROUND_TRACK]`` and ``idx[ROUND_SKEL]``) whose OKS reaches min_oks: the track moves to its skeleton, the
    skeleton gets the track's id."""
    for q in range(pairs.shape[1]):
        i, c = pairs[0, q], pairs[1, q]
        if oks[i, c] >= params[MIN_OKS]:
            r, j = idx[ROUND_TRACK, i], idx[ROUND_SKEL, c]
            _move(pos, vel, tint, r, dets[j], frame, params[MOMENTUM])
            idx[DET_ID, j] = tint[r, ID]
            idx[DET_ROW, j] = r


@njit(cache=True, nogil=True)
def _move(pos, vel, tint, r, det, frame, momentum):  # pragma: no cover - compiled
    """Moves track ``r`` to its detection (K, 2+). The object's motion is the mean displacement
    of the parts seen both times (a median would resist a swinging arm better, at several times
    the cost; the momentum smooths); parts not seen now move on with the object, so they stay
    useful for matching."""
    k = det.shape[0]
    gap = float(frame - tint[r, LAST])
    sx, sy, seen_twice = 0.0, 0.0, 0
    for p in range(k):
        dx = det[p, 0] - pos[r, SEEN, p, 0]
        dy = det[p, 1] - pos[r, SEEN, p, 1]
        if np.isfinite(dx) and np.isfinite(dy):
            sx, sy, seen_twice = sx + dx, sy + dy, seen_twice + 1
    if seen_twice > 0:  # nothing seen twice: keep the old velocity
        vel[r, 0] = momentum * vel[r, 0] + (1 - momentum) * (sx / seen_twice / gap)
        vel[r, 1] = momentum * vel[r, 1] + (1 - momentum) * (sy / seen_twice / gap)
    for p in range(k):
        x, y = det[p, 0], det[p, 1]
        if np.isfinite(x) and np.isfinite(y):
            pos[r, XY, p, 0], pos[r, XY, p, 1] = x, y
        else:
            pos[r, XY, p, 0] += vel[r, 0] * gap
            pos[r, XY, p, 1] += vel[r, 1] * gap
        pos[r, SEEN, p, 0], pos[r, SEEN, p, 1] = x, y
    tint[r, LAST] = frame
    tint[r, HITS] += 1


@njit(cache=True, nogil=True)
def _start_tracks(pos, vel, tint, count, dets, frame, idx):  # pragma: no cover - compiled
    """New tracks, in skeleton order, for the skeletons that matched none and have a part (the
    caller made room: capacity >= live tracks + skeletons); ids count up and are never reused."""
    k = dets.shape[1]
    for j in range(dets.shape[0]):
        if idx[DET_ID, j] != 0:
            continue
        present = False
        for p in range(k):
            present = present or (np.isfinite(dets[j, p, 0]) and np.isfinite(dets[j, p, 1]))
        if not present:
            continue
        r = count[LIVE]
        count[LIVE] += 1
        pos[r, XY] = dets[j, :, :2]
        pos[r, SEEN] = dets[j, :, :2]
        vel[r, 0], vel[r, 1], vel[r, FILT_TIME] = 0.0, 0.0, np.nan
        tint[r, ID], tint[r, LAST], tint[r, HITS] = count[NEXT_ID], frame, 1
        idx[DET_ID, j], idx[DET_ROW, j] = count[NEXT_ID], r
        count[NEXT_ID] += 1


@njit(cache=True, nogil=True)
def _smooth(pos, vel, params, dets, frame, idx):  # pragma: no cover - compiled; vs OneEuro
    """``OneEuro`` per tracked skeleton, its state in the track's FILT rows: the filtered
    keypoints are written into ``dets``. A new track (or time going backwards) restarts it."""
    t = frame / params[FPS]
    for j in range(dets.shape[0]):
        r = idx[DET_ROW, j]
        if r < 0:
            continue
        if not t > vel[r, FILT_TIME]:  # NaN: a new track
            pos[r, FILT] = dets[j, :, :2]
            pos[r, FILT_SPEED] = 0.0
            vel[r, FILT_TIME] = t
            continue
        dt = t - vel[r, FILT_TIME]
        vel[r, FILT_TIME] = t
        a_speed = _alpha(params[D_CUTOFF], dt)
        for p in range(dets.shape[1]):
            for c in range(2):
                x, prev = dets[j, p, c], pos[r, FILT, p, c]
                speed = 0.0
                if np.isfinite(x):
                    if not np.isfinite(prev):  # a part seen for the first time
                        prev = x
                    speed = (x - prev) / dt
                s = pos[r, FILT_SPEED, p, c] + a_speed * (speed - pos[r, FILT_SPEED, p, c])
                pos[r, FILT_SPEED, p, c] = s
                if np.isfinite(x):
                    a = _alpha(params[MIN_CUTOFF] + params[BETA] * abs(s), dt)
                    dets[j, p, c] = prev + a * (x - prev)
                    # a part missing now keeps its filtered value, to restart smoothly
                    pos[r, FILT, p, c] = dets[j, p, c]


@njit(cache=True, nogil=True)
def _alpha(cutoff, dt):  # pragma: no cover - compiled
    """One Euro's smoothing factor of a first-order low-pass at ``cutoff`` Hz."""
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


@dataclass(frozen=True)
class Track:
    """A snapshot of one object followed over frames (``Tracker.tracks``); image pixels."""

    id: int
    xy: np.ndarray  # (K, 2) last known position of each part (NaN: never seen)
    seen: np.ndarray  # (K, 2) the detection of the last match (NaN: part missing then)
    frame: int  # frame of the last match
    velocity: np.ndarray  # (2,) pixels per frame
    hits: int


class Tracker:
    """Gives each skeleton a stable ``track_id`` (see the module docstring).

    The tracks live in preallocated arrays (see ``XY`` ... ``HITS`` above) that one compiled
    call per frame updates; ``stats`` counts the frames, the assignment rounds that had a matrix
    to solve and those left to ``scipy.optimize.linear_sum_assignment``."""

    def __init__(
        self,
        sigmas: Sequence[float],
        *,
        max_age: int = 30,
        min_oks: float = 0.3,
        velocity_momentum: float = 0.5,
        smooth: bool = False,
        fps: float = 30.0,
        min_cutoff: float = 1.0,
        beta: float = 0.02,
    ) -> None:
        if not 0.0 < float(min_oks) <= 1.0:
            # 0 would match pairs with nothing in common (the assignment pairs every track)
            raise UsageError(f"tracker.min_oks={min_oks}: give an OKS in (0, 1], e.g. 0.3")
        if not (float(max_age) >= 0 and float(max_age) == int(max_age)):
            raise UsageError(f"tracker.max_age={max_age}: give frames >= 0, e.g. 30")
        if not float(min_cutoff) > 0:
            raise UsageError(f"tracker.min_cutoff={min_cutoff}: give Hz > 0, e.g. 1.0")
        if not float(beta) >= 0:
            raise UsageError(f"tracker.beta={beta}: give a number >= 0, e.g. 0.02")
        if not 0 <= float(velocity_momentum) <= 1:
            raise UsageError(f"tracker.velocity_momentum={velocity_momentum}: give one in [0, 1]")
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.k = len(self.sigmas)
        self.max_age = int(max_age)
        self.min_oks = float(min_oks)
        self.momentum = float(velocity_momentum)
        self.smooth, self.fps = bool(smooth), float(fps) if fps and fps > 0 else 30.0
        self.params = np.zeros(INV_SCALE2 + len(self.sigmas))
        self.params[[MIN_OKS, MOMENTUM, MAX_AGE, SMOOTH]] = (
            self.min_oks, self.momentum, self.max_age, self.smooth
        )  # fmt: skip
        self.params[[FPS, MIN_CUTOFF, BETA, D_CUTOFF]] = self.fps, min_cutoff, beta, 1.0
        self.params[INV_SCALE2:] = 1.0 / (2.0 * (2.0 * self.sigmas) ** 2)
        self.count = np.zeros(4, np.int64)  # until _allocate puts the counters in idx
        self.count[NEXT_ID] = 1
        self.frame = -1
        self.hungarian_rounds = 0
        self._allocate(16, 16)

    def _allocate(self, tracks: int, skeletons: int) -> None:
        """(Re)allocates the track arrays for ``tracks`` rows (keeping the live ones) and the
        per-frame scratch for ``skeletons`` skeletons."""
        k, live = len(self.sigmas), int(self.count[LIVE])
        pos = np.zeros((tracks, 4, k, 2))
        vel, tint = np.zeros((tracks, 3)), np.zeros((tracks, 3), np.int64)
        if live:
            pos[:live], vel[:live], tint[:live] = self.pos[:live], self.vel[:live], self.tint[:live]
        self.pos, self.vel, self.tint = pos, vel, tint
        idx = np.zeros((5, max(tracks, skeletons, len(self.count))), np.int64)
        idx[COUNTS, : len(self.count)] = self.count
        self.idx, self.count = idx, idx[COUNTS]  # views: the kernel updates them
        self.ids_out = idx[DET_ID]  # the frame's ids

    def warm_up(self) -> None:
        """Loads the compiled kernels now (from numba's disk cache: ~0.2 s; compiling them into
        an empty cache, a fresh checkout's first run: ~14 s), on a scratch tracker: the pipeline
        calls this before its first frame, so a live stream does not stall on the first frame
        and the per-frame track time measures tracking. This tracker's state is not touched."""
        scratch = Tracker(self.sigmas)
        pose = np.zeros((1, self.k, 3))
        pose[0, :, 0] = np.arange(self.k)
        for frame in range(2):  # a birth, then a match
            scratch.update_array(pose.copy(), frame)
        s = scratch  # and the rare round that the Hungarian algorithm settles
        _round_oks(s.pos, s.vel, s.tint, s.params, pose, s.frame, s.idx, 1)

    @property
    def next_id(self) -> int:
        """The id the next new track gets."""
        return int(self.count[NEXT_ID])

    @property
    def stats(self) -> dict[str, int]:
        """Frames seen, assignment rounds with a matrix, and rounds left to the Hungarian
        algorithm (the matrix was not a set of stars, see ``_star_pairs``)."""
        frames, rounds = int(self.count[FRAMES]), int(self.count[ROUNDS])
        return {"frames": frames, "rounds": rounds, "hungarian": self.hungarian_rounds}

    @property
    def tracks(self) -> list[Track]:
        """The live tracks, as snapshots (copies)."""
        n = int(self.count[LIVE])
        return [
            Track(
                int(t[ID]), p[XY].copy(), p[SEEN].copy(), int(t[LAST]), v[:2].copy(), int(t[HITS])
            )
            for p, v, t in zip(self.pos[:n], self.vel[:n], self.tint[:n], strict=True)
        ]

    def update(self, keypoints: Sequence[np.ndarray], frame: int | None = None) -> list[int]:
        """Match this frame's skeletons ((K, 2+) arrays: x, y[, score], NaN for missing parts)
        to the tracks; returns each skeleton's track id (0: a skeleton without parts).
        ``frame`` defaults to the previous + 1 (give it when frames are skipped, so motion is
        extrapolated over the gap). With ``smooth`` the filtered x, y are written back into
        the given arrays."""
        try:
            dets = np.array(keypoints, dtype=np.float64)  # (M, K, 2+)
        except ValueError:  # (K, 2) and (K, 3) arrays mixed
            dets = np.array([np.asarray(k, np.float64)[:, :2] for k in keypoints])
        if dets.ndim != 3:  # no skeletons (else refused below)
            dets = np.zeros((0, self.k, 2)) if len(keypoints) == 0 else dets
            self._check(dets)
        ids = self._run(dets, frame)
        if self.smooth:
            for kp, d, tid in zip(keypoints, dets, ids, strict=True):
                if tid > 0 and kp.shape == d.shape:
                    kp[...] = d  # its scores too, unchanged: one copy is faster than two slices
                elif tid > 0:
                    kp[:, :2] = d[:, :2]
        return ids.tolist()

    def update_array(self, dets: np.ndarray, frame: int | None = None) -> np.ndarray:
        """``update`` for skeletons already stacked in one float64 (M, K, 2+) array (smoothed
        in place); returns the (M,) track ids."""
        self._check(dets)
        return self._run(dets, frame).copy()

    def _check(self, dets: np.ndarray) -> None:
        """Refuses skeletons of another topology (a programming error: the caller's arrays)."""
        k = len(self.sigmas)
        if dets.ndim != 3 or dets.shape[1] != k or dets.shape[2] < 2 or dets.dtype != np.float64:
            raise ValueError(f"skeletons {dets.shape} {dets.dtype}: need (M, {k}, 2+) float64")

    def _run(self, dets: np.ndarray, frame: int | None) -> np.ndarray:
        """The frame's kernel call (another one for a round left to the Hungarian algorithm,
        or after growing the arrays); returns a view of the ids."""
        self.frame = frame = self.frame + 1 if frame is None else int(frame)
        args = (self.pos, self.vel, self.tint, self.params, dets, frame)
        phase = _track_frame(*args, self.idx)
        while phase:
            pairs = _NO_PAIRS
            if phase == -2:
                self._check(dets)  # raises
            if phase == -1:  # room for a track per skeleton
                live, m = int(self.count[LIVE]), len(dets)
                self._allocate(max(len(self.tint), 2 * (live + m)), 2 * m)
            else:  # a round the stars test could not settle
                self.hungarian_rounds += 1
                oks = _round_oks(*args, self.idx, phase)
                pairs = np.stack(linear_sum_assignment(-oks)).astype(np.int64)
            args = (self.pos, self.vel, self.tint, self.params, dets, frame)
            phase = _resume_frame(*args, self.idx, phase, pairs)
        return self.ids_out[: len(dets)]
