"""scripts/grouping_loss.py: perfect grouping is an upper bound of the decoder's oracle AP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))  # the scripts are files, not a package

from make_crowds import mirror_permutation  # noqa: E402


def test_perfect_grouping_bounds_the_decoder(coco_mini):
    ann = coco_mini / "annotations" / "person_keypoints_val2017.json"
    proc = subprocess.run(
        [sys.executable, "scripts/grouping_loss.py", "--annotations", str(ann), "--worst", "2"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = re.findall(r"\| (\S+) \| (\d+x\d+) \| ([\d.]+) \| ([\d.]+) \| (-?[\d.]+) \| (\d+) \|",
                      proc.stdout)  # fmt: skip
    assert [r[1] for r in rows] == ["56x56", "120x160"], proc.stdout
    for _, _, dec, perfect, lost, objects in rows:
        assert float(perfect) >= float(dec) > 0.5, proc.stdout
        assert abs(float(perfect) - float(dec) - float(lost)) < 0.0015
        assert int(objects) > 0
    assert "largest per-image AP losses" in proc.stdout


def test_make_crowds_composes_valid_files(coco_mini, tmp_path):
    ann = coco_mini / "annotations" / "person_keypoints_val2017.json"
    for out in (tmp_path, tmp_path / "again"):
        subprocess.run(
            [sys.executable, "scripts/make_crowds.py", str(ann), "--out", str(out),
             "--images", "12", "--seed", "3"],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
    name = "crowds_person_keypoints_val2017.json"
    data = json.loads((tmp_path / name).read_text())
    assert data == json.loads((tmp_path / "again" / name).read_text())  # the seed decides
    assert len(data["images"]) == 12 and data["categories"][0]["name"] == "person"
    per_image = Counter(a["image_id"] for a in data["annotations"])
    assert max(per_image.values()) >= 3  # crowds, not single people
    for a in data["annotations"]:
        kp = np.asarray(a["keypoints"]).reshape(17, 3)
        on = kp[:, 2] > 0
        assert a["num_keypoints"] == on.sum() > 0 and a["area"] > 0
        assert (kp[on, 0] >= 0).all() and (kp[on, 0] < 640).all() and (kp[on, 1] < 480).all()
    # the oracle scores it, at most as well as perfect grouping
    again = subprocess.run(
        [sys.executable, "scripts/grouping_loss.py", "--annotations",
         str(tmp_path / "crowds_person_keypoints_val2017.json"), "--worst", "0"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = re.findall(r"\| \S+ \| \d+x\d+ \| ([\d.]+) \| ([\d.]+) \|", again.stdout)
    assert len(rows) == 2 and all(float(p) >= float(d) > 0.3 for d, p in rows), again.stdout


def test_mirror_permutation_swaps_sides():
    names = ["nose", "left_eye", "right_eye", "left_hip", "right_hip", "neck"]
    assert mirror_permutation(names) == [0, 2, 1, 4, 3, 5]
