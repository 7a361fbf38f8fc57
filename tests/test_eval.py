"""COCO evaluation: neck rule, results writer, GT-as-predictions AP 1, oracle AP, inference.eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.errors import UsageError
from datasets.images import ImageError
from datasets.neck import add_neck
from datasets.topology import Topology
from inference.cocoeval import (
    STAT_NAMES,
    evaluate,
    gt_keypoints,
    load_coco,
    person_category,
    skeletons_to_coco,
)
from inference.decoder import OpenPoseDecoder, Skeleton
from inference.eval import run
from inference.oracle import oracle_maps, oracle_results

REPO = Path(__file__).resolve().parent.parent
COCO18 = Topology.named("coco18")
COCO17 = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
CATEGORY = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": COCO17,
    "skeleton": [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7]],
}
# a standing person in COCO's 17-keypoint order, offsets from the hips' centre (pixels)
POSE17 = np.array(
    [
        [0, -60], [-5, -65], [5, -65], [-10, -62], [10, -62], [-20, -40], [20, -40],
        [-25, -15], [25, -15], [-28, 10], [28, 10], [-12, 10], [12, 10], [-13, 45], [13, 45],
        [-14, 80], [14, 80],
    ],
    dtype=np.float64,
)  # fmt: skip


def _ann(ann_id, image_id, cx, cy, scale=1.0, hidden=(), occluded=(), seed=0):
    rng = np.random.default_rng(seed)
    kp = np.zeros((17, 3))
    kp[:, :2] = np.round(POSE17 * scale + (cx, cy) + rng.uniform(-3, 3, (17, 2)), 1)
    kp[:, 2] = 2
    kp[list(occluded), 2] = 1
    kp[list(hidden)] = 0
    xy = kp[kp[:, 2] > 0, :2]
    x0, y0 = xy.min(0) - 10
    w, h = xy.max(0) - xy.min(0) + 20
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "keypoints": kp.reshape(-1).tolist(),
        "num_keypoints": int((kp[:, 2] > 0).sum()),
        "bbox": [float(x0), float(y0), float(w), float(h)],
        "area": float(w * h),
    }


def make_dataset() -> dict:
    """Four images: two people (some keypoints occluded or unlabelled), one person, a crowd plus
    a person nobody annotated, and an empty image."""
    images = [
        {"id": 1, "file_name": "000000000001.jpg", "height": 240, "width": 320},
        {"id": 2, "file_name": "000000000002.jpg", "height": 300, "width": 200},
        {"id": 3, "file_name": "000000000003.jpg", "height": 240, "width": 320},
        {"id": 4, "file_name": "000000000004.jpg", "height": 200, "width": 260},
    ]
    anns = [
        _ann(1, 1, 90, 120, 1.0, hidden=(3, 15), occluded=(9,), seed=1),
        _ann(2, 1, 230, 125, 0.9, hidden=(4,), seed=2),
        _ann(3, 2, 100, 160, 1.3, seed=3),
        _ann(4, 3, 150, 130, 1.0, seed=4),
        {
            "id": 5,
            "image_id": 3,
            "category_id": 1,
            "iscrowd": 1,
            "keypoints": [0] * 51,
            "num_keypoints": 0,
            "bbox": [10, 10, 40, 60],
            "area": 2400.0,
            "segmentation": {"counts": [0, 100], "size": [240, 320]},
        },
        {
            "id": 6,
            "image_id": 3,
            "category_id": 1,
            "iscrowd": 0,
            "keypoints": [0] * 51,
            "num_keypoints": 0,
            "bbox": [260, 20, 40, 80],
            "area": 3200.0,
        },
    ]
    return {"images": images, "annotations": anns, "categories": [CATEGORY]}


# --------------------------------------------------------------------------- neck and writer
def test_add_neck_rule():
    kp = np.zeros((4, 17, 3))
    kp[:, 5, :2], kp[:, 6, :2] = (10, 20), (30, 24)
    kp[:, 5, 2] = [2, 2, 1, 0]
    kp[:, 6, 2] = [2, 1, 2, 2]
    out = add_neck(kp)
    assert out.shape == (4, 18, 3)
    np.testing.assert_array_equal(out[:, :17], kp)
    np.testing.assert_array_equal(out[:3, 17], [[20, 22, 2], [20, 22, 1], [20, 22, 1]])
    np.testing.assert_array_equal(out[3, 17], [0, 0, 0])  # one shoulder unlabelled
    np.testing.assert_array_equal(add_neck(kp[0].reshape(-1)), out[0])  # COCO's flat list
    with pytest.raises(ValueError, match="17, 3"):
        add_neck(np.zeros((18, 3)))


def test_skeletons_to_coco_drops_the_neck_and_writes_missing_parts_as_zero():
    kp = np.full((18, 3), np.nan)
    kp[:, 2] = 0
    kp[[0, 5, 17]] = [[10, 20, 0.9], [30, 40, 0.8], [35, 40, 0.7]]
    sk = Skeleton(kp, 0.6, 3)
    (res,) = skeletons_to_coco([sk], 7, COCO18, CATEGORY)
    assert res["image_id"] == 7 and res["category_id"] == 1 and res["score"] == 0.6
    out = np.array(res["keypoints"]).reshape(17, 3)
    np.testing.assert_array_equal(out[0], [10, 20, 2])
    np.testing.assert_array_equal(out[5], [30, 40, 2])
    assert (out[[1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]] == 0).all()
    moved = skeletons_to_coco([sk], 7, COCO18, CATEGORY, transform=np.array([[2, 0, 1], [0, 3, 0]]))
    np.testing.assert_array_equal(np.array(moved[0]["keypoints"]).reshape(17, 3)[5], [61, 120, 2])
    with pytest.raises(ValueError, match="do not match topology"):
        skeletons_to_coco([Skeleton(kp[:17], 0.5, 2)], 7, COCO18, CATEGORY)


def test_gt_as_predictions_scores_ap_1():
    data = make_dataset()
    gt = load_coco(data)
    cat = person_category(gt)
    results = []
    for image_id in gt.getImgIds():
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id])) if a["num_keypoints"] > 0]
        for kp in gt_keypoints(anns, cat, COCO18):  # (18, 3) with the neck
            sk = kp.copy()
            sk[kp[:, 2] == 0, :2] = np.nan
            sk[:, 2] = (kp[:, 2] > 0) * 1.0
            results += skeletons_to_coco([Skeleton(sk, 1.0, int((kp[:, 2] > 0).sum()))], image_id,
                                         COCO18, cat)  # fmt: skip
    assert len(results) == 4
    stats = evaluate(gt, results, verbose=False)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    # and a wrong prediction is not: every keypoint 20 px off
    for r in results:
        r["keypoints"] = [v + 20 if i % 3 < 2 else v for i, v in enumerate(r["keypoints"])]
    assert evaluate(gt, results, verbose=False)["AP"] < 0.5


def test_gt_keypoints_by_name_and_for_18_keypoint_files():
    data = make_dataset()
    anns = data["annotations"][:2]
    kp18 = gt_keypoints(anns, CATEGORY, COCO18)
    np.testing.assert_array_equal(
        kp18[:, :17], np.array([a["keypoints"] for a in anns]).reshape(2, 17, 3)
    )
    np.testing.assert_array_equal(kp18, add_neck(kp18[:, :17]))
    # a preprocessed file already carries the neck (as keypoint 18): taken as is
    cat18 = {**CATEGORY, "keypoints": COCO17 + ["neck"]}
    anns18 = [{**a, "keypoints": kp.reshape(-1).tolist()} for a, kp in zip(anns, kp18, strict=True)]
    np.testing.assert_array_equal(gt_keypoints(anns18, cat18, COCO18), kp18)
    with pytest.raises(ValueError, match="annotation id=1 has 51 keypoint numbers"):
        gt_keypoints(anns[:1], cat18, COCO18)


def test_evaluate_without_detections():
    gt = load_coco(make_dataset())
    assert evaluate(gt, [], verbose=False)["AP"] == 0.0
    assert evaluate(gt, [], image_ids=[4], verbose=False)["AP"] == -1.0  # no people: undefined


# --------------------------------------------------------------------------- oracle
@pytest.mark.parametrize("aspect", ["squash", "letterbox"])
@pytest.mark.parametrize("input_hw", [(224, 224), (480, 640)])
def test_oracle_round_trip_scores_ap_1(aspect, input_hw):
    """GT -> targets -> decoder -> COCOeval: the pixel conventions agree end to end."""
    gt = load_coco(make_dataset())
    results = oracle_results(
        gt, COCO18, person_category(gt), OpenPoseDecoder(COCO18), input_hw, aspect=aspect,
        progress=False,
    )  # fmt: skip
    assert len(results) == 4
    assert evaluate(gt, results, verbose=False)["AP"] == pytest.approx(1.0)


def test_oracle_maps_follow_the_fit():
    kp = np.zeros((1, 18, 3))
    kp[0, 0] = (160, 60, 2)  # in a 240 x 320 image
    heat, paf, m = oracle_maps(kp, (240, 320), (224, 224), COCO18, aspect="letterbox")
    assert heat.shape == (18, 56, 56) and paf.shape == (42, 56, 56)
    # letterbox: scale 0.7, centred vertically with 28 rows of border: (112, 70) in the input
    np.testing.assert_allclose(m, [[0.7, 0, 0], [0, 0.7, 28]])
    assert np.unravel_index(heat[0].argmax(), heat[0].shape) == (17, 27)  # 70/4-.5, 112/4-.5
    with pytest.raises(ValueError, match="multiple of stride"):
        oracle_maps(kp, (240, 320), (225, 224), COCO18)


@pytest.mark.parametrize(
    ("split", "floors"),
    [
        ("val", {(224, 224): 0.95, (480, 640): 0.96}),
        ("train", {(224, 224): 0.88, (480, 640): 0.91}),
    ],
)
def test_oracle_ap_on_coco_mini(coco_mini, split, floors):
    """Regression floors 0.01 below the measured oracle AP (val 0.962 / 0.970, train 0.891 /
    0.922 at 56x56 / 120x160); with noise 0.05 at 56x56 0.921 (val) and 0.851 (train)."""
    gt = load_coco(coco_mini / "annotations" / f"person_keypoints_{split}2017.json")
    cat = person_category(gt)
    dec = OpenPoseDecoder(COCO18)
    for input_hw, floor in floors.items():
        res = oracle_results(gt, COCO18, cat, dec, input_hw, progress=False)
        assert evaluate(gt, res, verbose=False)["AP"] >= floor, input_hw
    noisy = oracle_results(gt, COCO18, cat, dec, (224, 224), noise=0.05, progress=False)
    assert evaluate(gt, noisy, verbose=False)["AP"] >= {"val": 0.91, "train": 0.84}[split]


# --------------------------------------------------------------------------- inference.eval
def _cfg(**kw) -> dict:
    cfg = {
        "annotations": None,
        "images": None,
        "topology": {"name": "coco18"},
        "decoder": {},
        "decoder_overrides": {},
        "oracle": False,
        "input_size": [224, 224],
        "aspect": "squash",
        "targets": {"stride": 4, "sigma": 1.0, "paf_width": 1.0},
        "batch_size": 2,
    }
    cfg.update(kw)
    return cfg


def test_eval_oracle_mode_writes_results_and_stats(coco_mini, tmp_path, capsys):
    ann = coco_mini / "annotations" / "person_keypoints_val2017.json"
    out = run(_cfg(annotations=str(ann), oracle=True, input_size=224, output=str(tmp_path)))
    printed = capsys.readouterr().out
    assert "oracle maps 56x56 (input 224x224, squash): 79 images" in printed
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets= 20 ]" in printed
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["stats"] == out["stats"] and stats["stats"]["AP"] >= 0.86
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == stats["num_detections"] > 0
    assert all(len(r["keypoints"]) == 51 for r in results)
    assert not list(tmp_path.glob("*.tmp"))
    people = run(
        _cfg(annotations=str(ann), oracle=True, only_with_people=True, output=str(tmp_path))
    )
    assert people["num_images"] == 32
    noisy = run(
        _cfg(annotations=str(ann), oracle=True, noise=0.2, max_images=10, output=str(tmp_path))
    )
    assert noisy["num_images"] == 10 and noisy["stats"]["AP"] < stats["stats"]["AP"]


def test_eval_command_line(coco_mini, tmp_path):
    ann = coco_mini / "annotations" / "person_keypoints_val2017.json"
    proc = subprocess.run(
        [sys.executable, "-m", "inference.eval", "oracle=true", f"annotations={ann}",
         "input_size=[480,640]", f"output={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "oracle maps 120x160 (input 480x640, squash)" in proc.stdout
    assert (tmp_path / "results.json").is_file()


class OracleRuntime:
    """A stand-in network whose outputs are the oracle maps of the images it is given, in order:
    checks model mode's reading, batching, geometry and mapping back without training a model."""

    def __init__(self, gt, input_size, aspect):
        from models.contract import ModelInfo

        self.info = ModelInfo(topology=COCO18, input_size=input_size, aspect=aspect)
        self.gt, self.cat = gt, person_category(gt)
        self.pending: list[tuple[int, int]] = []
        self.ids = iter(sorted(gt.getImgIds()))

    def preprocess(self, image):
        from models.contract import preprocess_image

        self.pending.append((next(self.ids), image.shape[:2]))
        return preprocess_image(image, self.info)

    def __call__(self, batch):
        out = {"heatmap": [], "part_affinity_fields": [], "maxpool_heatmap": []}
        for _ in range(len(batch)):
            image_id, hw = self.pending.pop(0)
            anns = self.gt.loadAnns(self.gt.getAnnIds(imgIds=[image_id]))
            kp = gt_keypoints([a for a in anns if a["num_keypoints"] > 0], self.cat, COCO18)
            heat, paf, _ = oracle_maps(
                kp, hw, self.info.input_size, COCO18, aspect=self.info.aspect
            )
            out["heatmap"].append(heat)
            out["part_affinity_fields"].append(paf)
            out["maxpool_heatmap"].append(_maxpool(heat))
        return {k: np.stack(v) for k, v in out.items()}


