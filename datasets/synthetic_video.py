"""Synthetic walks for tracking: figures that walk, cross and hide each other, leave the picture
and come back, with exact ground truth.

``simulate_walks`` moves coco18 stick people (``datasets.synthetic``'s poses, legs and arms
swinging) across a picture: each walks at its own speed and height band, so their paths cross, and
turns back only after it has left the picture completely. ``detections`` turns the ground truth
into what a bottom-up decoder gives: keypoint noise, parts that go missing, a figure hidden behind
a nearer one (whole, or the parts it covers), whole misses and false skeletons. ``render_video``
draws the walks into a video file (the browser test's and the demo's input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datasets.synthetic import _draw_figure, _person_pose
from datasets.topology import Topology

_EXTENT = 2.9  # body units from head top to feet (datasets.synthetic)
_KNEE, _ANKLE, _ELBOW, _WRIST = (13, 14), (15, 16), (7, 8), (9, 10)


@dataclass
class Walks:
    """Ground truth of a synthetic clip: ``keypoints`` (T, N, K, 2) in pixels for N objects over T
    frames; ``depth`` (N,) (larger is nearer: it hides the others); ``unit`` (N,) body size in
    pixels; ``size`` (h, w) of the picture."""

    keypoints: np.ndarray
    depth: np.ndarray
    unit: np.ndarray
    size: tuple[int, int]

    def in_view(self) -> np.ndarray:
        """(T, N) whether at least half of each object's parts are inside the picture."""
        h, w = self.size
        x, y = self.keypoints[..., 0], self.keypoints[..., 1]
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        return inside.mean(-1) >= 0.5


def simulate_walks(
    num_objects: int, num_frames: int, size: tuple[int, int] = (360, 640), seed: int = 0
) -> Walks:
    """N figures walking left and right across an (h, w) picture for T frames (see the module)."""
    rng = np.random.default_rng(seed)
    h, w = size
    unit = rng.uniform(0.22, 0.32, num_objects) * h / _EXTENT * 2
    base = np.stack([_person_pose(rng) for _ in range(num_objects)])  # (N, K, 2) body units
    base -= base.mean(1, keepdims=True)
    x = rng.uniform(0.1, 0.9, num_objects) * w
    # heights overlap, so paths cross with the nearer figure in front
    y = h * (0.45 + 0.25 * rng.uniform(-1, 1, num_objects))
    speed = rng.uniform(1.5, 5.0, num_objects) * rng.choice([-1, 1], num_objects)
    phase = rng.uniform(0, 2 * math.pi, num_objects)
    out = np.zeros((num_frames, num_objects, base.shape[1], 2))
    for t in range(num_frames):
        for i in range(num_objects):
            half = unit[i] * 1.2  # figure half-width with arms out
            if (x[i] < -2 * half and speed[i] < 0) or (x[i] > w + 2 * half and speed[i] > 0):
                speed[i] = -speed[i]  # turn back once fully out of the picture
            x[i] += speed[i]
            y[i] += 0.3 * math.sin(0.05 * t + phase[i])
            pose = _stride(base[i], 0.25 * t * abs(speed[i]) / 3 + phase[i])
            out[t, i] = pose * unit[i] + (x[i], y[i])
    return Walks(out, rng.permutation(num_objects).astype(float), unit, (h, w))


def _stride(pose: np.ndarray, phase: float) -> np.ndarray:
    """A walking pose: knees, ankles, elbows and wrists swing with the phase (body units)."""
    p = pose.copy()
    swing = 0.25 * math.sin(phase)
    for side, sign in ((0, 1.0), (1, -1.0)):
        p[_KNEE[side], 0] += sign * swing * 0.6
        p[_ANKLE[side], 0] += sign * swing
        p[_ELBOW[side], 0] -= sign * swing * 0.4
        p[_WRIST[side], 0] -= sign * swing * 0.7
    return p


def _box(kp: np.ndarray) -> np.ndarray:
    return np.concatenate([kp.min(0), kp.max(0)])


def detections(
    walks: Walks,
    seed: int = 0,
    noise: float = 0.02,
    part_drop: float = 0.1,
    miss: float = 0.03,
    false_rate: float = 0.05,
) -> list[list[tuple[int, np.ndarray]]]:
    """Per frame, a list of (object index or -1 for a false skeleton, (K, 2) keypoints with NaN
    for missing parts), shuffled: what a decoder would report for the walks.

    ``noise``: keypoint noise in body units; ``part_drop``: chance a part is missing; ``miss``:
    chance a whole figure is missed; ``false_rate``: false skeletons per frame. A figure whose
    box is mostly covered by a nearer one is not detected; the parts inside a nearer one's box
    are missing.
    """
    rng = np.random.default_rng(seed + 1)
    h, w = walks.size
    view = walks.in_view()
    frames = []
    for t, kps in enumerate(walks.keypoints):
        boxes = [_box(k) for k in kps]
        dets = []
        for i, kp in enumerate(kps):
            if not view[t, i] or rng.random() < miss:
                continue
            hidden = np.zeros(len(kp), bool)
            for j, b in enumerate(boxes):
                if j != i and walks.depth[j] > walks.depth[i] and view[t, j]:
                    hidden |= (
                        (kp[:, 0] >= b[0])
                        & (kp[:, 0] <= b[2])
                        & (kp[:, 1] >= b[1])
                        & (kp[:, 1] <= b[3])
                    )
            outside = (kp[:, 0] < 0) | (kp[:, 0] >= w) | (kp[:, 1] < 0) | (kp[:, 1] >= h)
            gone = hidden | outside | (rng.random(len(kp)) < part_drop)
            if gone.mean() > 0.6:
                continue  # mostly covered: the decoder finds too few parts
            det = kp + rng.normal(0, noise * walks.unit[i], kp.shape)
            det[gone] = np.nan
            dets.append((i, det))
        for _ in range(rng.poisson(false_rate)):
            j = int(rng.integers(len(kps)))
            fake = kps[j] - kps[j].mean(0) + rng.uniform((0, 0), (w, h))
            fake[rng.random(len(fake)) < 0.6] = np.nan
            dets.append((-1, fake))
        order = rng.permutation(len(dets))
        frames.append([dets[k] for k in order])
    return frames


def render_video(
    path: str | Path, walks: Walks, fps: float = 15.0, seed: int = 0, codec: str = "mp4v"
) -> Path:
    """Draw the walks (far figures first) on a plain gradient into a video file."""
    rng = np.random.default_rng(seed)
    h, w = walks.size
    topology = Topology.named("coco18")
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"could not open a video writer for {path} (codec {codec})")
    background = cv2.resize(
        rng.uniform(60, 200, (2, 2, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR
    )
    order = np.argsort(walks.depth)
    try:
        for kps in walks.keypoints:
            frame = background.copy()
            for i in order:
                # the same colours every frame: a fixed generator per figure
                figure_rng = np.random.default_rng(seed * 1000 + int(i))
                _draw_figure([(frame, None)], kps[i], topology, walks.unit[i], True, figure_rng)
            writer.write(frame)
    finally:
        writer.release()
    return path
