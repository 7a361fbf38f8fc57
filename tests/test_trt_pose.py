"""trt_pose interchange: its weights load through the converter and its PAF layout decodes.

trt_pose renders link k's field with the row (vertical) component in PAF channel 2k and the
column (horizontal) component in 2k+1; the Isaac trt_pose app's decoder reads them with
``edges_paf [[1, 0], [3, 2], ...]``. The maps here are rendered that way by a small reference
written from that description, independently of ``datasets.targets``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.topology import Topology
from inference.decoder import OpenPoseDecoder
from models.build import build_model
from models.posenet import convert_trt_pose_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COCO18 = Topology.named("coco18")
H = W = 56

# one standing person in map pixels (x, y), coco18 order: COCO's 17, then the neck
PERSON = np.array(
    [
        [28, 8], [26, 6], [30, 6], [24, 7], [32, 7], [22, 14], [34, 14], [20, 22], [36, 22],
        [19, 30], [37, 30], [24, 30], [32, 30], [24, 40], [32, 40], [24, 50], [32, 50], [28, 14],
    ],
    dtype=np.float64,
)  # fmt: skip


def trt_pose_maps(xy: np.ndarray, skeleton_1based: list[list[int]]) -> tuple[np.ndarray, ...]:
    """(K, H, W) Gaussian peaks and (2L, H, W) unit fields in trt_pose's channel order."""
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    cmap = np.stack([np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0) for x, y in xy])
    paf = np.zeros((2 * len(skeleton_1based), H, W))
    for k, (a, b) in enumerate(skeleton_1based):
        p, q = xy[a - 1], xy[b - 1]
        d = q - p
        n = np.hypot(*d)
        u = d / n
        along = (xx - p[0]) * u[0] + (yy - p[1]) * u[1]
        across = np.abs((xx - p[0]) * u[1] - (yy - p[1]) * u[0])
        on = (along >= 0) & (along <= n) & (across <= 1.0)
        paf[2 * k][on] = u[1]  # row (vertical) component
        paf[2 * k + 1][on] = u[0]  # column (horizontal) component
    return cmap.astype(np.float32), paf.astype(np.float32)


def test_trt_pose_layout_maps_decode_to_the_known_skeleton():
    skeleton = [[a + 1, b + 1] for a, b in COCO18.edges]  # human_pose.json "skeleton"
    cmap, paf = trt_pose_maps(PERSON, skeleton)
    found = OpenPoseDecoder(COCO18)(cmap, paf, output_scale=[H, W])
    assert len(found) == 1 and found[0].num_parts == 18
    # continuous pixel coordinates: the peak at pixel centre x + 0.5 comes back as x (+-0.5)
    assert np.abs(found[0].keypoints[:, :2] - PERSON).max() <= 0.5 + 1e-6
    # the same maps read with x in 2k (this project's layout before) do not give the person
    swapped = Topology.from_dict(
        {**COCO18.to_dict(), "edges_paf": [[2 * i, 2 * i + 1] for i in range(21)]}
    )
    # (step 6b off: it would join a lone person's pieces by geometry alone)
    wrong = OpenPoseDecoder(swapped, threshold_join_fragments=0)(cmap, paf, output_scale=[H, W])
    assert not (len(wrong) == 1 and wrong[0].num_parts == 18)


def test_trt_pose_state_dict_converts_and_runs_identically():
    torch.manual_seed(0)
    cfg = {"_target_": "models.posenet.PoseNet", "backbone": "resnet18", "pretrained": False}
    source = build_model(cfg, COCO18).eval()
    # trt_pose's Sequential(Backbone, CmapPafHeadAttention) keys, with its unused classifier
    state = {f"0.resnet.{k}": v for k, v in source.backbone.state_dict().items()}
    state.update({f"1.{k}": v for k, v in source.head.state_dict().items()})
    state.update({"0.resnet.fc.weight": torch.zeros(1000, 512), "0.resnet.fc.bias": torch.zeros(9)})
    target = build_model(cfg, COCO18).eval()
    target.load_state_dict(convert_trt_pose_state_dict(state), strict=True)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(source(x), target(x), strict=True):
            assert torch.equal(a, b)
