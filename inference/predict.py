"""python -m inference.predict input=<image|folder|video> model=<model.onnx|model.engine|ckpt.pth>

Runs a pose model on an image, a folder of images or a video and writes, into ``output`` (default
the Hydra run dir ``outputs/predict/<time>``):

* ``predictions.json``: COCO keypoint results (``image_id``, ``category_id``, ``keypoints`` as
  x, y, v triplets in original image pixels, ``score``), ready for COCOeval; images named by a
  COCO id (``000000000785.jpg``) keep that id, others are numbered in order, video frames by
  their index. ``images.json`` lists each id's file (or frame), width and height.
* the inputs with the skeletons drawn (one colour per limb): ``images/<name>.jpg``, or
  ``<video stem>_pose.mp4``.
* ``summary.json``: the timings below and ``skipped_images``, the unreadable images of a folder
  (each is skipped with a warning; the others are still predicted).

Prints frames per second over reading, pre-processing, network and decoding, with each one's
share of the time (drawing and writing the pictures are reported apart).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from datasets.config import as_plain
from datasets.errors import user_errors
from datasets.files import IMAGE_SUFFIXES, resolve_path, write_json
from datasets.images import MAX_PIXELS, ImageError, read_rgb
from inference.cli import alias_model_argument, default_output_to_run_dir, output_dir
from inference.cocoeval import skeletons_to_coco
from inference.draw import draw_skeletons, write_rgb
from inference.runtime import Runtime, load_runtime
from models.contract import skeletons_to_original

log = logging.getLogger("inference.predict")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
STAGES = ("read", "preprocess", "network", "decode")


@dataclass
class Frame:
    """One input picture: RGB uint8 pixels, its id, and a name for the drawn output."""

    image: np.ndarray
    image_id: int
    name: str


@dataclass
class Timer:
    """Seconds per stage, accumulated."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*STAGES, "draw"), 0.0))

    def add(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - start
        return now

    def summary(self, frames: int) -> dict[str, Any]:
        total = sum(self.seconds[s] for s in STAGES)
        return {
            "frames": frames,
            "fps": frames / total if total > 0 else float("nan"),
            "seconds": dict(self.seconds),
            "share": {s: self.seconds[s] / total if total > 0 else float("nan") for s in STAGES},
        }


def image_id_of(path: Path, fallback: int) -> int:
    """COCO-style file names (``000000000785.jpg``) keep their id; others get ``fallback``."""
    return int(path.stem) if path.stem.isdigit() else fallback


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def iter_frames(
    source: Path,
    timer: Timer,
    max_frames: int | None = None,
    skipped: list[str] | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> Iterator[Frame]:
    """Frames of an image, a folder of images (sorted by name) or a video, read as RGB.

    In a folder, an unreadable image is logged, appended to ``skipped`` and passed over (the
    others are still predicted); a single image or a video that cannot be read raises ImageError.
    """
    if is_video(source):
        cap = open_video(source)
        try:
            index = 0
            while max_frames is None or index < max_frames:
                start = time.perf_counter()
                ok, bgr = cap.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                timer.add("read", start)
                yield Frame(rgb, index, f"frame_{index:06d}")
                index += 1
        finally:
            cap.release()
        return
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {source}")
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"input not found: {source}")
    for n, path in enumerate(files[:max_frames] if max_frames else files):
        start = time.perf_counter()
        try:
            rgb = read_rgb(path, max_pixels)
        except ImageError as e:
            if skipped is None or not source.is_dir():
                raise
            log.warning("skipping %s", e)
            skipped.append(str(path))
            continue
        timer.add("read", start)
        yield Frame(rgb, image_id_of(path, n + 1), path.stem)


def open_video(source: Path) -> cv2.VideoCapture:
    """An opened capture of ``source`` that has at least a frame size; ImageError otherwise."""
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened() or cap.get(cv2.CAP_PROP_FRAME_WIDTH) <= 0:
        cap.release()
        raise ImageError(
            f"cannot read video {source}: it is empty, corrupt or in a format OpenCV cannot "
            "decode (convert it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)"
        )
    return cap


def count_frames(source: Path) -> int | None:
    """Number of frames for the progress bar (None when a video does not say)."""
    if is_video(source):
        cap = cv2.VideoCapture(str(source))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        return n if n > 0 else None
    if source.is_dir():
        return sum(1 for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return 1


class Predictor:
    """Runtime + decoder: RGB images -> skeletons in original image pixels, timed per stage."""

    def __init__(self, runtime: Runtime, decoder_overrides: Mapping[str, Any] | None = None):
        self.runtime = runtime
        overrides = {k: v for k, v in dict(decoder_overrides or {}).items() if v is not None}
        # decode in network-input pixels; skeletons_to_original then undoes the fit (squash or
        # letterbox) with the exact inverse of the pre-processing matrix
        overrides["output_scale"] = list(runtime.info.input_size)
        self.decoder = runtime.make_decoder(**overrides)
        self.timer = Timer()

    def __call__(self, images: list[np.ndarray]) -> list[list[Any]]:
        """Skeletons of each RGB uint8 image, keypoints (x, y, score) in that image's pixels."""
        start = time.perf_counter()
        pre = [self.runtime.preprocess(img) for img in images]
        batch = np.stack([x for x, _ in pre])  # (B, 3, H, W)
        start = self.timer.add("preprocess", start)
        maps = self.runtime(batch)
        start = self.timer.add("network", start)
        out = []
        for i, (_, matrix) in enumerate(pre):
            sk = self.decoder(
                maps["heatmap"][i], maps["part_affinity_fields"][i], maps["maxpool_heatmap"][i]
            )
            out.append(skeletons_to_original(sk, matrix))
        self.timer.add("decode", start)
        return out


# COCO's person category, in COCO's order (the first 17 labels of the coco18 topology)
COCO_PERSON_KEYPOINTS = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)


def coco_category(topology) -> dict[str, Any]:
    """COCO's person category when the topology holds its 17 keypoints (coco18: the neck is
    dropped so results evaluate against COCO annotations), else the topology's own category."""
    if set(COCO_PERSON_KEYPOINTS) <= set(topology.labels):
        return {"id": 1, "name": "person", "keypoints": list(COCO_PERSON_KEYPOINTS)}
    return topology.to_coco_category(category_id=1)


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Predict on ``cfg.input`` with ``cfg.model``; returns output paths and the timing summary."""
    cfg = as_plain(cfg)
    source = resolve_path(cfg.get("input"))
    model_path = resolve_path(cfg.get("model_path") or cfg.get("model"))
    if source is None or model_path is None:
        raise ValueError("give input=<image|folder|video> and model=<.onnx|.engine|.pth>")
    out_dir = output_dir(cfg, "predict")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not source.exists():
        raise FileNotFoundError(f"input not found: {source}")

    rt_kwargs = (
        {"threads": cfg["threads"]} if cfg.get("threads") and model_path.suffix == ".onnx" else {}
    )
    runtime = load_runtime(model_path, device=str(cfg.get("device", "cpu")), **rt_kwargs)
    predictor = Predictor(runtime, cfg.get("decoder"))
    topology = runtime.info.topology
    category = coco_category(topology)
    batch_size = max(1, int(cfg.get("batch_size", 1)))
    draw = bool(cfg.get("draw", True))
    max_frames = cfg.get("max_frames")
    video = is_video(source)

    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    writer = None
    video_tmp = video_out = None
    if video and draw:
        cap = open_video(source)
        fps_in = cap.get(cv2.CAP_PROP_FPS) or 25.0
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        cap.release()
        video_out = out_dir / f"{source.stem}_pose.mp4"
        video_tmp = out_dir / f".{source.stem}_pose.tmp.mp4"
        writer = cv2.VideoWriter(
            str(video_tmp),
            cv2.VideoWriter_fourcc(*str(cfg.get("video_codec", "mp4v"))),
            fps_in,
            size,
        )
        if not writer.isOpened():
            raise OSError(
                f"could not open a video writer for {video_tmp} (codec {cfg.get('video_codec')})"
            )

    timer = predictor.timer
    total = count_frames(source)
    if max_frames and total:
        total = min(total, int(max_frames))
    pending: list[Frame] = []
    skipped: list[str] = []  # unreadable images of a folder

    def flush() -> None:
        skeletons = predictor([f.image for f in pending])
        for frame, sks in zip(pending, skeletons, strict=True):
            h, w = frame.image.shape[:2]
            images.append({"id": frame.image_id, "file_name": frame.name, "width": w, "height": h})
            results.extend(skeletons_to_coco(sks, frame.image_id, topology, category))
            if draw:
                start = time.perf_counter()
                drawn = draw_skeletons(frame.image, sks, topology)
                if writer is not None:
                    writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                else:
                    write_rgb(out_dir / "images" / f"{frame.name}.jpg", drawn)
                timer.add("draw", start)
        bar.update(len(pending))
        pending.clear()

    with tqdm(total=total, desc="predict", unit="img" if not video else "frame") as bar:
        try:
            frames = iter_frames(
                source,
                timer,
                int(max_frames) if max_frames else None,
                skipped,
                cfg.get("max_pixels", MAX_PIXELS),
            )
            for frame in frames:
                pending.append(frame)
                if len(pending) == batch_size:
                    flush()
            if pending:
                flush()
        finally:
            if writer is not None:
                writer.release()
    if video_tmp is not None and video_out is not None:
        os.replace(video_tmp, video_out)

    pred_path = write_json(out_dir / "predictions.json", results, indent=None)
    write_json(out_dir / "images.json", images, indent=None)
    stats = timer.summary(len(images))
    stats["skipped_images"] = skipped
    write_json(out_dir / "summary.json", stats)
    if skipped:
        print(f"skipped {len(skipped)} unreadable images (see the warnings above)")
    share = ", ".join(f"{s} {stats['share'][s]:.0%}" for s in STAGES)
    print(
        f"{stats['frames']} {'frames' if video else 'images'}, {len(results)} skeletons; "
        f"{stats['fps']:.1f} FPS ({runtime.backend}, batch {batch_size}): {share}; "
        f"drawing+writing {stats['seconds']['draw']:.2f} s apart"
    )
    print(
        f"wrote {pred_path}"
        + (f" and {video_out}" if video_out else (f" and {out_dir / 'images'}/" if draw else ""))
    )
    return {
        "output": out_dir,
        "predictions": pred_path,
        "video": video_out,
        "stats": stats,
        "num_skeletons": len(results),
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@user_errors
def main(cfg: DictConfig) -> None:
    run(default_output_to_run_dir(cfg))


if __name__ == "__main__":
    sys.argv = alias_model_argument(sys.argv)
    main()
