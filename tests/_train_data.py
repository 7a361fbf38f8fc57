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
