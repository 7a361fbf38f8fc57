"""python -m inference.predict input=<image|folder|video|camera index|URL> model=<model.onnx|model.engine|ckpt.pth>

Runs a pose model on an image, a folder of images (frames in name order), a video file, a camera
(``input=0``) or a stream URL (``input=rtsp://...``) through the frame loop of
``inference.stream`` and writes, into ``output`` (default the Hydra run dir
``outputs/predict/<time>``):

* ``predictions.json``: COCO keypoint results (``image_id``, ``category_id``, ``keypoints`` as
  x, y, v triplets in original image pixels, ``score``, and ``track_id`` when tracked), ready for
  COCOeval; images named by a COCO id (``000000000785.jpg``) keep that id, others are numbered in
  order, video frames by their index. ``images.json`` lists each id's file (or frame), width,
  height and ``frame`` index.
* the inputs with the skeletons drawn (one colour per limb, or per track with its id):
  ``images/<name>.jpg``, or ``<video stem>_pose.mp4``.
* ``summary.json``: the timings below, ``dropped`` frames (live sources) and ``skipped_images``,
  the unreadable images of a folder (each is skipped with a warning; the others are still
  predicted).

Tracking (``track``: null = on for videos, cameras and streams, off for images; ``smooth=true``
for the One Euro filter; ``tracker.max_age`` ...) gives each skeleton a ``track_id`` that stays
with its object. Prints frames per second and each stage's time per frame (read, pre-process,
network, decode, track; drawing and writing apart). A stream that ends or fails keeps complete
JSON for the frames it had; unreadable images in a folder are skipped and counted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from datasets.config import as_plain, whole_number
from datasets.errors import UsageError, user_errors
from datasets.files import resolve_path, write_json
from inference.cli import alias_model_argument, default_output_to_run_dir, output_dir
from inference.runtime import load_runtime
from inference.stream import (
    STAGES,
    DrawSink,
    JsonSink,
    Pipeline,
    make_tracker,
    open_source,
    run_stream,
    source_limits,
)
from inference.tta import with_tta

log = logging.getLogger("inference.predict")


class Progress:
    """A sink that advances a progress bar."""

    def __init__(self, total: int | None, unit: str):
        self.bar = tqdm(total=total, desc="predict", unit=unit)

    def write(self, result: Any) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Predict on ``cfg.input`` with ``cfg.model``; returns output paths and the timing summary."""
    cfg = as_plain(cfg)
    model_path = resolve_path(cfg.get("model_path") or cfg.get("model"))
    if cfg.get("input") in (None, "") or model_path is None:
        raise UsageError(
            "give input=<image|folder|video|camera|URL> and model=<.onnx|.engine|.pth>"
        )
    batch_size, threads = whole_number(cfg, "batch_size"), whole_number(cfg, "threads", None)
    out_dir = output_dir(cfg, "predict")
    source = open_source(cfg["input"], **source_limits(cfg))
    kwargs = {"threads": threads} if threads and model_path.suffix == ".onnx" else {}
    runtime = load_runtime(model_path, device=str(cfg.get("device", "cpu")), **kwargs)
    runtime = with_tta(runtime, cfg.get("tta"))  # mirror / scales averaged in map space
    topology = runtime.info.topology
    pipeline = Pipeline(runtime, cfg.get("decoder_overrides"), make_tracker(cfg, source, topology))
    out_dir.mkdir(parents=True, exist_ok=True)
    json_sink = JsonSink(out_dir, topology)
    sinks: list[Any] = [json_sink]
    if cfg.get("draw", True):
        codec = str(cfg.get("video_codec", "mp4v"))
        sinks.append(DrawSink(out_dir, source, topology, pipeline.timer, codec))
    sinks.append(Progress(source.count, "frame" if source.is_video else "img"))
    stats = run_stream(source, pipeline, sinks, batch_size=batch_size)
    write_json(out_dir / "summary.json", stats)
    ms = stats["ms_per_frame"]
    tracked = pipeline.tracker is not None
    print(
        f"{stats['frames']} {'frames' if source.is_video else 'images'}, "
        f"{len(json_sink.results)} skeletons"
        + (f" in {pipeline.tracker.next_id - 1} tracks" if tracked else "")
        + f"; {stats['fps']:.1f} FPS ({runtime.backend}, batch {batch_size}); "
        + "ms per frame: "
        + ", ".join(f"{s} {ms[s]:.1f}" for s in STAGES)
        + f"; drawing+writing {stats['seconds']['draw']:.2f} s apart"
    )
    if stats["skipped_images"]:
        print(f"skipped {len(stats['skipped_images'])} unreadable images (see the warnings above)")
    drawn = sinks[1].path if len(sinks) == 3 else None
    print(f"wrote {json_sink.path}" + (f" and {drawn}" if drawn else ""))
    return {
        "output": out_dir,
        "predictions": json_sink.path,
        "video": drawn if source.is_video else None,
        "stats": stats,
        "num_skeletons": len(json_sink.results),
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@user_errors
def main(cfg: DictConfig) -> None:
    run(default_output_to_run_dir(cfg))


if __name__ == "__main__":
    sys.argv = alias_model_argument(sys.argv)
    main()
