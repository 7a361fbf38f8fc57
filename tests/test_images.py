"""datasets.images: one decoder that turns every unusable file into a one-line ImageError."""

from __future__ import annotations

import re
import time
import zlib

import cv2
import numpy as np
import pytest

from datasets.errors import UserError
from datasets.images import ImageError, decode_bgr, read_bgr, read_rgb


def _jpeg(path, h=48, w=64):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 2] = 200  # red in BGR
    assert cv2.imwrite(str(path), img)
    return path


def huge_png(path, w=30000, h=30000):
    """A tiny PNG (zeros compress ~1000:1) whose header says w x h: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])  # 8-bit grey
    raw = zlib.compress(b"\x00" * (w + 1) * 64)  # first 64 rows only: enough to be a real file
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def test_good_image_reads_as_rgb(tmp_path):
    rgb = read_rgb(_jpeg(tmp_path / "a.jpg"))
    assert rgb.shape == (48, 64, 3) and rgb[0, 0, 0] > 150 and rgb[0, 0, 2] < 50
    assert read_bgr(tmp_path / "a.jpg", reduce=2).shape == (24, 32, 3)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty (0 bytes)"),
        (b"this is not an image" * 10, "is not a decodable image"),
        (b"\xff\xd8\xff\xe0 cut short", "is truncated (no JPEG end marker)"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "is not a decodable image"),
    ],
)
def test_unusable_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=re.escape(message)) as e:
        read_rgb(path)
    assert isinstance(e.value, UserError)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match=r"cannot read image .*nope\.jpg"):
        read_rgb(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="cannot read image"):
        read_rgb(tmp_path)


def test_pixel_cap_is_checked_before_decoding(tmp_path):
    path = huge_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 100_000
    t = time.process_time()
    with pytest.raises(ImageError, match=r"bomb\.png has 900 megapixels"):
        read_rgb(path)
    assert time.process_time() - t < 1.0  # nothing decoded (a decode takes many seconds)
    big = huge_png(tmp_path / "big.png", w=12000, h=9000)  # under PIL's limit: ours speaks
    with pytest.raises(ImageError, match=r"big\.png is 12000x9000 = 108 megapixels, over max_pix"):
        read_rgb(big)
    small = tmp_path / "small.png"
    assert cv2.imwrite(str(small), np.zeros((200, 300, 3), np.uint8))
    with pytest.raises(ImageError, match="over max_pixels=10000"):
        read_rgb(small, max_pixels=10_000)
    assert read_rgb(small, max_pixels=None).shape == (200, 300, 3)


def test_decode_bgr_from_memory_names_what_it_was_given():
    with pytest.raises(ImageError, match="frame 7 is empty"):
        decode_bgr(np.zeros(0, np.uint8), "frame 7")


def test_config_defaults_are_the_decoder_default():
    """max_pixels in every config that reads images is datasets.images.MAX_PIXELS."""
    from pathlib import Path

    import yaml

    from datasets.images import MAX_PIXELS

    conf = Path(__file__).resolve().parent.parent / "conf"
    for name in ("predict.yaml", "eval.yaml", "data/coco.yaml", "data/synthetic.yaml"):
        assert yaml.safe_load((conf / name).read_text())["max_pixels"] == MAX_PIXELS, name
