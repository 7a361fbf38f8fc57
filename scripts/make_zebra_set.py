"""python scripts/make_zebra_set.py [OUT] [--train N] [--val N] [--size PX]

A stand-in for "your own COCO keypoint file" in README's "Your own objects": a zebra-like object
with 9 keypoints (``forelegL1`` style side names) whose file skeleton leaves the tail unconnected,
drawn as random articulated figures by ``datasets.synthetic`` (images + COCO annotations):

    OUT/annotations/zebra_train.json, OUT/annotations/zebra_val.json, OUT/train/, OUT/val/

The files carry only what a user's file would: images, annotations and one category with
``keypoints`` and a 1-based ``skeleton``; the commands derive the topology with topology=auto.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from datasets.synthetic import generate  # noqa: E402
from datasets.topology import Topology  # noqa: E402

ZEBRA = Topology.from_dict(
    {
        "name": "zebra",
        "labels": ["snout", "head", "neck", "forelegL1", "forelegR1", "hindlegL1", "hindlegR1",
                   "tailbase", "tailtip"],
        "edges": [[0, 1], [1, 2], [2, 3], [2, 4], [2, 5], [2, 6], [7, 8]],
    }
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="data/zebra")
    ap.add_argument("--train", type=int, default=128)
    ap.add_argument("--val", type=int, default=32)
    ap.add_argument("--size", type=int, default=192)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out} exists: remove it or give another folder")
    settings = {"num_train": args.train, "num_val": args.val, "image_size": [args.size] * 2}
    counts = generate(out, ZEBRA, settings)
    for split in ("train", "val"):  # name the files as a user's would be named
        (out / "annotations" / f"person_keypoints_{split}.json").rename(
            out / "annotations" / f"zebra_{split}.json"
        )
    print(f"wrote {out}: {counts['train']} train and {counts['val']} val images, 9 keypoints")


if __name__ == "__main__":
    main()
