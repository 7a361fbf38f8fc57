"""The shared COCO keypoint reader: every malformed file is a one-line error naming the file, the
ids and the fix (or, with strict=false, skipped and counted), in every command that reads one."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from datasets.coco import CocoKeypoints
from datasets.cocofile import AnnotationError, load_keypoint_file
from datasets.errors import UserError
from datasets.neck import COCO_PERSON_KEYPOINTS
from datasets.topology import Topology
from inference.cocoeval import load_coco

REPO = Path(__file__).resolve().parent.parent
COCO18 = Topology.named("coco18")


def person(**kw) -> dict:
    kp = [0.0] * 51
    kp[15:18] = [20.0, 10.0, 2]  # left_shoulder
    kp[18:21] = [40.0, 12.0, 2]  # right_shoulder
    return {"id": 7, "image_id": 1, "category_id": 1, "keypoints": kp, "iscrowd": 0, **kw}


def coco_file(anns=None, images=None) -> dict:
    return {
        "images": images or [{"id": 1, "file_name": "a.jpg", "height": 60, "width": 80}],
        "annotations": [person()] if anns is None else anns,
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_PERSON_KEYPOINTS)}],
    }


def bad_value(i: int, value) -> dict:
    ann = person(id=41)
    ann["keypoints"][i] = value
    return ann


# (case, file content, message fragment); each message also names the file
BAD_FILES = {
    "nan": (coco_file([bad_value(15, math.nan)]), "NaN or infinite keypoint values: annotation ids 41"),
    "inf": (coco_file([bad_value(16, math.inf)]), "NaN or infinite keypoint values: annotation ids 41"),
    "negative": (coco_file([bad_value(15, -3.0)]), "negative keypoint coordinates: annotation ids 41"),
    "visibility 3": (coco_file([bad_value(17, 3)]), "visibility flag outside {0, 1, 2}: annotation ids 41"),
    "string keypoints": (coco_file([bad_value(15, "20")]), "not numbers: annotation ids 41"),
    "wrong length": (
        coco_file([{**person(id=41), "keypoints": [1, 2, 2] * 16}]),
        "wrong length (expected 51 numbers): annotation ids 41",
    ),
    "image without id": (
        coco_file(images=[{"file_name": "a.jpg", "height": 60, "width": 80}]),
        "image records without an integer id",
    ),
    "image without height": (
        coco_file(images=[{"id": 1, "file_name": "a.jpg", "width": 80}]),
        "image records without an integer id, positive height/width or file_name: image ids 1",
    ),
    "annotation of no category": (
        coco_file([person(id=41, category_id=5)]),
        "1 annotations of a category_id that no category has: annotation ids 41",
    ),
    "image of a fractional width": (
        coco_file(images=[{"id": 1, "file_name": "a.jpg", "height": 60, "width": 80.5}]),
        "positive height/width or file_name: image ids 1",
    ),
}  # fmt: skip


@pytest.mark.parametrize("keypoints", [None, [], "absent"])
def test_annotation_without_keypoints_has_none_labelled(keypoints, tmp_path):
    """Files that only box some objects (OCHuman-style) write no keypoints, null or []: as
    COCO's 3K zeros, nothing labelled (evaluation ignores the object; training leaves its region
    out of the loss, as for COCO's people without keypoints)."""
    ann = person(id=41)
    if keypoints == "absent":
        del ann["keypoints"]
    else:
        ann["keypoints"] = keypoints
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco_file([person(), ann])))
    kfile = load_keypoint_file(path)
    got = {a["id"]: (a["num_keypoints"], a["keypoints"]) for a in kfile.data["annotations"]}
    assert got[41] == (0, [0] * 51) and got[7][0] == 2 and kfile.skipped() == 0


def test_normalised_keypoints_are_refused(tmp_path):
    """x, y in [0, 1] (a YOLO-style converter) would train on a speck in each image's corner."""
    ann = person()
    ann["keypoints"][15:21] = [0.25, 0.17, 2, 0.5, 0.2, 2]
    ann["keypoints"][0:3] = [0.4, 0.1, 1]
    path = tmp_path / "normalised.json"
    path.write_text(json.dumps(coco_file([ann])))
    with pytest.raises(AnnotationError, match=r"all 3 labelled keypoints lie in \[0, 1\] x "
                       r"\[0, 1\] in images of 60 px and more: .* multiply each x by its image's "
                       "width"):  # fmt: skip
        load_keypoint_file(path)
    ann["keypoints"][15] = 20.0  # one keypoint in pixels: the file is in pixels
    path.write_text(json.dumps(coco_file([ann])))
    assert len(load_keypoint_file(path).data["annotations"]) == 1


def test_category_ids_are_whole_numbers(tmp_path):
    """A string id would silently score AP 0 (COCO's evaluation compares ids as numbers); other
    categories' annotations (boxes of cars beside the people) are left out without a word."""
    data = coco_file([person(category_id="1")])
    data["categories"][0]["id"] = "1"
    path = tmp_path / "ids.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"keypoint category 'person' has id '1': give it an "
                       "integer id"):  # fmt: skip
        load_keypoint_file(path)
    data = coco_file([person(category_id=1.0), {"id": 9, "image_id": 1, "category_id": 3}])
    data["categories"] += [{"id": 3, "name": "car"}]
    data["categories"][0]["id"] = 1.0
    path.write_text(json.dumps(data))
    kfile = load_keypoint_file(path)
    assert [(a["id"], a["category_id"]) for a in kfile.data["annotations"]] == [(7, 1)]
    assert kfile.data["categories"][0]["id"] == 1 and kfile.skipped() == 0


