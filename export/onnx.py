"""Checkpoint -> ONNX with Isaac's fixed tensor names, metadata, checks and a decoder config.

The exported graph takes ``input`` (N x 3 x H x W, RGB in [0, 1]; the model normalises inside)
and returns ``part_affinity_fields``, ``heatmap`` and ``maxpool_heatmap`` (the heatmap max-pooled
with the decoder's kernel, stride 1, same padding: the NMS basis of the decoder's step 1), in
NHWC (what the Isaac TensorRTInference codelet reads) or NCHW. The model's metadata (topology,
input size, stride, aspect, targets, normalisation, layout, decoder parameters) is stored in the
ONNX ``metadata_props`` so that every runtime rebuilds pre- and post-processing from the model
file alone (``inference.runtime.ModelInfo``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from datasets.config import as_plain
from datasets.files import atomic_path, list_images
from datasets.images import read_rgb
from models.contract import INPUT_NAME, LAYOUTS, OUTPUT_NAMES, ModelInfo, preprocess_image

PARITY_ATOL = 1e-4


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree by more than the tolerance."""


class DeployModel(nn.Module):
    """The model as deployed: adds the max-pooled heatmap and the output layout.

    forward: (N, 3, H, W) RGB in [0, 1] -> (part_affinity_fields, heatmap, maxpool_heatmap),
    each (N, C, h, w) for ``nchw`` or (N, h, w, C) for ``nhwc``.
    """

    def __init__(self, model: nn.Module, maxpool_kernel: int = 3, layout: str = "nhwc") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
        if maxpool_kernel < 1 or maxpool_kernel % 2 == 0:
            # an even kernel has no centred "same" padding: peaks would shift by half a pixel
            raise ValueError(f"maxpool_kernel must be odd and >= 1, got {maxpool_kernel}")
        self.model = model
        self.kernel = int(maxpool_kernel)
        self.layout = layout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, paf = self.model(x)  # (N, K, h, w), (N, 2E, h, w)
        pooled = F.max_pool2d(heat, self.kernel, stride=1, padding=self.kernel // 2)
        if self.layout == "nhwc":
            return paf.permute(0, 2, 3, 1), heat.permute(0, 2, 3, 1), pooled.permute(0, 2, 3, 1)
        return paf, heat, pooled


def fuse_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval) with every BatchNorm2d that follows a Conv2d/ConvTranspose2d
    inside an ``nn.Sequential`` folded into that convolution.

    The ONNX exporter folds Conv+BN itself but not ConvTranspose+BN (the heads' upsampling
    blocks); folding here removes those BatchNormalization nodes from the graph.
    """
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
                if bn.track_running_stats and bn.running_mean is not None:
                    transpose = isinstance(conv, nn.ConvTranspose2d)
                    seq._modules[a] = fuse_conv_bn_eval(conv, bn, transpose=transpose)
                    seq._modules[b] = nn.Identity()
    return model


class SubPixelConvTranspose(nn.Module):
    """``ConvTranspose2d(k=4, s=2, p=1)`` as one ``Conv2d(k=2, p=1)`` with 4x the output channels
    and a phase interleave (pixel shuffle): the same function, as ordinary convolution.

    Output pixel (2m + a, 2n + b) of the transposed convolution only ever sees input rows
    {m - 1, m} (a = 0, taps 3, 1) or {m, m + 1} (a = 1, taps 2, 0), and likewise for columns: a
    2x2 correlation per phase. One 2x2 convolution over the 1-padded input computes all four
    phases at (H + 1, W + 1) positions; phase (a, b) is the window starting at (a, b). Same
    multiply count as the transposed convolution (plus one row and column), but ONNX Runtime
    runs it with its fast (and INT8-quantisable) convolution kernels instead of the slow
    col2im ConvTranspose.
    """

    _TAPS = ((3, 1), (2, 0))

    def __init__(self, ct: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not is_subpixel_convtranspose(ct):
            raise ValueError(f"not a ConvTranspose2d(k=4, s=2, p=1, groups=1): {ct}")
        w = ct.weight.detach()  # (Cin, Cout, 4, 4)
        cin, cout = w.shape[:2]
        kernels = []
        for a in (0, 1):
            for b in (0, 1):
                k = w[:, :, list(self._TAPS[a])][:, :, :, list(self._TAPS[b])]  # (Cin, Cout, 2, 2)
                kernels.append(k.permute(1, 0, 2, 3))  # (Cout, Cin, 2, 2)
        # output channel order (c, a, b): what pixel_shuffle expects
        weight = torch.stack(kernels, dim=1).reshape(4 * cout, cin, 2, 2)
        bias = ct.bias.detach() if ct.bias is not None else torch.zeros(cout)
        self.conv = nn.Conv2d(cin, 4 * cout, kernel_size=2, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias.repeat_interleave(4))
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, 4C, H+1, W+1), channels (c, a, b)
        # H and W are fixed at export: python ints keep shape arithmetic out of the ONNX graph
        y = y.reshape(-1, self.out_channels, 4, int(y.shape[2]), int(y.shape[3]))
        phases = torch.stack(
            [y[:, :, 0, :-1, :-1], y[:, :, 1, :-1, 1:], y[:, :, 2, 1:, :-1], y[:, :, 3, 1:, 1:]], 2
        )  # (B, C, 4, H, W)
        return F.pixel_shuffle(phases.flatten(1, 2), 2)  # (B, C, 2H, 2W)


def is_subpixel_convtranspose(m: nn.Module) -> bool:
    """A ConvTranspose2d that ``SubPixelConvTranspose`` reproduces exactly."""
    return (
        isinstance(m, nn.ConvTranspose2d)
        and tuple(m.kernel_size) == (4, 4)
        and tuple(m.stride) == (2, 2)
        and tuple(m.padding) == (1, 1)
        and tuple(m.output_padding) == (0, 0)
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


def convtranspose_to_conv(model: nn.Module) -> nn.Module:
    """Replace (in place) every k4/s2/p1 ConvTranspose2d by ``SubPixelConvTranspose``."""
    for name, child in list(model.named_children()):
        if is_subpixel_convtranspose(child):
            setattr(model, name, SubPixelConvTranspose(child))
        else:
            convtranspose_to_conv(child)
    return model


def check_model_outputs(model: nn.Module, info: ModelInfo) -> None:
    """Run one dummy input and check the maps' shapes agree with the topology and stride."""
    h, w = info.input_size
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, h, w))
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError(f"model must return (heatmap, paf); got {type(out).__name__}")
    heat, paf = out
    mh, mw = info.map_size
    want = {
        "heatmap": (1, info.topology.num_parts, mh, mw),
        "paf": (1, info.topology.num_paf_channels, mh, mw),
    }
    for name, t in (("heatmap", heat), ("paf", paf)):
        if tuple(t.shape) != want[name]:
            raise ValueError(
                f"model output {name} has shape {tuple(t.shape)} for input (1, 3, {h}, {w}); "
                f"the topology {info.topology.name!r} and stride {info.stride} need {want[name]}"
            )


