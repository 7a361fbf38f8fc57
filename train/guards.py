"""Guards around a training run: what is checked before it starts and kept after it ends.

* ``validate_config``: overrides that cannot train (``epochs=-5``, ``steps_per_epoch=0``,
  ``grad_accum=0``, ``data.input_size=-1`` or ``[0,0]``, ...) are a one-line UsageError at
  startup, not a silent no-op, a full epoch, or an error deep inside a loader worker.
* ``RunLock``: one training run per ``out_dir``. The lock is ``fcntl.lockf`` on
  ``out_dir/.lock``, which the kernel drops when its process dies (however it dies; forked loader workers do not inherit it), so a stale
  lock from a killed run is simply taken over; the file names the holder for the error message.
* ``check_resume``: a checkpoint of another model or input size is refused in one line before
  its weights are loaded (instead of hundreds of ``size mismatch`` lines, or a silent change).
* ``merge_summary``: ``summary.json`` keeps the epochs and log rows of earlier invocations (a
  resumed run adds its own, a rerun of a finished run leaves them), plus one entry per invocation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets.errors import UsageError, UserError

LOCK_NAME = ".lock"


# --------------------------------------------------------------------------- config
def _int(cfg: Mapping[str, Any], key: str, minimum: int, optional: bool = False) -> None:
    if key not in cfg:  # a plain-dict config (tests, scripts) without it: the code's default
        return
    value = cfg[key]
    if value is None and optional:
        return
    try:
        ok = int(value) == float(value) and int(value) >= minimum
    except (TypeError, ValueError, OverflowError):  # (int of inf overflows)
        ok = False
    if not ok:
        also = " or null" if optional else ""
        raise UsageError(f"{key}={value}: give an integer >= {minimum}{also}")


def validate_process(cfg: Mapping[str, Any]) -> None:
    """Refuse a bad ``device`` or ``threads`` before the process group and threads are set up."""
    _int(cfg, "threads", 1, optional=True)
    device = str(cfg.get("device") or "auto")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UsageError(f"device={device}: give auto, cpu, cuda or cuda:N")


def validate_config(cfg: Mapping[str, Any], stride: int) -> None:
    """Refuse overrides that cannot train, naming the override and what it takes."""
    _int(cfg, "epochs", 1)
    _int(cfg, "steps_per_epoch", 1, optional=True)
    _int(cfg, "val_steps", 1, optional=True)
    _int(cfg, "grad_accum", 1)
    _int(cfg, "ckpt_every", 1)
    _int(cfg, "log_every", 1)
    _int(cfg, "val_every", 0)
    _int(cfg, "image_every", 0)
    data = cfg.get("data") or {}
    _int(data, "batch_size", 1)
    _int(data, "num_workers", 0)
    size = data.get("input_size")
    try:
        hw = [int(v) for v in size]  # type: ignore[union-attr]
        ok = len(hw) == 2 and all(
            v > 0 and v % stride == 0 and v == float(f) for v, f in zip(hw, size, strict=True)
        )
    except (TypeError, ValueError, OverflowError):  # (int of inf overflows)
        ok = False
    if not ok:
        raise UsageError(
            f"data.input_size={size}: give [H,W], positive multiples of the stride {stride} "
            "(e.g. data.input_size=[224,224])"
        )


# --------------------------------------------------------------------------- lock
class RunLock:
    """An exclusive lock on ``out_dir`` for the life of a training run (rank 0 takes it).

    ``acquire`` raises UserError naming the run that holds it; ``release`` (or the process's
    death) frees it.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            # a POSIX record lock (lockf), not flock: DataLoader workers forked from the run
            # share its flock and keep a SIGKILLed run's lock alive until they notice; a lockf
            # lock belongs to this process alone and dies with it
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: another process holds it
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(
                f"{self.path.parent} is in use by another training run ({holder}): wait for it "
                "to finish, or give this run its own out_dir=... (or name=...)"
            ) from None
        # ours (a killed holder's lock is gone with it): say who holds it now
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


# --------------------------------------------------------------------------- resume
def _model_name(model: Mapping[str, Any]) -> str:
    return str(model.get("name") or model.get("backbone") or model.get("_target_"))


def check_resume(saved: Mapping[str, Any], cfg: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume ``path`` (whose training config is ``saved``) into another model, input
    size or topology; the message says what it was trained with and what to do."""
    was_model, now_model = saved.get("model") or {}, cfg.get("model") or {}
    same_model = {k: v for k, v in was_model.items() if k not in ("pretrained", "weights_url")} == {
        k: v for k, v in now_model.items() if k not in ("pretrained", "weights_url")
    }
    was_size = list((saved.get("data") or {}).get("input_size") or [])
    now_size = list((cfg.get("data") or {}).get("input_size") or [])
    was_parts = list((saved.get("topology") or {}).get("labels") or [])
    now_parts = list((cfg.get("topology") or {}).get("labels") or [])
    if same_model and was_size == now_size and (not was_parts or was_parts == now_parts):
        return
    what = f"model {_model_name(was_model)} / input {was_size}"
    asked = f"model {_model_name(now_model)} / input {now_size}"
    if was_parts and was_parts != now_parts:
        what += f" / {len(was_parts)} keypoints"
        asked += f" / {len(now_parts)} keypoints"
    raise UserError(
        f"{path} was trained with {what}, this run asks for {asked}: use a new out_dir=... "
        "(or name=...), or resume=null with a fresh out_dir to start over"
    )


def load_weights(model: Any, state: Mapping[str, Any], path: Path) -> None:
    """``model.load_state_dict(state)``, with weights that do not fit as one line."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        first = lines[0] if lines else str(e).splitlines()[0]
        raise UserError(
            f"{path}: its weights do not fit this model ({len(lines)} size mismatches, first: "
            f"{first}): use a new out_dir=... or resume=null"
        ) from None


# --------------------------------------------------------------------------- summary
def merge_summary(
    previous: Mapping[str, Any] | None, summary: dict[str, Any], start_epoch: int, start_step: int
) -> dict[str, Any]:
    """``summary`` (this invocation) on top of ``previous`` (summary.json as found): epochs
    before ``start_epoch`` and log rows up to ``start_step`` are kept from before (a resumed run
    redoes nothing before them); ``invocations`` lists every run of the command."""
    previous = previous or {}
    kept = [r for r in previous.get("epochs", []) if int(r.get("epoch", -1)) < start_epoch]
    rows = [r for r in previous.get("history", []) if int(r.get("step", 0)) <= start_step]
    merged = dict(summary)
    merged["epochs"] = kept + list(summary.get("epochs", []))
    merged["history"] = rows + list(summary.get("history", []))
    this = {
        "started_epoch": start_epoch,
        "epochs_run": len(summary.get("epochs", [])),
        "world_size": summary.get("world_size"),
        "minutes": summary.get("minutes"),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    merged["invocations"] = [*previous.get("invocations", []), this]
    if merged["epochs"]:
        merged["skipped_images"] = {
            "train": sum(r.get("skipped_images", 0) for r in merged["epochs"]),
            "val": sum(r.get("val_skipped_images", 0) for r in merged["epochs"]),
        }
    return merged


def read_summary(path: Path) -> dict[str, Any] | None:
    """summary.json as a dict, or None when absent or unreadable (then it is rebuilt)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
