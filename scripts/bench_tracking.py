"""python scripts/bench_tracking.py [--clips 6] [--frames 300] [--objects 4] [--repeat 3] [--model runs/smoke/last.onnx]

Tracking on synthetic walks (``datasets.synthetic_video``): stick people walk across a 640x360
picture at different speeds and heights, cross and hide each other, leave the picture and come
back, and a decoder-like detector reports them with keypoint noise, missing parts, whole misses
and false skeletons. For each setting the script prints

* ID switches per 100 frames per object while an object is followed (it reappears within
  ``max_age`` frames: crossings, occlusions, misses; goal <= 1), and separately the new ids given
  to objects that came back after more than ``max_age`` frames away (out of the picture: no
  appearance model can be asked of a keypoint tracker);
* the tracker's CPU time per frame (``Tracker.update`` on the frame's list of skeletons, as
  the frame loop calls it: stacking them included; One Euro smoothing off except in the
  "smooth" row), and the decoder's on the same scenes (the ground-truth maps of
  the walks at 256x448 input, stride 4, decoded by the run-time decoder ``build_decoder``
  builds, the numba ``inference.decoder.OpenPoseDecoder``: its best case, clean maps with few
  peaks), with their ratio (goal <= 5%); with ``--model``, also both times in the frame
  loop on the rendered walks: that model's network (untimed), its decoder, the tracker on
  the decoded skeletons, each timed per frame;
* how many assignment rounds the tracker's kernel left to scipy's Hungarian algorithm (the
  others were sets of stars, whose Hungarian pairs the kernel finds itself).

Times are thread CPU time on one core, after one untimed call of each (numba compiles or loads
its cache on the first): in the table, the best of ``--repeat`` runs (other jobs on a shared
machine only add time) of a loop over a clip's frames, each frame processed once per run as in
the frame loop: the tracker's loop timed as a whole (a timer call per frame would cost a fifth
of what it measures), the decoder on each frame's maps copied just before (freshly written, as
a network's are). A switch is counted when an object's detection gets
another id than the object's previous detection did.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datasets.synthetic_video import detections, render_video, simulate_walks  # noqa: E402
from datasets.targets import TargetConfig, render_targets  # noqa: E402
from datasets.topology import Topology  # noqa: E402
from inference.decoder import build_decoder  # noqa: E402
from inference.runtime import load_runtime  # noqa: E402
from inference.stream import open_source  # noqa: E402
from inference.track import Tracker, topology_sigmas  # noqa: E402

SIZE = (360, 640)
INPUT = (256, 448)  # network input of the decoder timing (squash: 0.71 x 0.70)


def track_clip(walks, dets, repeat: int = 1, **tracker_args) -> dict[str, float]:
    """Switch counts and tracker CPU seconds of one clip: the best of ``repeat`` runs of the
    tracker's loop over the clip, timed as a whole (a timer call per frame would cost a fifth of
    what it measures)."""
    sigmas = topology_sigmas(Topology.named("coco18"))
    best = np.inf
    for _ in range(repeat):
        tracker = Tracker(sigmas, **tracker_args)
        start = time.thread_time()
        ids = [tracker.update([d for _, d in frame], frame=t) for t, frame in enumerate(dets)]
        best = min(best, time.thread_time() - start)
    out = {"switches": 0, "reentries": 0, "object_frames": 0, "seconds": best}
    last, seen_at = {}, {}
    for t, (frame, frame_ids) in enumerate(zip(dets, ids, strict=True)):
        for (g, _), tid in zip(frame, frame_ids, strict=True):
            if g < 0:
                continue  # a false skeleton
            out["object_frames"] += 1
            if g in last and last[g] != tid:
                out["switches" if t - seen_at[g] <= tracker.max_age else "reentries"] += 1
            last[g], seen_at[g] = tid, t
    out["rounds"], out["hungarian"] = tracker.stats["rounds"], tracker.stats["hungarian"]
    return out


def warm_up_tracker() -> None:
    """Untimed: every numba kernel of the tracker compiles or loads its cache (stars, a round
    left to the Hungarian algorithm, arrays grown, One Euro)."""
    walks = simulate_walks(1, 1, SIZE, seed=99)
    pose = walks.keypoints[0, 0]
    for smooth in (False, True):
        tracker = Tracker(topology_sigmas(Topology.named("coco18")), smooth=smooth)
        for t in range(3):  # three figures a few pixels apart: not stars
            tracker.update([pose + (2 * i + t, 0) for i in range(3)], frame=t)
        tracker.update([pose + (60 * i, 0) for i in range(40)], frame=3)  # more than allocated
        assert tracker.stats["hungarian"] > 0


def decoder_seconds(walks, frames: int, repeat: int = 1) -> float:
    """Decoder CPU seconds per frame on the ground-truth maps of the walks' first frames: the
    best of ``repeat`` runs over the frames, each frame's maps copied just before its decode
    (freshly written, as the network's are in the frame loop; decoding the same maps again at
    once would find them in the CPU's caches)."""
    topo = Topology.named("coco18")
    decoder = build_decoder({}, topo)
    scale = np.array([INPUT[1] / SIZE[1], INPUT[0] / SIZE[0]])
    map_size = (INPUT[0] // 4, INPUT[1] // 4)
    maps = []
    for kps in walks.keypoints[:frames]:
        kp = np.concatenate([kps * scale, np.full((*kps.shape[:2], 1), 2.0)], -1)
        maps.append(render_targets(kp, topo, map_size, TargetConfig()))  # heatmap, PAF
    decoder(*maps[0], output_scale=list(SIZE))  # untimed: numba compiles or loads its cache
    best = np.inf
    for _ in range(repeat):
        total = 0.0
        for heat, paf in maps:
            heat, paf = heat.copy(), paf.copy()
            start = time.thread_time()
            decoder(heat, paf, output_scale=list(SIZE))
            total += time.thread_time() - start
        best = min(best, total)
    return best / len(maps)


def frame_loop_seconds(model: str, walks, frames: int) -> tuple[float, float, int]:
    """Decoder and tracker CPU seconds per frame in the frame loop on the rendered walks: the
    model's network (untimed), its decoder, the tracker on the decoded skeletons; with the
    number of skeletons decoded."""
    runtime = load_runtime(model)
    decoder = runtime.make_decoder(output_scale=list(runtime.info.input_size))
    tracker = Tracker(topology_sigmas(runtime.info.topology))
    dec = trk = 0.0
    found = 0
    with tempfile.TemporaryDirectory() as tmp:
        video = render_video(Path(tmp) / "walks.mp4", walks)
        for i, frame in enumerate(open_source(str(video), max_frames=frames + 1).frames()):
            x, _ = runtime.preprocess(frame.image)
            out = runtime(x[None])  # (1, C, h, w) each
            start = time.thread_time()
            sks = decoder(
                *[out[k][0] for k in ("heatmap", "part_affinity_fields", "maxpool_heatmap")]
            )
            mid = time.thread_time()
            tracker.update([s.keypoints for s in sks], frame=i)
            if i > 0:  # untimed: the first frame compiles or loads numba's caches
                dec, trk, found = (
                    dec + mid - start,
                    trk + time.thread_time() - mid,
                    found + len(sks),
                )
    return dec / frames, trk / frames, found


def run_setting(args, sim: dict, trk: dict) -> dict[str, float]:
    """One row: switch counts, tracker and decoder microseconds per frame, assignment rounds."""
    totals = dict.fromkeys(("switches", "reentries", "object_frames", "seconds"), 0.0)
    totals |= {"rounds": 0, "hungarian": 0}
    dec = []
    for clip in range(args.clips):
        walks = simulate_walks(sim["objects"], args.frames, SIZE, seed=clip)
        noise = {k: v for k, v in sim.items() if k != "objects"}
        got = track_clip(walks, detections(walks, seed=clip, **noise), args.repeat, **trk)
        for k in totals:
            totals[k] += got[k]
        if clip < 2:
            dec.append(decoder_seconds(walks, args.decoder_frames, args.repeat))
    totals["track_us"] = 1e6 * totals["seconds"] / (args.clips * args.frames)
    totals["decode_us"] = 1e6 * float(np.mean(dec))
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--decoder-frames", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3, help="times: the best of this many runs")
    ap.add_argument("--model", default=None, help="also time the decoder on this model's maps")
    args = ap.parse_args()
    settings = [
        ("tracker (max_age 30)", {"objects": args.objects}, {}),
        ("  no motion model", {"objects": args.objects}, {"velocity_momentum": 1.0}),
        ("tracker, 2x noise, 6 objects", {"objects": 6, "noise": 0.04, "false_rate": 0.2}, {}),
        ("tracker, max_age 150", {"objects": args.objects}, {"max_age": 150}),
        ("tracker + One Euro (smooth)", {"objects": args.objects}, {"smooth": True}),
    ]
    decoder = type(build_decoder({}, Topology.named("coco18")))
    print(
        f"{args.clips} clips x {args.frames} frames, {SIZE[1]}x{SIZE[0]}; switches per 100 frames "
        f"per object; decoder {decoder.__module__}.{decoder.__name__}; times: best of {args.repeat}"
    )
    print(
        f"{'setting':30s} {'followed':>9s} {'came back':>10s} {'all':>6s} "
        f"{'track us/frame':>15s} {'decode us/frame':>16s} {'ratio':>6s}"
    )
    warm_up_tracker()
    rows = []
    for name, sim, trk in settings:
        row = run_setting(args, sim, trk)
        per = 100 / max(row["object_frames"], 1)
        print(
            f"{name:30s} {row['switches'] * per:9.2f} {row['reentries'] * per:10.2f} "
            f"{(row['switches'] + row['reentries']) * per:6.2f} {row['track_us']:15.1f} "
            f"{row['decode_us']:16.1f} {row['track_us'] / row['decode_us']:6.1%}"
        )
        rows.append(row)
    rounds, hungarian = sum(r["rounds"] for r in rows), sum(r["hungarian"] for r in rows)
    print(
        f"assignment rounds left to scipy's Hungarian algorithm: {hungarian} of {rounds} "
        f"({hungarian / max(rounds, 1):.1%}); the others were stars, paired in the kernel"
    )
    if args.model:
        walks = simulate_walks(args.objects, args.decoder_frames + 1, SIZE, seed=0)
        dec, trk, found = frame_loop_seconds(args.model, walks, args.decoder_frames)
        print(
            f"frame loop with {Path(args.model).name} on the rendered walks ({found} skeletons in "
            f"{args.decoder_frames} frames): decoder {1e6 * dec:.1f} us/frame, tracker "
            f"{1e6 * trk:.1f} us/frame: {trk / dec:.1%}"
        )


if __name__ == "__main__":
    main()
