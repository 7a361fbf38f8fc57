"""Training augmentation as one affine matrix and one colour matrix.

Geometry: the fit of the image into the network input (``datasets.geometry.fit_matrix``, squash or
letterbox), then a random rotation and zoom about the input's centre, a random shift and a random
horizontal mirror, all composed into ONE 2x3 matrix (continuous pixel coordinates, centres at
+0.5). The image is warped once with it (``cv2.warpAffine``), keypoints are mapped with it, and a
mirror also swaps left/right parts (``Topology.flip_permutation``).

Colour: brightness, contrast, saturation and hue jitter are all affine in RGB, so they compose
into ONE 3x4 matrix applied by ``cv2.transform`` to the warped uint8 image; the BGR -> RGB channel
swap of OpenCV's decoder is folded into the same matrix.

Mean/std normalisation is not done here: the model normalises inside (its ``mean``/``std``
buffers come from the model config and travel into the ONNX graph).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from datasets.geometry import compose, fit_matrix

# ITU-R BT.601 luma weights (RGB), as torchvision's rgb_to_grayscale
_LUMA = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
_BGR_TO_RGB = np.eye(3)[::-1]


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the random transforms (0 / (1, 1) disable each)."""

    rotate: float = 0.0  # degrees, uniform in [-rotate, rotate]
    scale: tuple[float, float] = (1.0, 1.0)  # zoom range relative to the fitted image
    translate: float = 0.0  # fraction of input size, uniform in [-t, t] per axis
    flip: float = 0.0  # probability of a horizontal mirror
    brightness: float = 0.0  # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.0  # factor uniform in [1 - c, 1 + c] around the image's mean grey
    saturation: float = 0.0  # factor uniform in [1 - s, 1 + s]
    hue: float = 0.0  # rotation of the chroma plane, fraction of a turn in [-h, h]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> AugmentConfig | None:
        """From the data config's ``augment`` node (``color`` nested or flat); None stays None."""
        if cfg is None:
            return None
        color = cfg.get("color") or {}
        scale = cfg.get("scale", (1.0, 1.0))
        if isinstance(scale, (int, float)):  # a single number s means [1 - s, 1 + s]
            scale = (1.0 - float(scale), 1.0 + float(scale))
        if isinstance(scale, str) or len(scale) != 2:
            raise ValueError(f"augment.scale must be [min, max] or one number, got {scale!r}")
        out = cls(
            rotate=_number(cfg.get("rotate", 0.0), "rotate"),
            scale=(_number(scale[0], "scale"), _number(scale[1], "scale")),
            translate=_number(cfg.get("translate", 0.0), "translate"),
            flip=_number(cfg.get("flip", 0.0), "flip"),
            **{
                k: _number(color.get(k, cfg.get(k, 0.0)), f"color.{k}")
                for k in ("brightness", "contrast", "saturation", "hue")
            },
        )
        if not 0 < out.scale[0] <= out.scale[1]:
            raise ValueError(f"augment.scale must be 0 < min <= max, got {list(out.scale)}")
        if not 0.0 <= out.flip <= 1.0:
            raise ValueError(f"augment.flip is a probability in [0, 1], got {out.flip}")
        return out

    @property
    def has_color(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"augment.{name} must be a number, got {value!r}") from None


def sample_affine(
    src_hw: tuple[int, int],
    dst_hw: tuple[int, int],
    aspect: str,
    aug: AugmentConfig | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, bool]:
    """A random original -> input 2x3 affine and whether it mirrors (None: just the fit)."""
    base = fit_matrix(src_hw, dst_hw, aspect)
    if aug is None:
        return base, False
    h, w = dst_hw
    angle = math.radians(rng.uniform(-aug.rotate, aug.rotate)) if aug.rotate else 0.0
    zoom = rng.uniform(*aug.scale) if aug.scale[0] != aug.scale[1] else aug.scale[0]
    tx = rng.uniform(-aug.translate, aug.translate) * w if aug.translate else 0.0
    ty = rng.uniform(-aug.translate, aug.translate) * h if aug.translate else 0.0
    flip = bool(aug.flip and rng.random() < aug.flip)
    c, s = math.cos(angle) * zoom, math.sin(angle) * zoom
    cx, cy = w / 2.0, h / 2.0
    # rotate and zoom about the input centre, then shift
    about = np.array([[c, -s, cx + tx - c * cx + s * cy], [s, c, cy + ty - s * cx - c * cy]])
    m = compose(about, base)
    if flip:
        # mirror of continuous coordinates: pixel i <-> W-1-i, i.e. x -> W - x
        m = compose(np.array([[-1.0, 0.0, w], [0.0, 1.0, 0.0]]), m)
    return m, flip


def color_matrix(
    aug: AugmentConfig | None, rng: np.random.Generator, mean_rgb: np.ndarray | None = None
) -> np.ndarray:
    """3x4 float32 matrix for ``cv2.transform``: BGR uint8 in -> jittered RGB out.

    ``mean_rgb`` (the image's mean colour) centres the contrast change on its mean grey, as
    torchvision's adjust_contrast does; without it mid-grey (127.5) is used.
    """
    a = np.eye(3)
    b = np.zeros(3)
    if aug is not None and aug.has_color:
        if aug.brightness:
            f = rng.uniform(1 - aug.brightness, 1 + aug.brightness)
            a, b = f * a, f * b
        if aug.contrast:
            f = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
            grey = float(_LUMA @ (a @ mean_rgb + b)) if mean_rgb is not None else 127.5
            a, b = f * a, f * b + (1 - f) * grey
        if aug.saturation:
            f = rng.uniform(1 - aug.saturation, 1 + aug.saturation)
            sat = f * np.eye(3) + (1 - f) * np.outer(np.ones(3), _LUMA)
            a, b = sat @ a, sat @ b
        if aug.hue:
            t = rng.uniform(-aug.hue, aug.hue) * 2 * math.pi
            rot = np.array(
                [[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]]
            )
            hue = _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ
            a, b = hue @ a, hue @ b
    out = np.empty((3, 4), np.float32)
    out[:, :3] = a @ _BGR_TO_RGB
    out[:, 3] = b
    return out


def flip_keypoints(keypoints: np.ndarray, permutation: list[int]) -> np.ndarray:
    """Relabel parts after a mirror: new part i is old part ``permutation[i]``; (N, K, 3)."""
    return keypoints[:, permutation]
