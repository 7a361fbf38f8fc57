"""python scripts/bench_serve.py --model runs/smoke/last.onnx [--seconds 600] [--video PATH]

The live page under load: ``python -m inference.serve`` plays a looped video (default: a
synthetic 640x360 walk at 15 FPS, made here) to a headless Debian chromium (Playwright, as in the
browser test), and every ``--every`` seconds the script prints the frames processed and shown,
the server's FPS, the latency from a frame's decoding to the page acknowledging it as shown
(median and 95th percentile of the recent frames: rendering, JPEG, the WebSocket, the browser's
decode and paint and the acknowledgement's way back), and the server's resident memory (VmRSS),
which must stay flat over a looped stream.
"""

from __future__ import annotations

import argparse
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datasets.synthetic_video import render_video, simulate_walks  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(args, video: Path, run_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "inference.serve", f"model={args.model}", f"input={video}",
           f"port={port}", "loop=true", f"hydra.run.dir={run_dir}", *args.overrides]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    print(lines.get(timeout=180).strip())
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--video", default=None)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--every", type=float, default=60)
    ap.add_argument("--screenshot", default=None, help="save a screenshot of the page here")
    ap.add_argument("overrides", nargs="*", help="more serve overrides, e.g. decoder.x=y")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright  # the dev extra; needs Debian's chromium

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video) if args.video else Path(tmp) / "walk.mp4"
        if not args.video:
            render_video(video, simulate_walks(3, 150, size=(360, 640), seed=1), fps=15)
        proc, url = start_server(args, video, Path(tmp) / "run")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1100, "height": 600})
                page.goto(url)
                begin = time.monotonic()
                print(f"{'s':>5s} {'frames':>7s} {'shown':>6s} {'FPS':>5s} {'latency ms':>11s} "
                      f"{'p95 ms':>7s} {'RSS MB':>7s}")  # fmt: skip
                while True:
                    page.wait_for_timeout(1000 * min(args.every, args.seconds))
                    s = page.request.get(f"{url}/api/stats").json()
                    shown = page.text_content("#frame-count")
                    print(f"{time.monotonic() - begin:5.0f} {s['frames']:7d} {shown:>6s} "
                          f"{s['fps']:5.1f} {s['latency_ms']!s:>11s} {s.get('latency_p95_ms')!s:>7s} "
                          f"{rss_mb(proc.pid):7.1f}", flush=True)  # fmt: skip
                    if time.monotonic() - begin >= args.seconds:
                        break
                if args.screenshot:
                    page.screenshot(path=args.screenshot)
                browser.close()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