def _write_images(root: Path, data: dict) -> Path:
    folder = root / "val2017"
    folder.mkdir(parents=True)
    for im in data["images"]:
        pic = np.full((im["height"], im["width"], 3), 128, np.uint8)
        cv2.imwrite(str(folder / im["file_name"]), pic)
    ann = root / "annotations" / "person_keypoints_val2017.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(data))
    return ann


@pytest.mark.parametrize("aspect", ["squash", "letterbox"])
def test_model_mode_maps_back_to_the_original_images(tmp_path, monkeypatch, aspect):
    data = make_dataset()
    ann = _write_images(tmp_path, data)
    fake = OracleRuntime(load_coco(data), (160, 224), aspect)
    monkeypatch.setattr("inference.eval.load_runtime", lambda *a, **k: fake)
    out = run(_cfg(annotations=str(ann), model_path=str(ann), output=str(tmp_path / "out")))
    assert out["num_images"] == 4 and out["mode"] == "model"  # every image, the empty one too
    assert out["stats"]["AP"] == pytest.approx(1.0)


def test_model_mode_missing_images(tmp_path, monkeypatch):
    data = make_dataset()
    ann = _write_images(tmp_path, data)
    (tmp_path / "val2017" / "000000000002.jpg").unlink()
    monkeypatch.setattr(
        "inference.eval.load_runtime",
        lambda *a, **k: OracleRuntime(load_coco(data), (160, 224), "squash"),
    )
    cfg = _cfg(annotations=str(ann), model_path=str(ann), output=str(tmp_path / "out"))
    with pytest.raises(ImageError, match=r"image id=2: cannot read image .*000000000002.jpg"):
        run(cfg)
    # skipping is explicit; the runtime stand-in reads ids in order, so skip the last image
    data["images"][-1]["file_name"] = "missing.jpg"
    ann.write_text(json.dumps(data))
    (tmp_path / "val2017" / "000000000002.jpg").write_bytes(
        (tmp_path / "val2017" / "000000000001.jpg").read_bytes()
    )
    out = run({**cfg, "skip_unreadable": True})
    assert out["num_images"] == 3 and out["skipped_images"][0].endswith("missing.jpg")


