"""The one frame loop of the video commands (``inference.predict`` and ``inference.serve``):

    source -> read-ahead thread -> pre-processing -> runtime -> decoder -> tracker -> sinks

* Sources (``open_source``): an image, a folder of images (frames in name order), a video file,
  a camera index (``0``) or a stream URL (``rtsp://``, ``http://``: anything OpenCV opens). A
  thread reads frames ahead into a bounded queue, so decoding the video overlaps the network; for
  live sources (camera, URL) the oldest queued frame is dropped when the queue is full, so the
  loop always works on recent frames instead of falling behind.
* ``Pipeline``: pre-processing from the model's own metadata, the runtime (ONNX Runtime, TensorRT
  or torch), the decoder (in network-input pixels, mapped back to original pixels with the exact
  inverse of the pre-processing) and, optionally, the tracker (``inference.track``).
* Sinks (``write(result)``, ``close()``): COCO-style JSON (``JsonSink``: ``frame`` per image,
  ``track_id`` per skeleton), drawn pictures or video (``DrawSink``), a progress bar, and the live
  page (``inference.serve``). ``run_stream`` closes every sink however the loop ends, so a stream
  that ends or fails keeps complete JSON for the frames it had.

Per-stage times (read, preprocess, network, decode, track; draw apart) are summed in a ``Timer``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datasets.config import whole_number
from datasets.errors import UsageError, UserError
from datasets.files import IMAGE_SUFFIXES, write_json
from datasets.images import MAX_PIXELS, ImageError, read_rgb
from datasets.neck import COCO_PERSON_KEYPOINTS, adds_neck
from datasets.topology import Topology
from inference.cocoeval import skeletons_to_coco
from inference.draw import draw_skeletons, write_rgb
from inference.runtime import Runtime
from inference.track import Tracker, topology_sigmas
from models.contract import skeletons_to_original

log = logging.getLogger("inference.stream")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
STAGES = ("read", "preprocess", "network", "decode", "track")


@dataclass
class Frame:
    """One input picture: RGB uint8 pixels, its index in the stream, its COCO id and a name."""

    image: np.ndarray
    index: int
    image_id: int
    name: str
    time: float = 0.0  # perf_counter when it was read


@dataclass
class Result:
    """One processed frame: skeletons in original pixels, their track ids (None untracked),
    and, when the pipeline keeps them, the maps (NCHW without batch) and the pre-processing
    matrix (original -> input pixels) for overlays."""

    frame: Frame
    skeletons: list[Any]
    track_ids: list[int] | None = None
    maps: dict[str, np.ndarray] | None = None
    matrix: np.ndarray | None = None
    done: float = 0.0  # perf_counter when decoding (and tracking) finished


@dataclass
class Timer:
    """Seconds per stage, summed (``read`` is added by the read-ahead thread)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*STAGES, "draw"), 0.0))

    def add(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - start
        return now

    def summary(self, frames: int, wall: float) -> dict[str, Any]:
        """``fps`` over the wall time of the loop (reading overlaps the other stages)."""
        total = sum(self.seconds[s] for s in STAGES)
        return {
            "frames": frames,
            "fps": frames / wall if wall > 0 else float("nan"),
            "seconds": dict(self.seconds),
            "ms_per_frame": {s: 1e3 * v / max(frames, 1) for s, v in self.seconds.items()},
            "share": {s: self.seconds[s] / total if total > 0 else float("nan") for s in STAGES},
        }


# ---------------------------------------------------------------------------------- sources
@dataclass
class Source:
    """Frames from one input; ``kind`` is images | video | camera | stream."""

    kind: str
    name: str
    frames: Callable[[], Iterator[Frame]]
    fps: float | None = None
    count: int | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable images left out of a folder
    dropped: int = 0  # frames the read-ahead dropped because the loop was busy (live sources)

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "stream")

    @property
    def is_video(self) -> bool:
        """A sequence of frames of one scene (tracked by default, drawn as a video)."""
        return self.kind != "images"


