"""Tracker: OKS matching, constant-velocity prediction through occlusion, max_age, One Euro."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.synthetic_video import detections, simulate_walks
from datasets.topology import COCO_SIGMAS, Topology
from inference.track import (
    MIN_AREA,
    OneEuro,
    Tracker,
    _oks_kernel,
    oks_matrix,
    pose_areas,
    topology_sigmas,
)

COCO18 = Topology.named("coco18")
SIGMAS = topology_sigmas(COCO18)


def _figure(cx: float, cy: float, scale: float = 20.0) -> np.ndarray:
    """(18, 2) upright pose around (cx, cy) from the synthetic walks' base pose."""
    walks = simulate_walks(1, 1, seed=3)
    kp = walks.keypoints[0, 0]
    return (kp - kp.mean(0)) / walks.unit[0] * scale + (cx, cy)


def test_sigmas_follow_the_topology():
    assert SIGMAS[COCO18.labels.index("left_hip")] == COCO_SIGMAS["left_hip"]
    arm = Topology(labels=("Wrist", "Elbow"), edges=((0, 1),), name="arm", sigmas=(0.05, 0.07))
    assert topology_sigmas(arm).tolist() == [0.05, 0.07]


def test_oks_matrix():
    a = _figure(100, 100)
    far = _figure(400, 100)
    part = a.copy()
    part[:9] = np.nan  # missing parts are left out, not counted as errors
    oks = oks_matrix(np.stack([a]), np.stack([a, far, part + 1.0]), SIGMAS, np.array([60 * 60.0]))
    assert oks.shape == (1, 3)
    assert oks[0, 0] == pytest.approx(1.0)
    assert oks[0, 1] < 1e-6
    assert 0.9 < oks[0, 2] < 1.0
    nothing = np.full_like(a, np.nan)
    assert oks_matrix(a[None], nothing[None], SIGMAS, np.array([3600.0]))[0, 0] == 0.0


def _oks_pair(track: np.ndarray, det: np.ndarray) -> float:
    """COCO's OKS of one pair, written out part by part (no gate: it only skips pairs whose OKS
    is below GATE_OKS anyway)."""
    present = track[np.isfinite(track).all(1)]
    area = 0.0
    if len(present):
        area = float(np.ptp(present[:, 0]) * np.ptp(present[:, 1]))
    s2 = max(area, MIN_AREA)
    sims = [
        np.exp(-((t - d) ** 2).sum() / (2 * (2 * sigma) ** 2 * s2))
        for t, d, sigma in zip(track, det, SIGMAS, strict=True)
        if np.isfinite(t).all() and np.isfinite(d).all()
    ]
    return float(np.mean(sims)) if sims else 0.0


def test_compiled_oks_kernel_matches_a_per_pair_loop():
    """The tracker's compiled OKS (one pass over all pairs) against the numpy ``oks_matrix`` and
    a plain per-pair loop, on poses near and far, with missing parts and an empty pose."""
    rng = np.random.default_rng(0)
    centres = [(100, 100), (104, 98), (130, 110), (400, 100), (100, 300)]
    poses = np.stack([_figure(x, y) + rng.normal(0, 3, (len(SIGMAS), 2)) for x, y in centres])
    poses[1, :9] = np.nan
    poses[2, rng.random(len(SIGMAS)) < 0.3] = np.nan
    dets = poses[[4, 0, 2, 1, 3]] + rng.normal(0, 4, poses.shape)
    dets[3] = np.nan  # a detection with no parts
    out = np.full((len(poses), len(dets)), -1.0)
    _oks_kernel(poses, dets, 2.0 * (2.0 * SIGMAS) ** 2, out)
    loop = np.array([[_oks_pair(t, d) for d in dets] for t in poses])
    assert (loop > 0.3).sum() >= 4 and (loop < 1e-3).sum() >= 4  # near and far pairs both seen
    np.testing.assert_allclose(out, loop, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, oks_matrix(poses, dets, SIGMAS, pose_areas(poses)), atol=1e-12)


def test_ids_survive_a_crossing_with_occlusion():
    """Two figures walk towards each other along the same line; while they overlap the far one
    is not detected at all. Without the velocity prediction the far one, reappearing beside the
    near one, would take the near one's id or a new one."""
    tracker = Tracker(SIGMAS, max_age=15)  # hidden for 11 frames
    first = None
    for t in range(60):
        a = _figure(50 + 5 * t, 100)  # walks right, in front
        b = _figure(350 - 5 * t, 104)  # walks left, behind
        dets = [a] if abs(a[:, 0].mean() - b[:, 0].mean()) < 60 else [b, a]
        ids = tracker.update(dets, frame=t)
        got = {"a": ids[-1]} | ({"b": ids[0]} if len(dets) == 2 else {})
        if first is None:
            first = got
        assert got["a"] == first["a"], t
        if "b" in got:
            assert got["b"] == first["b"], t
    assert first["a"] != first["b"]


