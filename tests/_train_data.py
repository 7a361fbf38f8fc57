"""A tiny in-memory keypoint dataset with exactly known figures, for training tests.

Samples look like ``datasets.coco.CocoKeypoints`` items: image (3, H, W) in [0, 1], keypoints
(N, K, 3) in input pixels, mask, heatmap and PAF targets, image_id, matrix.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.targets import TargetConfig, render_targets
from datasets.topology import Topology


class TinyPoseSet(Dataset):
    """``n`` images of one bright stick figure at a seeded random place; no augmentation."""

    def __init__(
        self, n: int, input_hw=(64, 64), stride: int = 4, render: bool = True, seed: int = 0
    ):
        self.topology = Topology.named("coco18")
        self.n, self.hw, self.render = n, tuple(input_hw), render
        self.targets = TargetConfig(stride=stride)
        rng = np.random.default_rng(seed)
        h, w = self.hw
        k = self.topology.num_parts
        self.kps = []
        for _ in range(n):
            kp = np.zeros((1, k, 3), np.float32)
            kp[0, :, 0] = rng.uniform(0.15 * w, 0.85 * w, k)
            kp[0, :, 1] = rng.uniform(0.15 * h, 0.85 * h, k)
            kp[0, :, 2] = 2
            self.kps.append(kp)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        h, w = self.hw
        s = self.targets.stride
        kp = self.kps[i]
        img = np.full((3, h, w), 0.2, np.float32)
        for x, y, _ in kp[0]:
            img[:, max(int(y) - 1, 0) : int(y) + 2, max(int(x) - 1, 0) : int(x) + 2] = 1.0
        out = {
            "image": torch.from_numpy(img),
            "keypoints": torch.from_numpy(kp),
            "mask": torch.ones(h // s, w // s),
            "image_id": i,
            "matrix": torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64),
        }
        if self.render:
            heat, paf = render_targets(kp, self.topology, (h // s, w // s), self.targets)
            out["heatmap"], out["paf"] = torch.from_numpy(heat), torch.from_numpy(paf)
        return out


def write_coco_set(root, n_train: int = 8, n_val: int = 4, hw=(64, 64), seed: int = 0):
    """A COCO-format keypoint set on disk laid out as conf/data/coco.yaml expects under ``root``.

    Each image shows one stick figure (coco18 labels, neck included) drawn on a dark background;
    annotation files are ``annotations/person_keypoints_{train,val}2017_modified.json``.
    """
    import json
    from pathlib import Path

    import cv2

    root = Path(root)
    topo = Topology.named("coco18")
    rng = np.random.default_rng(seed)
    h, w = hw
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    next_id = 1
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        (root / split).mkdir(exist_ok=True)
        images, anns = [], []
        for _ in range(n):
            image_id = next_id
            next_id += 1
            xy = np.stack(
                [
                    rng.uniform(0.15 * w, 0.85 * w, topo.num_parts),
                    rng.uniform(0.15 * h, 0.85 * h, topo.num_parts),
                ],
                1,
            )
            img = np.full((h, w, 3), 40, np.uint8)
            for a, b in topo.edges:
                cv2.line(
                    img,
                    tuple(int(v) for v in xy[a]),
                    tuple(int(v) for v in xy[b]),
                    (200, 200, 200),
                    1,
                )
            for x, y in xy:
                cv2.circle(img, (int(x), int(y)), 1, (255, 255, 255), -1)
            name = f"{image_id:012d}.jpg"
            cv2.imwrite(str(root / split / name), img)
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            kps = [float(v) for x, y in xy for v in (x, y, 2)]
            x0, y0 = xy.min(0)
            x1, y1 = xy.max(0)
            anns.append(
                {
                    "id": 1000 + image_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "keypoints": kps,
                    "num_keypoints": topo.num_parts,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "segmentation": [],
                }
            )
        doc = {
            "images": images,
            "annotations": anns,
            "categories": [topo.to_coco_category(1, "person")],
        }
        path = root / "annotations" / f"person_keypoints_{split}_modified.json"
        path.write_text(json.dumps(doc))
    return root


def train_args(data_root, out_dir, *extra: str) -> list[str]:
    """`python -m train` overrides: tiny model on the write_coco_set data, 2 short epochs."""
    return [
        "model=tiny",
        "data=coco",
        f"data.root={data_root}",
        "data.input_size=[64,64]",
        "data.augment=null",
        "data.batch_size=1",
        "data.num_workers=0",
        "epochs=2",
        "steps_per_epoch=3",
        "val_every=0",
        "log_every=1",
        "image_every=0",
        "optimizer.lr=0.003",
        "threads=1",
        f"out_dir={out_dir}",
        f"hydra.run.dir={out_dir}/hydra",
        *extra,
    ]


def compose_train(overrides: list[str]):
    """conf/train.yaml composed with ``overrides`` (Hydra's own ``hydra.*`` ones dropped), for
    calling ``train.loop.run`` in-process exactly as ``python -m train`` would."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(
            config_name="train", overrides=[o for o in overrides if not o.startswith("hydra.")]
        )
