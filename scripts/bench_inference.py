"""python scripts/bench_inference.py [--ckpt PATH] [--size 224] [--threads 2] [--rounds 40] [--reverse]

CPU inference benchmark, all paths measured on the same input:

* per-image network latency (batch 1) of torch eager fp32 (the baseline), torch eager bf16
  (autocast; only where the CPU has avx512_bf16 or AMX), ONNX Runtime fp32 as exported without
  the graph rewrite (ConvTranspose nodes), ONNX Runtime fp32 as exported, and ONNX Runtime INT8
  (static QDQ quantisation calibrated on real coco-mini train images). Each path is timed in a
  process of its own (``--rounds`` calls after warm-up, best reported with the median beside it),
  one after the other: no path inherits another's spinning threads or warm caches, so the figures
  do not depend on the order (``--reverse`` runs them in the opposite order to check);
* each path's fp32-equivalent GFLOP/s (2 x the model's multiply-accumulates per image / latency)
  and its share of this CPU's *measured* fp32 peak for the threads used: a large fp32 matrix
  product (torch.mm, 2048x2048, best of 5) in a process of its own. The nominal peak (threads x
  rated clock x fp32 FLOPs per cycle per core: AVX-512 FMA 16 lanes x 2 x the FMA units) is
  printed beside it: the clock a cloud CPU reports is not the one it runs at;
* each path's maximum output difference to torch fp32 on real images, and whether its decoded
  skeletons match fp32's (same parts, every keypoint within ``--tol`` input pixels);
* end-to-end predict throughput (read, pre-process, network, decode) of the fastest path and of
  torch fp32, with the decode share, over coco-mini val images. ONNX Runtime sessions in this
  process are made with thread spinning off (``session.intra_op.allow_spinning=0``) so that torch,
  measured after them, gets the cores.

The model is the checkpoint's (``--ckpt``), run at ``--size`` (the network is fully
convolutional), or a randomly initialised resnet18_baseline_att when none is given (then the
skeleton comparison is not meaningful: random maps decode to noise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datasets.files import list_images  # noqa: E402
from datasets.images import read_rgb  # noqa: E402
from datasets.topology import Topology  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from export.quantize import quantize_int8  # noqa: E402
from inference.runtime import OnnxRuntime, Runtime  # noqa: E402
from inference.stream import Frame, Pipeline  # noqa: E402
from models.build import count_macs  # noqa: E402
from models.contract import ModelInfo  # noqa: E402

COCO_MINI = Path(os.environ.get("COCO_MINI", REPO.parent / "shared" / "data" / "coco-mini"))


class EagerRuntime(Runtime):
    """A torch module as a Runtime (fp32, or bf16 autocast), batch on CPU."""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, bf16: bool = False) -> None:
        self.model, self.info, self.bf16 = model.eval(), info, bf16
        self.backend = "torch eager bf16" if bf16 else "torch eager fp32"

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        k = self.info.maxpool_kernel
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            heat, paf = self.model(torch.from_numpy(batch))  # (B, K, h, w), (B, 2E, h, w)
            heat, paf = heat.float(), paf.float()
            pooled = torch.nn.functional.max_pool2d(heat, k, 1, k // 2)
        return {
            "heatmap": heat.numpy(),
            "part_affinity_fields": paf.numpy(),
            "maxpool_heatmap": pooled.numpy(),
        }


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def load_model(
    ckpt: str | None, size: int, decoder: dict
) -> tuple[torch.nn.Module, ModelInfo, str]:
    from models.build import build_from_checkpoint, build_model

    if ckpt:
        model, config = build_from_checkpoint(ckpt)
        config = dict(config, data=dict(config["data"], input_size=[size, size]))
        info = ModelInfo.from_checkpoint_config(config, stride=model.stride, decoder=decoder)
        return model, info, f"checkpoint {ckpt}"
    cfg = yaml.safe_load((REPO / "conf" / "model" / "resnet18_baseline_att.yaml").read_text())
    cfg["pretrained"] = False
    topo = Topology.named("coco18")
    torch.manual_seed(0)
    model = build_model(cfg, topo).eval()
    config = {"topology": topo.to_dict(), "model": cfg, "data": {"input_size": [size, size]}}
    info = ModelInfo.from_checkpoint_config(config, stride=model.stride, decoder=decoder)
    return model, info, "randomly initialised resnet18_baseline_att (no checkpoint)"


def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (vendor_id, cpu family, cpu MHz, flags...)."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in block.splitlines())}


def fp32_peak(threads: int, fma_units: int | None) -> tuple[float, str]:
    """fp32 GFLOP/s peak of ``threads`` cores, and how it was derived."""
    info = cpu_info()
    flags = set(info.get("flags", "").split())
    mhz = float(info.get("cpu MHz", "nan"))
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in lscpu.splitlines():  # the rated maximum, where the hypervisor reports one
        if line.startswith("CPU max MHz:"):
            mhz = float(line.split(":")[1])
    lanes = 16 if "avx512f" in flags else 8  # fp32 lanes of one vector FMA (512 / 256 bits)
    if fma_units is None:
        # Zen 4 (AMD family 25) runs a 512-bit FMA as two halves on its two 256-bit FMA pipes:
        # one 512-bit FMA per cycle; Intel's AVX-512 server cores have two 512-bit FMA ports;
        # AVX2 cores two 256-bit ones
        zen4 = info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25"
        fma_units = 1 if (zen4 and lanes == 16) else 2
    per_cycle = lanes * 2 * fma_units
    peak = threads * mhz / 1e3 * per_cycle
    how = (
        f"fp32 peak {peak:.0f} GFLOP/s = {threads} cores x {mhz / 1e3:.2f} GHz x {per_cycle} "
        f"FLOPs/cycle ({lanes} lanes x 2 (FMA) x {fma_units} FMA/cycle"
        f"{', AVX-512' if lanes == 16 else ', AVX2'}; --fma-units to change)"
    )
    return peak, how


ONNX_FILES = {
    "onnxruntime fp32, ConvTranspose graph": "plain.onnx",
    "onnxruntime fp32": "model.onnx",
    "onnxruntime int8 QDQ": "model.int8.onnx",
}


SGEMM = (
    "import sys, time, torch; torch.set_num_threads(int(sys.argv[1])); n = 2048; "
    "a, b = torch.randn(n, n), torch.randn(n, n); torch.mm(a, b); best = 1e9\n"
    "for _ in range(5):\n    t = time.perf_counter(); torch.mm(a, b); "
    "best = min(best, time.perf_counter() - t)\nprint(2 * n**3 / best / 1e9)"
)


def measured_peak(threads: int) -> float:
    """fp32 GFLOP/s of a 2048x2048 torch.mm on ``threads`` threads (a process of its own)."""
    out = subprocess.run(
        [sys.executable, "-c", SGEMM, str(threads)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def make_path(name: str, model: torch.nn.Module, info: ModelInfo, work: Path, threads: int):
    """The runtime of one path; ONNX Runtime sessions with their threads' spinning off."""
    if name.startswith("torch eager"):
        return EagerRuntime(model, info, bf16=name.endswith("bf16"))
    return OnnxRuntime(work / ONNX_FILES[name], threads=threads, info=info, spin=False)


