"""DDP with 2 CPU processes on gloo, launched by torchrun exactly as users launch it.

Both ranks must end with identical weights, and the run must match a single process over the same
global batches. BatchNorm normalises each rank's own micro-batch, so the single-process reference
accumulates gradients over micro-batches of the same size (grad_accum=2, batch 1): with the shared
DistributedSampler order, its micro-batch j of a step is exactly rank j's batch of that step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from tests._train_data import compose_train, train_args, write_coco_set
from train.loop import run

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    data = write_coco_set(tmp / "coco", n_train=8, n_val=2)
    ddp, single = tmp / "ddp", tmp / "single"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "train",
    ]
    log = (tmp / "torchrun.log").open("w")
    proc = subprocess.Popen(
        torchrun + train_args(data, ddp), cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT
    )
    # the single-process reference runs here meanwhile, through the same Hydra config
    threads = torch.get_num_threads()
    try:
        run(compose_train(train_args(data, single, "grad_accum=2")))
    finally:
        torch.set_num_threads(threads)
    proc.wait(timeout=300)
    log.close()
    assert proc.returncode == 0, "torchrun failed:\n" + (tmp / "torchrun.log").read_text()[-4000:]
    return ddp, single


def test_both_ranks_end_with_identical_weights(runs):
    ddp, _ = runs
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2
    sums = summary["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]


def test_ddp_matches_single_process_over_the_same_global_batches(runs):
    ddp, single = runs
    a = json.loads((ddp / "summary.json").read_text())
    b = json.loads((single / "summary.json").read_text())
    assert a["step"] == b["step"] == 6  # 8 samples / (1 x 2 ranks) = 4 steps, capped at 3 per epoch
    la = [h["loss"] for h in a["history"]]
    lb = [h["loss"] for h in b["history"]]
    assert len(la) == 6
    assert la == pytest.approx(lb, rel=1e-4)
    assert la[-1] < la[0]  # it trained
    wa = load_checkpoint(ddp / "last.pth")["model"]
    wb = load_checkpoint(single / "last.pth")["model"]
    for k, v in wa.items():
        if v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(wb[k], v, rtol=1e-3, atol=1e-5, msg=k)


def test_only_rank0_writes_the_run_dir(runs):
    ddp, _ = runs
    names = sorted(p.name for p in ddp.iterdir())
    assert names == [
        ".lock",
        "config.yaml",
        "epoch_1.pth",
        "hydra",
        "last.pth",
        "summary.json",
        "tb",
    ]
    assert load_checkpoint(ddp / "last.pth")["meta"]["world_size"] == 2
    # one TensorBoard event file: rank 1 opened no writer
    assert len(list((ddp / "tb").glob("events.*"))) == 1
