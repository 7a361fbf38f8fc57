"""Image <-> network-input geometry shared by training, evaluation and inference.

All matrices here are 2x3 affine maps between *continuous* pixel coordinates, in which pixel ``i``
covers ``[i, i + 1)`` and its centre is ``i + 0.5`` (the convention of ``datasets.targets``).
OpenCV's ``warpAffine`` puts pixel centres at integers; ``cv2_matrix`` converts.

Aspect policies for fitting an image of size (h, w) into the network input (H, W):

* ``squash`` (trt_pose's): scale x and y independently to fill the input; the aspect ratio is lost
  and recovered by the decoder's ``output_scale`` [rows, cols].
* ``letterbox``: one scale for both axes, the image centred, the border filled with zeros.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from datasets.errors import UsageError

ASPECT_POLICIES = ("squash", "letterbox")


def aspect_option(value: Any, name: str = "aspect") -> str:
    """A command's aspect override: one of ``ASPECT_POLICIES``, else a UsageError naming
    ``name`` (e.g. ``data.aspect``)."""
    aspect = str(value)
    if aspect not in ASPECT_POLICIES:
        raise UsageError(f"{name} must be one of {list(ASPECT_POLICIES)}, got {aspect!r}")
    return aspect


def fit_matrix(
    src_hw: tuple[int, int], dst_hw: tuple[int, int], policy: str = "squash"
) -> np.ndarray:
    """2x3 affine taking source image coordinates to network-input coordinates."""
    (sh, sw), (dh, dw) = src_hw, dst_hw
    if sh <= 0 or sw <= 0:
        raise ValueError(f"image size must be positive, got {src_hw}")
    if policy == "squash":
        return np.array([[dw / sw, 0.0, 0.0], [0.0, dh / sh, 0.0]])
    if policy == "letterbox":
        s = min(dw / sw, dh / sh)
        return np.array([[s, 0.0, (dw - s * sw) / 2], [0.0, s, (dh - s * sh) / 2]])
    raise ValueError(f"unknown aspect policy {policy!r}; expected one of {ASPECT_POLICIES}")


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine."""
    full = np.vstack([np.asarray(m, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2x3 affine ``a o b`` (apply ``b`` first)."""
    fa = np.vstack([a, [0.0, 0.0, 1.0]])
    fb = np.vstack([b, [0.0, 0.0, 1.0]])
    return (fa @ fb)[:2]


def apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to points (..., 2); returns float64 (..., 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy @ np.asarray(m)[:, :2].T + np.asarray(m)[:, 2]


def cv2_matrix(m: np.ndarray) -> np.ndarray:
    """The matrix to give ``cv2.warpAffine`` for continuous-coordinate affine ``m``.

    OpenCV samples destination pixel (j, i) at source ``M @ (j, i)`` with pixel centres at integers;
    in continuous coordinates that pixel's centre is (j + 0.5, i + 0.5), so shift in and out.
    """
    shift_in = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    shift_out = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5]])
    return compose(shift_out, compose(np.asarray(m, dtype=np.float64), shift_in))


def max_scale(m: np.ndarray) -> float:
    """Largest stretch factor of the affine's linear part (its top singular value)."""
    return float(np.linalg.svd(np.asarray(m)[:, :2], compute_uv=False)[0])


def decode_reduction(m: np.ndarray, max_upsample: float = 1.0) -> int:
    """The reduced-decode factor r (1, 2, 4 or 8) for an image warped by ``m``.

    The largest power of two such that the warp magnifies the pixels of the image reduced 1/r at
    most ``max_upsample`` times; training's loader (a 1/r JPEG decode) and deployment's
    pre-processing (an area-averaged 1/r resize) both use it, so the network sees the same
    picture statistics in both.
    """
    stretch = max_scale(m)
    r = 1
    while r < 8 and 2 * r * stretch <= max_upsample:
        r *= 2
    return r


def warp_image(image: np.ndarray, m: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` by continuous-coordinate affine ``m`` into an (H, W) canvas.

    Bilinear, zero border: the one warp training and inference both use, so the network sees the
    same pixels in both.
    """
    h, w = size_hw
    return cv2.warpAffine(
        image,
        cv2_matrix(m),
        (int(w), int(h)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
