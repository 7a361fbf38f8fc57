"""python scripts/make_crowds.py [ANNOTATIONS ...] [--out DIR] [--images N] [--seed S]

Crowds for the oracle: COCO keypoint files of composite pictures, each a row of 2-8 people taken
from a real annotation file (their poses and their labelled/unlabelled keypoints as annotated),
scaled to one height (+-30%), mirrored at random and placed side by side so that neighbours
overlap, as in a crowd. Only annotations are written (the oracle needs no pixels):

    DIR/crowds_<stem>.json     (default DIR: outputs/crowds; default files: coco-mini's two)

coco-mini's 159 pictures hold few crowds, and crowds are where grouping loses its AP (people
whose linking keypoint is not labelled fall apart, and their pieces lie next to other people's).
Composites of the train file's people tune, the val file's check:

    python scripts/make_crowds.py
    python scripts/grouping_loss.py --annotations outputs/crowds/crowds_person_keypoints_*.json
    python -m inference.eval oracle=true annotations=outputs/crowds/crowds_person_keypoints_val2017.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # scripts run from anywhere; the toolkit is not installed

from coco_mini import DEFAULT_ANN  # noqa: E402

from datasets.files import write_json  # noqa: E402
from datasets.topology import Topology, pairs_by_name  # noqa: E402

CANVAS = (480, 640)  # height, width of a composite picture


def mirror_permutation(names: list[str]) -> list[int]:
    """Keypoint order after a horizontal mirror: left/right pairs found by name swap places
    (the toolkit's own pairing, as ``topology=auto`` finds them)."""
    return Topology(tuple(names), (), flip_pairs=tuple(pairs_by_name(names))).flip_permutation()


def place(ann: dict, x: float, foot: float, height: float, mirror: list[int] | None) -> dict:
    """``ann``'s keypoints scaled to ``height``, its box's left edge at ``x`` and bottom at
    ``foot``, mirrored with the ``mirror`` permutation; keypoints off the canvas unlabelled."""
    kp = np.asarray(ann["keypoints"], float).reshape(-1, 3)
    bx, by, bw, bh = ann["bbox"]
    s = height / max(bh, 1.0)
    out = kp.copy()
    out[:, 0], out[:, 1] = (kp[:, 0] - bx) * s, (kp[:, 1] - by) * s
    if mirror is not None:
        out[:, 0] = bw * s - out[:, 0]
        out = out[mirror]
    out[:, 0] += x
    out[:, 1] += foot - bh * s
    h, w = CANVAS
    on = (out[:, 2] > 0) & (out[:, 0] >= 0) & (out[:, 0] < w) & (out[:, 1] >= 0) & (out[:, 1] < h)
    out[~on] = 0.0
    box = [x, foot - bh * s, bw * s, bh * s]
    return {"keypoints": out, "area": float(ann["area"]) * s * s, "bbox": box}


def compose(data: dict, images: int, seed: int) -> dict:
    """A COCO keypoint file of ``images`` composite crowds of ``data``'s people."""
    rng = np.random.default_rng(seed)
    cat = next(c for c in data["categories"] if c.get("keypoints"))
    people = [a for a in data["annotations"]
              if a["category_id"] == cat["id"] and not a.get("iscrowd") and a.get("num_keypoints")]  # fmt: skip
    if not people:
        raise SystemExit(f"no labelled {cat['name']} annotations to compose crowds from")
    mirror = mirror_permutation(list(cat["keypoints"]))
    h, w = CANVAS
    out_images, out_anns = [], []
    for image_id in range(1, images + 1):
        out_images.append(
            {"id": image_id, "file_name": f"{image_id:06d}.jpg", "height": h, "width": w}
        )
        height = rng.uniform(0.2, 0.6) * h  # the row's depth; each person varies about it
        x, foot = rng.uniform(0.05, 0.3) * w, rng.uniform(0.5, 0.9) * h
        for _ in range(int(rng.integers(2, 9))):
            ann = people[int(rng.integers(len(people)))]
            p = place(ann, x, foot + rng.uniform(-0.15, 0.15) * height,
                      height * rng.uniform(0.7, 1.3), mirror if rng.random() < 0.5 else None)  # fmt: skip
            x += p["bbox"][2] * rng.uniform(0.4, 0.9)  # the next one overlaps or stands beside
            labelled = int((p["keypoints"][:, 2] > 0).sum())
            if labelled:
                out_anns.append({
                    "id": len(out_anns) + 1, "image_id": image_id, "category_id": cat["id"],
                    "iscrowd": 0, "keypoints": p["keypoints"].reshape(-1).tolist(),
                    "num_keypoints": labelled, "area": p["area"], "bbox": p["bbox"],
                })  # fmt: skip
    return {"images": out_images, "annotations": out_anns, "categories": [cat]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("annotations", type=Path, nargs="*", default=DEFAULT_ANN)
    ap.add_argument("--out", type=Path, default=Path("outputs/crowds"))
    ap.add_argument("--images", type=int, default=150, help="composite pictures per file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    missing = [str(a) for a in args.annotations if not a.is_file()]
    if missing:
        print(f"annotations not found: {missing}", file=sys.stderr)
        return 2
    for ann in args.annotations:
        data = compose(json.loads(ann.read_text()), args.images, args.seed)
        path = write_json(args.out / f"crowds_{ann.stem}.json", data)
        print(f"{path}: {len(data['images'])} pictures, {len(data['annotations'])} people "
              f"from {ann.name}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
