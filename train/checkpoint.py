"""Checkpoints: plain data, written atomically; read by ``models.checkpoint.load_checkpoint``
(``torch.load(weights_only=True)``), which export and inference use without importing training.

Keys: ``format_version``, ``epoch`` (epochs completed), ``step`` (optimizer steps done), ``model``
(state dict, unwrapped from DDP / torch.compile), ``optimizer``, ``scheduler``, ``scaler``,
``config`` (the resolved training config as plain dicts/lists: ``topology``, ``model``,
``data.input_size`` [H, W], ``data.aspect``, ``targets``), ``meta`` (versions, git sha, world size,
time).

A checkpoint is written to a temporary file beside its destination, flushed to disk, then renamed
over it (``os.replace`` is atomic on POSIX), so a reader or a killed writer never sees a truncated
file: the destination holds either the old or the new complete checkpoint.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from datasets.files import atomic_path
from models.checkpoint import FORMAT_VERSION
from train.guards import load_weights


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def training_state(
    epoch: int,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    config: Mapping[str, Any],
    world_size: int = 1,
) -> dict[str, Any]:
    """The checkpoint of a training run after ``epoch`` (0-based) and ``step`` optimizer steps:
    plain data only (``config`` is the resolved training config); the model is unwrapped."""
    return {
        "epoch": epoch,
        "step": step,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "config": dict(config),
        "meta": checkpoint_meta(world_size),
    }


def restore_training_state(
    ckpt: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    path: str | Path = "the checkpoint",
) -> tuple[int, int]:
    """Load a checkpoint's states into the (unwrapped) model, optimizer, scheduler and scaler;
    returns ``(first epoch to run, optimizer steps done)``."""
    load_weights(model, ckpt["model"], path)
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if ckpt.get(key):
            obj.load_state_dict(ckpt[key])
    return int(ckpt["epoch"]) + 1, int(ckpt["step"])


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + fsync + os.replace).

    ``format_version`` is added when absent. Returns the path.
    """
    state = dict(state)
    state.setdefault("format_version", FORMAT_VERSION)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # the data is on disk before the rename makes it the checkpoint
    path = Path(path)
    # make the rename itself durable
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def git_sha(repo: str | Path | None = None) -> str | None:
    """Current commit of the repository holding this file, or None outside git."""
    repo = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def checkpoint_meta(world_size: int = 1) -> dict[str, Any]:
    """Plain-data provenance: versions, git sha, world size, time."""
    return {
        "torch": str(torch.__version__),  # TorchVersion is not plain data
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "world_size": int(world_size),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
    }
