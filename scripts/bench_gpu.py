"""python scripts/bench_gpu.py [--device cuda] [--size 224] [--batch 64] [--windows 4]

Training and inference speed on one device (scripts/gpu_check.sh runs it on a GPU machine):

* training images/s of full steps of ``train.loop.run`` (resnet18_baseline_att from scratch on the
  synthetic set, repeated to fill the run; augmentation and JPEG decoding in loader workers) in
  these variants: fp32; bf16 AMP; bf16 + channels_last; bf16 + channels_last + ``compile=true``;
  bf16 + channels_last with ``data.targets_on_device=true`` (targets rendered from keypoints on
  the device instead of in the workers). Each run logs windows of ``--per-window`` steps; the first
  window (worker start-up, compilation) is dropped and the fastest of the others is reported with
  the median beside it;
* network latency, batch 1, per precision: torch eager fp32, fp16 and bf16 autocast (CUDA), and
  ONNX Runtime fp32 when its CUDA provider is installed.

On a CPU (``--device cpu``, what gpu_check.sh does without a GPU) only fp32 and bf16 run, at the
size and batch given: a check that the code paths work, not a figure to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datasets.topology import Topology  # noqa: E402

VARIANTS = {
    "fp32": ["amp=off", "channels_last=false"],
    "bf16 AMP": ["amp=bf16", "channels_last=false"],
    "bf16 + channels_last": ["amp=bf16", "channels_last=true"],
    "bf16 + channels_last + compile": ["amp=bf16", "channels_last=true", "compile=true"],
    "bf16 + channels_last, targets on device": [
        "amp=bf16",
        "channels_last=true",
        "data.targets_on_device=true",
    ],
}
CPU_VARIANTS = ("fp32", "bf16 AMP")


def train_speed(args: argparse.Namespace, extra: list[str]) -> tuple[float, float]:
    """Best and median images/s over the log windows of one short training run (first dropped)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from torch.utils.data import ConcatDataset

    from datasets import synthetic
    from datasets.coco import build_dataset, collate
    from train.loop import run

    steps = (args.windows + 1) * args.per_window
    overrides = [
        "data=synthetic",
        "model.pretrained=false",
        f"device={args.device}",
        f"data.input_size=[{args.size},{args.size}]",
        f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        "epochs=1",
        f"steps_per_epoch={steps}",
        f"log_every={args.per_window}",
        "image_every=0",
        "val_every=0",
        f"out_dir={tempfile.mkdtemp(prefix='bench_gpu_')}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(
            compose(config_name="train", overrides=overrides), resolve=True
        )
    synthetic.ensure(cfg["data"])
    train_set = build_dataset(cfg, "train", Topology.named("coco18"))
    repeat = -(-steps * args.batch // len(train_set))  # augmented anew each pass
    summary = run(cfg, train_set=ConcatDataset([train_set] * repeat), collate_fn=collate)
    ips = [r["images_per_s"] for r in summary["history"][1:]]
    return max(ips), statistics.median(ips)


def latency(args: argparse.Namespace) -> dict[str, float]:
    """Milliseconds per batch-1 forward of the network, best of ``--rounds``, per precision."""
    import yaml

    from models.build import build_model

    cfg = yaml.safe_load((REPO / "conf" / "model" / "resnet18_baseline_att.yaml").read_text())
    model = build_model(dict(cfg, pretrained=False), Topology.named("coco18")).eval()
    device = torch.device(args.device)
    model.to(device)
    x = torch.rand(1, 3, args.size, args.size, device=device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    if device.type == "cuda":
        dtypes["fp16"] = torch.float16
    out = {}
    for name, dtype in dtypes.items():
        times = []
        with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
            for i in range(args.rounds + 3):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= 3:  # warm-up: cuDNN algorithm search, allocator
                    times.append(time.perf_counter() - t)
        out[f"torch eager {name}"] = min(times) * 1e3
    out.update(_ort_latency(args, model, x))
    return out


def _ort_latency(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor) -> dict:
    import onnxruntime as ort

    if args.device == "cpu" or "CUDAExecutionProvider" not in ort.get_available_providers():
        return {}
    path = Path(tempfile.mkdtemp(prefix="bench_gpu_")) / "model.onnx"
    torch.onnx.export(model.float(), (x.float(),), str(path), input_names=["input"])
    sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    feed = {"input": x.float().cpu().numpy()}
    times = []
    for i in range(args.rounds + 3):
        t = time.perf_counter()
        sess.run(None, feed)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return {"onnxruntime CUDA fp32 (host copies included)": min(times) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--windows", type=int, default=4, help="measured log windows per run")
    ap.add_argument("--per-window", type=int, default=5, help="optimizer steps per window")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--rounds", type=int, default=20, help="latency calls per precision")
    ap.add_argument("--only", nargs="*", default=None, help="training variants to run")
    args = ap.parse_args()
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "-"
    print(
        f"device {args.device} ({gpu}); resnet18_baseline_att from scratch, input {args.size}, "
        f"batch {args.batch}, {args.workers} loader workers; {args.windows} windows of "
        f"{args.per_window} steps after one dropped; torch {torch.__version__}",
        flush=True,
    )
    names = args.only or (list(VARIANTS) if args.device != "cpu" else list(CPU_VARIANTS))
    result: dict[str, dict] = {"train_images_per_s": {}, "latency_ms": {}}
    for name in names:
        best, med = train_speed(args, VARIANTS[name])
        result["train_images_per_s"][name] = round(best, 1)
        print(f"train {name:42s} {best:8.1f} images/s (median {med:.1f})", flush=True)
    for name, ms in latency(args).items():
        result["latency_ms"][name] = round(ms, 3)
        print(f"latency {name:40s} {ms:8.2f} ms (batch 1, best of {args.rounds})", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
