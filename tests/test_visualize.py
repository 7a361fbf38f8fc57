"""visualize: the decoder's steps as pictures, from ground truth (oracle) and from a model."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from datasets.errors import UsageError, UserError
from datasets.topology import Topology
from export.__main__ import run as export
from inference.draw import draw_skeletons, limb_colors, make_grid, palette
from inference.visualize import pick_edge, run, zoom_window
from tests.deploy_fixtures import REPO, export_cfg, make_checkpoint, random_image

STEPS = [
    "01_input",
    "02_heatmap",
    "03_maxpool",
    "04_peaks",
    "05_part_candidates",
    "06_edge_candidates",
    "07_paf_",
    "08_edges",
    "09_skeletons",
]


def _oracle_cfg(coco_mini, out, **kw):
    cfg = {
        "image": "000000192699.jpg",
        "oracle": True,
        "topology": {"name": "coco18"},
        "annotations": str(coco_mini / "annotations" / "person_keypoints_val2017.json"),
        "images": str(coco_mini / "val2017"),
        "input_size": [224, 224],
        "aspect": "squash",
        "output": str(out),
    }
    cfg.update(kw)
    return cfg


def test_oracle_steps_on_coco_mini(coco_mini, tmp_path):
    r = run(_oracle_cfg(coco_mini, tmp_path, edge="left_elbow-left_wrist"))
    names = [p.name for p in r["steps"]]
    assert len(names) == len(STEPS)
    for want, got in zip(STEPS, names, strict=True):
        assert got.startswith(want)
    assert names[6] == "07_paf_left_elbow-left_wrist.png"
    # the two annotated people of this image come back from their own targets
    assert r["titles"][-1] == "skeletons: 2"
    for p in [*r["steps"], r["grid"]]:
        img = cv2.imread(str(p))
        assert img is not None and img.std() > 5  # a real picture, not a blank
    assert cv2.imread(str(r["steps"][0])).shape[:2] == (448, 448)  # input enlarged 2x


def test_model_steps_and_cli(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.pth")
    onnx_path = export(export_cfg(ckpt, output=str(tmp_path / "tiny.onnx")))["onnx"]
    image = tmp_path / "pic.jpg"
    cv2.imwrite(str(image), random_image(150, 200))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference.visualize",
            f"image={image}",
            f"model={onnx_path}",
            "scale=3",
            "edge=3",
            f"output={tmp_path / 'vis'}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "vis").glob("*.png"))
    assert "grid.png" in files and "07_paf_right_knee-right_hip.png" in files
    assert cv2.imread(str(tmp_path / "vis" / "01_input.png")).shape[:2] == (64 * 3, 96 * 3)


def test_pick_edge_and_errors(coco_mini, tmp_path):
    topo = Topology.named("coco18")
    assert pick_edge(0, topo, None) == 0
    assert pick_edge("neck-nose", topo, None) == 16
    with pytest.raises(UsageError, match="no edge 'nose-neck'; give edge=FROM-TO"):
        pick_edge("nose-neck", topo, None)
    with pytest.raises(UsageError, match="out of range"):
        pick_edge(21, topo, None)
    with pytest.raises(UserError, match="no image '000000000785.jpg' with labelled keypoints"):
        run(_oracle_cfg(coco_mini, tmp_path, image="000000000785.jpg"))


def test_zoom_window_keeps_the_map_aspect():
    mask = np.zeros((56, 80), bool)
    mask[10:14, 20:22] = True
    j0, j1, i0, i1 = zoom_window(mask, np.zeros((0, 2)), margin=2)
    assert 0 <= j0 < j1 <= 56 and 0 <= i0 < i1 <= 80
    assert j0 <= 10 and j1 >= 14 and i0 <= 20 and i1 >= 22
    assert abs((j1 - j0) / (i1 - i0) - 56 / 80) < 0.1


def test_draw_one_colour_per_limb():
    topo = Topology.named("coco18")
    colors = limb_colors(topo)
    assert len(set(colors)) == topo.num_edges == 21
    assert len(set(palette(18))) == 18
    img = np.zeros((100, 100, 3), np.uint8)
    kp = np.full((18, 3), np.nan)
    kp[5] = (20, 50, 1.0)  # left_shoulder -> left_elbow is edge 5
    kp[7] = (80, 50, 1.0)
    out = draw_skeletons(img, [kp], topo, thickness=3, radius=2)
    assert tuple(out[50, 50]) == colors[5]  # the limb's middle has the limb's colour
    assert img.sum() == 0  # input untouched
    grid = make_grid([out, out[:50]], cols=2)
    assert grid.shape == (108, 212, 3)
