"""The model contract: what every stage agrees on about a pose network's inputs and outputs.

Tensor names (Isaac-compatible: input ``input``, outputs ``part_affinity_fields``, ``heatmap``,
``maxpool_heatmap``), output layouts, ``ModelInfo`` (topology, input size, stride, aspect,
normalisation, decoder parameters; travels as ONNX metadata), and the pre-processing that turns an
RGB image into the network input with training's eval-mode geometry. Export writes this contract,
every runtime reads it. numpy and OpenCV only: the ONNX Runtime path does not import torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from datasets.geometry import (
    ASPECT_POLICIES,
    apply,
    compose,
    decode_reduction,
    fit_matrix,
    invert,
    warp_image,
)
from datasets.topology import Topology, topology_from_config

# Version of the metadata layout below; readers accept this and older versions.
FORMAT_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAMES = ("part_affinity_fields", "heatmap", "maxpool_heatmap")
LAYOUTS = ("nhwc", "nchw")
# trt_pose / Isaac default max-pool kernel, used only when a model carries no decoder parameters
DEFAULT_MAXPOOL_KERNEL = 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelInfo:
    """What a deployed model needs to be fed and decoded; travels as ONNX metadata."""

    topology: Topology
    input_size: tuple[int, int]  # (H, W) network input
    stride: int = 4
    aspect: str = "squash"
    targets: dict[str, Any] = field(default_factory=dict)
    decoder: dict[str, Any] = field(default_factory=dict)  # Isaac OpenPoseDecoder parameters
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    layout: str = "nchw"  # layout of the graph's outputs
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.stride = int(self.stride)
        if self.aspect not in ASPECT_POLICIES:
            raise ValueError(f"aspect {self.aspect!r} is not one of {ASPECT_POLICIES}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not one of {LAYOUTS}")
        h, w = self.input_size
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"input size {self.input_size} is not a multiple of stride {self.stride}"
            )

    @property
    def map_size(self) -> tuple[int, int]:
        """(h, w) of the output maps."""
        return self.input_size[0] // self.stride, self.input_size[1] // self.stride

    @property
    def maxpool_kernel(self) -> int:
        return int(self.decoder.get("maxpool_kernel", DEFAULT_MAXPOOL_KERNEL))

    # ------------------------------------------------------------------ ONNX metadata
    def to_metadata(self) -> dict[str, str]:
        """ONNX ``metadata_props``: string keys, JSON string values."""
        return {
            "format_version": str(self.format_version),
            "producer": "pafpose",
            "topology": json.dumps(self.topology.to_dict()),
            "input_size": json.dumps(list(self.input_size)),
            "stride": str(self.stride),
            "aspect": self.aspect,
            "targets": json.dumps(self.targets),
            "normalization": json.dumps(
                {
                    "input": "RGB in [0, 1], N x 3 x H x W",
                    "inside_graph": True,
                    "mean": list(self.mean),
                    "std": list(self.std),
                }
            ),
            "layout": self.layout,
            "decoder": json.dumps(self.decoder),
        }

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "model") -> ModelInfo:
        """Inverse of ``to_metadata``; names the missing key and the file when incomplete."""
        missing = [k for k in ("topology", "input_size", "stride") if k not in props]
        if missing:
            raise ValueError(
                f"{source}: metadata lacks {missing} (keys: {sorted(props)}); was it written by "
                "`python -m export`?"
            )
        version = int(props.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source}: metadata format_version {version} is newer than this code reads "
                f"({FORMAT_VERSION})"
            )
        norm = json.loads(props.get("normalization", "{}"))
        return cls(
            topology=Topology.from_dict(json.loads(props["topology"])),
            input_size=tuple(json.loads(props["input_size"])),
            stride=int(props["stride"]),
            aspect=props.get("aspect", "squash"),
            targets=json.loads(props.get("targets", "{}")),
            decoder=json.loads(props.get("decoder", "{}")),
            mean=tuple(norm.get("mean", IMAGENET_MEAN)),
            std=tuple(norm.get("std", IMAGENET_STD)),
            layout=props.get("layout", "nchw"),
            format_version=version,
        )

    @classmethod
    def from_checkpoint_config(
        cls, config: Mapping[str, Any], stride: int | None = None, decoder: Mapping | None = None
    ) -> ModelInfo:
        """From the resolved training config stored in a checkpoint."""
        try:
            topo = topology_from_config(config["topology"])
            input_size = config["data"]["input_size"]
        except KeyError as e:
            raise ValueError(f"checkpoint config lacks {e} (keys: {sorted(config)})") from None
        targets = dict(config.get("targets") or {})
        model_cfg = config.get("model") or {}
        dec = dict(decoder if decoder is not None else (config.get("decoder") or {}))
        return cls(
            topology=topo,
            input_size=tuple(input_size),
            stride=int(stride or targets.get("stride") or model_cfg.get("stride") or 4),
            aspect=str(config["data"].get("aspect", "squash")),
            targets=targets,
            decoder=dec,
            mean=tuple(model_cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(model_cfg.get("std", IMAGENET_STD)),
            layout="nchw",
        )


# ---------------------------------------------------------------------- pre/post-processing
def preprocess_image(
    image: np.ndarray, info: ModelInfo, max_upsample: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (h, w, 3) -> network input (3, H, W) float32 in [0, 1] and the 2x3 matrix
    taking original image coordinates to input coordinates (training's eval-mode geometry).

    Like training's loader (which decodes JPEGs at 1/2, 1/4 or 1/8 size while the warp still
    magnifies those pixels at most ``max_upsample`` times), a large image is first reduced by
    that power of two with area averaging, then warped bilinearly: no aliasing from a strong
    bilinear downscale, and the same picture statistics the network was trained on.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB (h, w, 3); got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB; got dtype {image.dtype}")
    height, width = info.input_size
    h, w = image.shape[:2]
    m = fit_matrix((h, w), (height, width), info.aspect)
    r = decode_reduction(m, max_upsample)
    src, warp = image, m
    if r > 1:
        rh, rw = -(-h // r), -(-w // r)  # ceil, as a 1/r JPEG decode
        src = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA)
        # reduced pixel i covers original [i * w / rw, (i + 1) * w / rw)
        warp = compose(m, np.array([[w / rw, 0.0, 0.0], [0.0, h / rh, 0.0]]))
    warped = warp_image(src, warp, (height, width))  # (H, W, 3) uint8
    x = warped.astype(np.float32).transpose(2, 0, 1) * np.float32(1 / 255)  # (3, H, W)
    return np.ascontiguousarray(x), m


def skeletons_to_original(skeletons: Sequence[Any], matrix: np.ndarray) -> list[Any]:
    """Map decoded skeletons from network-input pixels back to original image pixels, in place.

    Decode with ``output_scale = info.input_size`` to get input pixels; ``matrix`` is the
    original -> input affine from ``preprocess``. Missing parts (NaN) stay NaN.
    """
    inv = invert(matrix)
    for sk in skeletons:
        kp = sk.keypoints
        kp[:, :2] = apply(inv, kp[:, :2])
    return list(skeletons)
