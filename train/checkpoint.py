"""Checkpoints: plain data, written atomically, read with ``torch.load(weights_only=True)``.

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
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "epoch", "step", "model", "config")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + fsync + os.replace).

    ``format_version`` is added when absent. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    state.setdefault("format_version", FORMAT_VERSION)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its format; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing} (has {sorted(ckpt)})")
    if int(ckpt["format_version"]) > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format_version {ckpt['format_version']}; this code reads up to"
            f" {FORMAT_VERSION}"
        )
    return ckpt


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
    import torchvision

    return {
        "torch": str(torch.__version__),  # TorchVersion is not plain data
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "world_size": int(world_size),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
    }
