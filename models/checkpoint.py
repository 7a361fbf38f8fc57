"""Reading a checkpoint: ``torch.load(weights_only=True)`` of plain data, with its format checked.

The format (keys, atomic writes) is described in ``train/checkpoint.py``, which writes it; export,
inference and resumed training read it here, so reading a model never imports the training code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from datasets.errors import UserError
from datasets.files import where_checkpoints_are

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "epoch", "step", "model", "config")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its format; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}: {where_checkpoints_are(path)}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused an object that is not plain data
        raise UserError(
            f"checkpoint {path} holds pickled Python objects that weights_only loading refuses "
            "to run: it was not written by this project (load it only from a source you trust)"
        ) from e
    except Exception as e:  # noqa: BLE001 - whatever torch.load says, the file is the problem
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {first}): it is not a complete "
            "checkpoint of this project (a partial copy?)"
        ) from e
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"checkpoint {path} lacks {missing} (has {sorted(ckpt)})")
    if int(ckpt["format_version"]) > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format_version {ckpt['format_version']}; this code reads up to"
            f" {FORMAT_VERSION}"
        )
    return ckpt
