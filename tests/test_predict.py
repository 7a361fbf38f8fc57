"""predict: images / folders / videos -> COCO JSON in original pixels, drawn outputs, timings."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from datasets.errors import UserError
from datasets.geometry import apply
from datasets.images import ImageError
from datasets.targets import TargetConfig, render_targets
from datasets.topology import Topology
from export.__main__ import run as export
from inference.predict import run
from inference.runtime import Runtime, maxpool_nchw
from inference.stream import Frame, Pipeline, coco_category
from models.contract import ModelInfo
from tests.deploy_fixtures import REPO, export_cfg, make_checkpoint, random_image


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    ckpt = make_checkpoint(d / "tiny.pth")
    return export(export_cfg(ckpt, output=str(d / "tiny.onnx")))["onnx"]


class GroundTruthRuntime(Runtime):
    """A 'network' that returns the training targets of known keypoints: decoding them must give
    the keypoints back, so the whole predict post-processing chain is checked exactly."""

    backend = "ground-truth"

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self.keypoints = None  # (N, K, 3) in original image pixels, set per image

    def preprocess(self, image):
        x, m = super().preprocess(image)
        self._matrix = m
        return x, m

    def _run(self, batch):
        kp = self.keypoints.copy()
        kp[..., :2] = apply(self._matrix, kp[..., :2])  # original -> input pixels
        heat, paf = render_targets(kp, self.info.topology, self.info.map_size, TargetConfig())
        return {
            "heatmap": heat[None],
            "part_affinity_fields": paf[None],
            "maxpool_heatmap": maxpool_nchw(heat[None], 3),
        }


def _person(cx: float, cy: float, s: float) -> np.ndarray:
    """An upright coco18 stick figure (K, 3) centred at (cx, cy), height ~ 6 s."""
    pts = {
        "nose": (0, -2.6),
        "left_eye": (0.25, -2.8),
        "right_eye": (-0.25, -2.8),
        "left_ear": (0.5, -2.7),
        "right_ear": (-0.5, -2.7),
        "left_shoulder": (0.9, -1.8),
        "right_shoulder": (-0.9, -1.8),
        "left_elbow": (1.2, -0.8),
        "right_elbow": (-1.2, -0.8),
        "left_wrist": (1.3, 0.1),
        "right_wrist": (-1.3, 0.1),
        "left_hip": (0.6, 0.2),
        "right_hip": (-0.6, 0.2),
        "left_knee": (0.7, 1.5),
        "right_knee": (-0.7, 1.5),
        "left_ankle": (0.75, 2.8),
        "right_ankle": (-0.75, 2.8),
        "neck": (0, -1.8),
    }
    topo = Topology.named("coco18")
    return np.array([[cx + s * pts[n][0], cy + s * pts[n][1], 2] for n in topo.labels], np.float32)


@pytest.mark.parametrize("aspect", ["squash", "letterbox"])
def test_predictions_come_back_in_original_pixels(aspect):
    info = ModelInfo(
        topology=Topology.named("coco18"),
        input_size=(128, 96),
        aspect=aspect,
        decoder={"threshold_heatmap": 0.1},
    )
    rt = GroundTruthRuntime(info)
    image = random_image(400, 640)  # wider than the (portrait) input: squash and letterbox differ
    rt.keypoints = np.stack([_person(200, 200, 40), _person(450, 210, 45)])
    (result,) = Pipeline(rt)([Frame(image, 0, 0, "image")])
    skeletons = result.skeletons
    assert len(skeletons) == 2
    got = sorted((sk.keypoints for sk in skeletons), key=lambda k: k[17, 0])
    for want, kp in zip(rt.keypoints, got, strict=True):
        assert np.isfinite(kp[:, :2]).all()
        # a map pixel is 4 input pixels = 20 (squash x) or 26.7 (letterbox) original pixels;
        # the sub-pixel refinement recovers positions to a small fraction of that
        err = np.abs(kp[:, :2] - want[:, :2]).max()
        assert err < 3.0, (aspect, err)


def test_coco_category_drops_the_neck():
    cat = coco_category(Topology.named("coco18"))
    assert cat["id"] == 1 and len(cat["keypoints"]) == 17 and "neck" not in cat["keypoints"]
    other = Topology(labels=("a", "b"), edges=((0, 1),), name="stick")
    assert coco_category(other)["keypoints"] == ["a", "b"]


def test_folder_to_coco_json_and_pictures(onnx_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, (h, w) in enumerate([(120, 160), (200, 100), (64, 96)]):
        name = f"{785 + i:012d}.jpg" if i < 2 else "holiday.png"
        cv2.imwrite(str(src / name), random_image(h, w, seed=i))
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    r = run(
        {
            "input": str(src),
            "model": str(onnx_model),
            "output": str(out),
            "batch_size": 2,
            "decoder_overrides": {"threshold_heatmap": 0.2},
        }
    )
    images = json.loads((out / "images.json").read_text())
    assert [im["id"] for im in images] == [785, 786, 3]  # COCO ids kept, others numbered
    assert [(im["width"], im["height"]) for im in images] == [(160, 120), (100, 200), (96, 64)]
    results = json.loads(r["predictions"].read_text())
    assert r["num_skeletons"] == len(results)
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    for res in results:
        assert res["category_id"] == 1 and len(res["keypoints"]) == 51
        kp = np.array(res["keypoints"]).reshape(17, 3)
        w, h = sizes[res["image_id"]]
        shown = kp[:, 2] > 0
        assert (
            (kp[shown, 0] >= 0) & (kp[shown, 0] <= w) & (kp[shown, 1] >= 0) & (kp[shown, 1] <= h)
        ).all()
    for stem in ("000000000785", "000000000786", "holiday"):
        drawn = cv2.imread(str(out / "images" / f"{stem}.jpg"))
        assert drawn is not None
    assert cv2.imread(str(out / "images" / "holiday.jpg")).shape[:2] == (64, 96)
    stats = r["stats"]
    assert stats["frames"] == 3 and stats["fps"] > 0
    assert sum(stats["share"].values()) == pytest.approx(1.0)


def test_video_in_video_out(onnx_model, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    assert writer.isOpened()
    for i in range(5):
        writer.write(random_image(64, 96, seed=i))
    writer.release()
    r = run({"input": str(video), "model": str(onnx_model), "output": str(tmp_path / "o")})
    assert r["video"] == tmp_path / "o" / "clip_pose.mp4"
    cap = cv2.VideoCapture(str(r["video"]))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 5
    images = json.loads((tmp_path / "o" / "images.json").read_text())
    assert [im["id"] for im in images] == [0, 1, 2, 3, 4]


def test_bad_inputs_are_named(onnx_model, tmp_path):
    with pytest.raises(UserError, match="input not found"):
        run(
            {"input": str(tmp_path / "nope.jpg"), "model": str(onnx_model), "output": str(tmp_path)}
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        run({"input": str(tmp_path / "empty"), "model": str(onnx_model), "output": str(tmp_path)})
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ImageError, match=r"broken\.jpg is (truncated|not a decodable image)"):
        run({"input": str(broken), "model": str(onnx_model), "output": str(tmp_path / "b")})


def test_cli_on_coco_mini(onnx_model, tmp_path, coco_mini):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference.predict",
            f"input={coco_mini / 'val2017'}",
            f"model={onnx_model}",
            "max_frames=3",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FPS" in proc.stdout and "network" in proc.stdout
    assert len(json.loads((tmp_path / "images.json").read_text())) == 3


def test_one_unreadable_image_in_a_folder_is_skipped_and_counted(onnx_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"{i + 1:012d}.jpg"), random_image(64, 96, seed=i))
    (src / "000000000002.jpg").write_bytes(b"")  # the middle one: empty
    out = tmp_path / "out"
    r = run({"input": str(src), "model": str(onnx_model), "output": str(out)})
    images = json.loads((out / "images.json").read_text())
    assert [im["id"] for im in images] == [1, 3]  # the good ones are still predicted
    assert r["stats"]["skipped_images"] == [str(src / "000000000002.jpg")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_images"] == [str(src / "000000000002.jpg")]
    assert summary["frames"] == 2


def test_corrupt_video_names_the_input(onnx_model, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(ImageError, match=r"cannot read video .*clip\.mp4: it is empty, corrupt"):
        run({"input": str(video), "model": str(onnx_model), "output": str(tmp_path / "o")})
    with pytest.raises(ImageError, match="cannot read video"):
        run({"input": str(video), "model": str(onnx_model), "output": str(tmp_path / "o2"),
             "draw": False})  # fmt: skip
