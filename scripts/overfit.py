"""python scripts/overfit.py [--images 16] [--size 256] [--minutes 60] [--target-ap 0.8]

Learning proof: train resnet18_baseline_att from scratch (no ImageNet weights) on the first N
labelled images of ../shared/data/coco-mini/train2017 on this CPU until the COCO keypoint AP of
those same images, decoded by the project's OpenPoseDecoder and scored by pycocotools against the
original annotations (17 COCO keypoints; the neck is added for training and dropped for scoring),
reaches the target, or the time budget runs out. Prints steps, minutes and AP as it goes.

The images are fitted to the input without augmentation (evaluation geometry), decoded into
memory once, and trained in mini-batches. The AP that perfect maps would reach on the same
images (the oracle: their own targets decoded) is printed first as the ceiling of this setup:
for the first 16 images it is about 0.76 at 224x224 input (below the 0.8 target: their small
people blur together on 56x56 maps) and 0.84 at 256x256, hence the default size.

Recipe (each part measured on this CPU): bf16 autocast (about 2x faster steps on a CPU with
AVX512-BF16; ``--amp off`` for fp32), ``loss.foreground_weight`` 50 (with trt_pose's plain MSE a
network from scratch sits on the predict-zero plateau: after 130 steps its heatmaps were 0.00 at
the keypoints and AP 0; weighted, they reached 0.9 and AP 0.36 in 190 steps), Adam with a cosine
decay over the time budget.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datasets.coco import CocoKeypoints, collate  # noqa: E402
from datasets.geometry import invert  # noqa: E402
from datasets.targets import TargetConfig  # noqa: E402
from datasets.topology import Topology  # noqa: E402
from inference.cocoeval import evaluate, load_coco, person_category, skeletons_to_coco  # noqa: E402
from inference.decoder import OpenPoseDecoder  # noqa: E402
from models.build import build_model  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.loop import build_optimizer, masked_mse  # noqa: E402

COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"


def coco_ap(
    heat: np.ndarray, paf: np.ndarray, batch: dict, decoder, topo, cat, gt, input_hw
) -> float:
    """AP of decoded maps (B, K, h, w) / (B, 2E, h, w) on the batch's images, original pixels."""
    results = []
    for b in range(heat.shape[0]):
        skels = decoder(heat[b], paf[b], output_scale=list(input_hw))
        back = invert(batch["matrix"][b].numpy())
        results += skeletons_to_coco(skels, int(batch["image_id"][b]), topo, cat, transform=back)
    ids = [int(i) for i in batch["image_id"]]
    return evaluate(gt, results, image_ids=ids, verbose=False)["AP"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco", type=Path, default=COCO_MINI, help="coco-mini folder")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256, help="square input size")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=60.0, help="time budget")
    ap.add_argument("--target-ap", type=float, default=0.8)
    ap.add_argument("--eval-every", type=int, default=20, help="optimizer steps between AP checks")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--fg-weight", type=float, default=50.0, help="loss.foreground_weight")
    ap.add_argument(
        "--schedule",
        choices=["cosine", "constant"],
        default="cosine",
        help="lr over the time budget: cosine decays to 2%% of --lr at --minutes",
    )
    ap.add_argument("--amp", choices=["off", "bf16"], default="bf16", help="CPU autocast dtype")
    ap.add_argument("--save", type=Path, default=None, help="write the final checkpoint here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ann = args.coco / "annotations" / "person_keypoints_train2017.json"
    if not ann.is_file():
        sys.exit(f"coco-mini not found: {ann} (use --coco PATH)")

    import yaml

    topo = Topology.named("coco18")
    model_cfg = yaml.safe_load((REPO / "conf" / "model" / "resnet18_baseline_att.yaml").read_text())
    model_cfg["pretrained"] = False
    decoder_cfg = yaml.safe_load((REPO / "conf" / "decoder" / "default.yaml").read_text())
    torch.manual_seed(0)
    model = build_model(model_cfg, topo)
    targets = TargetConfig(stride=model.stride)
    input_hw = (args.size, args.size)
    ds = CocoKeypoints(ann, args.coco / "train2017", topo, input_hw, targets, augment=None)
    if len(ds) < args.images:
        sys.exit(f"{ann}: only {len(ds)} images with labelled people, asked for {args.images}")
    data = collate([ds[i] for i in range(args.images)])  # the first N labelled images, in memory
    gt = load_coco(ann)
    cat = person_category(gt)
    decoder = OpenPoseDecoder.from_config(decoder_cfg, topo)
    people = sum(len(gt.getAnnIds(imgIds=[int(i)], iscrowd=False)) for i in data["image_id"])
    oracle = coco_ap(
        data["heatmap"].numpy(), data["paf"].numpy(), data, decoder, topo, cat, gt, input_hw
    )
    print(
        f"{args.images} images ({people} person annotations) of {ann.name}, input {args.size}x"
        f"{args.size}, maps {args.size // model.stride}x{args.size // model.stride}, batch "
        f"{args.batch}, Adam lr {args.lr}, torch threads {torch.get_num_threads()}"
    )
    print(f"oracle AP (ground-truth maps decoded): {oracle:.3f}", flush=True)
    if oracle < args.target_ap:
        print(
            f"note: target AP {args.target_ap} is above this setup's ceiling; try a larger --size"
        )

    opt = build_optimizer(
        model.parameters(), {"_target_": "torch.optim.Adam", "_partial_": True, "lr": args.lr}
    )
    n = args.images
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    step, best, ap_now, history = 0, 0.0, 0.0, []
    while True:
        model.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - args.batch + 1, args.batch):
            idx = order[start : start + args.batch]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
                heat, paf = model(data["image"][idx])  # (B, K, h, w), (B, 2E, h, w)
            mask = data["mask"][idx]
            loss = masked_mse(
                heat, data["heatmap"][idx], mask, "heatmap", args.fg_weight
            ) + masked_mse(paf, data["paf"][idx], mask, "paf", args.fg_weight)
            if args.schedule == "cosine":
                frac = min(1.0, (time.perf_counter() - t0) / 60 / args.minutes)
                for g in opt.param_groups:
                    g["lr"] = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            last_loss = loss.item()
        minutes = (time.perf_counter() - t0) / 60
        out_of_time = minutes >= args.minutes
        if step % args.eval_every < n // args.batch or out_of_time:
            model.eval()
            with torch.no_grad():
                outs = [model(data["image"][i : i + args.batch]) for i in range(0, n, args.batch)]
            heat = torch.cat([o[0] for o in outs]).float().numpy()
            paf = torch.cat([o[1] for o in outs]).float().numpy()
            on_peak = heat[data["heatmap"].numpy() > 0.99]
            ap_now = coco_ap(heat, paf, data, decoder, topo, cat, gt, input_hw)
            best = max(best, ap_now)
            history.append(
                {"step": step, "minutes": round(minutes, 2), "loss": last_loss, "ap": ap_now}
            )
            print(
                f"step {step:5d}  {minutes:6.1f} min  loss {last_loss:.5f}  AP {ap_now:.3f}  "
                f"heatmap at keypoints: median {np.median(on_peak):.2f}",
                flush=True,
            )
            if ap_now >= args.target_ap or out_of_time:
                break
    reached = ap_now >= args.target_ap
    print(
        json.dumps(
            {
                "reached_target": reached,
                "target_ap": args.target_ap,
                "ap": round(ap_now, 4),
                "best_ap": round(best, 4),
                "oracle_ap": round(oracle, 4),
                "steps": step,
                "minutes": round((time.perf_counter() - t0) / 60, 2),
                "images": args.images,
                "input": args.size,
            }
        )
    )
    if args.save:
        save_checkpoint(
            args.save,
            {
                "epoch": 0,
                "step": step,
                "model": model.state_dict(),
                "config": {
                    "topology": topo.to_dict(),
                    "model": model_cfg,
                    "data": {"input_size": list(input_hw), "aspect": "squash"},
                    "targets": targets.__dict__,
                    "decoder": decoder_cfg,
                },
                "meta": {"script": "overfit.py", "history": history},
            },
        )
    if not reached:
        print(f"target AP {args.target_ap} not reached within {args.minutes} min (best {best:.3f})")


if __name__ == "__main__":
    main()