def open_source(
    spec: Any,
    *,
    loop: bool = False,
    max_frames: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> Source:
    """A ``Source`` for an input spec: a path, a camera index or a URL (see the module);
    ``max_pixels`` caps the size of an image file (``datasets.images``)."""
    text = str(spec).strip()
    path = Path(os.path.expanduser(text))
    if "://" in text:
        source = _capture_source(text, "stream", text)
    elif text.isdigit() and not path.exists():
        source = _capture_source(int(text), "camera", f"camera {text}")
    elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        source = _capture_source(str(path), "video", path.stem)
    elif path.is_dir() or path.is_file():
        source = _image_source(path, max_pixels)
    else:
        raise UserError(
            f"input not found: {path} (give an image, a folder of images, a video, a camera "
            "index like input=0 or a stream URL)"
        )
    return _bounded(source, loop, max_frames)


def _bounded(source: Source, loop: bool, max_frames: int | None) -> Source:
    """Repeat the source when ``loop`` (frame indices keep counting) and stop at ``max_frames``."""
    inner = source.frames
    limit = int(max_frames) if max_frames else None

    def frames() -> Iterator[Frame]:
        index = 0
        while True:
            got = 0
            for frame in inner():
                if limit is not None and index >= limit:
                    return
                frame.index, got = index, got + 1
                if source.kind != "images":
                    frame.image_id, frame.name = index, f"frame_{index:06d}"
                yield frame
                index += 1
            if not loop or got == 0:
                return

    source.frames = frames
    if source.count and limit:
        source.count = min(source.count, limit)
    return source


def _image_ids(files: list[Path]) -> list[int]:
    """Image ids: a COCO-style numeric name keeps its number (000000000785.jpg: 785); other
    names, and a number already taken (1.jpg beside 001.png), take their position (1-based) or,
    where that is taken, the next free id: no two images share one."""
    ids: list[int | None] = [None] * len(files)
    taken: set[int | None] = set()
    for i, f in enumerate(files):
        n = int(f.stem) if f.stem.isascii() and f.stem.isdecimal() else None
        if n is not None and n not in taken:
            ids[i] = n
            taken.add(n)
    for i, n in enumerate(ids):
        if n is None:
            ids[i] = i + 1
            while ids[i] in taken:
                ids[i] += 1
            taken.add(ids[i])
    return ids


def _images_in(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError:  # an unreadable sub-folder holds nothing we can read
        return []


def _folder_images(path: Path) -> list[Path]:
    """The folder's images; not its sub-folders', which a warning (or the error, when the
    folder itself holds none) names."""
    files = _images_in(path)
    subs = [d for d in sorted(path.iterdir()) if d.is_dir() and _images_in(d)]
    where = ""
    if subs:
        names = ", ".join(d.name for d in subs[:5]) + (", ..." if len(subs) > 5 else "")
        where = f"{len(subs)} sub-folders hold images ({names}): give input={subs[0]} for those"
    if not files:
        hint = f"; {where}" if where else ""
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}{hint}")
    if where:
        log.warning("%s: not reading sub-folders; %s", path, where)
    return files


def _image_source(path: Path, max_pixels: int | None) -> Source:
    files = _folder_images(path) if path.is_dir() else [path]
    ids = _image_ids(files)
    source = Source("images", path.name, lambda: iter(()), count=len(files))

    def frames() -> Iterator[Frame]:
        for n, file in enumerate(files):
            try:
                rgb = read_rgb(file, max_pixels)
            except ImageError as e:
                if not path.is_dir():
                    raise
                log.warning("skipping %s", e)  # the other images are still predicted
                source.skipped.append(str(file))
                continue
            yield Frame(rgb, n, ids[n], file.stem, time.perf_counter())

    source.frames = frames
    return source


def _capture_source(target: str | int, kind: str, name: str) -> Source:
    """A video file, camera or stream through ``cv2.VideoCapture``; checked open here."""
    cap = cv2.VideoCapture(target)
    if not cap.isOpened() or cap.get(cv2.CAP_PROP_FRAME_WIDTH) <= 0:
        cap.release()
        if kind == "video":
            raise ImageError(
                f"cannot read video {target}: it is empty, corrupt or in a format OpenCV cannot "
                "decode (convert it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)"
            )
        hint = {
            "camera": "no such camera, or another program holds it",
            "stream": "check the address and that the stream is up",
        }[kind]
        raise UserError(f"could not open {kind} {target}: {hint}")
    fps = cap.get(cv2.CAP_PROP_FPS)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else 0
    cap.release()

    def frames() -> Iterator[Frame]:
        cap = cv2.VideoCapture(target)
        try:
            n = 0
            while cap.isOpened():
                ok, bgr = cap.read()
                if not ok:
                    break
                yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), n, n, "", time.perf_counter())
                n += 1
        finally:
            cap.release()
        if kind == "camera":
            raise UserError(
                f"camera {target} stopped sending frames after {n} frames (unplugged, or taken "
                "by another program?); the output keeps the frames it had"
            )
        if n == 0:
            raise UserError(f"no frame could be decoded from {kind} {target}")

    return Source(kind, name, frames, fps if fps and fps > 0 else None, count or None)