def export_onnx(
    model: nn.Module,
    info: ModelInfo,
    path: str | Path,
    *,
    dynamic_batch: bool = True,
    opset: int = 17,
    deconv_as_conv: bool = True,
) -> Path:
    """Export ``model`` (eval mode, returning (heatmap, paf)) to ``path`` atomically.

    ``info.layout`` selects the output layout and ``info.decoder['maxpool_kernel']`` the max-pool
    kernel. Batch norms are folded into the convolutions (``fuse_batchnorms`` for transposed
    convolutions, the exporter's constant folding for the rest). ``deconv_as_conv`` rewrites
    the heads' k4/s2/p1 transposed convolutions as ``SubPixelConvTranspose`` (same outputs;
    about 2x faster in ONNX Runtime on CPU, and quantisable to INT8).
    """
    model = fuse_batchnorms(model)
    if deconv_as_conv:
        model = convtranspose_to_conv(model)
    check_model_outputs(model, info)
    wrapper = DeployModel(model, info.maxpool_kernel, info.layout).eval()
    h, w = info.input_size
    dummy = torch.rand(1, 3, h, w)
    axes = None
    if dynamic_batch:
        axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with atomic_path(path, suffix=".onnx.tmp") as tmp:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # the TorchScript exporter: no extra dependency, BN folding, stable tensor names
            warnings.simplefilter("ignore", DeprecationWarning)
            # SubPixelConvTranspose fixes H, W as constants on purpose (the input size is fixed)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper,
                (dummy,),
                tmp,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=axes,
                opset_version=int(opset),
                do_constant_folding=True,
            )
        proto = onnx.load(tmp)
        _set_output_shapes(proto, info, dynamic_batch)
        onnx.helper.set_model_props(proto, info.to_metadata())
        proto.doc_string = (
            f"pafpose {info.topology.name} pose model: input {INPUT_NAME} (N,3,{h},{w}) RGB [0,1]; "
            f"outputs {', '.join(OUTPUT_NAMES)} ({info.layout})"
        )
        onnx.save(proto, tmp)
    return Path(path)


def _set_output_shapes(proto, info: ModelInfo, dynamic_batch: bool) -> None:
    """Declare the outputs' full static shapes (the exporter may leave H, W symbolic): consumers
    such as Isaac's TensorRTInference and TensorRT's profiles read them."""
    mh, mw = info.map_size
    channels = {
        "part_affinity_fields": info.topology.num_paf_channels,
        "heatmap": info.topology.num_parts,
        "maxpool_heatmap": info.topology.num_parts,
    }
    for out in proto.graph.output:
        c = channels[out.name]
        dims = [mh, mw, c] if info.layout == "nhwc" else [c, mh, mw]
        shape = out.type.tensor_type.shape
        del shape.dim[:]
        first = shape.dim.add()
        if dynamic_batch:
            first.dim_param = "batch"
        else:
            first.dim_value = 1
        for d in dims:
            shape.dim.add().dim_value = d


