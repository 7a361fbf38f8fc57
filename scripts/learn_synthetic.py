"""python scripts/learn_synthetic.py [--minutes 20] [--target-ap 0.6] [key=value ...]

Generalisation benchmark: runs the training recipe ``python -m train experiment=synthetic`` (from
scratch, no download) as it is, in a fresh run directory, and prints the COCO keypoint AP of the
held-out synthetic val images (decoded by the project's decoder, scored by pycocotools) after each
epoch against the minutes since launch, until the recipe ends or the time budget runs out (the run
is stopped then; its last.pth holds the last finished epoch). Extra ``key=value`` arguments go to
the training command (e.g. ``epochs=12`` for a shorter trial).

Minutes are wall-clock from launch (data generation on first use, model build, every validation
included). The machine's load is printed at the start and the end: on a shared machine the wall
time grows with other work, so the CPU time the run used (training process and its loader
workers) is printed too, divided by the number of cores: ``cpu/cores`` minutes are what the run
needs with the machine to itself (a little more, since contention also costs cache misses).
``--clock cpu`` applies the budget to them instead of the wall clock. Ends with one JSON line:
``ap`` (last val AP within the budget), ``best_ap``, ``minutes`` (the budget's clock),
``reached_target`` (that AP >= target), both clocks and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EPOCH_LINE = re.compile(r"epoch (\d+): .*?\bval_ap=([0-9.eE+-]+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, its waited-for children and its live children (Linux /proc)."""

    def stat(p: int) -> list[str]:
        text = Path(f"/proc/{p}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()  # fields after "pid (comm)"

    try:
        f = stat(pid)
        total = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += sum(int(x) for x in stat(int(child))[11:13])
    except (OSError, ValueError):
        return float("nan")
    return total / CLOCK_TICKS


def lines_of(stream) -> queue.Queue:
    """A queue fed with ``stream``'s lines by a thread (None at the end), so the budget can be
    checked every second and not only when the training prints (one line per epoch)."""
    q: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def stop(proc: subprocess.Popen) -> int:
    """SIGINT (the run keeps its last finished epoch), SIGTERM if it has not ended in 60 s."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        return proc.wait()


def watch(
    proc: subprocess.Popen, args: argparse.Namespace, t0: float, cores: int
) -> tuple[list[dict], bool]:
    """Each epoch's val AP with both clocks, printed as it comes, until the run ends or the
    budget is spent; returns the rows and whether the budget stopped it."""
    history: list[dict] = []
    lines = lines_of(proc.stdout)
    while True:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            line = ""
        if line is None:
            return history, False
        wall = (time.perf_counter() - t0) / 60
        cpu = cpu_seconds(proc.pid) / 60 / cores
        m = EPOCH_LINE.search(line)
        if m:
            row = {"epoch": int(m[1]), "wall_minutes": round(wall, 2)}
            row.update(cpu_minutes_per_core=round(cpu, 2), ap=float(m[2]))
            history.append(row)
            print(
                f"epoch {row['epoch']:3d}  wall {wall:6.2f} min  "
                f"cpu/cores {cpu:6.2f} min  val AP {row['ap']:.3f}  (load {load()})",
                flush=True,
            )
        elif "Error" in line or "Traceback" in line:
            print(line, end="", flush=True)
        if (wall if args.clock == "wall" else cpu) >= args.minutes:
            return history, True


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="time budget (wall clock)")
    ap.add_argument("--target-ap", type=float, default=0.6)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="budget in wall minutes, or in CPU minutes / cores (a machine to itself)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "learn_synthetic")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for python -m train")
    args = ap.parse_args()
    out = args.out.resolve()
    if (out / "last.pth").exists():
        sys.exit(f"{out} already holds a run; remove it or pass --out DIR")
    cmd = [sys.executable, "-m", "train", "experiment=synthetic", f"out_dir={out}", "resume=null"]
    cmd += args.overrides
    cores = os.cpu_count() or 1
    load_start = load()
    print(f"$ {' '.join(cmd[1:])}\nload average at start: {load_start} ({cores} cores)", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # each epoch's line as soon as it is logged
    )
    key = "wall_minutes" if args.clock == "wall" else "cpu_minutes_per_core"
    history, timed_out = watch(proc, args, t0, cores)
    rc = stop(proc) if timed_out else proc.wait()
    if rc and not timed_out:
        sys.exit(f"training failed (exit {rc}); rerun the command above to see why")
    within = [h for h in history if h[key] <= args.minutes]
    ap_last = within[-1]["ap"] if within else 0.0
    best = max((h["ap"] for h in within), default=0.0)
    first = next((h for h in within if h["ap"] >= args.target_ap), None)
    summary = {
        "reached_target": ap_last >= args.target_ap,
        "target_ap": args.target_ap,
        "ap": round(ap_last, 4),
        "best_ap": round(best, 4),
        "minutes": within[-1][key] if within else None,
        "clock": args.clock,
        "minutes_to_target": first[key] if first else None,
        "budget_minutes": args.minutes,
        "stopped_at_budget": timed_out,
        "epochs": len(within),
        "wall_minutes": within[-1]["wall_minutes"] if within else None,
        "cpu_minutes_per_core": within[-1]["cpu_minutes_per_core"] if within else None,
        "load_start_end": [load_start, load()],
        "out_dir": str(out),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
