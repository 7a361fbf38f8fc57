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
from dataclasses import dataclass, field

import numpy as np
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


@dataclass
class Track:
    """One object followed over frames; positions in image pixels."""

    id: int
    xy: np.ndarray  # (K, 2) last known position of each part (NaN: never seen)
    seen: np.ndarray  # (K, 2) the detection of the last match (NaN: part missing then)
    frame: int  # frame of the last match
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # pixels per frame
    hits: int = 1
    smoother: OneEuro | None = None

    def predict(self, frame: int) -> np.ndarray:
        """(K, 2) constant-velocity prediction of the parts at ``frame``."""
        return self.xy + self.velocity * (frame - self.frame)


class Tracker:
    """Gives each skeleton a stable ``track_id`` (see the module docstring)."""

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
        self.max_age = int(max_age)
        self.min_oks = float(min_oks)
        self.momentum = float(velocity_momentum)
        self.smooth, self.fps = bool(smooth), float(fps) if fps and fps > 0 else 30.0
        self.filter_args = {"min_cutoff": float(min_cutoff), "beta": float(beta)}
        self.tracks: list[Track] = []
        self.next_id = 1
        self.frame = -1

    def update(self, keypoints: Sequence[np.ndarray], frame: int | None = None) -> list[int]:
        """Match this frame's skeletons ((K, 2+) arrays: x, y[, score], NaN for missing parts)
        to the tracks; returns each skeleton's track id. ``frame`` defaults to the previous + 1
        (give it when frames are skipped, so motion is extrapolated over the gap)."""
        frame = self.frame + 1 if frame is None else int(frame)
        self.frame = frame
        dets = np.array([np.asarray(k, np.float64)[:, :2] for k in keypoints]).reshape(
            len(keypoints), len(self.sigmas), 2
        )
        # a track that missed more than max_age frames is gone before it can match again; one
        # seen in a single frame only (often a false skeleton) must match in the next frame
        self.tracks = [
            t for t in self.tracks if frame - t.frame <= (self.max_age if t.hits > 1 else 1)
        ]
        ids = [0] * len(dets)
        free = self._match(dets, frame, ids, predicted=True)
        self._match(dets, frame, ids, predicted=False, only=free)
        for j in range(len(dets)):
            if ids[j] == 0 and np.isfinite(dets[j]).all(1).any():
                ids[j] = self._start(dets[j], frame).id
        if self.smooth:
            by_id = {t.id: t for t in self.tracks}
            for j, kp in enumerate(keypoints):
                track = by_id.get(ids[j])
                if track is not None and track.smoother is not None:
                    kp[:, :2] = track.smoother(dets[j], frame / self.fps)
        return ids

    def _match(
        self, dets: np.ndarray, frame: int, ids: list[int], predicted: bool, only=None
    ) -> list[int]:
        """One Hungarian round between unmatched detections and tracks not updated this frame;
        returns the detections still free."""
        free = [j for j in range(len(dets)) if ids[j] == 0] if only is None else only
        tracks = [t for t in self.tracks if t.frame < frame]
        if not predicted:  # second chance: only tracks that missed earlier frames
            tracks = [t for t in tracks if frame - t.frame > 1]
        if not free or not tracks:
            return free
        poses = np.stack([t.predict(frame) if predicted else t.seen for t in tracks])
        areas = pose_areas(poses)
        oks = oks_matrix(poses, dets[free], self.sigmas, areas)
        rows, cols = linear_sum_assignment(-oks)
        keep = oks[rows, cols] >= self.min_oks
        rows, cols = rows[keep], cols[keep]
        self._update([tracks[r] for r in rows], dets[[free[c] for c in cols]], frame)
        for r, c in zip(rows, cols, strict=True):
            ids[free[c]] = tracks[r].id
        matched = {free[c] for c in cols}
        return [j for j in free if j not in matched]

    def _update(self, tracks: list[Track], dets: np.ndarray, frame: int) -> None:
        """Move matched tracks to their detections (P, K, 2), all at once."""
        if not tracks:
            return
        gap = np.array([frame - t.frame for t in tracks], np.float64)[:, None]  # (P, 1)
        seen = np.stack([t.seen for t in tracks])
        # mean displacement of the parts seen both times: the object's motion (a median would
        # resist a swinging arm better, at several times the cost; the momentum below smooths)
        diff = dets - seen  # (P, K, 2)
        both = np.isfinite(diff).all(-1, keepdims=True)
        count = both.sum(1)  # (P, 1)
        step = np.where(both, diff, 0.0).sum(1) / np.maximum(count, 1) / gap  # (P, 2)
        step[count[:, 0] == 0] = np.nan  # nothing seen twice: keep the old velocity
        old = np.stack([t.velocity for t in tracks])
        velocity = np.where(
            np.isfinite(step), self.momentum * old + (1 - self.momentum) * step, old
        )
        # parts not seen now move on with the object, so they stay useful for matching
        moved = np.stack([t.xy for t in tracks]) + velocity[:, None] * gap[:, :, None]
        here = np.isfinite(dets).all(-1, keepdims=True)
        xy = np.where(here, dets, moved)
        for i, t in enumerate(tracks):
            t.velocity, t.xy, t.seen = velocity[i], xy[i], dets[i].copy()
            t.frame, t.hits = frame, t.hits + 1

    def _start(self, det: np.ndarray, frame: int) -> Track:
        smoother = OneEuro(**self.filter_args) if self.smooth else None
        track = Track(self.next_id, det.copy(), det.copy(), frame, smoother=smoother)
        self.next_id += 1
        self.tracks.append(track)
        return track
