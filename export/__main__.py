"""python -m export ckpt=PATH [layout=nhwc|nchw] [dynamic_batch=true] [opset=17] [output=PATH]

Rebuilds the model from the config stored in the checkpoint (pretrained download off), writes
ONNX with Isaac's tensor names and the model's metadata, runs onnx.checker and an ONNX Runtime
parity check against torch on real images (fails with a non-zero exit when any output differs by
more than ``parity.atol``), and writes the decoder config beside the model. ``int8=true`` also
writes a statically quantised ``<name>.int8.onnx`` for CPU inference (``export.quantize``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from datasets.config import as_plain, real_number, whole_number
from datasets.errors import UsageError, user_errors
from datasets.files import atomic_path, resolve_path, write_json
from export.onnx import (
    ParityError,
    check_onnx,
    decoder_config,
    decoder_params,
    export_onnx,
    parity_check,
    parity_inputs,
)
from export.quantize import quantize_int8
from inference.decoder import build_decoder
from inference.runtime import OnnxRuntime
from models.build import build_from_checkpoint
from models.contract import LAYOUTS, ModelInfo

log = logging.getLogger("export")
MIN_OPSET = 9


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Export ``cfg.ckpt`` to ONNX; returns the written paths and the parity differences."""
    cfg = as_plain(cfg)
    ckpt = resolve_path(cfg.get("ckpt"))
    if ckpt is None:
        raise UsageError("give the checkpoint: python -m export ckpt=runs/<name>/epoch_N.pth")
    output = resolve_path(cfg.get("output")) or ckpt.with_suffix(".onnx")
    opset, count, atol = export_options(cfg)
    model, config = build_from_checkpoint(ckpt)
    info = model_info(cfg, config, model.stride)
    deconv_as_conv = bool(cfg.get("deconv_as_conv", False))
    export_to = functools.partial(  # (path, deconv_as_conv=...): one graph spec for every file
        export_onnx,
        model,
        info,
        dynamic_batch=bool(cfg.get("dynamic_batch", True)),
        opset=opset,
    )
    folders = [resolve_path(p) for p in (cfg.get("parity") or {}).get("images") or []]
    images, source = parity_inputs(info, folders, count)
    # written under a temporary name and checked there: a graph that fails the checker or the
    # parity check never replaces a good file at the final name
    with atomic_path(output, suffix=".onnx.tmp") as tmp:
        export_to(tmp, deconv_as_conv=deconv_as_conv)
        check_onnx(tmp)
        diffs = parity_check(tmp, model, info, images, atol=atol, name=output)
    print(f"wrote {output}")
    print(f"onnx.checker: ok; parity vs torch on {source} (atol {atol:g}):")
    for name, d in diffs.items():
        print(f"  {name:22s} max abs diff {d:.2e}")
    dec_path = resolve_path(cfg.get("decoder_config")) or output.with_name(
        output.stem + ".decoder.json"
    )
    write_json(dec_path, decoder_config(info), indent=2)
    print(f"wrote {dec_path}")
    result: dict[str, Any] = {
        "onnx": output,
        "decoder_config": dec_path,
        "parity": diffs,
        "info": info,
    }
    if cfg.get("int8"):
        source_graph = output if deconv_as_conv else None
        result["int8"] = export_int8(cfg, config, output, info, images, export_to, source_graph)
    return result


def export_options(cfg: Mapping[str, Any]) -> tuple[int, int, float]:
    """(opset, parity.count, parity.atol), checked before the checkpoint is opened; the layout
    too. A bad value is a one-line UsageError."""
    layout = str(cfg.get("layout", "nhwc"))
    if layout not in LAYOUTS:
        raise UsageError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    parity = cfg.get("parity") or {}
    opset = whole_number(cfg, "opset", 17)
    if opset < MIN_OPSET:  # below 9 the weights are listed as graph inputs: not Isaac's names
        raise UsageError(f"opset must be >= {MIN_OPSET} (default 17), got {opset}")
    count = whole_number(parity, "count", 4, name="parity.count")
    atol = real_number(parity.get("atol", 1e-4), "parity.atol")
    whole_number(cfg.get("quantize") or {}, "count", 32, name="quantize.count")
    return opset, count, atol


def model_info(cfg: Mapping[str, Any], config: Mapping[str, Any], stride: int) -> ModelInfo:
    """The deployed model's metadata: the checkpoint's config, with the export config's decoder
    parameters (overridable on the command line) winning over any the training config carried;
    the max-pool kernel is baked into the graph."""
    dec = {**decoder_params(config.get("decoder")), **decoder_params(cfg.get("decoder"))}
    dec.setdefault("maxpool_kernel", 3)
    info = ModelInfo.from_checkpoint_config(config, stride=stride, decoder=dec)
    build_decoder(dec, info.topology)  # the parameters it ships are valid (UsageError if not)
    return dataclasses.replace(info, layout=str(cfg.get("layout", "nhwc")))


def export_int8(
    cfg: Mapping[str, Any],
    config: Mapping[str, Any],
    output: Path,
    info: ModelInfo,
    images: np.ndarray,
    export_to: Callable[..., Path],
    source_graph: Path | None,
) -> Path:
    """``<name>.int8.onnx``, statically quantised from ``source_graph`` (None: a temporary
    sub-pixel rewrite, exported with ``export_to``); prints its difference to the fp32 model."""
    q_cfg = cfg.get("quantize") or {}
    # activation ranges must come from the model's own data: a model trained on one distribution
    # saturates ranges calibrated on another
    q_images = q_cfg.get("images") or [
        (config.get("data") or {}).get("train_images"),
        "../shared/data/coco-mini/train2017",
    ]
    q_folders = [resolve_path(p) for p in q_images if p]
    q_out = output.with_name(output.stem + ".int8.onnx")
    q_src = source_graph
    if q_src is None:
        # ONNX Runtime cannot quantise ConvTranspose and runs it with a slow col2im: the INT8
        # model is quantised from the exact 2x2 Conv + pixel-shuffle rewrite
        q_src = output.with_name(output.stem + ".subpixel.tmp.onnx")
        export_to(q_src, deconv_as_conv=True)
    try:
        quantize_int8(q_src, q_out, q_folders, count=int(q_cfg.get("count", 32)))
    finally:
        if q_src != source_graph:
            q_src.unlink(missing_ok=True)
    # informative only: INT8 cannot meet the fp32 tolerance; bench_inference.py compares
    # decoded skeletons
    ref, got = OnnxRuntime(output, info=info)(images), OnnxRuntime(q_out)(images)
    diff = ", ".join(f"{k} {float(np.abs(ref[k] - got[k]).max()):.2e}" for k in ref)
    print(f"wrote {q_out} (max abs diff to fp32 on the parity images: {diff})")
    return q_out


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@user_errors
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ParityError as e:
        print(f"PARITY CHECK FAILED: {e} (the file was not written)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
