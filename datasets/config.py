"""Config as plain data: every function below an entry point takes dicts and lists, not DictConfig."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from datasets.errors import UsageError


def as_plain(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A resolved, deep-copied plain ``dict`` of ``cfg`` (a DictConfig or a mapping of plain data).

    A mapping is copied through JSON, so the result is plain data a checkpoint or a JSON file can
    store (tuples become lists; paths and other leaves become strings). A mandatory value the
    user did not give (``???`` in the YAML) becomes None, which each command reports as a
    usage error naming the override to give.
    """
    if isinstance(cfg, DictConfig):
        return _missing_to_none(OmegaConf.to_container(cfg, resolve=True))
    return json.loads(json.dumps(cfg, default=str))


def _missing_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _missing_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_missing_to_none(v) for v in value]
    return None if value == "???" else value


def whole_number(
    cfg: Mapping[str, Any],
    key: str,
    default: int | None = 1,
    name: str | None = None,
    minimum: int = 1,
) -> int | None:
    """``cfg[key]`` as a whole number >= ``minimum`` (``default`` when unset or null), else a
    UsageError that calls it ``name`` (default: ``key``)."""
    value, name = cfg.get(key), name or key
    if value is None:
        return default
    try:
        number = int(value)
        ok = not isinstance(value, bool) and number >= minimum and float(value) == number
    except (TypeError, ValueError, OverflowError):  # (int of inf overflows)
        ok = False
    if not ok:
        raise UsageError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return number


def real_number(value: Any, name: str, strict: bool = False, hint: str = "") -> float:
    """``value`` as a float >= 0 (> 0 with ``strict``), else a UsageError that calls it
    ``name`` (``hint``: what the unit or 0 means, e.g. " (seconds)")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number > 0 if strict else number >= 0):
        raise UsageError(
            f"{name} must be a number {'>' if strict else '>='} 0{hint}, got {value!r}"
        )
    return number


def as_list(value: Any) -> list[Any]:
    """A config list; a bare value (``splits=val2017``) is a list of one, not of its letters."""
    if value is None:
        return []
    return [value] if isinstance(value, str | int | float) else list(value)