def test_whole_numbers_written_as_floats_are_accepted(tmp_path):
    """Converters often write ``"width": 640.0`` or ``"id": 7.0``: whole numbers, read as ints
    (images and the annotations' image ids); an image id given twice is named as such."""
    image = {"id": 1.0, "file_name": "a.jpg", "height": 60.0, "width": 80.0}
    path = tmp_path / "floats.json"
    path.write_text(json.dumps(coco_file([person(image_id=1.0)], images=[image])))
    kfile = load_keypoint_file(path)
    (img,) = kfile.data["images"]
    assert img == {"id": 1, "file_name": "a.jpg", "height": 60, "width": 80}
    assert all(type(img[k]) is int for k in ("id", "height", "width"))
    (ann,) = kfile.data["annotations"]
    assert type(ann["image_id"]) is int and ann["image_id"] == 1
    assert load_coco(path).getAnnIds(imgIds=[1]) == [7]
    twice = coco_file(images=[image, {**image, "file_name": "b.jpg"}])
    path.write_text(json.dumps(twice))
    with pytest.raises(AnnotationError, match="image records whose id an earlier record has: "
                       "image ids 1 "):  # fmt: skip
        load_keypoint_file(path)
    assert load_keypoint_file(path, strict=False).problems["duplicate_image_id"] == [1]


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_annotations_one_line_error_or_skip_and_count(case, tmp_path):
    data, fragment = BAD_FILES[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError) as e:
        load_keypoint_file(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and fragment in msg and "strict=false" in msg
    kept = load_keypoint_file(path, strict=False)  # skipped and counted
    assert kept.data["annotations"] == []
    if case.startswith("image"):  # the image goes, and its annotation with it
        assert len(kept.problems["bad_image_record"]) == 1 and kept.data["images"] == []
    else:
        assert kept.skipped() == 1
    # the dataset and evaluation read through the same reader
    with pytest.raises(UserError, match="strict=false"):
        CocoKeypoints(path, tmp_path, COCO18)
    with pytest.raises(UserError, match="strict=false"):
        load_coco(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"[1, 2, 3]", "the top level is a JSON list, not an object"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", r"is not a text file \(not UTF-8"),
        (b'{"images": [', "is not valid JSON"),
        (b'{"images": [], "annotations": []}', "no 'categories' list"),
        (b'{"images": [], "annotations": [], "categories": [{"id": 1}]}', "not a COCO keypoint"),
    ],
)
def test_unreadable_files(content, fragment, tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(content)
    with pytest.raises(AnnotationError, match=fragment) as e:
        load_keypoint_file(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_clean_records_and_filled_fields(tmp_path):
    square = [10, 10, 30, 10, 30, 30, 10, 30]  # 20 x 20 polygon
    anns = [
        person(id=1, segmentation=[square]),  # area from the segmentation
        {**person(), "id": 2, "bbox": [0, 0, 5, 4]},  # area from the bbox
        {k: v for k, v in person().items() if k != "id"},  # numbered
    ]
    images = [
        {"id": 1, "file_name": "a.jpg", "height": 60, "width": 80},
        {"id": 2, "file_name": "b.jpg", "height": 60, "width": 80},  # no annotations: kept
    ]
    kfile = load_keypoint_file("x.json", data=coco_file(anns, images))
    got = {a["id"]: a for a in kfile.data["annotations"]}
    assert got[1]["area"] == pytest.approx(400, abs=25) and got[2]["area"] == 20
    assert got[3]["bbox"] == [20.0, 10.0, 20.0, 2.0] and got[3]["num_keypoints"] == 2
    assert [i["id"] for i in kfile.data["images"]] == [1, 2]


def test_wrong_length_in_training_names_the_annotation_not_add_neck(tmp_path):
    path = tmp_path / "raw.json"
    path.write_text(json.dumps(coco_file([{**person(id=5), "keypoints": [1, 1, 2] * 16}])))
    with pytest.raises(UserError, match=r"annotation ids 5"):
        CocoKeypoints(path, tmp_path, COCO18)


def test_strict_false_keeps_the_good_ones_in_training(tmp_path):
    data = coco_file([person(id=1), bad_value(17, 3)])
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(data))
    ds = CocoKeypoints(path, tmp_path, COCO18, strict=False)
    assert len(ds) == 1 and ds.num_skipped_annotations == 1
    assert ds.records[0]["keypoints"].shape == (1, 18, 3)  # neck added


def test_eval_command_one_line_error(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[]")
    proc = subprocess.run(
        [sys.executable, "-m", "inference.eval", "oracle=true", f"annotations={path}",
         f"output={tmp_path / 'o'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "top level is a JSON list" in proc.stderr


def test_preprocess_shares_the_reader():
    from datasets.preprocess import preprocess

    data = copy.deepcopy(coco_file([person(id=1), bad_value(15, "x")]))
    with pytest.raises(AnnotationError, match="not numbers: annotation ids 41"):
        preprocess(data)
    out, summary = preprocess(data, strict=False)
    assert [a["id"] for a in out["annotations"]] == [1] and "skipped 1" in str(summary)


def test_no_flip_pairs_no_horizontal_flip(tmp_path):
    snake = Topology.from_dict(
        {"name": "snake", "labels": ["head", "tail"], "edges": [[0, 1]], "hflip": False}
    )
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 60, "width": 80}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "keypoints": [5, 5, 2, 30, 9, 2]}
        ],
        "categories": [snake.to_coco_category(1)],
    }
    path = tmp_path / "snake.json"
    path.write_text(json.dumps(data))
    ds = CocoKeypoints(path, tmp_path, snake, augment={"flip": 0.5})
    assert ds.augment.flip == 0.0
    flips = CocoKeypoints(path, tmp_path, Topology.from_dict({**snake.to_dict(), "hflip": True}),
                          augment={"flip": 0.5})  # fmt: skip
    assert flips.augment.flip == 0.5
