"""datasets.preprocess: neck rules, category rewrite, custom categories, every bad-input case."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from datasets.preprocess import AnnotationError, preprocess, run
from datasets.topology import Topology

COCO17 = list(Topology.named("coco18").labels[:17])


def _kp(**parts) -> list[float]:
    """A flat COCO 17-keypoint list with the given parts set to (x, y, v)."""
    flat = [0.0] * 51
    for name, (x, y, v) in parts.items():
        i = COCO17.index(name)
        flat[3 * i : 3 * i + 3] = [x, y, v]
    return flat


def _file(anns: list[dict], images=None) -> dict:
    images = images or [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}]
    cat = {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": COCO17,
        "skeleton": [[16, 14], [6, 7]],
    }
    other = {"id": 2, "name": "bicycle", "supercategory": "vehicle"}
    for i, a in enumerate(anns):
        a.setdefault("id", 100 + i)
        a.setdefault("image_id", 1)
        a.setdefault("category_id", 1)
        a.setdefault("iscrowd", 0)
    return {
        "info": {"year": 2017},
        "images": images,
        "annotations": anns,
        "categories": [cat, other],
    }


def _neck(ann: dict) -> list[float]:
    return ann["keypoints"][51:54]


def test_neck_rules():
    anns = [
        {"keypoints": _kp(left_shoulder=(10, 20, 2), right_shoulder=(30, 21, 2))},  # both visible
        {"keypoints": _kp(left_shoulder=(10, 20, 1), right_shoulder=(30, 20, 2))},  # one occluded
        {"keypoints": _kp(left_shoulder=(10, 20, 2))},  # one missing
        {"keypoints": _kp(nose=(5, 5, 2))},  # no shoulders
    ]
    out, summary = preprocess(_file(anns))
    assert summary.neck_added
    necks = [_neck(a) for a in out["annotations"]]
    assert necks[0] == [20, 20.5, 2]
    assert necks[1] == [20, 20, 1]
    assert necks[2] == [0, 0, 0]
    assert necks[3] == [0, 0, 0]
    assert [a["num_keypoints"] for a in out["annotations"]] == [3, 3, 1, 1]
    assert all(len(a["keypoints"]) == 54 for a in out["annotations"])


def test_category_rewritten_to_coco18():
    out, _ = preprocess(_file([{"keypoints": _kp(nose=(1, 1, 2))}]))
    topo = Topology.named("coco18")
    (cat,) = out["categories"]
    assert cat["keypoints"] == list(topo.labels) and len(cat["keypoints"]) == 18
    assert len(cat["skeleton"]) == 21 and cat["id"] == 1 and cat["name"] == "person"
    assert Topology.from_coco_category(cat).edges == topo.edges


def test_other_categories_dropped_and_custom_category_kept():
    data = _file([{"keypoints": _kp(nose=(1, 1, 2))}])
    arm = {"id": 7, "name": "arm", "keypoints": ["Wrist", "Elbow"], "skeleton": [[1, 2]]}
    data["categories"].append(arm)
    data["annotations"].append(
        {"id": 5, "image_id": 1, "category_id": 7, "keypoints": [3, 4, 2, 8, 9, 1]}
    )
    out, summary = preprocess(data, category="arm", topology=None)
    assert out["categories"] == [arm]
    assert [a["id"] for a in out["annotations"]] == [5]
    assert out["annotations"][0]["keypoints"] == [3, 4, 2, 8, 9, 1]
    assert out["annotations"][0]["num_keypoints"] == 2 and not summary.neck_added
    with pytest.raises(AnnotationError, match="no keypoint category 'dog'"):
        preprocess(data, category="dog")
    with pytest.raises(AnnotationError, match="match neither topology"):
        preprocess(data, category="arm", topology="coco18")


BAD_CASES = {
    "bad_keypoint_length": {"keypoints": [1, 2, 2] * 16},
    "nan_coordinates": {"keypoints": _kp(nose=(math.nan, 3, 2))},
    "negative_coordinates": {"keypoints": _kp(nose=(-4, 3, 2))},
    "bad_visibility": {"keypoints": _kp(nose=(4, 3, 3))},
    "unknown_image_id": {"keypoints": _kp(nose=(4, 3, 2)), "image_id": 999},
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_annotation_strict_error_lists_ids(kind):
    good = {"id": 1, "keypoints": _kp(nose=(1, 1, 2))}
    bad = [dict(copy.deepcopy(BAD_CASES[kind]), id=i) for i in (41, 42)]
    data = _file([good, *bad])
    with pytest.raises(AnnotationError, match=r"2 .*annotation ids 41, 42"):
        preprocess(data, source="x.json")
    out, summary = preprocess(data, strict=False)
    assert [a["id"] for a in out["annotations"]] == [1]
    assert summary.problems == {kind: [41, 42]}
    assert "skipped 2" in str(summary)


def test_missing_image_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 10, "height": 10},
        {"id": 2, "file_name": "gone.jpg", "width": 10, "height": 10},
    ]
    anns = [
        {"id": 1, "keypoints": _kp(nose=(1, 1, 2))},
        {"id": 2, "image_id": 2, "keypoints": _kp()},
    ]
    with pytest.raises(AnnotationError, match=r"images whose file is missing: image ids 2"):
        preprocess(_file(anns, images), images_dir=tmp_path)
    out, summary = preprocess(_file(anns, images), images_dir=tmp_path, strict=False)
    assert [i["id"] for i in out["images"]] == [1]
    assert [a["id"] for a in out["annotations"]] == [1]
    assert summary.problems == {"missing_image_file": [2]}


def test_many_problems_listed_together():
    anns = [dict(copy.deepcopy(BAD_CASES["negative_coordinates"]), id=i) for i in range(30)]
    anns.append(dict(copy.deepcopy(BAD_CASES["bad_keypoint_length"]), id=77))
    with pytest.raises(AnnotationError) as e:
        preprocess(_file(anns))
    msg = str(e.value)
    assert "30 annotations with negative keypoint coordinates" in msg and "and 10 more" in msg
    assert "wrong length (expected 51 numbers): annotation ids 77" in msg


def test_run_on_coco_mini(tmp_path, coco_mini):
    ann_dir = tmp_path / "annotations"
    ann_dir.mkdir()
    src = json.loads((coco_mini / "annotations" / "person_keypoints_val2017.json").read_text())
    (ann_dir / "person_keypoints_val2017.json").write_text(json.dumps(src))
    cfg = {
        "splits": ["val2017"],
        "annotations_dir": str(ann_dir),
        "images_root": str(coco_mini),
        "check_images": True,
        "input": "person_keypoints_{split}.json",
        "output": "person_keypoints_{split}_modified.json",
        "category": "person",
        "topology": "coco18",
        "strict": True,
    }
    ((dst, summary),) = run(cfg)
    assert dst == ann_dir / "person_keypoints_val2017_modified.json"
    assert [p.name for p in ann_dir.iterdir() if p.name.startswith(".")] == []  # no temp left
    out = json.loads(dst.read_text())
    assert summary.annotations_out == len(src["annotations"]) == len(out["annotations"])
    by_id = {a["id"]: a for a in src["annotations"]}
    checked = 0
    for ann in out["annotations"]:
        kp = np.array(ann["keypoints"], float).reshape(18, 3)
        orig = np.array(by_id[ann["id"]]["keypoints"], float).reshape(17, 3)
        np.testing.assert_array_equal(kp[:17], orig)
        ls, rs = orig[5], orig[6]
        if ls[2] > 0 and rs[2] > 0:
            np.testing.assert_allclose(kp[17, :2], (ls[:2] + rs[:2]) / 2)
            assert kp[17, 2] == (2 if ls[2] == 2 and rs[2] == 2 else 1)
            checked += 1
        else:
            assert kp[17].tolist() == [0, 0, 0]
        assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum())
    assert checked > 20  # coco-mini has plenty of people with both shoulders

    # the image check runs against the split's folder: an empty one makes every image missing
    cfg["images_root"] = str(tmp_path)
    (tmp_path / "val2017").mkdir()
    with pytest.raises(AnnotationError, match="images whose file is missing"):
        run(cfg)


def test_run_missing_input(tmp_path):
    cfg = {
        "splits": ["train2017"],
        "annotations_dir": str(tmp_path),
        "check_images": False,
        "input": "person_keypoints_{split}.json",
        "output": "person_keypoints_{split}_modified.json",
        "topology": "coco18",
    }
    with pytest.raises(FileNotFoundError, match="person_keypoints_train2017.json not found"):
        run(cfg)
    (tmp_path / "person_keypoints_train2017.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        run(cfg)
    assert not (tmp_path / "person_keypoints_train2017_modified.json").exists()


def test_cli_output_is_readable_by_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    out, _ = preprocess(_file([{"keypoints": _kp(nose=(1, 1, 2)), "bbox": [0, 0, 5, 5]}]))
    path = Path(tmp_path / "m.json")
    path.write_text(json.dumps(out))
    coco = COCO(str(path))
    assert coco.getCatIds(catNms=["person"]) == [1]


def test_cli(tmp_path, coco_mini):
    """``python -m datasets.preprocess`` parses its Hydra config and writes the modified file."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "annotations").mkdir()
    src = coco_mini / "annotations" / "person_keypoints_val2017.json"
    (tmp_path / "annotations" / src.name).write_bytes(src.read_bytes())
    (tmp_path / "val2017").symlink_to(coco_mini / "val2017")
    cmd = [
        sys.executable,
        "-m",
        "datasets.preprocess",
        f"data.root={tmp_path}",
        "splits=[val2017]",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(
        (tmp_path / "annotations" / "person_keypoints_val2017_modified.json").read_text()
    )
    assert len(out["categories"][0]["keypoints"]) == 18
    (tmp_path / "val2017").unlink()
    (tmp_path / "val2017").mkdir()  # every image now missing: a clear error and exit code 1
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "images whose file is missing" in proc.stderr + proc.stdout
