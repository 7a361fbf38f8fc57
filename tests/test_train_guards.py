"""train.guards and the DDP fault handling: config validation, resume compatibility, one run per
out_dir (a killed holder's lock is taken over), summary.json history, DDP timeouts, and ranks
that exit when their torchrun agent dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datasets.errors import UsageError, UserError
from tests._train_data import TinyPoseSet, train_args, write_coco_set
from tests.test_train import tiny_cfg
from train.guards import RunLock, load_weights, merge_summary
from train.loop import run

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "override, message",
    [
        ({"epochs": -5}, "epochs=-5: give an integer >= 1"),
        ({"epochs": 0}, "epochs=0: give an integer >= 1"),
        ({"steps_per_epoch": 0}, "steps_per_epoch=0: give an integer >= 1 or null"),
        ({"grad_accum": 0}, "grad_accum=0: give an integer >= 1"),
        ({"data": {"input_size": -1}}, "data.input_size=-1: give [H,W], positive multiples"),
        ({"data": {"input_size": [0, 0]}}, "data.input_size=[0, 0]: give [H,W]"),
        ({"data": {"input_size": [66, 64]}}, "multiples of the stride 4"),
        ({"data": {"input_size": [64, 64], "batch_size": 0}}, "batch_size=0"),
        ({"threads": -2}, "threads=-2: give an integer >= 1 or null"),
        ({"device": "bogus"}, "device=bogus: give auto, cpu, cuda or cuda:N"),
        ({"image_every": -1}, "image_every=-1: give an integer >= 0"),
    ],
)
def test_overrides_that_cannot_train_are_refused_at_startup(tmp_path, override, message):
    cfg = tiny_cfg(tmp_path / "r")
    for key, value in override.items():
        if key == "data":
            cfg["data"].update(value)
        else:
            cfg[key] = value
    with pytest.raises(UsageError) as e:
        run(cfg, train_set=TinyPoseSet(4))
    assert message in str(e.value)
    assert not (tmp_path / "r" / "last.pth").exists()


@pytest.mark.parametrize(
    ("lr", "message"),
    [(-1.0, "optimizer torch.optim.Adam: Invalid learning rate: -1.0: fix the optimizer.* override"),
     ("abc", "optimizer torch.optim.Adam: '<=' not supported")],
)  # fmt: skip
def test_values_the_optimizer_refuses_are_usage_errors(tmp_path, lr, message):
    cfg = tiny_cfg(tmp_path / "r")
    cfg["optimizer"]["lr"] = lr
    with pytest.raises(UsageError) as e:
        run(cfg, train_set=TinyPoseSet(4))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_bad_override_on_the_command_line_is_one_line_exit_2(tmp_path):
    data = write_coco_set(tmp_path / "coco", n_train=2, n_val=1)
    proc = subprocess.run(
        [sys.executable, "-m", "train", *train_args(data, tmp_path / "run", "epochs=-5")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "error: epochs=-5: give an integer >= 1"
    assert "Traceback" not in proc.stderr


def test_resume_with_another_input_size_or_model_is_one_line(tmp_path):
    run(tiny_cfg(tmp_path / "r", epochs=1), train_set=TinyPoseSet(4))
    bigger = tiny_cfg(tmp_path / "r", epochs=2)
    bigger["data"]["input_size"] = [96, 96]
    with pytest.raises(UserError) as e:
        run(bigger, train_set=TinyPoseSet(4, input_hw=(96, 96)))
    assert str(e.value) == (
        f"{tmp_path / 'r' / 'last.pth'} was trained with model tiny_att / input [64, 64], this "
        "run asks for model tiny_att / input [96, 96]: use a new out_dir=... (or name=...), or "
        "resume=null with a fresh out_dir to start over"
    )
    other = tiny_cfg(tmp_path / "r", epochs=2)
    other["model"] = {**other["model"], "name": "wide", "upsample_channels": 64}
    with pytest.raises(UserError, match=r"trained with model tiny_att .* asks for model wide"):
        run(other, train_set=TinyPoseSet(4))


def test_weights_that_do_not_fit_are_one_line():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1))
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 4, 1))
    with pytest.raises(UserError) as e:
        load_weights(model, other.state_dict(), Path("x.pth"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("x.pth: its weights do not fit this model (3 size")


HOLD = """
import sys, time
from train.guards import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_second_run_on_one_out_dir_is_refused_and_a_dead_holders_lock_taken_over(tmp_path):
    out = tmp_path / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as e:
            run(tiny_cfg(out, epochs=1), train_set=TinyPoseSet(4))
        assert f"{out} is in use by another training run (pid {holder.pid} on " in str(e.value)
        assert "give this run its own out_dir=..." in str(e.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the holder dies without releasing anything
        holder.wait()
    assert (out / ".lock").exists()  # stale file left behind ...
    summary = run(tiny_cfg(out, epochs=1), train_set=TinyPoseSet(4))  # ... and taken over
    assert [e["epoch"] for e in summary["epochs"]] == [0]
    with RunLock(out):  # released at the end of the run
        pass


def test_summary_keeps_its_history_across_resumes_and_reruns(tmp_path):
    out, data = tmp_path / "r", TinyPoseSet(8)
    run(tiny_cfg(out, epochs=1), train_set=data)
    run(tiny_cfg(out, epochs=2), train_set=data)  # resumed: adds epoch 1
    run(tiny_cfg(out, epochs=2), train_set=data)  # finished: runs nothing, keeps everything
    saved = json.loads((out / "summary.json").read_text())
    assert [e["epoch"] for e in saved["epochs"]] == [0, 1]
    steps = [h["step"] for h in saved["history"]]
    assert steps == sorted(steps) and steps[-1] == saved["epochs"][-1]["step"] == 4
    assert [i["epochs_run"] for i in saved["invocations"]] == [1, 1, 0]


def test_merge_summary_drops_epochs_a_resume_redoes():
    before = {"epochs": [{"epoch": 0}, {"epoch": 1}], "history": [{"step": 2}, {"step": 4}]}
    now = {"epochs": [{"epoch": 1, "x": 1}], "history": [{"step": 3}], "world_size": 1}
    merged = merge_summary(before, now, start_epoch=1, start_step=2)
    assert merged["epochs"] == [{"epoch": 0}, {"epoch": 1, "x": 1}]
    assert [h["step"] for h in merged["history"]] == [2, 3]


# --------------------------------------------------------------------------- DDP faults
def _torchrun(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    from tests.test_ddp import _env, _free_port

    data = write_coco_set(tmp_path / "coco", n_train=8, n_val=1)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "train",
           *train_args(data, out, "epochs=1000", "steps_per_epoch=null", *extra)]  # fmt: skip
    log = (tmp_path / "torchrun.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not (out / "last.pth").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "torchrun.log").read_text()[-3000:]
        time.sleep(0.2)
    assert (out / "last.pth").exists(), "no epoch finished"
    return proc, out


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_ranks_exit_when_the_torchrun_agent_dies(tmp_path):
    proc, _ = _torchrun(tmp_path)
    ranks = _children(proc.pid)
    assert len(ranks) == 2
    os.kill(proc.pid, signal.SIGKILL)  # the agent dies; nobody tells the ranks
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(r) for r in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(r) for r in ranks), "ranks kept training without their agent"
    assert "the torchrun agent" in (tmp_path / "torchrun.log").read_text()


@pytest.mark.slow
def test_a_hung_rank_ends_the_run_after_the_ddp_timeout(tmp_path):
    proc, _ = _torchrun(tmp_path, "ddp_timeout_s=5")
    ranks = _children(proc.pid)
    os.kill(ranks[1], signal.SIGSTOP)  # rank 1 hangs; rank 0 waits in a collective
    try:
        t = time.monotonic()
        proc.wait(timeout=120)
        assert proc.returncode != 0
        assert time.monotonic() - t < 100  # bounded by ddp_timeout_s, not torch's 30 minutes
    finally:
        for r in ranks:
            if _alive(r):
                os.kill(r, signal.SIGKILL)
