"""python scripts/bench_train.py [--size 224] [--batch 8] [--windows 4] [--repeats 2]

Images/s of full training steps (train.loop.run: JPEG decoding, augmentation and target rendering
in loader workers, host->device copy, masked-MSE loss, Adam step, TensorBoard scalars and
pictures) against a bare forward + backward + optimizer step of the same model on random tensors,
measured in the same process. Goal: full step <= 1.1x the bare step.

Data: ../shared/data/coco-mini/train2017 (real COCO pictures; the neck is added on load) when
present, else the synthetic set. Both are timed in windows of 2 optimizer steps (the full run's
own log windows, whose first, with worker start-up, is dropped; the bare loop after 2 warm-up
steps); bare and full alternate for ``--repeats`` rounds and the fastest window of each is
compared: on a shared machine it is the one least disturbed by other processes, and this ratio is
the stable figure the goal is judged on (at the goal's case, 224 input and batch 8).

The CPU seconds per step (main process + loader workers for the full step, over the bare step's)
are printed for information, not judged: they are the machine's total work per step, which
includes the time torch's OpenMP threads spend spin-waiting for each other. That waiting grows
and shrinks with what else runs on the machine (a preempted thread keeps its partner spinning),
so the ratio moved from 1.53 to 0.83 between two runs under different load. On an idle machine
it says how much CPU the loader workers add to a step (work that runs beside the network when a
core is free, and slows it when none is).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datasets.topology import Topology  # noqa: E402
from models.build import build_model  # noqa: E402
from train.loop import build_optimizer, masked_mse  # noqa: E402

COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"
GOAL_CASE = (224, 8)  # the goal (full step <= 1.1x the bare step) is about this input and batch


def bare_windows(
    model_cfg: dict, size: int, batch: int, windows: int, per_window: int
) -> list[float]:
    """Seconds per step of each window of ``per_window`` bare steps (forward, masked MSE on random
    targets, backward, Adam step), after two warm-up steps."""
    topo = Topology.named("coco18")
    torch.manual_seed(0)
    model = build_model(dict(model_cfg, pretrained=False), topo).train()
    opt = build_optimizer(
        model.parameters(), {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
    )
    s = model.stride
    x = torch.rand(batch, 3, size, size)
    heat_t = torch.rand(batch, topo.num_parts, size // s, size // s)
    paf_t = torch.rand(batch, topo.num_paf_channels, size // s, size // s)
    mask = torch.ones(batch, size // s, size // s)

    def step() -> None:
        heat, paf = model(x)
        loss = masked_mse(heat, heat_t, mask, "heatmap") + masked_mse(paf, paf_t, mask, "paf")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    wall, cpu = [], []
    for _ in range(windows):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(per_window):
            step()
        wall.append((time.perf_counter() - t0) / per_window)
        cpu.append((time.process_time() - c0) / per_window)
    return wall, cpu


def full_windows(
    size: int, batch: int, windows: int, per_window: int, workers: int
) -> tuple[list[float], list[float]]:
    """One train.loop.run of ``windows + 1`` log windows of ``per_window`` steps; returns seconds
    per step and data-wait fraction of each window but the first (worker start-up)."""
    from hydra import compose, initialize_config_dir
    from torch.utils.data import ConcatDataset

    from datasets.coco import build_dataset, collate
    from train.loop import run

    if (COCO_MINI / "annotations" / "person_keypoints_train2017.json").is_file():
        data = [
            "data=coco",
            f"data.train_annotations={COCO_MINI}/annotations/person_keypoints_train2017.json",
            f"data.train_images={COCO_MINI}/train2017",
            "data.val_annotations=null",
        ]
    else:
        data = ["data=synthetic"]
    steps = (windows + 1) * per_window
    overrides = [
        *data,
        "model.pretrained=false",
        f"data.input_size=[{size},{size}]",
        f"data.batch_size={batch}",
        f"data.num_workers={workers}",
        "epochs=1",
        f"steps_per_epoch={steps}",
        f"log_every={per_window}",
        f"image_every={2 * per_window}",  # pictures with decoded skeletons, far more often than the default
        "val_every=0",
        f"out_dir={tempfile.mkdtemp(prefix='bench_train_')}",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    train_set = build_dataset(cfg, "train", Topology.named("coco18"))
    # coco-mini has few labelled images: repeat it (augmented anew each pass) to fill the epoch
    repeat = -(-steps * batch // len(train_set))
    before = os.times()
    summary = run(cfg, train_set=ConcatDataset([train_set] * repeat), collate_fn=collate)
    after = os.times()  # workers have exited and been waited for: their CPU time is counted
    worker_cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    rows = summary["history"][1:]
    return (
        [batch / r["images_per_s"] for r in rows],
        [r["cpu_s"] / per_window for r in rows],
        [r["data_wait"] for r in rows],
        worker_cpu / steps,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--windows", type=int, default=4, help="measured windows of 2 steps per run")
    ap.add_argument("--workers", type=int, default=1, help="loader worker processes")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import yaml

    model_cfg = yaml.safe_load((REPO / "conf" / "model" / "resnet18_baseline_att.yaml").read_text())
    per_window = 2
    print(
        f"resnet18_baseline_att, input {args.size}x{args.size}, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, loader workers {args.workers}; "
        f"{args.repeats} alternating repeats of {args.windows} windows x {per_window} steps"
    )
    bare, full, bare_cpu, full_cpu, wait, worker = [], [], [], [], [], []
    for r in range(args.repeats):
        b, bc = bare_windows(model_cfg, args.size, args.batch, args.windows, per_window)
        print(
            f"run {r}: bare s/step per window: wall {[round(v, 3) for v in b]}, "
            f"cpu {[round(v, 3) for v in bc]}",
            flush=True,
        )
        f, fc, w, wk = full_windows(args.size, args.batch, args.windows, per_window, args.workers)
        print(
            f"run {r}: full s/step per window: wall {[round(v, 3) for v in f]}, "
            f"cpu {[round(v, 3) for v in fc]} + workers {wk:.3f}, "
            f"data wait {[f'{v:.1%}' for v in w]}",
            flush=True,
        )
        bare += b
        full += f
        bare_cpu += bc
        full_cpu += [v + wk for v in fc]
        wait += w
        worker.append(wk)
    b_best, f_best = min(bare), min(full)
    result = {
        "bare_step_s_best": round(b_best, 4),
        "bare_images_per_s_best": round(args.batch / b_best, 3),
        "full_step_s_best": round(f_best, 4),
        "full_images_per_s_best": round(args.batch / f_best, 3),
        "wall_ratio_best": round(f_best / b_best, 4),
        "wall_ratio_median": round(statistics.median(full) / statistics.median(bare), 4),
        "cpu_ratio_median": round(statistics.median(full_cpu) / statistics.median(bare_cpu), 4),
        "worker_cpu_s_per_step": round(min(worker), 4),
        "data_wait_median": round(statistics.median(wait), 4),
    }
    print("summary:", json.dumps(result))
    print(
        f"not judged: median CPU seconds per step, full (main + loader workers) / bare = "
        f"{result['cpu_ratio_median']:.3f} (includes OpenMP spin-waiting: moves with other load)"
    )
    ratio = f_best / b_best
    if (args.size, args.batch) != GOAL_CASE:
        print(f"goal not judged: it is about input {GOAL_CASE[0]}, batch {GOAL_CASE[1]}")
        return
    verdict = "PASS" if ratio <= 1.1 else "FAIL"
    print(
        f"{verdict}: full/bare step time = {ratio:.3f}, fastest window of each (goal <= 1.1 at "
        f"input {GOAL_CASE[0]}, batch {GOAL_CASE[1]})"
    )


if __name__ == "__main__":
    main()
