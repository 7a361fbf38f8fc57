"""python scripts/bench_data.py -- training-sample throughput of the data pipeline on one core.

Runs ``datasets.coco.CocoKeypoints`` over ../shared/data/coco-mini train2017 at 224x224 with the
full training augmentation of conf/data/coco.yaml (rotation, zoom, shift, flip, colour jitter) and
targets rendered in the loop (heatmaps, PAFs, ignore mask), the way one loader worker does, pinned
to one CPU core (process affinity, OpenCV/torch/BLAS threads 1). Prints images/s and the share of
time in decoding, augmentation (the one warp + colour matrix + tensor conversion), the ignore mask
and targets; and, measured in the same run on the same files, a baseline that only reads and
decodes each JPEG at full size (and one at 1/2 size). Goal: >= 250 images/s per core.

Each measurement is repeated ``--rounds`` times and the best round is reported (the machine is
shared, so slower rounds measure other processes). Both wall-clock and process-CPU rates are shown.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # scripts run from anywhere; the toolkit is not installed

from datasets.coco import CocoKeypoints  # noqa: E402
from datasets.targets import TargetConfig  # noqa: E402
from datasets.topology import Topology  # noqa: E402

COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"
GOAL = 250.0
STAGES = {
    "decode": ("decode",),
    "augment": ("sample", "warp", "keypoints"),
    "mask": ("mask",),
    "targets": ("targets",),
}


def pin_one_core() -> str:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def timed(fn, n_items: int, rounds: int) -> tuple[float, float]:
    """Best (wall, cpu) items/s over ``rounds`` runs of ``fn``."""
    best_wall = best_cpu = 0.0
    for _ in range(rounds):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        best_wall, best_cpu = max(best_wall, n_items / w), max(best_cpu, n_items / max(c, 1e-9))
    return best_wall, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coco-mini", type=Path, default=COCO_MINI)
    ap.add_argument("--epochs", type=int, default=4, help="passes over the images per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--max-upsample",
        type=float,
        default=None,
        help="override data.max_upsample of conf/data/coco.yaml",
    )
    args = ap.parse_args()
    ann = args.coco_mini / "annotations" / "person_keypoints_train2017.json"
    if not ann.is_file():
        raise SystemExit(f"coco-mini not found at {args.coco_mini} (--coco-mini PATH)")
    pinned = pin_one_core()
    data_cfg = yaml.safe_load((REPO / "conf" / "data" / "coco.yaml").read_text())
    max_up = args.max_upsample if args.max_upsample is not None else data_cfg["max_upsample"]
    ds = CocoKeypoints(
        ann,
        args.coco_mini / "train2017",
        Topology.named("coco18"),
        input_size=(224, 224),
        targets=TargetConfig(),
        augment=data_cfg["augment"],
        aspect=data_cfg["aspect"],
        render_targets=True,
        skip_empty=True,
        max_upsample=max_up,
    )
    files = sorted({rec["file"] for rec in ds.records})
    n = len(ds) * args.epochs
    print(
        f"coco-mini train2017: {len(ds)} images with labelled people, 224x224, stride 4, "
        f"full augmentation + targets, max_upsample={max_up}; one process, {pinned}; "
        f"{args.epochs} passes per round, best of {args.rounds} rounds"
    )

    def decode_only(flag: int) -> None:
        for _ in range(args.epochs):
            for f in files:
                buf = np.fromfile(f, np.uint8)
                if cv2.imdecode(buf, flag | cv2.IMREAD_IGNORE_ORIENTATION) is None:
                    raise RuntimeError(f"cannot decode {f}")

    def pipeline() -> None:
        for _ in range(args.epochs):
            for i in range(len(ds)):
                ds[i]

    torch.manual_seed(0)
    pipeline()  # warm-up: caches (ignore-mask RLEs), imports, page cache
    ds.timings = None
    full_w, full_c = timed(
        lambda: decode_only(cv2.IMREAD_COLOR), len(files) * args.epochs, args.rounds
    )
    half_w, half_c = timed(
        lambda: decode_only(cv2.IMREAD_REDUCED_COLOR_2), len(files) * args.epochs, args.rounds
    )
    pipe_w, pipe_c = timed(pipeline, n, args.rounds)
    # stage shares from one more instrumented round
    ds.timings = {}
    w0 = time.perf_counter()
    pipeline()
    total = time.perf_counter() - w0
    print()
    print(f"{'':34s}{'images/s (wall)':>16s}{'images/s (CPU)':>16s}")
    print(f"{'baseline: read + decode full size':34s}{full_w:16.1f}{full_c:16.1f}")
    print(f"{'baseline: read + decode 1/2 size':34s}{half_w:16.1f}{half_c:16.1f}")
    print(f"{'pipeline: full sample + targets':34s}{pipe_w:16.1f}{pipe_c:16.1f}")
    print()
    print(
        f"pipeline / full-size decode baseline: {pipe_w / full_w:.2f} (wall), "
        f"{pipe_c / full_c:.2f} (CPU)"
    )
    shares = {k: sum(ds.timings.get(s, 0.0) for s in v) / total for k, v in STAGES.items()}
    other = 1.0 - sum(shares.values())
    print(
        "time shares: "
        + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
        + f", other {other:.0%}"
    )
    counts = {k[6:]: v for k, v in ds.timings.items() if k.startswith("count_")}
    print(
        "JPEG decoded at "
        + ", ".join(f"{k} size {v / sum(counts.values()):.0%}" for k, v in sorted(counts.items()))
    )
    ok = pipe_w >= GOAL or pipe_c >= GOAL
    print(
        f"goal >= {GOAL:.0f} images/s per core: {'met' if ok else 'NOT met'} "
        f"({pipe_w:.0f} wall, {pipe_c:.0f} CPU)"
    )


if __name__ == "__main__":
    main()
