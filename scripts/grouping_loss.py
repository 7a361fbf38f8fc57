"""python scripts/grouping_loss.py -- where the decoder's oracle AP goes: grouping against perfect.

For each coco-mini annotation file (train and val, or --annotations) and map size (56x56 and
120x160), decodes the ground-truth (oracle) maps of every image twice:

- with the run-time decoder, as ``inference.eval oracle=true`` does;
- with *perfect grouping*: the same peaks at the same refined positions, each given to the true
  object whose same part lies within ``--radius`` map pixels (the stronger peak where two claim
  one part); a peak near no true part is dropped.

It prints the two APs (the gap is what grouping loses: the decoder's own steps 5-6b), how many
true objects the decoder splits into several skeletons or mixes with another object, and the
images with the largest per-image AP loss. Tune grouping on one file, check on the other.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # scripts run from anywhere; the toolkit is not installed

from coco_mini import DEFAULT_ANN, SIZES  # noqa: E402

from datasets.geometry import apply  # noqa: E402
from datasets.topology import Topology  # noqa: E402
from inference.cocoeval import (  # noqa: E402
    evaluate,
    gt_keypoints,
    load_coco,
    person_category,
    skeletons_to_coco,  # noqa: E402
)
from inference.decoder import OpenPoseDecoder  # noqa: E402
from inference.oracle import DEFAULT_TARGETS, iter_oracle  # noqa: E402


def true_owner(xy, part, truth, radius: float) -> np.ndarray:
    """(P,) index of the true object each peak belongs to (-1: none within ``radius``).
    ``truth``: (N, K, 3) ground truth in map coordinates, visibility > 0 where labelled."""
    owner = np.full(len(part), -1)
    if len(truth) == 0:
        return owner
    for i, k in enumerate(part.tolist()):
        d = np.hypot(*(truth[:, k, :2] - xy[i]).T)
        d[truth[:, k, 2] <= 0] = np.inf
        if d.min() <= radius:
            owner[i] = int(np.argmin(d))
    return owner


def perfect_objects(part, score, owner, num_objects: int, num_parts: int):
    """(O, K) peak table and scores of the perfect grouping (score: mean part confidence)."""
    table = np.full((num_objects, num_parts), -1)
    for i in np.argsort(score, kind="stable").tolist():  # the stronger peak of a part wins
        if owner[i] >= 0:
            table[owner[i], part[i]] = i
    table = table[(table >= 0).any(1)]
    oscore = np.array([score[t[t >= 0]].mean() for t in table])
    return table, oscore


def split_and_mixed(objects, owner, num_true: int) -> tuple[int, int]:
    """True objects spread over several skeletons; skeletons holding several true objects."""
    owners = [set(owner[t[t >= 0]].tolist()) - {-1} for t in objects]
    split = sum(sum(o in s for s in owners) > 1 for o in range(num_true))
    return split, sum(len(s) > 1 for s in owners)


def image_ap(gt, results, image_id: int) -> float:
    return evaluate(gt, results, image_ids=[image_id], verbose=False)["AP"]


def run_size(gt, topo, cat, input_hw, radius: float) -> dict:
    """Decoder and perfect results of every image, split/mixed counts, per-image AP losses."""
    dec, stride = OpenPoseDecoder(topo), DEFAULT_TARGETS.stride
    out = {"dec": [], "perfect": [], "split": 0, "mixed": 0, "objects": 0, "losses": []}
    for s in iter_oracle(gt, topo, cat, input_hw):
        anns = [
            a for a in gt.loadAnns(gt.getAnnIds(imgIds=[s.image_id], catIds=[cat["id"]]))
            if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0
        ]  # fmt: skip
        truth = np.array(gt_keypoints(anns, cat, topo), float).reshape(-1, topo.num_parts, 3)
        truth[..., :2] = apply(s.matrix, truth[..., :2]) / stride - 0.5  # map coordinates
        d = dec._decode(*dec.prepare(s.heatmap, s.paf, None, "chw"))
        owner = true_owner(d.xy, d.part, truth, radius)
        table, oscore = perfect_objects(d.part, d.score, owner, len(anns), topo.num_parts)
        hw = s.heatmap.shape[1:]
        mine = skeletons_to_coco(dec.skeletons(d, hw, s.orig_hw), s.image_id, topo, cat)
        best = replace(d, objects=table, object_score=oscore)
        ideal = skeletons_to_coco(dec.skeletons(best, hw, s.orig_hw), s.image_id, topo, cat)
        split, mixed = split_and_mixed(d.objects, owner, len(anns))
        out["dec"] += mine
        out["perfect"] += ideal
        out["split"], out["mixed"] = out["split"] + split, out["mixed"] + mixed
        out["objects"] += len(anns)
        if anns:
            loss = image_ap(gt, ideal, s.image_id) - image_ap(gt, mine, s.image_id)
            out["losses"].append((loss, s.image_id, len(anns), split, mixed))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", type=Path, nargs="*", default=DEFAULT_ANN)
    ap.add_argument("--radius", type=float, default=2.0, help="map pixels, peak to true part")
    ap.add_argument("--worst", type=int, default=5, help="images listed per file and size")
    args = ap.parse_args(argv)
    missing = [str(a) for a in args.annotations if not a.is_file()]
    if missing:
        print(f"annotations not found: {missing}", file=sys.stderr)
        return 2
    print("| file | maps | decoder AP | perfect grouping AP | lost | objects | split | mixed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    worst = []
    for ann in args.annotations:
        gt = load_coco(ann)
        topo, cat = Topology.named("coco18"), person_category(gt)
        for name, input_hw in SIZES.items():
            r = run_size(gt, topo, cat, input_hw, args.radius)
            a, b = (evaluate(gt, r[k], verbose=False)["AP"] for k in ("dec", "perfect"))
            print(f"| {ann.stem} | {name} | {a:.3f} | {b:.3f} | {b - a:.3f} | {r['objects']} "
                  f"| {r['split']} | {r['mixed']} |")  # fmt: skip
            worst += [(ann.stem, name, *x) for x in sorted(r["losses"], reverse=True)[: args.worst]]
    print("\nlargest per-image AP losses (perfect - decoder):")
    for stem, name, loss, image_id, n, split, mixed in worst:
        if loss > 0:
            print(f"  {stem} {name} image {image_id}: -{loss:.3f} AP, {n} objects, "
                  f"{split} split, {mixed} mixed")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