def test_model_mode_with_a_real_checkpoint(tmp_path):
    """A random-weights tiny model through the torch runtime: the whole path runs, and every
    detection lies inside its original image."""
    from tests.deploy_fixtures import make_checkpoint

    data = make_dataset()
    ann = _write_images(tmp_path, data)
    ckpt = make_checkpoint(tmp_path / "tiny.pth", input_size=(64, 96))
    out = run(
        _cfg(annotations=str(ann), model_path=str(ckpt), output=str(tmp_path / "out"),
             decoder_overrides={"threshold_heatmap": 0.0})
    )  # fmt: skip
    assert out["num_images"] == 4 and set(out["stats"]) == set(STAT_NAMES)
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    results = json.loads(Path(out["results"]).read_text())
    for r in results:
        kp = np.array(r["keypoints"]).reshape(17, 3)
        w, h = sizes[r["image_id"]]
        on = kp[:, 2] > 0
        assert ((kp[on, 0] >= 0) & (kp[on, 0] <= w) & (kp[on, 1] >= 0) & (kp[on, 1] <= h)).all()


def test_eval_needs_a_model_or_oracle(tmp_path):
    ann = _write_images(tmp_path, make_dataset())
    with pytest.raises(UsageError, match="model=PATH"):
        run(_cfg(annotations=str(ann), output=str(tmp_path / "o")))


