"""python -m inference.serve model=<model.onnx|.engine|.pth> input=<video|folder|camera index|URL>

A local web page with the live annotated stream: http://127.0.0.1:3000 by default (``host=``,
``port=``; bound to loopback unless ``host=0.0.0.0`` is asked for). The frames run through the
frame loop of ``inference.stream`` (tracking on by default for videos, cameras and streams) on a
worker thread; the page shows the newest frame with its skeletons, FPS, each stage's time per
frame and the latency from decoding to the browser, switches for the heatmap and PAF overlays
and the track ids, and the topology's legend. A video file or image folder plays at its own
frame rate (``realtime=false``: as fast as the model goes) and ends the server when it ends,
unless ``loop=true``; Ctrl-C stops it. ``save=true`` writes ``predictions.json`` /
``images.json`` of every processed frame into ``output`` (default the Hydra run dir), complete
however the stream ends.

URLs (``/ws/*`` are WebSockets):

* ``/``: the page (``inference/static/index.html``: plain HTML and JavaScript, no build step).
* ``/ws/skeletons``: the JSON skeleton feed for other programs. One text message per frame:
  ``{"frame": 12, "time": 1733480000.12, "width": 640, "height": 360, "skeletons":
  [{"track_id": 3, "score": 0.82, "keypoints": [[x, y, score] or null, ...]}]}``, keypoints in
  the topology's part order (``/api/info``), pixels of the original frame. A client slower than
  the stream skips frames; nothing queues up.
* ``/ws/video``: the page's feed: per frame a JSON text message (frame index, overlays, stats)
  then the JPEG as a binary message. The page acknowledges each picture once shown
  (``{"ack": frame}``) and sets overlays with ``{"heatmap": bool, "paf": bool, "ids": bool}``;
  the next picture is the newest frame at ack time, so a slow browser sees fewer frames, never
  older ones.
* ``/api/info``: model, source and topology (labels, edges and their colours).
* ``/api/stats``: frames, FPS, per-stage ms per frame, dropped frames, latency.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from aiohttp import WSMsgType, web
from omegaconf import DictConfig

from datasets.config import as_plain, whole_number
from datasets.errors import UsageError, UserError, user_errors
from datasets.files import resolve_path
from inference.cli import alias_model_argument, default_output_to_run_dir, output_dir
from inference.draw import draw_skeletons, limb_colors, maps_overlay, part_colors
from inference.runtime import load_runtime
from inference.stream import (
    STAGES,
    JsonSink,
    Pipeline,
    Result,
    Source,
    make_tracker,
    open_source,
    run_stream,
    source_limits,
)
from models.contract import ModelInfo

log = logging.getLogger("inference.serve")
STATIC = Path(__file__).resolve().parent / "static"
JPEG_QUALITY = 80


class Hub:
    """The newest result, handed from the worker thread to the web clients. Holding one frame
    (never a queue) is what lets slow clients drop frames instead of falling behind."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.latest: Result | None = None
        self.seq = 0
        self.changed = asyncio.Event()
        self.finished = asyncio.Event()
        self.stats: dict[str, Any] = {"frames": 0, "fps": 0.0, "latency_ms": None}
        self.latencies: collections.deque[float] = collections.deque(maxlen=300)
        self._last_time: float | None = None

    # called on the worker thread: hop onto the event loop
    def write(self, result: Result) -> None:
        self.loop.call_soon_threadsafe(self._publish, result)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.finished.set)

    def _publish(self, result: Result) -> None:
        now = time.perf_counter()
        if self._last_time is not None and now > self._last_time:  # FPS, smoothed
            fps, old = 1.0 / (now - self._last_time), self.stats["fps"]
            self.stats["fps"] = fps if old == 0 else 0.9 * old + 0.1 * fps
        self._last_time = now
        self.latest, self.seq = result, self.seq + 1
        self.stats["frames"] += 1
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    async def newer(self, seq: int) -> tuple[int, Result] | None:
        """The newest result after ``seq``, waiting for one; None once the stream finished."""
        while self.seq <= seq:
            if self.finished.is_set():
                return None
            waiter = asyncio.ensure_future(self.changed.wait())
            done = asyncio.ensure_future(self.finished.wait())
            await asyncio.wait({waiter, done}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            done.cancel()
        return self.seq, self.latest  # type: ignore[return-value]

    def note_latency(self, ms: float) -> None:
        """One frame's time from decoded to shown in a page (acknowledged): the recent ones'
        median and 95th percentile go into the stats."""
        self.latencies.append(ms)
        recent = np.asarray(self.latencies)
        self.stats["latency_ms"] = round(float(np.median(recent)), 1)
        self.stats["latency_p95_ms"] = round(float(np.percentile(recent, 95)), 1)


# what the handlers share, on the aiohttp application
HUB = web.AppKey("hub", Hub)
PIPELINE = web.AppKey("pipeline", Pipeline)
MODEL_INFO = web.AppKey("model_info", ModelInfo)
SOURCE = web.AppKey("source", Source)
SOCKETS = web.AppKey("sockets", set)
INFO_JSON = web.AppKey("info_json", dict)


def skeleton_message(result: Result) -> dict[str, Any]:
    """The JSON feed's message for one frame (see the module docstring)."""
    h, w = result.frame.image.shape[:2]
    ids = result.track_ids or [None] * len(result.skeletons)
    skeletons = []
    for sk, tid in zip(result.skeletons, ids, strict=True):
        kps = [
            None
            if not np.isfinite(x)
            else [round(float(x), 2), round(float(y), 2), round(float(s), 3)]
            for x, y, s in sk.keypoints
        ]
        skeletons.append({"track_id": tid, "score": round(float(sk.score), 4), "keypoints": kps})
    return {
        "frame": result.frame.index,
        "time": time.time(),
        "width": w,
        "height": h,
        "skeletons": skeletons,
    }


def render(result: Result, opts: Mapping[str, bool], info: Any) -> bytes:
    """The frame as a JPEG: overlays asked for, then the skeletons (track ids when asked)."""
    image = result.frame.image
    maps = result.maps or {}
    if (opts.get("heatmap") or opts.get("paf")) and maps and result.matrix is not None:
        image = maps_overlay(
            image,
            result.matrix,
            info.input_size,
            info.topology,
            heatmap=maps["heatmap"] if opts.get("heatmap") else None,
            paf=maps["part_affinity_fields"] if opts.get("paf") else None,
        )
    ids = result.track_ids if opts.get("ids", True) else None
    drawn = draw_skeletons(image, result.skeletons, info.topology, track_ids=ids)
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for frame {result.frame.index}")
    return jpeg.tobytes()


# ----------------------------------------------------------------------------------- handlers
async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def api_info(request: web.Request) -> web.Response:
    return web.json_response(request.app[INFO_JSON])


async def api_stats(request: web.Request) -> web.Response:
    return web.json_response(stats_of(request.app))


def stats_of(app: web.Application) -> dict[str, Any]:
    hub: Hub = app[HUB]
    timer = app[PIPELINE].timer
    frames = max(hub.stats["frames"], 1)
    ms = {s: round(1e3 * timer.seconds[s] / frames, 2) for s in STAGES}
    return {**hub.stats, "ms_per_frame": ms, "dropped": app[SOURCE].dropped}


async def ws_skeletons(request: web.Request) -> web.WebSocketResponse:
    ws = await _open_ws(request)
    hub: Hub = request.app[HUB]
    reader = asyncio.ensure_future(_drain(ws))  # reads the client's close
    seq = 0
    try:
        while not ws.closed:
            got = await hub.newer(seq)
            if got is None:
                break
            seq, result = got
            await ws.send_str(json.dumps(skeleton_message(result)))  # waits for a slow client
    except ConnectionResetError:  # the client went away mid-send
        pass
    finally:
        reader.cancel()
        await ws.close()
    return ws


async def _drain(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


async def ws_video(request: web.Request) -> web.WebSocketResponse:
    ws = await _open_ws(request)
    app = request.app
    opts = {"heatmap": False, "paf": False, "ids": True}
    acked = asyncio.Event()
    acked.set()
    sent: dict[int, float] = {}  # frame -> perf_counter when decoding finished
    reader = asyncio.ensure_future(_read_acks(ws, app[HUB], opts, acked, sent))
    seq = 0
    try:
        while not ws.closed:
            await acked.wait()
            got = await app[HUB].newer(seq)
            if got is None:
                break
            seq, result = got
            jpeg = await asyncio.get_running_loop().run_in_executor(
                None, render, result, dict(opts), app[MODEL_INFO]
            )
            meta = {"frame": result.frame.index, **opts, "stats": stats_of(app)}
            acked.clear()
            sent[result.frame.index] = result.done
            await ws.send_str(json.dumps(meta))
            await ws.send_bytes(jpeg)
    except ConnectionResetError:  # the page went away mid-send
        pass
    finally:
        reader.cancel()
        await ws.close()
    return ws


async def _read_acks(ws, hub: Hub, opts: dict, acked: asyncio.Event, sent: dict) -> None:
    """The page's messages: acks (latency from decoding to shown) and overlay switches."""
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        data = json.loads(msg.data)
        if "ack" in data:
            done = sent.pop(int(data["ack"]), None)
            if done is not None:
                hub.note_latency(1e3 * (time.perf_counter() - done))
            sent.clear()
            acked.set()
        opts.update({k: bool(data[k]) for k in ("heatmap", "paf", "ids") if k in data})
    acked.set()


async def _open_ws(request: web.Request) -> web.WebSocketResponse:
    """A WebSocket the server closes when it stops (``app[SOCKETS]``)."""
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    sockets: set = request.app[SOCKETS]
    sockets.add(ws)
    if request.task is not None:
        request.task.add_done_callback(lambda _: sockets.discard(ws))
    return ws


def make_app(hub: Hub, pipeline: Pipeline, source: Source, model_path: Path) -> web.Application:
    info = pipeline.runtime.info
    topo = info.topology
    app = web.Application()
    app[HUB], app[PIPELINE], app[MODEL_INFO], app[SOURCE] = hub, pipeline, info, source
    app[SOCKETS] = set()
    app[INFO_JSON] = {
        "model": model_path.name,
        "backend": pipeline.runtime.backend,
        "input_size": list(info.input_size),
        "source": {"kind": source.kind, "name": source.name, "fps": source.fps},
        "tracking": pipeline.tracker is not None,
        "topology": {
            "name": topo.name,
            "labels": list(topo.labels),
            "edges": [list(e) for e in topo.edges],
            "part_colors": [list(c) for c in part_colors(topo)],
            "edge_colors": [list(c) for c in limb_colors(topo)],
        },
    }
    app.router.add_get("/", page)
    app.router.add_get("/api/info", api_info)
    app.router.add_get("/api/stats", api_stats)
    app.router.add_get("/ws/skeletons", ws_skeletons)
    app.router.add_get("/ws/video", ws_video)
    return app


# ------------------------------------------------------------------------------------ running
async def serve(cfg: Mapping[str, Any], source: Source, pipeline: Pipeline, model: Path) -> dict:
    """Serve until the source ends (or Ctrl-C); returns the loop's timing summary."""
    loop = asyncio.get_running_loop()
    hub = Hub(loop)
    app = make_app(hub, pipeline, source, model)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    host, port = str(cfg.get("host", "127.0.0.1")), listen_port(cfg)
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        why = "the port is in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise UserError(
            f"cannot listen on {host}:{port}: {why} (give another port=N, or stop the program "
            "that holds it)"
        ) from None
    sinks: list[Any] = [hub]
    if cfg.get("save"):
        sinks.insert(0, JsonSink(output_dir(cfg, "serve"), pipeline.runtime.info.topology))
    stop, outcome = threading.Event(), {}

    def work() -> None:
        try:
            pace = _pace(cfg, source)
            outcome["stats"] = run_stream(source, pipeline, sinks, stop=stop, drop=True, pace=pace)
        except BaseException as e:  # raised again on the main thread
            outcome["error"] = e
            hub.close()

    worker = threading.Thread(target=work, name="frame-loop", daemon=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, hub.finished.set)
    print(
        f"serving {source.kind} {source.name} on http://{host}:{port}/ (skeleton feed: "
        f"ws://{host}:{port}/ws/skeletons); Ctrl-C stops",
        flush=True,
    )
    worker.start()
    await hub.finished.wait()
    stop.set()
    await loop.run_in_executor(None, worker.join)
    for ws in list(app[SOCKETS]):
        await ws.close(code=1001, message=b"server stopping")
    await runner.cleanup()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["stats"]


def listen_port(cfg: Mapping[str, Any]) -> int:
    """``cfg.port`` (default 3000): a whole number 1-65535, else a UsageError."""
    port = whole_number(cfg, "port", 3000)
    if port > 65535:
        raise UsageError(f"port must be a whole number 1-65535, got {port}")
    return port


def _pace(cfg: Mapping[str, Any], source: Source) -> float | None:
    """Frames per second to play a file at (None: cameras and streams come at their own pace)."""
    if source.live or not cfg.get("realtime", True):
        return None
    return float(cfg.get("fps") or source.fps or 10.0)


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Open the model and the source, then serve the page until the source ends or Ctrl-C."""
    cfg = as_plain(cfg)
    model_path = resolve_path(cfg.get("model_path") or cfg.get("model"))
    if cfg.get("input") in (None, "") or model_path is None:
        raise UsageError("give input=<video|folder|camera|URL> and model=<.onnx|.engine|.pth>")
    listen_port(cfg)  # a bad port=, before the model and the source are opened
    source = open_source(cfg["input"], loop=bool(cfg.get("loop")), **source_limits(cfg))
    runtime = load_runtime(model_path, device=str(cfg.get("device", "cpu")))
    tracker = make_tracker(cfg, source, runtime.info.topology)
    pipeline = Pipeline(runtime, cfg.get("decoder_overrides"), tracker, keep_maps=True)
    stats = asyncio.run(serve(cfg, source, pipeline, model_path))
    ms = stats["ms_per_frame"]
    print(
        f"stopped after {stats['frames']} frames ({stats['fps']:.1f} FPS, dropped "
        f"{stats['dropped']}); ms per frame: " + ", ".join(f"{s} {ms[s]:.1f}" for s in STAGES)
    )
    return stats


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
@user_errors
def main(cfg: DictConfig) -> None:
    run(default_output_to_run_dir(cfg))


if __name__ == "__main__":
    sys.argv = alias_model_argument(sys.argv)
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C while stopping
        main()
