"""python scripts/bench_targets.py -- target rendering speed on one CPU core.

Renders heatmaps + PAFs for people in the coco18 topology at 56x56 (224 input) and 120x160
(480x640 input), 2 and 6 people per sample, with the per-sample numpy renderer a loader worker uses
(one core: torch and numpy threads set to 1), and the batched torch renderer on a batch of 64 (on the
CPU here; on CUDA too when a GPU is present). People are real COCO poses from
../shared/data/coco-mini when it is there (else a standing template), placed at random positions
and sizes that fit 2 or 6 people in the frame.

Prints a table: microseconds per sample, per person, and samples/s; and the goal per person
(0.1 ms at 56x56, 0.5 ms at 120x160). Uses process CPU time, so a busy machine inflates the figures
less than wall time would, and
the best of five rounds is reported.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # scripts run from anywhere; the toolkit is not installed

from datasets.targets import TargetConfig, render_targets, render_targets_torch  # noqa: E402
from datasets.topology import Topology  # noqa: E402

COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"
GOAL_US_PER_PERSON = {(56, 56): 100.0, (120, 160): 500.0}

# A standing person facing the camera, (x, y) in person heights, COCO order then neck.
TEMPLATE = np.array(
    [[0.0, 0.06], [0.02, 0.045], [-0.02, 0.045], [0.045, 0.055], [-0.045, 0.055],
     [0.11, 0.18], [-0.11, 0.18], [0.15, 0.33], [-0.15, 0.33], [0.16, 0.46], [-0.16, 0.46],
     [0.07, 0.52], [-0.07, 0.52], [0.08, 0.73], [-0.08, 0.73], [0.08, 0.95], [-0.08, 0.95],
     [0.0, 0.18]]
)  # fmt: skip


def load_poses() -> list[np.ndarray]:
    """Person poses normalised to unit height: (18, 3) arrays (x, y, v) with the neck added."""
    ann = COCO_MINI / "annotations" / "person_keypoints_val2017.json"
    poses = []
    if ann.is_file():
        for a in json.loads(ann.read_text())["annotations"]:
            if a.get("iscrowd") or a.get("num_keypoints", 0) < 10:
                continue
            kp = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
            sh = kp[[5, 6]]
            neck = [*(sh[:, :2].mean(0)), min(sh[:, 2])] if (sh[:, 2] > 0).all() else [0, 0, 0]
            kp = np.vstack([kp, neck])
            lab = kp[:, 2] > 0
            lo, hi = kp[lab, :2].min(0), kp[lab, :2].max(0)
            height = max(hi[1] - lo[1], 1.0)
            kp[:, :2] = (kp[:, :2] - lo) / height
            kp[~lab] = 0
            poses.append(kp)
    if not poses:
        poses = [np.hstack([TEMPLATE - TEMPLATE.min(0), np.full((18, 1), 2.0)])]
    return poses


def make_sample(rng, poses, people: int, input_hw: tuple[int, int]) -> np.ndarray:
    """(people, 18, 3) keypoints in input pixels: each person as tall as 1/2 (2 people) to 1/3
    (6 people) of the frame height, at a random position."""
    h, w = input_hw
    out = []
    for _ in range(people):
        kp = poses[rng.integers(len(poses))].copy()
        height = h * rng.uniform(0.35, 0.6) * (2.0 / people) ** 0.5
        kp[:, :2] = kp[:, :2] * height + [
            rng.uniform(0, w - height * 0.6),
            rng.uniform(0, h - height),
        ]
        out.append(kp)
    return np.asarray(out, np.float32)


def cpu_time(fn, reps: int, repeats: int = 5) -> float:
    """Seconds of process CPU time per call: the best of `repeats` rounds of `reps` calls (the
    minimum is the figure least disturbed by other work on the machine)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.process_time() - t0) / reps)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200, help="samples per timing round")
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    poses = load_poses()
    topo = Topology.named("coco18")
    cfg = TargetConfig()
    src = f"{len(poses)} COCO poses from coco-mini" if len(poses) > 1 else "a standing template"
    print(
        f"target rendering, one core, people drawn from {src}; sigma={cfg.sigma}, "
        f"paf_width={cfg.paf_width} map px"
    )
    print(
        f"{'map':>8} {'people':>6} | {'numpy us/sample':>15} {'us/person':>9} {'goal':>6} "
        f"{'ok':>3} | {'torch batch64 samples/s':>23}"
    )
    for map_hw in [(56, 56), (120, 160)]:
        input_hw = (map_hw[0] * cfg.stride, map_hw[1] * cfg.stride)
        for people in (2, 6):
            samples = [make_sample(rng, poses, people, input_hw) for _ in range(64)]
            it = iter(range(10**9))

            def one(samples=samples, it=it, map_hw=map_hw):
                return render_targets(samples[next(it) % 64], topo, map_hw, cfg)

            per_sample = cpu_time(one, args.reps)
            batch = torch.from_numpy(np.stack(samples))
            per_batch = cpu_time(
                lambda batch=batch, map_hw=map_hw: render_targets_torch(batch, topo, map_hw, cfg),
                1,
                3,
            )
            us = per_sample * 1e6
            goal = GOAL_US_PER_PERSON[map_hw]
            print(
                f"{map_hw[0]:>3}x{map_hw[1]:<4} {people:>6} | {us:>15.0f} {us / people:>9.1f} "
                f"{goal:>6.0f} {'yes' if us / people <= goal else 'NO':>3} | "
                f"{64 / per_batch:>23.0f}"
            )
    if torch.cuda.is_available():
        for map_hw in [(56, 56), (120, 160)]:
            input_hw = (map_hw[0] * cfg.stride, map_hw[1] * cfg.stride)
            batch = torch.from_numpy(
                np.stack([make_sample(rng, poses, 6, input_hw) for _ in range(64)])
            ).cuda()
            render_targets_torch(batch, topo, map_hw, cfg)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                render_targets_torch(batch, topo, map_hw, cfg)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / 20
            print(f"CUDA batch of 64 x 6 people at {map_hw}: {64 / dt:.0f} samples/s")
    else:
        print("CUDA: not available here (the batched renderer's GPU rate is not measured)")


if __name__ == "__main__":
    main()