def child_latency(args: argparse.Namespace, model, info: ModelInfo) -> None:
    """``--child NAME``: time one path in this fresh process; print its seconds per call (JSON)."""
    work = Path(args.work)
    rt = make_path(args.child, model, info, work, args.threads)
    x = np.load(work / "x.npy")
    for _ in range(3):  # warm-up: allocations, oneDNN primitive creation, ORT arena
        rt(x)
    times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        rt(x)
        times.append(time.perf_counter() - t)
    print(json.dumps({"times": times}))


def isolated_latency(names: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per call of each path, each in a process of its own, in ``names`` order."""
    times = {}
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, "--work", args.work]
        cmd += ["--size", str(args.size), "--threads", str(args.threads)]
        cmd += ["--rounds", str(args.rounds)] + (["--ckpt", args.ckpt] if args.ckpt else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"timing {name!r} failed:\n{out.stderr[-2000:]}")
        times[name] = json.loads(out.stdout.strip().splitlines()[-1])["times"]
        print(f"  timed {name} ({len(times[name])} calls)", flush=True)
    return times


def match_skeletons(ref: list, got: list, tol: float) -> int:
    """Skeletons of ``got`` equal to one of ``ref``: same parts, each keypoint within ``tol``."""
    used: set[int] = set()
    matched = 0
    for r in ref:
        present = np.isfinite(r.keypoints[:, 0])
        best, best_d = None, np.inf
        for j, g in enumerate(got):
            if j in used or not np.array_equal(np.isfinite(g.keypoints[:, 0]), present):
                continue
            d = np.abs(g.keypoints[present, :2] - r.keypoints[present, :2]).max(initial=0.0)
            if d < best_d:
                best, best_d = j, d
        if best is not None and best_d <= tol:
            used.add(best)
            matched += 1
    return matched


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint (.pth); default: random resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2, help="threads for torch and onnxruntime")
    # 15 calls left torch eager's best 13-17% apart between the two orders on this 2-core VM,
    # 40 within 5% (ONNX Runtime: within 3% either way)
    ap.add_argument("--rounds", type=int, default=40, help="timed calls per path")
    ap.add_argument("--reverse", action="store_true", help="time the paths in reverse order")
    ap.add_argument("--fma-units", type=int, default=None, help="512/256-bit FMAs per cycle")
    ap.add_argument(
        "--images",
        nargs="*",
        default=None,
        help="folders of images for output differences and skeletons "
        "(default: coco-mini val2017, and data/synthetic/val when present)",
    )
    ap.add_argument("--count", type=int, default=16, help="images per folder")
    ap.add_argument("--calib", default=str(COCO_MINI / "train2017"), help="INT8 calibration images")
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--tol", type=float, default=2.0, help="keypoint tolerance, input pixels")
    ap.add_argument(
        "--calib-overlap",
        action="store_true",
        help="let calibration use the compared images (an overfit model's own set)",
    )
    ap.add_argument(
        "--int8-fp32-outputs",
        action="store_true",
        help="keep the two output 1x1 convolutions in fp32 in the INT8 model",
    )
    ap.add_argument(
        "--e2e",
        default=str(COCO_MINI / "val2017"),
        help="images for the end-to-end predict throughput",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one path's timing process
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    return ap.parse_args()


def export_all(model, info: ModelInfo, args: argparse.Namespace, compared: set[str]) -> None:
    """The fp32 (with and without the ConvTranspose rewrite) and INT8 graphs, into args.work."""
    work = Path(args.work)
    t = time.perf_counter()
    export_onnx(
        model,
        info,
        work / ONNX_FILES["onnxruntime fp32, ConvTranspose graph"],
        deconv_as_conv=False,
    )
    fast = export_onnx(model, info, work / ONNX_FILES["onnxruntime fp32"], deconv_as_conv=True)
    # calibration does not see the compared images unless told (an overfit checkpoint's own
    # training images are its whole distribution: calibrate on them with --calib-overlap)
    exclude = set() if args.calib_overlap else compared
    quantize_int8(
        fast,
        work / ONNX_FILES["onnxruntime int8 QDQ"],
        [args.calib],
        count=args.calib_count,
        exclude_images=exclude,
        exclude_outputs=args.int8_fp32_outputs,
    )
    calib_names = [p.name for p in list_images(args.calib) if p.name not in exclude]
    calib_names = calib_names[: args.calib_count]
    overlap = len(set(calib_names) & compared)
    print(
        f"exported fp32 (x2) and quantised INT8 ({len(calib_names)} calibration images from "
        f"{args.calib}, {overlap} of them among the compared images"
        f"{'; output convolutions kept fp32' if args.int8_fp32_outputs else ''}) in "
        f"{time.perf_counter() - t:.0f} s"
    )


def compare_outputs(paths: dict[str, Runtime], folders: list[str], info, args) -> tuple:
    """Max output differences to torch fp32 and skeleton agreement per path, over the folders."""
    ref_rt = paths["torch eager fp32"]
    dec = ref_rt.make_decoder(output_scale=list(info.input_size))
    quality = {n: {"heatmap": 0.0, "paf": 0.0, "ref": 0, "match": 0, "found": 0} for n in paths}
    per_folder = []
    for folder in folders:
        files = list_images(folder)[: args.count]
        xs = np.stack([ref_rt.preprocess(read_rgb(f))[0] for f in files])
        outs = {n: rt(xs) for n, rt in paths.items()}
        ref = outs["torch eager fp32"]
        ref_sk = dec(ref["heatmap"], ref["part_affinity_fields"], ref["maxpool_heatmap"])
        n_ref = sum(len(s) for s in ref_sk)
        per_folder.append((folder, len(files), n_ref))
        for n, o in outs.items():
            q = quality[n]
            for key, out in (("heatmap", "heatmap"), ("paf", "part_affinity_fields")):
                q[key] = max(q[key], float(np.abs(o[out] - ref[out]).max()))
            sk = dec(o["heatmap"], o["part_affinity_fields"], o["maxpool_heatmap"])
            q["ref"] += n_ref
            q["found"] += sum(len(s) for s in sk)
            q["match"] += sum(
                match_skeletons(r, g, args.tol) for r, g in zip(ref_sk, sk, strict=True)
            )
    return quality, per_folder


def report_latency(times, quality, per_folder, flops: float, peak: float, args) -> str:
    """The latency table; returns the fastest path's name."""
    base = min(times["torch eager fp32"])
    print(
        f"\nnetwork latency, batch 1, best of {args.rounds} calls in a process per path (median):"
    )
    print(
        f"{'path':40s} {'best ms':>8s} {'median':>8s} {'speedup':>8s} {'GFLOP/s':>8s} {'sgemm':>6s}"
        f" {'max|d| heat':>12s} {'max|d| paf':>11s}  skeletons = fp32"
    )
    for n in times:
        b, med = min(times[n]), statistics.median(times[n])
        q = quality[n]
        print(
            f"{n:40s} {b * 1e3:8.1f} {med * 1e3:8.1f} {base / b:7.2f}x {flops / b / 1e9:8.1f} "
            f"{flops / b / 1e9 / peak:6.1%} {q['heatmap']:12.2e} {q['paf']:11.2e}  "
            f"{q['match']}/{q['ref']} (decoded {q['found']})"
        )
    for folder, n_img, n_ref in per_folder:
        print(f"  compared on {n_img} images of {folder}: fp32 decodes {n_ref} skeletons")
    fastest = min(times, key=lambda n: min(times[n]))
    print(f"fastest: {fastest}, {base / min(times[fastest]):.2f}x torch eager fp32")
    return fastest


def end_to_end(paths: dict[str, Runtime], names: list[str], folder: str) -> None:
    files = list_images(folder)
    print(
        f"\nend to end (read, pre-process, network, decode), batch 1, {len(files)} images of {folder}:"
    )
    for n in dict.fromkeys(names):
        pipe = Pipeline(paths[n])
        begin = time.perf_counter()
        for i, f in enumerate(files):
            start = time.perf_counter()
            image = read_rgb(f)
            pipe.timer.add("read", start)
            pipe([Frame(image, i, i, f.stem)])
        s = pipe.timer.summary(len(files), time.perf_counter() - begin)
        share = ", ".join(f"{k} {v:.1%}" for k, v in s["share"].items())
        print(f"  {n:38s} {s['fps']:6.1f} images/s ({1e3 / s['fps']:.1f} ms/image): {share}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    decoder = yaml.safe_load((REPO / "conf" / "decoder" / "default.yaml").read_text())
    decoder = {k: v for k, v in decoder.items() if v is not None}
    model, info, source = load_model(args.ckpt, args.size, decoder)
    if args.child:
        return child_latency(args, model, info)
    flags = cpu_flags()
    import onnxruntime as ort

    print(f"model: {source}; input {args.size}x{args.size}; threads {args.threads}")
    print(
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
        f"bf16: {'avx512_bf16' if 'avx512_bf16' in flags else '-'} "
        f"{'amx' if 'amx_bf16' in flags else ''}; vnni: {'avx512_vnni' in flags}; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}; load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    threads = min(args.threads, os.cpu_count() or 1)
    nominal, how = fp32_peak(threads, args.fma_units)
    peak = measured_peak(threads)
    flops = 2.0 * count_macs(model, (args.size, args.size))
    print(
        f"measured fp32 peak {peak:.0f} GFLOP/s (torch.mm 2048x2048, {threads} threads; "
        f"{peak / nominal:.0%} of the nominal {how.removeprefix('fp32 peak ')}); the network: "
        f"{flops / 1e9:.2f} GFLOP per image (2 x multiply-accumulates)"
    )

    folders = args.images or [str(COCO_MINI / "val2017"), str(REPO / "data" / "synthetic" / "val")]
    folders = [f for f in folders if Path(f).is_dir() and list_images(f)]
    if not folders:
        raise SystemExit(f"no image folders found among {args.images or folders}")
    compared = {p.name for f in folders for p in list_images(f)[: args.count]}
    args.work = tempfile.mkdtemp(prefix="bench_inference.")
    export_all(model, info, args, compared)
    names = ["torch eager fp32"] + (
        ["torch eager bf16"] if {"avx512_bf16", "amx_bf16"} & flags else []
    )
    names += list(ONNX_FILES)
    paths = {n: make_path(n, model, info, Path(args.work), args.threads) for n in names}
    x = paths["torch eager fp32"].preprocess(read_rgb(list_images(folders[0])[0]))[0][None]
    np.save(Path(args.work) / "x.npy", x)  # (1, 3, H, W): the one input every path is timed on
    order = names[::-1] if args.reverse else names
    print(f"timing, one process per path, in this order: {', '.join(order)}")
    times = isolated_latency(order, args)
    times = {n: times[n] for n in names}  # the table in the usual order
    quality, per_folder = compare_outputs(paths, folders, info, args)
    fastest = report_latency(times, quality, per_folder, flops, peak, args)
    end_to_end(paths, [fastest, "torch eager fp32"], args.e2e)


if __name__ == "__main__":
    main()
