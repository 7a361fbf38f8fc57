"""python scripts/bench_inference.py [--ckpt PATH] [--size 224] [--threads 2] [--rounds 15]

CPU inference benchmark, all paths measured in the same run on the same input:

* per-image network latency (batch 1) of torch eager fp32 (the baseline), torch eager bf16
  (autocast; only where the CPU has avx512_bf16 or AMX), ONNX Runtime fp32 as exported without
  the graph rewrite (ConvTranspose nodes), ONNX Runtime fp32 as exported, and ONNX Runtime INT8
  (static QDQ quantisation calibrated on real coco-mini train images). Paths run in interleaved
  rounds (so machine load hits all alike); the best round is reported with the median beside it;
* each path's maximum output difference to torch fp32 on real images, and whether its decoded
  skeletons match fp32's (same parts, every keypoint within ``--tol`` input pixels);
* end-to-end predict throughput (read, pre-process, network, decode) of the fastest path and of
  torch fp32, with the decode share, over coco-mini val images.

The model is the checkpoint's (``--ckpt``), run at ``--size`` (the network is fully
convolutional), or a randomly initialised resnet18_baseline_att when none is given (then the
skeleton comparison is not meaningful: random maps decode to noise).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
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


def latency(paths: dict[str, Runtime], x: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each path, in interleaved rounds after two warm-up calls each."""
    for rt in paths.values():
        rt(x)
        rt(x)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, rt in paths.items():
            t = time.perf_counter()
            rt(x)
            times[name].append(time.perf_counter() - t)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint (.pth); default: random resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2, help="threads for torch and onnxruntime")
    ap.add_argument("--rounds", type=int, default=15)
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
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    decoder = yaml.safe_load((REPO / "conf" / "decoder" / "default.yaml").read_text())
    decoder = {k: v for k, v in decoder.items() if v is not None}
    model, info, source = load_model(args.ckpt, args.size, decoder)
    flags = cpu_flags()
    has_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    print(f"model: {source}; input {args.size}x{args.size}; threads {args.threads}")
    print(
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
        f"bf16: {'avx512_bf16' if 'avx512_bf16' in flags else '-'} "
        f"{'amx' if 'amx_bf16' in flags else ''}; vnni: {'avx512_vnni' in flags}"
    )
    import onnxruntime as ort

    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}")

    folders = args.images
    if folders is None:
        folders = [str(COCO_MINI / "val2017"), str(REPO / "data" / "synthetic" / "val")]
    folders = [f for f in folders if Path(f).is_dir() and list_images(f)]
    if not folders:
        raise SystemExit(f"no image folders found among {args.images or folders}")
    compared = {p.name for f in folders for p in list_images(f)[: args.count]}

    tmp = Path(tempfile.mkdtemp(prefix="bench_inference."))
    t = time.perf_counter()
    plain = export_onnx(model, info, tmp / "plain.onnx", deconv_as_conv=False)
    fast = export_onnx(model, info, tmp / "model.onnx", deconv_as_conv=True)
    # calibration does not see the compared images unless told (an overfit checkpoint's own
    # training images are its whole distribution: calibrate on them with --calib-overlap)
    exclude = set() if args.calib_overlap else compared
    int8 = quantize_int8(
        fast,
        tmp / "model.int8.onnx",
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

    paths: dict[str, Runtime] = {"torch eager fp32": EagerRuntime(model, info)}
    if has_bf16:
        paths["torch eager bf16"] = EagerRuntime(model, info, bf16=True)
    paths["onnxruntime fp32, ConvTranspose graph"] = OnnxRuntime(plain, threads=args.threads)
    paths["onnxruntime fp32"] = OnnxRuntime(fast, threads=args.threads)
    paths["onnxruntime int8 QDQ"] = OnnxRuntime(int8, threads=args.threads)

    # ---- latency on one real image
    first = list_images(folders[0])[0]
    x = paths["torch eager fp32"].preprocess(read_rgb(first))[0][None]  # (1, 3, H, W)
    times = latency(paths, x, args.rounds)
    base = min(times["torch eager fp32"])

    # ---- output differences and skeletons vs fp32, per image folder
    dec = paths["torch eager fp32"].make_decoder(output_scale=list(info.input_size))
    quality: dict[str, dict[str, float]] = {
        n: {"heatmap": 0.0, "paf": 0.0, "ref": 0, "match": 0, "found": 0} for n in paths
    }
    per_folder = []
    for folder in folders:
        files = list_images(folder)[: args.count]
        xs = np.stack([paths["torch eager fp32"].preprocess(read_rgb(f))[0] for f in files])
        outs = {n: rt(xs) for n, rt in paths.items()}
        ref = outs["torch eager fp32"]
        ref_sk = dec(ref["heatmap"], ref["part_affinity_fields"], ref["maxpool_heatmap"])
        n_ref = sum(len(s) for s in ref_sk)
        per_folder.append((folder, len(files), n_ref))
        for n, o in outs.items():
            q = quality[n]
            q["heatmap"] = max(q["heatmap"], float(np.abs(o["heatmap"] - ref["heatmap"]).max()))
            q["paf"] = max(
                q["paf"],
                float(np.abs(o["part_affinity_fields"] - ref["part_affinity_fields"]).max()),
            )
            sk = dec(o["heatmap"], o["part_affinity_fields"], o["maxpool_heatmap"])
            q["ref"] += n_ref
            q["found"] += sum(len(s) for s in sk)
            q["match"] += sum(
                match_skeletons(r, g, args.tol) for r, g in zip(ref_sk, sk, strict=True)
            )

    print()
    print(f"network latency, batch 1, best of {args.rounds} interleaved rounds (median):")
    print(
        f"{'path':40s} {'best ms':>8s} {'median':>8s} {'speedup':>8s} {'max|d| heat':>12s} "
        f"{'max|d| paf':>11s}  skeletons = fp32"
    )
    for n in paths:
        b, med = min(times[n]) * 1e3, statistics.median(times[n]) * 1e3
        q = quality[n]
        print(
            f"{n:40s} {b:8.1f} {med:8.1f} {base * 1e3 / b:7.2f}x {q['heatmap']:12.2e} "
            f"{q['paf']:11.2e}  {q['match']}/{q['ref']} (decoded {q['found']})"
        )
    for folder, n_img, n_ref in per_folder:
        print(f"  compared on {n_img} images of {folder}: fp32 decodes {n_ref} skeletons")
    fastest = min((n for n in paths), key=lambda n: min(times[n]))
    print(f"fastest: {fastest}, {base / min(times[fastest]):.2f}x torch eager fp32")

    # ---- end to end over real images: read, pre-process, network, decode
    print()
    files = list_images(args.e2e)
    print(
        f"end to end (read, pre-process, network, decode), batch 1, {len(files)} images of "
        f"{args.e2e}:"
    )
    for n in dict.fromkeys([fastest, "torch eager fp32"]):
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


if __name__ == "__main__":
    main()
