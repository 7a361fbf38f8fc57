"""OpenPose decoder: part heatmaps + Part Affinity Fields -> skeletons (numpy only, no torch).

``OpenPoseDecoder`` is the run-time decoder; ``ReferenceDecoder`` (``inference.decoder.reference``)
is the readable specification it is tested against. ``build_decoder`` builds either from a
``conf/decoder`` node.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from datasets.errors import UsageError
from datasets.topology import Topology
from inference.decoder.base import DEFAULT_PARAMS, DecoderBase, DecodeTrace, Skeleton
from inference.decoder.fast import OpenPoseDecoder
from inference.decoder.reference import ReferenceDecoder

__all__ = [
    "DEFAULT_PARAMS",
    "DecodeTrace",
    "DecoderBase",
    "OpenPoseDecoder",
    "ReferenceDecoder",
    "Skeleton",
    "build_decoder",
]
DEFAULT_TARGET = "inference.decoder.OpenPoseDecoder"


def build_decoder(decoder_cfg: Mapping[str, Any] | None, topology: Topology) -> Any:
    """The one way to build a decoder from a ``conf/decoder`` node (plain dict or DictConfig).

    ``_target_`` (optional, default ``inference.decoder.OpenPoseDecoder``) names the decoder
    class as ``module.Name``; it is called as ``from_config(params, topology)`` when it has one,
    else ``cls(topology, **params)``. Every other key is a decoder parameter.
    A bad parameter (unknown, not a number, out of range) is a ``UsageError`` naming it.
    """
    cfg = {str(k): v for k, v in (decoder_cfg or {}).items()}
    target = cfg.pop("_target_", None) or DEFAULT_TARGET
    module_name, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UsageError(f"decoder _target_ {target!r} cannot be imported: {e}") from e
    try:
        if hasattr(cls, "from_config"):
            return cls.from_config(cfg, topology)
        return cls(topology, **cfg)
    except ValueError as e:  # the decoder's own checks: one line that names the parameter
        raise UsageError(
            f"{e} (set decoder parameters with decoder.NAME=VALUE or, over a model's own, "
            "decoder_overrides={NAME:VALUE})"
        ) from e