def check_onnx(path: str | Path) -> None:
    """onnx.checker (full check with shape inference) and the fixed tensor names."""
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise ValueError(
            f"{path}: tensor names {inputs} -> {outputs}; expected [{INPUT_NAME}] -> {list(OUTPUT_NAMES)}"
        )


def parity_check(
    onnx_path: str | Path,
    model: nn.Module,
    info: ModelInfo,
    images: np.ndarray,
    atol: float = PARITY_ATOL,
    name: str | Path | None = None,
) -> dict[str, float]:
    """Max |ONNX Runtime - torch| per output tensor on ``images`` (N, 3, H, W) float32.

    Runs ONNX Runtime on CPU with every graph optimisation on (what deployment runs). Raises
    ``ParityError`` naming each tensor whose difference exceeds ``atol`` (and the file as
    ``name``, default ``onnx_path``: the final name of a file checked under a temporary one).
    """
    name = name or onnx_path
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    wrapper = DeployModel(model.eval(), info.maxpool_kernel, info.layout).eval()
    static = sess.get_inputs()[0].shape[0]
    step = static if isinstance(static, int) else len(images)
    diffs = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for i in range(0, len(images), step):
        batch = np.ascontiguousarray(images[i : i + step], dtype=np.float32)
        if isinstance(static, int) and len(batch) != static:
            break
        with torch.inference_mode():
            ref = [t.numpy() for t in wrapper(torch.from_numpy(batch))]
        got = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        for out, r, g in zip(OUTPUT_NAMES, ref, got, strict=True):
            if r.shape != g.shape:
                raise ParityError(f"{name}: output {out} shape {g.shape} != torch {r.shape}")
            d = float(np.max(np.abs(r.astype(np.float64) - g)))
            diffs[out] = max(diffs[out], d if np.isfinite(d) else float("inf"))
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        detail = ", ".join(f"{k}: max abs diff {v:.3g}" for k, v in bad.items())
        raise ParityError(
            f"{name}: ONNX Runtime differs from torch by more than {atol:g} on "
            f"{len(images)} images ({detail})"
        )
    return diffs


def decoder_config(info: ModelInfo, output_scale: Sequence[int] | None = None) -> dict[str, Any]:
    """Isaac OpenPoseDecoder-style parameters for this model (labels, edges, thresholds, ...).

    ``output_scale`` [rows, cols] defaults to the network input size: set it to the camera's
    resolution to get keypoints in camera pixels (squash aspect).
    """
    topo = info.topology
    cfg: dict[str, Any] = {
        "labels": list(topo.labels),
        "edges": [list(e) for e in topo.edges],
        "edges_paf": [list(e) for e in topo.edges_paf],
        "output_scale": list(output_scale or info.input_size),
    }
    if topo.limb_lengths:  # this toolkit's step 6b (joining pieces of one object) measures in them
        cfg["limb_lengths"] = list(topo.limb_lengths)
    cfg.update({k: v for k, v in info.decoder.items() if k not in cfg})
    return cfg


def generated_images(
    count: int, size: tuple[int, int] = (240, 320), seed: int = 0
) -> list[np.ndarray]:
    """Deterministic RGB uint8 test pictures (gradients, blobs and bars) when no real ones exist."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(count):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([xx / w, yy / h, 1 - xx / w], axis=2) * 160
        for _ in range(6):
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.ellipse(
                img,
                (cx, cy),
                (int(rng.integers(5, w // 4)), int(rng.integers(5, h // 4))),
                float(rng.uniform(0, 180)),
                0,
                360,
                c,
                -1,
            )
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def parity_inputs(
    info: ModelInfo, folders: Sequence[str | Path], count: int
) -> tuple[np.ndarray, str]:
    """``count`` pre-processed images (N, 3, H, W) from the first folder that has any, else
    generated pictures; also says where they came from."""
    for folder in folders:
        if folder and Path(folder).is_dir():
            files = list_images(folder)[:count]
            if files:
                xs = [preprocess_image(read_rgb(f), info)[0] for f in files]
                return np.stack(xs), f"{len(files)} images from {folder}"
    xs = [preprocess_image(img, info)[0] for img in generated_images(count)]
    return np.stack(xs), f"{count} generated images (no image folder found)"


def decoder_params(cfg_decoder: Mapping[str, Any] | None) -> dict[str, Any]:
    """Plain decoder parameters from a config node (drops null entries)."""
    if not cfg_decoder:
        return {}
    return {k: v for k, v in as_plain(cfg_decoder).items() if v is not None}