def _maxpool(heat: np.ndarray, k: int = 3) -> np.ndarray:
    r = k // 2
    padded = np.pad(heat, ((0, 0), (r, r), (r, r)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2)).max(axis=(-1, -2))


def test_model_mode_with_an_onnx_model(tmp_path):
    """The default deployment path: an exported ONNX model through ONNX Runtime (NHWC outputs,
    the graph's own max-pool), letterboxed as its checkpoint was trained."""
    from export.__main__ import run as export
    from tests.deploy_fixtures import export_cfg, make_checkpoint

    data = make_dataset()
    ann = _write_images(tmp_path, data)
    ckpt = make_checkpoint(tmp_path / "tiny.pth", input_size=(64, 96), aspect="letterbox")
    onnx_path = export(export_cfg(ckpt, output=str(tmp_path / "tiny.onnx")))["onnx"]
    out = run(
        _cfg(annotations=str(ann), model_path=str(onnx_path), output=str(tmp_path / "out"),
             decoder_overrides={"threshold_heatmap": 0.0})
    )  # fmt: skip
    assert out["mode"] == "model" and out["num_images"] == 4 and out["aspect"] == "letterbox"
    assert out["input_size"] == [64, 96] and set(out["stats"]) == set(STAT_NAMES)
    # the model's stored decoder parameters, then the command line's overrides
    assert out["decoder"]["maxpool_kernel"] == 3 and out["decoder"]["threshold_heatmap"] == 0.0
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    for r in json.loads(Path(out["results"]).read_text()):
        kp = np.array(r["keypoints"]).reshape(17, 3)
        w, h = sizes[r["image_id"]]
        on = kp[:, 2] > 0
        assert ((kp[on, 0] >= 0) & (kp[on, 0] <= w) & (kp[on, 1] >= 0) & (kp[on, 1] <= h)).all()


