"""Reading a checkpoint: ``torch.load(weights_only=True)`` of plain data, with its format checked.

The format (keys, atomic writes) is described in ``train/checkpoint.py``, which writes it; export,
inference and resumed training read it here, so reading a model never imports the training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "epoch", "step", "model", "config")


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
