"""Skeleton tracking across frames: each skeleton gets a ``track_id`` that stays with its object.

    tracker = Tracker(topology_sigmas(topology), max_age=30)
    ids = tracker.update([sk.keypoints for sk in skeletons], frame=i)  # one id per skeleton

Each frame, every live track predicts where its keypoints are now with a constant-velocity model
(one velocity per object: the median displacement of its parts, so a swinging arm does not throw
the whole object), and tracks and detections are matched one-to-one by Object Keypoint
Similarity (OKS, COCO's keypoint distance with the topology's per-part ``sigmas``) with the Hungarian
algorithm (``scipy.optimize.linear_sum_assignment``). A pair is a match only if its OKS reaches
``min_oks``. Tracks left over are then offered the remaining detections once more at their last
*seen* position (not the extrapolated one): this catches an object that stopped or turned while
hidden or outside the picture. A track that misses more than ``max_age`` frames in a row is
dropped, and so is a track seen in one frame only that misses the next (false skeletons of a weak
model would otherwise pile up); a detection that matches no track starts a new one (ids count up
from 1 and are never reused).

``smooth=True`` adds a One Euro filter (Casiez et al., CHI 2012) per keypoint: little smoothing
at low speed (no jitter on a still object), little lag at high speed. The filtered keypoints are
written back into the arrays given to ``update``, so drawing and JSON show them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.optimize import linear_sum_assignment

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
def _oks_kernel(poses, dets, scale2, out):  # pragma: no cover - compiled
    """``oks_matrix`` of (N, K, 2) poses and (M, K, 2) detections into ``out`` (N, M) in one
    compiled pass: the tracker's per-frame cost (numpy's ~30 small calls cost more than the
    arithmetic); tested against ``oks_matrix`` and a per-pair loop."""
    n, m, k = poses.shape[0], dets.shape[0], poses.shape[1]
    scale_max = scale2.max()
    pbox = np.empty((n, 4))
    dbox = np.empty((m, 4))
    for boxes, arr, count in ((pbox, poses, n), (dbox, dets, m)):
        for i in range(count):
            x0 = y0 = np.inf
            x1 = y1 = -np.inf
            for p in range(k):
                x, y = arr[i, p, 0], arr[i, p, 1]
                if x == x:  # not NaN
                    x0, x1 = min(x0, x), max(x1, x)
                if y == y:
                    y0, y1 = min(y0, y), max(y1, y)
            boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3] = x0, y0, x1, y1
    for i in range(n):
        area = (pbox[i, 2] - pbox[i, 0]) * (pbox[i, 3] - pbox[i, 1])
        s2 = max(area if np.isfinite(area) else 0.0, MIN_AREA)
        for j in range(m):
            out[i, j] = 0.0
            if not np.isfinite(pbox[i, 0] + pbox[i, 1] + dbox[j, 0] + dbox[j, 1]):
                continue  # a pose without parts (its box is empty): gap inf, OKS 0
            gx = max(0.0, max(dbox[j, 0] - pbox[i, 2], pbox[i, 0] - dbox[j, 2]))
            gy = max(0.0, max(dbox[j, 1] - pbox[i, 3], pbox[i, 1] - dbox[j, 3]))
            gap = math.hypot(gx, gy)
            if math.exp(-(gap * gap) / (scale_max * s2)) < GATE_OKS:
                continue
            total, shared = 0.0, 0
            for p in range(k):
                dx = poses[i, p, 0] - dets[j, p, 0]
                dy = poses[i, p, 1] - dets[j, p, 1]
                d2 = dx * dx + dy * dy
                if np.isfinite(d2):
                    total += math.exp(-d2 / (scale2[p] * s2))
                    shared += 1
            out[i, j] = total / shared if shared > 0 else 0.0


@njit(cache=True, nogil=True)
def _move_kernel(xy, seen, velocity, last, hits, rows, dets, frame, momentum):  # pragma: no cover
    """Move matched tracks ``rows`` to their detections (P, K, 2), in place.

    The object's motion is the mean displacement of the parts seen both times (a median would
    resist a swinging arm better, at several times the cost; the momentum smooths); parts not
    seen now move on with the object, so they stay useful for matching."""
    k = dets.shape[1]
    for q in range(rows.shape[0]):
        r = rows[q]
        gap = float(frame - last[r])
        sx, sy, count = 0.0, 0.0, 0
        for p in range(k):
            dx = dets[q, p, 0] - seen[r, p, 0]
            dy = dets[q, p, 1] - seen[r, p, 1]
            if np.isfinite(dx) and np.isfinite(dy):
                sx, sy, count = sx + dx, sy + dy, count + 1
        if count > 0:  # nothing seen twice: keep the old velocity
            step_x, step_y = sx / count / gap, sy / count / gap
            velocity[r, 0] = momentum * velocity[r, 0] + (1 - momentum) * step_x
            velocity[r, 1] = momentum * velocity[r, 1] + (1 - momentum) * step_y
        for p in range(k):
            x, y = dets[q, p, 0], dets[q, p, 1]
            if np.isfinite(x) and np.isfinite(y):
                xy[r, p, 0], xy[r, p, 1] = x, y
            else:
                xy[r, p, 0] += velocity[r, 0] * gap
                xy[r, p, 1] += velocity[r, 1] * gap
            seen[r, p, 0], seen[r, p, 1] = x, y
        last[r] = frame
        hits[r] += 1


def _assign(oks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment maximising total OKS; a single row or column is its best pair
    (what the Hungarian algorithm gives then, without its call overhead)."""
    n, m = oks.shape
    if n == 1:
        return np.zeros(1, np.intp), np.array([int(np.argmax(oks[0]))])
    if m == 1:
        return np.array([int(np.argmax(oks[:, 0]))]), np.zeros(1, np.intp)
    return linear_sum_assignment(-oks)


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

    The live tracks are kept as flat arrays, one row per track in order of creation (the order
    the Hungarian rounds see them in): ``ids`` (T,), ``xy`` and ``seen`` (T, K, 2), ``velocity``
    (T, 2), ``last`` (T,) frame of the last match, ``hits`` (T,) frames matched."""

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
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.scale2 = 2.0 * (2.0 * self.sigmas) ** 2  # OKS denominator per part, over s^2
        self.max_age = int(max_age)
        self.min_oks = float(min_oks)
        self.momentum = float(velocity_momentum)
        self.smooth, self.fps = bool(smooth), float(fps) if fps and fps > 0 else 30.0
        self.filter_args = {"min_cutoff": float(min_cutoff), "beta": float(beta)}
        k = len(self.sigmas)
        self.ids = np.zeros(0, np.int64)
        self.xy, self.seen = np.zeros((0, k, 2)), np.zeros((0, k, 2))
        self.velocity = np.zeros((0, 2))
        self.last, self.hits = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.smoothers: dict[int, OneEuro] = {}
        self.next_id = 1
        self.frame = -1

    @property
    def tracks(self) -> list[Track]:
        """The live tracks, as snapshots (copies)."""
        return [
            Track(int(i), xy.copy(), seen.copy(), int(f), v.copy(), int(h))
            for i, xy, seen, f, v, h in zip(
                self.ids, self.xy, self.seen, self.last, self.velocity, self.hits, strict=True
            )
        ]

    def update(self, keypoints: Sequence[np.ndarray], frame: int | None = None) -> list[int]:
        """Match this frame's skeletons ((K, 2+) arrays: x, y[, score], NaN for missing parts)
        to the tracks; returns each skeleton's track id. ``frame`` defaults to the previous + 1
        (give it when frames are skipped, so motion is extrapolated over the gap)."""
        frame = self.frame + 1 if frame is None else int(frame)
        self.frame = frame
        dets = np.array([np.asarray(k, np.float64)[:, :2] for k in keypoints]).reshape(
            len(keypoints), len(self.sigmas), 2
        )
        self._drop(frame)
        ids = np.zeros(len(dets), np.int64)
        self._match(dets, frame, ids, predicted=True)
        self._match(dets, frame, ids, predicted=False)
        new = np.flatnonzero((ids == 0) & np.isfinite(dets).all(2).any(1))
        if new.size:
            ids[new] = self._start(dets[new], frame)
        if self.smooth:
            for j, kp in enumerate(keypoints):
                smoother = self.smoothers.get(int(ids[j]))
                if smoother is not None:
                    kp[:, :2] = smoother(dets[j], frame / self.fps)
        return ids.tolist()

    def _drop(self, frame: int) -> None:
        """A track that missed more than max_age frames is gone before it can match again; one
        seen in a single frame only (often a false skeleton) must match in the next frame."""
        keep = frame - self.last <= np.where(self.hits > 1, self.max_age, 1)
        if keep.all():
            return
        for tid in self.ids[~keep].tolist():
            self.smoothers.pop(tid, None)
        self.ids, self.xy, self.seen = self.ids[keep], self.xy[keep], self.seen[keep]
        self.velocity, self.last, self.hits = self.velocity[keep], self.last[keep], self.hits[keep]

    def _match(self, dets: np.ndarray, frame: int, ids: np.ndarray, predicted: bool) -> None:
        """One Hungarian round between unmatched detections and tracks not updated this frame
        (the second round, at the last *seen* positions: only tracks that missed earlier
        frames); writes the matched tracks' ids into ``ids``."""
        free = np.flatnonzero(ids == 0)
        age = frame - self.last
        rows = np.flatnonzero(age > 0 if predicted else age > 1)
        if free.size == 0 or rows.size == 0:
            return
        if predicted:
            poses = self.xy[rows] + self.velocity[rows, None] * age[rows, None, None]
        else:
            poses = self.seen[rows]
        oks = np.empty((rows.size, free.size))
        _oks_kernel(poses, dets[free], self.scale2, oks)
        r, c = _assign(oks)
        keep = oks[r, c] >= self.min_oks
        r, c = rows[r[keep]], free[c[keep]]
        if r.size:
            _move_kernel(
                self.xy, self.seen, self.velocity, self.last, self.hits,
                r, dets[c], frame, self.momentum,
            )  # fmt: skip
            ids[c] = self.ids[r]

    def _start(self, dets: np.ndarray, frame: int) -> np.ndarray:
        """New tracks for detections (P, K, 2) that matched none; returns their ids."""
        new = np.arange(self.next_id, self.next_id + len(dets))
        self.next_id += len(dets)
        self.ids = np.concatenate([self.ids, new])
        self.xy = np.concatenate([self.xy, dets])
        self.seen = np.concatenate([self.seen, dets])
        self.velocity = np.concatenate([self.velocity, np.zeros((len(dets), 2))])
        self.last = np.concatenate([self.last, np.full(len(dets), frame)])
        self.hits = np.concatenate([self.hits, np.ones(len(dets), np.int64)])
        if self.smooth:
            for tid in new.tolist():
                self.smoothers[tid] = OneEuro(**self.filter_args)
        return new