def test_two_runs_in_the_same_second_get_their_own_run_dirs(tmp_path):
    """Two evals started together resolve the same time-stamped run dir (here pinned by
    hydra.run.dir): each must claim its own, so neither results.json is lost."""
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(make_dataset()))
    run_dir = tmp_path / "outputs" / "eval" / "2026-01-01_00-00-00"
    args = [sys.executable, "-m", "inference.eval", "oracle=true", f"annotations={ann}",
            "input_size=64", f"hydra.run.dir={run_dir}"]  # fmt: skip
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
    dirs = sorted(d.name for d in run_dir.parent.iterdir())
    assert dirs == ["2026-01-01_00-00-00", "2026-01-01_00-00-00_1"]
    for d in dirs:
        assert (run_dir.parent / d / "results.json").is_file()
        assert (run_dir.parent / d / "eval.log").is_file()  # Hydra's log: one per run too


def test_zero_ground_truth_people_prints_a_note(capsys, tmp_path):
    """Image 4 has nobody: COCOeval's AP would be a bare -1.000; a note says why."""
    gt = load_coco(make_dataset())
    fake = [{"image_id": 4, "category_id": 1, "keypoints": [10.0, 10.0, 1.0] * 17, "score": 0.9}]
    stats = evaluate(gt, fake, image_ids=[4])
    assert stats["AP"] == -1.0
    out = capsys.readouterr().out
    assert "note: no ground-truth person with labelled keypoints in the 1 evaluated images" in out
    assert "only_with_people=true" in out
