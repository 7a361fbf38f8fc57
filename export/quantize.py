"""Static INT8 quantisation of an exported model for ONNX Runtime on CPU (QDQ format).

Activations are calibrated on real images pre-processed exactly as at inference (the model's own
metadata); weights are quantised per channel. The quantised graph keeps the tensor names and the
metadata of the fp32 one, so ``inference.runtime.load_runtime`` opens it like any export.

Uses onnxruntime.quantization: unsigned 8-bit activations with signed 8-bit weights (U8S8), the
combination ONNX Runtime's x86 kernels run fastest (VNNI where the CPU has it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from datasets.files import list_images
from datasets.images import read_rgb
from models.contract import INPUT_NAME, ModelInfo, preprocess_image


class ImageFolderReader:
    """onnxruntime CalibrationDataReader over pre-processed images, one per batch."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images  # (N, 3, H, W) float32
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter({INPUT_NAME: x[None]} for x in self.images)
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter({INPUT_NAME: x[None]} for x in self.images)


def calibration_images(
    info: ModelInfo,
    folders: Sequence[str | Path | None],
    count: int,
    exclude: Collection[str] = (),
) -> tuple[np.ndarray, str]:
    """Up to ``count`` pre-processed images (N, 3, H, W) from the first folder that has any,
    skipping file names in ``exclude`` (e.g. the images a comparison is made on)."""
    for folder in folders:
        if folder and Path(folder).is_dir():
            files = [f for f in list_images(folder) if f.name not in exclude][:count]
            if files:
                xs = [preprocess_image(read_rgb(f), info)[0] for f in files]
                return np.stack(xs), f"{len(files)} images from {folder}"
    raise FileNotFoundError(
        f"INT8 calibration needs real images; none found in {[str(f) for f in folders]}"
    )


def read_info(path: str | Path) -> ModelInfo:
    """The ModelInfo stored in an exported ONNX file's metadata."""
    proto = onnx.load(str(path), load_external_data=False)
    return ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


def quantize_int8(
    onnx_path: str | Path,
    output: str | Path,
    folders: Sequence[str | Path | None],
    count: int = 32,
    per_channel: bool = True,
    method: str = "minmax",
    exclude_outputs: bool = False,
    exclude_images: Collection[str] = (),
) -> Path:
    """Quantise ``onnx_path`` to QDQ INT8 at ``output`` (atomic), calibrated on image folders.

    ``exclude_outputs`` keeps the two final 1x1 projections (whose outputs the decoder thresholds)
    in fp32, trading a little speed for output precision.
    """
    onnx_path, output = Path(onnx_path), Path(output)
    info = read_info(onnx_path)
    images, _ = calibration_images(info, folders, count, exclude_images)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ValueError(f"calibration method {method!r} is not one of {sorted(methods)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".quant.") as tmpdir:
        pre = Path(tmpdir) / "pre.onnx"
        # shape inference + graph optimisation first, as onnxruntime recommends before quantising
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=False)
        exclude = _output_convs(onnx.load(str(pre))) if exclude_outputs else []
        tmp_out = Path(tmpdir) / "int8.onnx"
        quantize_static(
            str(pre),
            str(tmp_out),
            ImageFolderReader(images),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=methods[method],
            nodes_to_exclude=exclude,
        )
        proto = onnx.load(str(tmp_out))
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, info.to_metadata())
        final = Path(tmpdir) / "final.onnx"
        onnx.save(proto, str(final))
        os.replace(final, output)
    return output


def _output_convs(model) -> list[str]:
    """Names of the Conv nodes that produce the heatmap and PAF tensors (through any Transpose)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for out in model.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in ("Transpose", "MaxPool", "Identity"):
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "Conv" and node.name not in found:
            found.append(node.name)
    return found