class ReadAhead:
    """Iterate a source's frames read on a thread, at most ``depth`` ahead. With ``drop`` (live
    sources) a full queue loses its oldest frame instead of blocking the reader; the source's
    ``dropped`` counts them. ``pace`` (frames per second) plays a file at its frame rate. An error
    in the reader is raised in the consumer, after the frames before it."""

    _END = object()

    def __init__(
        self,
        source: Source,
        timer: Timer,
        depth: int = 4,
        drop: bool = False,
        pace: float | None = None,
    ):
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.drop, self.source, self.pace = drop, source, pace
        self.stopped = threading.Event()
        self.thread = threading.Thread(
            target=self._read, args=(source, timer), name="read-ahead", daemon=True
        )
        self.thread.start()

    def _read(self, source: Source, timer: Timer) -> None:
        item: Any = self._END
        try:
            frames, begin, n = source.frames(), time.perf_counter(), 0
            while not self.stopped.is_set():
                if self.pace:  # frame n is read no sooner than its time, as from a camera
                    self.stopped.wait(begin + n / self.pace - time.perf_counter())
                    n += 1
                start = time.perf_counter()
                frame = next(frames, None)
                if frame is None:
                    break
                timer.add("read", start)
                self._put(frame)
        except BaseException as e:  # handed to the consumer, which raises it
            item = e
        self._put(item, final=True)

    def _put(self, item: Any, final: bool = False) -> None:
        drop = self.drop and not final
        while not self.stopped.is_set():
            try:
                if drop:  # a live frame never waits: it replaces the oldest queued one
                    self.queue.put_nowait(item)
                else:
                    self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                if drop:
                    try:
                        self.queue.get_nowait()
                        self.source.dropped += 1
                    except queue.Empty:
                        pass

    def __iter__(self) -> Iterator[Frame]:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------------- pipeline
class Pipeline:
    """Runtime + decoder (+ tracker): frames -> ``Result`` with skeletons in original pixels."""

    def __init__(
        self,
        runtime: Runtime,
        decoder_overrides: Mapping[str, Any] | None = None,
        tracker: Tracker | None = None,
        keep_maps: bool = False,
    ):
        self.runtime = runtime
        overrides = {k: v for k, v in dict(decoder_overrides or {}).items() if v is not None}
        # decode in network-input pixels; skeletons_to_original then undoes the fit (squash or
        # letterbox) with the exact inverse of the pre-processing matrix
        overrides["output_scale"] = list(runtime.info.input_size)
        self.decoder = runtime.make_decoder(**overrides)
        self.decoder.warm_up()  # the compiled decoder loads now, not in the first frame's time
        self.tracker = tracker
        if tracker is not None:
            tracker.warm_up()  # likewise the compiled tracker
        self.keep_maps = keep_maps
        self.timer = Timer()

    def __call__(self, frames: Sequence[Frame]) -> list[Result]:
        start = time.perf_counter()
        pre = [self.runtime.preprocess(f.image) for f in frames]
        batch = np.stack([x for x, _ in pre])  # (B, 3, H, W)
        start = self.timer.add("preprocess", start)
        maps = self.runtime(batch)  # heatmap (B, K, h, w), part_affinity_fields (B, 2E, h, w)
        start = self.timer.add("network", start)
        results = []
        for i, (frame, (_, matrix)) in enumerate(zip(frames, pre, strict=True)):
            heat, paf = maps["heatmap"][i], maps["part_affinity_fields"][i]
            sks = self.decoder(heat, paf, maps["maxpool_heatmap"][i])
            kept = {"heatmap": heat, "part_affinity_fields": paf} if self.keep_maps else None
            results.append(Result(frame, skeletons_to_original(sks, matrix), None, kept, matrix))
        start = self.timer.add("decode", start)
        for r in results:
            if self.tracker is not None:
                r.track_ids = self.tracker.update([s.keypoints for s in r.skeletons], r.frame.index)
            r.done = time.perf_counter()
        self.timer.add("track", start)
        return results


def make_tracker(cfg: Mapping[str, Any], source: Source, topology: Topology) -> Tracker | None:
    """The tracker asked for by ``cfg`` (``track``: true / false / null = on for videos, cameras
    and streams; ``smooth``; ``tracker``: max_age, min_oks, min_cutoff, beta)."""
    track = cfg.get("track")
    if track not in (None, True, False):  # "maybe" would be truthy
        raise UsageError(f"track={track!r}: give true, false or null (on for videos)")
    if not (source.is_video if track is None else track):
        return None
    opts = dict(cfg.get("tracker") or {})
    return Tracker(
        topology_sigmas(topology), smooth=bool(cfg.get("smooth")), fps=source.fps or 30.0, **opts
    )


def source_limits(cfg: Mapping[str, Any]) -> dict[str, int | None]:
    """``open_source``'s ``max_frames`` (null: all) and ``max_pixels`` (null: no cap; absent:
    ``MAX_PIXELS``) from a command's config, checked: whole numbers >= 1 (a negative count
    would silently read nothing)."""
    pixels = whole_number(cfg, "max_pixels", None) if "max_pixels" in cfg else MAX_PIXELS
    return {"max_frames": whole_number(cfg, "max_frames", None), "max_pixels": pixels}


