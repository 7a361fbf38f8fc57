"""One image decoder for every reader: training data, evaluation, predict, visualize, calibration.

Every unusable file ends in :class:`ImageError`, a one-line :class:`~datasets.errors.UserError`
naming the file and what is wrong with it:

* missing or unreadable (permissions, a folder), empty (0 bytes);
* not an image, or a truncated JPEG (libjpeg would fill the missing part with grey and only warn);
* more pixels than ``max_pixels``, checked from the header **before** decoding (an 875 KB PNG can
  decode to 30000 x 30000 pixels: 2.7 GB of RGB and tens of seconds), so a hostile or broken file
  costs nothing.

The training dataset turns it into its skip-and-count path; the commands print it and stop, or
skip and count where a folder of inputs should not fail for one bad file (predict).
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from datasets.errors import UserError

# 100 megapixels (a 12000 x 8000 photo) is far above COCO (640 x 640) and camera frames, and
# below PIL's own refusal (2 x Image.MAX_IMAGE_PIXELS, about 179 megapixels)
MAX_PIXELS = 100_000_000

_REDUCED = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


class ImageError(UserError):
    """An image file that cannot be used (missing, empty, corrupt, truncated, too large, or of
    another size than its record says); the message names the file."""


def header_size(buf: np.ndarray | bytes, name: Any = "image") -> tuple[int, int] | None:
    """(width, height) from the file's header without decoding the pixels; None when PIL does not
    know the format (OpenCV may still decode it). Raises ImageError for PIL's own size refusal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(memoryview(buf))) as im:  # lazy: reads the header only
                return im.size
        except Image.DecompressionBombError as e:
            # PIL refuses before it returns the size; its message carries the pixel count
            m = re.search(r"\((\d+) pixels\)", str(e))
            pixels = f"{int(m.group(1)) / 1e6:.0f} megapixels" if m else "too many pixels"
            raise ImageError(
                f"{name} has {pixels}, over PIL's limit of {2 * Image.MAX_IMAGE_PIXELS}: shrink it"
            ) from None
        except Exception:  # noqa: BLE001 - any parse failure: let OpenCV have the last word
            return None


def check_pixels(size: tuple[int, int], name: Any, max_pixels: int | None) -> None:
    """Raise ImageError when ``size`` (width, height) holds more than ``max_pixels`` pixels."""
    w, h = size
    if max_pixels and w * h > max_pixels:
        raise ImageError(
            f"{name} is {w}x{h} = {w * h / 1e6:.0f} megapixels, over max_pixels="
            f"{max_pixels}: shrink it, or raise max_pixels=... if you trust the file"
        )


def read_bytes(path: Any) -> np.ndarray:
    """The file's bytes as uint8; ImageError when it is missing, unreadable or empty."""
    try:
        buf = np.fromfile(str(path), np.uint8)
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e.strerror or e}") from None
    if buf.size == 0:
        raise ImageError(f"image {path} is empty (0 bytes)")
    return buf


def decode_bgr(
    buf: np.ndarray,
    name: Any = "image",
    reduce: int = 1,
    max_pixels: int | None = MAX_PIXELS,
    exif: bool = True,
) -> np.ndarray:
    """Decode an encoded image to BGR uint8 (H, W, 3) at 1/``reduce`` size (1, 2, 4 or 8; JPEG
    decodes smaller for less, other formats are resized); ``exif=False`` ignores the EXIF
    orientation (COCO's width/height describe the stored pixels). Raises ImageError."""
    if buf.size == 0:
        raise ImageError(f"image {name} is empty (0 bytes)")
    size = header_size(buf, name)
    if size is not None:
        check_pixels(size, name, max_pixels)
    # libjpeg decodes a truncated file into a grey-filled image with only a stderr warning,
    # so check for the end-of-image marker (entropy-coded data never contains FF D9)
    if buf[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in buf[-1024:].tobytes():
        raise ImageError(f"image {name} is truncated (no JPEG end marker)")
    flags = _REDUCED[reduce] | (0 if exif else cv2.IMREAD_IGNORE_ORIENTATION)
    try:
        image = cv2.imdecode(buf, flags)
    except cv2.error as e:  # OpenCV's own checks (its pixel limit, broken headers)
        raise ImageError(f"{name} is not a decodable image ({e.err or e})") from None
    if image is None:
        raise ImageError(f"{name} is not a decodable image")
    if size is None:  # format PIL could not read: check what OpenCV decoded
        check_pixels((image.shape[1] * reduce, image.shape[0] * reduce), name, max_pixels)
    return image


def read_bgr(
    path: Any, reduce: int = 1, max_pixels: int | None = MAX_PIXELS, exif: bool = True
) -> np.ndarray:
    """Read an image file as BGR uint8 (H, W, 3) (see :func:`decode_bgr`); raises ImageError."""
    return decode_bgr(read_bytes(path), Path(str(path)), reduce, max_pixels, exif)


def read_rgb(path: Any, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); raises ImageError naming the file."""
    return cv2.cvtColor(read_bgr(path, max_pixels=max_pixels), cv2.COLOR_BGR2RGB)
