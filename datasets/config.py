"""Config as plain data: every function below an entry point takes dicts and lists, not DictConfig."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf


def as_plain(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A resolved, deep-copied plain ``dict`` of ``cfg`` (a DictConfig or a mapping of plain data).

    A mapping is copied through JSON, so the result is plain data a checkpoint or a JSON file can
    store (tuples become lists; paths and other leaves become strings).
    """
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return json.loads(json.dumps(cfg, default=str))