def run_stream(
    source: Source,
    pipeline: Pipeline,
    sinks: Sequence[Any],
    batch_size: int = 1,
    stop: threading.Event | None = None,
    drop: bool | None = None,
    pace: float | None = None,
) -> dict[str, Any]:
    """Run the loop until the source ends (or ``stop`` is set); returns the timing summary with
    ``dropped`` (frames dropped by the reader: ``drop``, default on for live sources, processes
    the newest frame instead of every frame) and ``skipped_images`` (unreadable images).
    ``pace``: read at most this many frames per second (a file played as if live)."""
    batch_size = max(1, int(batch_size))
    drop = source.live if drop is None else drop
    reader = ReadAhead(source, pipeline.timer, 2 * batch_size + 2, drop, pace)
    frames, start, pending = 0, time.perf_counter(), []
    try:
        for frame in reader:
            pending.append(frame)
            if len(pending) == batch_size or drop:
                frames += _process(pipeline, pending, sinks)
            if stop is not None and stop.is_set():
                break
        if pending:
            frames += _process(pipeline, pending, sinks)
    finally:
        reader.close()
        for sink in sinks:  # a stream that ends or fails keeps what it had
            sink.close()
    stats = pipeline.timer.summary(frames, time.perf_counter() - start)
    return {**stats, "dropped": source.dropped, "skipped_images": list(source.skipped)}


def _process(pipeline: Pipeline, pending: list[Frame], sinks: Sequence[Any]) -> int:
    results = pipeline(pending)
    pending.clear()
    for r in results:
        for sink in sinks:
            sink.write(r)
    return len(results)


# ------------------------------------------------------------------------------------ sinks
def coco_category(topology: Topology) -> dict[str, Any]:
    """COCO's person category when the topology holds its 17 keypoints (coco18: the neck is
    dropped so results evaluate against COCO annotations), else the topology's own category."""
    if adds_neck(COCO_PERSON_KEYPOINTS, topology):
        return {"id": 1, "name": "person", "keypoints": list(COCO_PERSON_KEYPOINTS)}
    return topology.to_coco_category(category_id=1)


class JsonSink:
    """``predictions.json`` (COCO keypoint results, plus ``track_id`` when tracked) and
    ``images.json`` (id, file_name, width, height and ``frame`` index of each image)."""

    def __init__(self, out_dir: Path, topology: Topology):
        self.out_dir, self.topology = Path(out_dir), topology
        self.category = coco_category(topology)
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.path = self.out_dir / "predictions.json"

    def write(self, r: Result) -> None:
        f = r.frame
        h, w = f.image.shape[:2]
        self.images.append(
            {"id": f.image_id, "file_name": f.name, "width": w, "height": h, "frame": f.index}
        )
        res = skeletons_to_coco(r.skeletons, f.image_id, self.topology, self.category)
        for d, tid in zip(res, r.track_ids or [None] * len(res), strict=True):
            if tid is not None:
                d["track_id"] = int(tid)
        self.results.extend(res)

    def close(self) -> None:
        write_json(self.path, self.results, indent=None)
        write_json(self.out_dir / "images.json", self.images, indent=None)


class DrawSink:
    """Skeletons drawn (track ids as colours and numbers): ``images/<name>.jpg`` per image, or
    one ``<name>_pose.mp4`` for a video, camera or stream (renamed into place when closed)."""

    def __init__(
        self, out_dir: Path, source: Source, topology: Topology, timer: Timer, codec="mp4v"
    ):
        self.out_dir, self.topology, self.timer = Path(out_dir), topology, timer
        self.video = source.is_video
        self.fps, self.codec = source.fps or 25.0, codec
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name) or "stream"
        self.path = self.out_dir / (f"{stem}_pose.mp4" if self.video else "images")
        self.tmp = self.out_dir / f".{stem}_pose.tmp.mp4"
        self.writer: cv2.VideoWriter | None = None

    def write(self, r: Result) -> None:
        start = time.perf_counter()
        drawn = draw_skeletons(r.frame.image, r.skeletons, self.topology, track_ids=r.track_ids)
        if not self.video:
            write_rgb(self.path / f"{r.frame.name}.jpg", drawn)
        else:
            if self.writer is None:  # sized by the first frame (cameras may not say)
                h, w = drawn.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(*str(self.codec))
                self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
                if not self.writer.isOpened():
                    raise UserError(
                        f"could not open a video writer for {self.tmp} (codec {self.codec})"
                    )
            self.writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        self.timer.add("draw", start)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.tmp, self.path)
