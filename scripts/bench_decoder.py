"""python scripts/bench_decoder.py -- the two decoders on oracle maps of coco-mini: AP and speed.

For each coco-mini annotation file (train and val, or --annotations), renders the ground-truth
(oracle) maps of every image at 56x56 (224x224 input) and 120x160 (480x640 input) and prints:

- oracle AP (pycocotools) of the fast decoder, and whether the reference decoder gives the same
  skeletons on every image;
- decode time per image over the images WITH people (empty maps take ~10 us and say nothing):
  median and p95 of the fast decoder, median of the reference, and their ratio;
- the time on random-noise maps (heatmap uniform in [0, 1], PAF in [-1, 1]: the worst case,
  bounded by ``max_peaks_per_part``);
- oracle AP with Gaussian noise (std 0.05) on both maps at 56x56;
- the fast decoder's first-call time: compiling into an empty cache (a fresh process with its own
  NUMBA_CACHE_DIR), and loading the compiled code from the on-disk cache.

Times are thread CPU time of one thread (numba, numpy and BLAS single-threaded), the fastest of
--repeat runs per image (the decoders are deterministic, extra runs only remove scheduler noise).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # scripts run from anywhere; the toolkit is not installed

from coco_mini import DEFAULT_ANN, SIZES  # noqa: E402

from datasets.topology import Topology  # noqa: E402
from inference.cocoeval import evaluate, load_coco, person_category, skeletons_to_coco  # noqa: E402
from inference.decoder import OpenPoseDecoder, ReferenceDecoder  # noqa: E402
from inference.oracle import decode_image, iter_oracle  # noqa: E402

GOALS_US = {"56x56": 28.0, "120x160": 90.0}  # median over images with people, one thread
NOISE_GOAL_MS = 10.0
FIRST_CALL = (
    "import time, numpy as np; from inference.decoder import OpenPoseDecoder; "
    "from datasets.topology import Topology; d = OpenPoseDecoder(Topology.named('coco18')); "
    "h = np.zeros((18, 8, 8), np.float32); p = np.zeros((42, 8, 8), np.float32); "
    "t = time.perf_counter(); d(h, p); print(time.perf_counter() - t)"
)


def cpu_us(fn, *args, repeat: int = 1, **kwargs) -> float:
    """Fastest of ``repeat`` calls, in us of this thread's CPU time."""
    best = np.inf
    for _ in range(repeat):
        t0 = time.thread_time_ns()
        fn(*args, **kwargs)
        best = min(best, (time.thread_time_ns() - t0) / 1e3)
    return best


