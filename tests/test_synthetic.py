"""datasets.synthetic: exact annotations, crowd/unlabelled regions, atomic ensure, dataset use."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from datasets import synthetic
from datasets.coco import build_dataset
from datasets.targets import ignore_mask
from datasets.topology import Topology

SMALL = {
    "num_train": 24,
    "num_val": 6,
    "image_size": [128, 160],
    "max_figures": 4,
    "seed": 1,
    "crowd_prob": 0.5,
    "unlabelled_prob": 0.2,
}


def _data_cfg(root: Path, **settings) -> dict:
    return {
        "root": str(root),
        "train_annotations": str(root / "annotations/person_keypoints_train.json"),
        "train_images": str(root / "train"),
        "val_annotations": str(root / "annotations/person_keypoints_val.json"),
        "val_images": str(root / "val"),
        "input_size": [128, 160],
        "aspect": "squash",
        "augment": {"rotate": 20, "scale": [0.8, 1.2], "translate": 0.05, "flip": 0.5},
        "targets_on_device": False,
        "synthetic": {**SMALL, **settings},
    }


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "set"
    synthetic.ensure(_data_cfg(root))
    return root


def _polygon_mask(seg, h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))


def test_layout_and_coco_format(synth):
    topo = Topology.named("coco18")
    for split, n in (("train", 24), ("val", 6)):
        path = synth / "annotations" / f"person_keypoints_{split}.json"
        coco = COCO(str(path))
        assert len(coco.getImgIds()) == n
        (cat,) = coco.loadCats(coco.getCatIds())
        assert cat["keypoints"] == list(topo.labels) and len(cat["skeleton"]) == 21
        for img in coco.loadImgs(coco.getImgIds()):
            pic = cv2.imread(str(synth / split / img["file_name"]))
            assert pic.shape == (128, 160, 3)
    assert json.loads((synth / "synthetic.json").read_text())["settings"]["num_train"] == 24
    assert not [p for p in synth.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_annotations_are_exact(synth):
    data = json.loads((synth / "annotations/person_keypoints_train.json").read_text())
    h, w = 128, 160
    counts = {"visible": 0, "occluded": 0, "crowd": 0, "unlabelled": 0, "cut": 0}
    for ann in data["annotations"]:
        kp = np.array(ann["keypoints"], float).reshape(18, 3)
        assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum())
        if ann["iscrowd"]:
            counts["crowd"] += 1
            assert isinstance(ann["segmentation"], dict) and ann["num_keypoints"] == 0
            continue
        if ann["num_keypoints"] == 0:
            counts["unlabelled"] += 1
        seg = _polygon_mask(ann["segmentation"], h, w)
        x, y, bw, bh = ann["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
        lab = kp[:, 2] > 0
        assert np.all(kp[lab, 0] < w) and np.all(kp[lab, 1] < h) and np.all(kp[lab, :2] >= 0)
        assert np.all(kp[~lab] == 0)
        counts["cut"] += int(0 < ann["num_keypoints"] < 18)
        for px, py, _v in kp[kp[:, 2] == 2]:
            # a visible keypoint lies on its figure's visible region (within a pixel of it)
            yi, xi = int(py), int(px)
            assert seg[max(yi - 1, 0) : yi + 2, max(xi - 1, 0) : xi + 2].any()
            counts["visible"] += 1
        counts["occluded"] += int((kp[:, 2] == 1).sum())
    assert counts["visible"] > 200 and counts["occluded"] > 0
    assert counts["crowd"] > 0 and counts["unlabelled"] > 0 and counts["cut"] > 0


def test_left_parts_on_the_figures_left(synth):
    """Figures face the camera: an upright figure's left shoulder is on the image's right."""
    data = json.loads((synth / "annotations/person_keypoints_train.json").read_text())
    agree = total = 0
    for ann in data["annotations"]:
        kp = np.array(ann["keypoints"], float).reshape(18, 3)
        ls, rs, neck, lh, rh = kp[5], kp[6], kp[17], kp[11], kp[12]
        if min(ls[2], rs[2], lh[2], rh[2]) == 0:
            continue
        up = neck[:2] - (lh[:2] + rh[:2]) / 2  # hips -> neck
        side = ls[:2] - rs[:2]  # right shoulder -> left shoulder
        # image coordinates, y down: upright up = (0, -1), side = (+1, 0), cross = +1
        agree += (up[0] * side[1] - up[1] * side[0]) > 0
        total += 1
    assert total > 10 and agree == total


def test_ensure_is_idempotent_and_regenerates_on_change(tmp_path):
    root = tmp_path / "s"
    cfg = _data_cfg(root, num_train=3, num_val=2)
    synthetic.ensure(cfg)
    first = (root / "annotations/person_keypoints_train.json").stat().st_mtime_ns
    synthetic.ensure(cfg)
    assert (root / "annotations/person_keypoints_train.json").stat().st_mtime_ns == first
    synthetic.ensure(_data_cfg(root, num_train=4, num_val=2))
    assert len(list((root / "train").iterdir())) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "photo.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a synthetic data set"):
        synthetic.ensure(_data_cfg(other))


def test_generation_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synthetic.ensure(_data_cfg(a, num_train=3, num_val=1))
    synthetic.ensure(_data_cfg(b, num_train=3, num_val=1))
    ja = (a / "annotations/person_keypoints_train.json").read_text()
    assert ja == (b / "annotations/person_keypoints_train.json").read_text()


def test_custom_topology(tmp_path):
    arm = Topology(
        labels=("shoulder", "elbow", "wrist", "hand"), edges=((0, 1), (1, 2), (2, 3)), name="arm"
    )
    root = tmp_path / "arm"
    synthetic.run({"data": _data_cfg(root, num_train=4, num_val=1), "topology": arm.to_dict()})
    data = json.loads((root / "annotations/person_keypoints_train.json").read_text())
    assert data["categories"][0]["keypoints"] == list(arm.labels)
    assert all(len(a["keypoints"]) == 12 for a in data["annotations"])
    assert sum(a["num_keypoints"] for a in data["annotations"]) > 0


def test_dataset_over_synthetic(synth):
    cfg = {"data": _data_cfg(synth), "targets": {"stride": 4}}
    topo = Topology.named("coco18")
    ds = build_dataset(cfg, "train", topo)
    torch.manual_seed(0)
    s = ds[0]
    assert s["image"].shape == (3, 128, 160) and s["heatmap"].shape == (18, 32, 40)
    assert float(s["heatmap"].max()) > 0.5 and float(s["paf"].abs().max()) > 0.5
    # the crowd regions are ignored in the loss weights (evaluation geometry: a plain resize)
    val = build_dataset(cfg, "val", topo)
    for i, rec in enumerate(val.records):
        crowd = [a for a in rec["ignore"] if a["iscrowd"]]
        if not crowd:
            continue
        region = ignore_mask(crowd, *rec["hw"]).astype(np.float32)
        inside = cv2.resize(region, (40, 32), interpolation=cv2.INTER_AREA) > 0.999
        if inside.any():
            assert float(val[i]["mask"][torch.from_numpy(inside)].max()) < 0.05
            break
    else:
        pytest.skip("no crowd region large enough in this small val split")