def test_one_to_one_and_new_ids():
    tracker = Tracker(SIGMAS)
    a, b = _figure(100, 100), _figure(105, 100)  # two near-identical detections
    ids = tracker.update([a, b])
    assert len(set(ids)) == 2
    ids2 = tracker.update([a, b, _figure(400, 300)])
    assert ids2[:2] == ids and ids2[2] not in ids


def test_max_age():
    tracker = Tracker(SIGMAS, max_age=5)
    still = _figure(200, 200)
    (tid,) = tracker.update([still], frame=0)
    assert tracker.update([still], frame=1) == [tid]
    assert tracker.update([still], frame=6) == [tid]  # missed frames 2-5: kept
    assert tracker.update([still], frame=13) != [tid]  # missed 6 frames > max_age: new track
    assert [t.id for t in tracker.tracks] == [tid + 1]


def test_one_frame_tracks_do_not_pile_up():
    """False skeletons of a weak model, somewhere new every frame: tracks seen once are dropped
    when they miss the next frame, so the tracker stays small (and fast)."""
    rng = np.random.default_rng(0)
    tracker = Tracker(SIGMAS, max_age=30)
    for t in range(50):
        tracker.update([_figure(*rng.uniform(0, 2000, 2)) for _ in range(20)], frame=t)
    assert len(tracker.tracks) <= 3 * 20  # this frame's and the last one's, not 30 frames' worth


def test_skipped_frames_extrapolate_motion():
    tracker = Tracker(SIGMAS, max_age=30)
    for t in range(5):
        (tid,) = tracker.update([_figure(100 + 8 * t, 200)], frame=t)
    # 10 frames later the object is 80 px further on, beyond OKS reach of its last position
    # (so only the velocity prediction can match it), and a distractor sits where it was
    ids = tracker.update([_figure(100 + 8 * 14, 200), _figure(100 + 8 * 4, 200)], frame=14)
    assert ids[0] == tid and ids[1] != tid


def test_one_euro_smooths_jitter_and_follows_motion():
    rng = np.random.default_rng(0)
    still = np.zeros((1, 2))
    f = OneEuro(min_cutoff=1.0, beta=0.02)
    raw, out = [], []
    for t in range(300):
        x = still + rng.normal(0, 2.0, still.shape)
        raw.append(x[0, 0])
        out.append(f(x, t / 30)[0, 0])
    assert np.std(out[30:]) < 0.5 * np.std(raw[30:])
    f = OneEuro(min_cutoff=1.0, beta=0.02)
    for t in range(60):  # a fast move: 10 px per frame
        y = f(np.array([[10.0 * t, 0.0]]), t / 30)
    assert abs(y[0, 0] - 590.0) < 20.0  # lags by under 2 frames


def test_smooth_writes_filtered_keypoints_and_keeps_missing_parts():
    tracker = Tracker(SIGMAS, smooth=True)
    rng = np.random.default_rng(1)
    base = _figure(200, 200)
    errs_raw, errs_out = [], []
    for t in range(60):
        kp = np.concatenate([base + rng.normal(0, 1.5, base.shape), np.ones((18, 1))], 1)
        kp[3] = np.nan
        raw = kp[:, :2].copy()
        tracker.update([kp], frame=t)
        assert np.isnan(kp[3, :2]).all() and kp[0, 2] == 1.0
        if t > 20:
            errs_raw.append(np.nanmean(np.abs(raw - base)))
            errs_out.append(np.nanmean(np.abs(kp[:, :2] - base)))
    assert np.mean(errs_out) < 0.6 * np.mean(errs_raw)


@pytest.mark.parametrize("seed", [0, 1])
def test_few_id_switches_on_synthetic_walks(seed):
    """Walking, crossing, occluded figures with decoder-like noise, false skeletons and misses:
    switches while an object is continuously tracked (gaps <= max_age) stay under 1 per 100
    frames per object (the issue's goal; scripts/bench_tracking.py reports it on more clips)."""
    walks = simulate_walks(4, 200, seed=seed)
    tracker = Tracker(SIGMAS, max_age=30)
    last, seen_at, switches, frames = {}, {}, 0, 0
    for t, dets in enumerate(detections(walks, seed=seed)):
        ids = tracker.update([d for _, d in dets], frame=t)
        for (g, _), tid in zip(dets, ids, strict=True):
            if g < 0:
                continue
            frames += 1
            if g in last and last[g] != tid and t - seen_at[g] <= 30:
                switches += 1
            last[g], seen_at[g] = tid, t
    assert frames > 300
    assert 100 * switches / frames <= 1.0
