"""The tracker's specification in plain numpy: ``ReferenceTracker`` is the per-round Python
tracker that ``inference.track.Tracker`` replaced with one compiled kernel per frame (same
rules: drop, a Hungarian round at the predicted positions, one at the last seen positions,
births, One Euro smoothing). tests/test_track.py checks that both give the same ids and the same
smoothed keypoints on synthetic walks.

``gated=False`` is the rule before that kernel: the Hungarian algorithm on the whole OKS matrix,
pairs below ``min_oks`` dropped after it (so a pair that cannot match could still take a track
away from one that can); the tracker now leaves such pairs out of the assignment.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from inference.track import OneEuro, oks_matrix, pose_areas


class ReferenceTracker:
    """Same constructor and ``update`` as ``inference.track.Tracker``; always the Hungarian
    algorithm, numpy for the OKS and the track moves."""

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
        gated: bool = True,
    ) -> None:
        self.gated = gated
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.max_age, self.min_oks, self.momentum = max_age, min_oks, velocity_momentum
        self.smooth, self.fps = smooth, fps
        self.filter_args = {"min_cutoff": min_cutoff, "beta": beta}
        k = len(self.sigmas)
        self.ids = np.zeros(0, np.int64)
        self.xy, self.seen = np.zeros((0, k, 2)), np.zeros((0, k, 2))
        self.velocity = np.zeros((0, 2))
        self.last, self.hits = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.smoothers: dict[int, OneEuro] = {}
        self.next_id = 1
        self.frame = -1

    def update(self, keypoints: Sequence[np.ndarray], frame: int | None = None) -> list[int]:
        frame = self.frame + 1 if frame is None else int(frame)
        self.frame = frame
        dets = np.array([np.asarray(k, np.float64)[:, :2] for k in keypoints]).reshape(
            len(keypoints), len(self.sigmas), 2
        )
        # drop: missed more than max_age frames, or seen once and missed the next frame
        keep = frame - self.last <= np.where(self.hits > 1, self.max_age, 1)
        for tid in self.ids[~keep].tolist():
            self.smoothers.pop(tid, None)
        self.ids, self.xy, self.seen = self.ids[keep], self.xy[keep], self.seen[keep]
        self.velocity, self.last, self.hits = self.velocity[keep], self.last[keep], self.hits[keep]
        ids = np.zeros(len(dets), np.int64)
        self._match(dets, frame, ids, predicted=True)
        self._match(dets, frame, ids, predicted=False)
        for j in np.flatnonzero((ids == 0) & np.isfinite(dets).all(2).any(1)):
            ids[j] = self._start(dets[j], frame)
        if self.smooth:
            for j, kp in enumerate(keypoints):
                if ids[j] > 0:
                    kp[:, :2] = self.smoothers[int(ids[j])](dets[j], frame / self.fps)
        return ids.tolist()

    def _match(self, dets: np.ndarray, frame: int, ids: np.ndarray, predicted: bool) -> None:
        free = np.flatnonzero(ids == 0)
        age = frame - self.last
        rows = np.flatnonzero(age > 0 if predicted else age > 1)
        if free.size == 0 or rows.size == 0:
            return
        if predicted:
            poses = self.xy[rows] + self.velocity[rows, None] * age[rows, None, None]
        else:
            poses = self.seen[rows]
        oks = oks_matrix(poses, dets[free], self.sigmas, pose_areas(poses))
        if self.gated:
            oks = np.where(oks >= self.min_oks, oks, 0.0)
        r, c = linear_sum_assignment(-oks)
        keep = oks[r, c] >= self.min_oks
        for row, j in zip(rows[r[keep]], free[c[keep]], strict=True):
            self._move(row, dets[j], frame)
            ids[j] = self.ids[row]

    def _move(self, row: int, det: np.ndarray, frame: int) -> None:
        """Velocity from the mean displacement of the parts seen both times; parts missing now
        move on with the object."""
        gap = frame - self.last[row]
        step = det - self.seen[row]
        both = np.isfinite(step).all(1)
        if both.any():
            m = self.momentum
            self.velocity[row] = m * self.velocity[row] + (1 - m) * step[both].mean(0) / gap
        present = np.isfinite(det).all(1)[:, None]
        self.xy[row] = np.where(present, det, self.xy[row] + self.velocity[row] * gap)
        self.seen[row] = det
        self.last[row], self.hits[row] = frame, self.hits[row] + 1

    def _start(self, det: np.ndarray, frame: int) -> int:
        tid = self.next_id
        self.next_id += 1
        self.ids = np.append(self.ids, tid)
        self.xy, self.seen = (
            np.concatenate([self.xy, det[None]]),
            np.concatenate([self.seen, det[None]]),
        )
        self.velocity = np.concatenate([self.velocity, np.zeros((1, 2))])
        self.last, self.hits = np.append(self.last, frame), np.append(self.hits, 1)
        self.smoothers[tid] = OneEuro(**self.filter_args)
        return tid