def first_call_s(cache: str) -> float:
    """Seconds of the fast decoder's first call in a fresh process whose numba cache is
    ``cache`` (empty: it compiles and writes the cache; written: it loads the compiled code)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run(
        [sys.executable, "-c", FIRST_CALL], cwd=REPO, env=env, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(s.keypoints, t.keypoints, equal_nan=True) and s.score == t.score
        for s, t in zip(a, b, strict=True)
    )


def bench_file(ann: Path, repeat: int, ref_repeat: int) -> list[tuple]:
    """One row per map size: AP, identical, people images, fast median/p95, ref median."""
    gt = load_coco(ann)
    topo, cat = Topology.named("coco18"), person_category(gt)
    fast, ref = OpenPoseDecoder(topo), ReferenceDecoder(topo)
    people = {a["image_id"] for a in gt.dataset["annotations"] if a.get("num_keypoints", 0) > 0}
    rows = []
    for name, input_hw in SIZES.items():
        results, t_fast, t_ref, identical = [], [], [], 0
        samples = list(iter_oracle(gt, topo, cat, input_hw))
        for s in samples:
            sk = decode_image(fast, s.heatmap, s.paf, s.orig_hw, s.matrix, input_hw)
            results += skeletons_to_coco(sk, s.image_id, topo, cat)
            identical += same(
                sk, decode_image(ref, s.heatmap, s.paf, s.orig_hw, s.matrix, input_hw)
            )
            if s.image_id in people:
                scale = list(s.orig_hw)
                t_fast.append(cpu_us(fast, s.heatmap, s.paf, output_scale=scale, repeat=repeat))
                t_ref.append(cpu_us(ref, s.heatmap, s.paf, output_scale=scale, repeat=ref_repeat))
        ap = evaluate(gt, results, verbose=False)["AP"]
        rows.append((ann.stem, name, ap, f"{identical}/{len(samples)}", len(t_fast),
                     np.median(t_fast), np.percentile(t_fast, 95), np.median(t_ref)))  # fmt: skip
    return rows


def noise_ap(ann: Path, std: float) -> float:
    gt = load_coco(ann)
    topo, cat = Topology.named("coco18"), person_category(gt)
    dec, results = OpenPoseDecoder(topo), []
    for s in iter_oracle(gt, topo, cat, SIZES["56x56"], noise=std):
        sk = decode_image(dec, s.heatmap, s.paf, s.orig_hw, s.matrix, SIZES["56x56"])
        results += skeletons_to_coco(sk, s.image_id, topo, cat)
    return evaluate(gt, results, verbose=False)["AP"]


def noise_maps(n: int) -> list[tuple[str, float, float]]:
    """(size, median fast ms, reference ms) on random-noise maps."""
    topo, rng, out = Topology.named("coco18"), np.random.default_rng(0), []
    fast, ref = OpenPoseDecoder(topo), ReferenceDecoder(topo)
    for name, (ih, iw) in SIZES.items():
        maps = [
            (rng.uniform(0, 1, (18, ih // 4, iw // 4)).astype(np.float32),
             rng.uniform(-1, 1, (42, ih // 4, iw // 4)).astype(np.float32))
            for _ in range(n)
        ]  # fmt: skip
        fast(*maps[0])  # loaded (or compiled) before timing, also when no file was decoded
        t = [cpu_us(fast, h, p) / 1e3 for h, p in maps]
        out.append((name, float(np.median(t)), max(t), cpu_us(ref, *maps[0]) / 1e3))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", type=Path, nargs="*", default=DEFAULT_ANN)
    ap.add_argument("--repeat", type=int, default=5, help="fast decodes per image; fastest counts")
    ap.add_argument("--ref-repeat", type=int, default=1, help="reference decodes per image")
    ap.add_argument("--noise-maps", type=int, default=5, help="random-noise maps per size")
    ap.add_argument("--no-compile", action="store_true", help="skip the first-call timings")
    args = ap.parse_args(argv)
    missing = [str(a) for a in args.annotations if not a.is_file()]
    if missing:
        print(f"annotations not found: {missing}", file=sys.stderr)
        return 2
    if not args.no_compile:
        with tempfile.TemporaryDirectory() as cache:  # the same cache: written, then read
            print(f"first call, compiling into an empty cache: {first_call_s(cache):.1f} s")
            print(f"first call, compiled code from the disk cache: {first_call_s(cache):.2f} s")
    print(f"decoder parameters: {OpenPoseDecoder(Topology.named('coco18')).params}\n")
    print("| file | maps | oracle AP | fast == reference | images with people | fast median "
          "| fast p95 | reference median | reference / fast |")  # fmt: skip
    print("| --- " * 9 + "|")
    rows = [r for ann in args.annotations for r in bench_file(ann, args.repeat, args.ref_repeat)]
    for f, name, ap_, ident, n, med, p95, ref in rows:
        print(f"| {f} | {name} | {ap_:.3f} | {ident} | {n} | {med:.1f} us | {p95:.1f} us "
              f"| {ref:.0f} us | {ref / med:.0f}x |")  # fmt: skip
    print(
        "\n| random-noise maps | fast median | fast worst | reference |\n| --- | --- | --- | --- |"
    )
    noise = noise_maps(args.noise_maps)
    for name, med, worst, ref in noise:
        print(f"| {name} | {med:.1f} ms | {worst:.1f} ms | {ref:.0f} ms |")
    print("\noracle AP with Gaussian noise 0.05 on both maps, 56x56:")
    for ann in args.annotations:
        print(f"  {ann.stem}: {noise_ap(ann, 0.05):.3f}")
    print("\ngoals (medians over images with people; p95 <= 2x median; noise maps <= 10 ms):")
    for f, name, _, _, _, med, p95, _ in rows:
        print(f"  {f} {name}: median {med:.1f} us {'<=' if med <= GOALS_US[name] else '>'} "
              f"{GOALS_US[name]:.0f}; p95 {p95 / med:.1f}x median")  # fmt: skip
    for name, _, worst, _ in noise:
        print(f"  noise {name}: worst {worst:.1f} ms {'<=' if worst <= NOISE_GOAL_MS else '>'} 10")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
