"""inference.serve: the live page in a real browser (Debian's chromium driven by Playwright), the
JSON skeleton feed, Ctrl-C, the end of the source, a port in use."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from datasets.errors import UserError
from datasets.synthetic_video import render_video, simulate_walks
from inference.serve import run
from tests.deploy_fixtures import REPO, export_cfg, make_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
SIZE = (180, 320)  # (h, w) of the synthetic video


@pytest.fixture(scope="module")
def model_and_video(tmp_path_factory):
    from export.__main__ import run as export

    d = tmp_path_factory.mktemp("serve")
    ckpt = make_checkpoint(d / "tiny.pth")
    onnx = export(export_cfg(ckpt, output=str(d / "tiny.onnx")))["onnx"]
    video = render_video(d / "walk.mp4", simulate_walks(3, 40, size=SIZE, seed=2), fps=10)
    return onnx, video


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_playwright():
    """Playwright for Python and Debian's chromium, or skip naming what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs the Python package playwright (pip install -e '.[dev]')")
    if not CHROMIUM.is_file():
        pytest.skip(f"needs Debian's chromium package at {CHROMIUM} (apt-get install -y chromium)")
    return sync_playwright


@pytest.fixture
def server(model_and_video, tmp_path):
    """``python -m inference.serve`` on a looped synthetic video; stopped with Ctrl-C (SIGINT),
    which must end it cleanly (exit 0, its closing line printed)."""
    onnx, video = model_and_video
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference.serve", f"model={onnx}", f"input={video}",
         f"port={port}", "loop=true", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=120)
    except queue.Empty:
        proc.kill()
        pytest.fail(f"serve did not start: {proc.stderr.read()[-2000:]}")
    assert first.startswith("serving video walk on http://127.0.0.1:"), first
    yield f"http://127.0.0.1:{port}"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]
    assert lines.get(timeout=10).startswith("stopped after")


MEAN_BRIGHTNESS = """() => {
  const img = document.getElementById("video");
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let s = 0;
  for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2];
  return s / (d.length / 4) / 3;
}"""

FIRST_FEED_MESSAGE = """() => new Promise((resolve, reject) => {
  const ws = new WebSocket(`ws://${location.host}/ws/skeletons`);
  ws.onmessage = (ev) => { ws.close(); resolve(JSON.parse(ev.data)); };
  ws.onerror = () => reject(new Error("feed failed"));
})"""


def _frames_shown(page) -> int:
    return int(page.text_content("#frame-count"))


def _wait_frames(page, more: int) -> None:
    n = _frames_shown(page)
    page.wait_for_function(
        f"Number(document.getElementById('frame-count').textContent) >= {n + more}",
        timeout=60_000,
    )


def test_live_page_in_chromium(server, tmp_path):
    sync_playwright = _sync_playwright()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 560})
            page.goto(server)
            _wait_frames(page, 3)
            size = page.evaluate("() => [video.naturalWidth, video.naturalHeight]")
            assert size == [SIZE[1], SIZE[0]]
            assert page.locator("#legend .part").count() == 18
            assert "nose" in page.text_content("#legend")
            assert float(page.text_content("#fps")) > 0
            assert "decode" in page.text_content("#stages")
            plain = page.evaluate(MEAN_BRIGHTNESS)

            page.click("#heatmap")  # the overlay darkens the picture under the coloured maps
            page.wait_for_function("window.lastMeta && window.lastMeta.heatmap === true")
            _wait_frames(page, 1)
            assert page.evaluate(MEAN_BRIGHTNESS) < 0.8 * plain
            page.click("#paf")
            page.click("#ids")
            page.wait_for_function("window.lastMeta.paf === true && window.lastMeta.ids === false")

            feed = page.evaluate(FIRST_FEED_MESSAGE)
            assert (feed["width"], feed["height"]) == (SIZE[1], SIZE[0])
            assert isinstance(feed["frame"], int) and isinstance(feed["skeletons"], list)
            for sk in feed["skeletons"]:
                assert isinstance(sk["track_id"], int) and len(sk["keypoints"]) == 18

            stats = page.request.get(f"{server}/api/stats").json()
            assert stats["frames"] >= 4 and stats["latency_ms"] is not None
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def test_serve_stops_at_the_end_of_the_source_and_saves_json(model_and_video, tmp_path):
    onnx, video = model_and_video
    cfg = {"model": str(onnx), "input": str(video), "port": _free_port(), "realtime": False,
           "save": True, "output": str(tmp_path)}  # fmt: skip
    stats = run(cfg)
    assert stats["frames"] >= 1
    images = json.loads((tmp_path / "images.json").read_text())
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert len(images) == stats["frames"]
    assert all("track_id" in p for p in preds)


def test_port_in_use_is_one_line(model_and_video):
    onnx, video = model_and_video
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(
            UserError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use .*port=N"
        ):
            run({"model": str(onnx), "input": str(video), "port": port})
