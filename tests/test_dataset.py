"""datasets.coco / datasets.augment: sample contract, geometry, flips, masks, bad images."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets.augment import AugmentConfig, color_matrix, sample_affine
from datasets.coco import CocoKeypoints, build_dataset, collate
from datasets.errors import UsageError, UserError
from datasets.geometry import apply, fit_matrix
from datasets.targets import TargetConfig, ignore_mask
from datasets.topology import Topology

FULL_AUG = {
    "rotate": 30.0,
    "scale": [0.75, 1.25],
    "translate": 0.1,
    "flip": 0.5,
    "color": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05},
}

# three coloured dots: a left/right pair that a mirror swaps, and a centre part
DOTS = Topology(
    labels=("left_dot", "right_dot", "centre"),
    edges=((2, 0), (2, 1)),
    flip_pairs=((0, 1),),
    name="dots",
)
DOT_BGR = {0: (0, 0, 255), 1: (255, 0, 0), 2: (0, 255, 0)}  # red, blue, green


def _write_set(folder: Path, images: list[tuple[np.ndarray, list[dict]]], topo: Topology) -> Path:
    """A COCO keypoint file + JPEGs (quality 95) from (BGR image, annotations) pairs."""
    (folder / "img").mkdir(parents=True)
    recs, anns = [], []
    for i, (img, objs) in enumerate(images, start=1):
        name = f"{i:04d}.jpg"
        cv2.imwrite(str(folder / "img" / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        recs.append({"id": i, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
        for obj in objs:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "iscrowd": 0, **obj})
    data = {"images": recs, "annotations": anns, "categories": [topo.to_coco_category(1)]}
    path = folder / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _dots_image(h: int, w: int, pts: np.ndarray, radius: int = 5) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    for k, (x, y) in enumerate(pts):
        # pixel centres at +0.5: the disc around continuous (x, y) is centred at index x - 0.5
        cv2.circle(
            img,
            (int(round((x - 0.5) * 16)), int(round((y - 0.5) * 16))),
            radius * 16,
            DOT_BGR[k],
            -1,
            cv2.LINE_AA,
            shift=4,
        )
    return img


def _dots_set(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    images = []
    for h, w in [(480, 640), (360, 300), (600, 400)]:
        pts = np.stack([rng.uniform(0.3, 0.7, 3) * w, rng.uniform(0.3, 0.7, 3) * h], 1)
        kp = np.concatenate([pts, np.full((3, 1), 2.0)], 1)
        images.append(
            (
                _dots_image(h, w, pts, radius=max(h, w) // 60),
                [{"keypoints": kp.reshape(-1).tolist(), "num_keypoints": 3}],
            )
        )
    return _write_set(tmp_path, images, DOTS)


def _centroid(image_rgb: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray | None:
    """Continuous (x, y) centroid of the pixels close to colour ``rgb``, or None."""
    diff = np.abs(image_rgb.astype(np.int32) - np.array(rgb)).sum(-1)
    ys, xs = np.nonzero(diff < 120)
    if len(xs) < 3:
        return None
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


# --------------------------------------------------------------------------- geometry
def test_keypoints_move_with_the_image(tmp_path):
    ann = _dots_set(tmp_path)
    geo = {**FULL_AUG, "color": {}}  # colour jitter would blur the marker colours
    ds = CocoKeypoints(
        ann, tmp_path / "img", DOTS, input_size=(128, 160), augment=geo, max_upsample=1.25
    )
    perm = DOTS.flip_permutation()
    torch.manual_seed(0)
    found = flips = 0
    for _ in range(8):
        for i in range(len(ds)):
            s = ds[i]
            img = (s["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            flipped = np.linalg.det(s["matrix"].numpy()[:, :2]) < 0
            flips += flipped
            for part in range(3):
                x, y, v = s["keypoints"][0, part].tolist()
                if not (8 <= x < 152 and 8 <= y < 120):
                    continue  # the dot may be cut by the border
                # the dot drawn for the original part this label now names
                src = perm[part] if flipped else part
                bgr = DOT_BGR[src]
                c = _centroid(img, (bgr[2], bgr[1], bgr[0]))
                assert c is not None, (i, part)
                np.testing.assert_allclose(c, (x, y), atol=0.8)
                found += 1
    assert found > 40 and 0 < flips < 24  # both mirrored and plain samples were checked


def test_flip_swaps_left_right_labels_coco18(coco_mini):
    topo = Topology.named("coco18")
    ann = coco_mini / "annotations" / "person_keypoints_val2017.json"
    plain = CocoKeypoints(ann, coco_mini / "val2017", topo, augment=None, render_targets=False)
    mirror = CocoKeypoints(
        ann, coco_mini / "val2017", topo, augment={"flip": 1.0}, render_targets=False
    )
    names = topo.labels
    for i in range(5):
        a, b = plain[i], mirror[i]
        # the same warp mirrored: equal up to the interpolation's fixed-point rounding
        np.testing.assert_allclose(
            b["image"].numpy(), a["image"].numpy()[:, :, ::-1], atol=1.5 / 255
        )
        ka, kb = a["keypoints"].numpy(), b["keypoints"].numpy()
        for j, name in enumerate(names):
            if name.startswith("left_"):
                other = names.index("right_" + name[5:])
            elif name.startswith("right_"):
                other = names.index("left_" + name[6:])
            else:
                other = j
            # new part j is the mirror image of old part `other`
            np.testing.assert_array_equal(kb[:, j, 2], ka[:, other, 2])
            lab = ka[:, other, 2] > 0
            np.testing.assert_allclose(kb[lab, j, 0], 224 - ka[lab, other, 0], atol=1e-3)
            np.testing.assert_allclose(kb[lab, j, 1], ka[lab, other, 1], atol=1e-3)


def test_eval_mode_is_the_plain_fit(coco_mini):
    topo = Topology.named("coco18")
    ann = coco_mini / "annotations" / "person_keypoints_val2017.json"
    for aspect in ("squash", "letterbox"):
        ds = CocoKeypoints(
            ann,
            coco_mini / "val2017",
            topo,
            input_size=(192, 256),
            augment=None,
            aspect=aspect,
            render_targets=False,
        )
        s = ds[0]
        rec = ds.records[0]
        expect = fit_matrix(rec["hw"], (192, 256), aspect)
        np.testing.assert_allclose(s["matrix"].numpy(), expect)
        kp = rec["keypoints"]
        lab = kp[..., 2] > 0
        np.testing.assert_allclose(
            s["keypoints"].numpy()[lab][:, :2], apply(expect, kp[lab][:, :2]), atol=1e-3
        )
        assert s["image"].shape == (3, 192, 256) and s["image"].dtype == torch.float32
        assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
        if aspect == "letterbox":
            assert ds.records[0]["hw"][0] != ds.records[0]["hw"][1]


def test_reduced_decode_matches_full_decode(tmp_path, monkeypatch):
    ann = _dots_set(tmp_path)
    used = []
    real = CocoKeypoints._decode

    def spy(self, rec, r):
        used.append(r)
        return real(self, rec, r)

    monkeypatch.setattr(CocoKeypoints, "_decode", spy)
    kw = dict(input_size=(64, 64), augment=None, render_targets=False)
    full = CocoKeypoints(ann, tmp_path / "img", DOTS, max_upsample=0.01, **kw)
    reduced = CocoKeypoints(ann, tmp_path / "img", DOTS, max_upsample=1.0, **kw)
    for i in range(len(full)):
        a, b = full[i], reduced[i]
        assert torch.equal(a["keypoints"], b["keypoints"])
        assert float((a["image"] - b["image"]).abs().mean()) < 0.02
        img = (b["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        for part in range(3):
            bgr = DOT_BGR[part]
            c = _centroid(img, (bgr[2], bgr[1], bgr[0]))
            np.testing.assert_allclose(c, b["keypoints"][0, part, :2].numpy(), atol=0.8)
    # calls alternate full, reduced: a 640x480 image fitted into 64x64 decodes at 1/4 or 1/8
    assert set(used[0::2]) == {1} and min(used[1::2]) >= 4


def test_colour_matrix():
    rng = np.random.default_rng(0)
    swap = color_matrix(None, rng)
    np.testing.assert_array_equal(swap, [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]])
    bgr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = cv2.transform(bgr, swap)
    np.testing.assert_array_equal(out, bgr[..., ::-1])
    grey = color_matrix(AugmentConfig(saturation=1.0), np.random.default_rng(1))
    # a saturation factor of exactly 0 is measure-zero; check the matrix rows converge instead
    assert grey.shape == (3, 4)
    jit = color_matrix(AugmentConfig(brightness=0.5, hue=0.1), np.random.default_rng(2))
    assert not np.allclose(jit, swap)
    # the affine chain keeps a grey pixel grey under saturation and hue changes
    g = np.full((1, 1, 3), 100, np.uint8)
    sat_hue = color_matrix(AugmentConfig(saturation=0.5, hue=0.2), np.random.default_rng(4))
    px = cv2.transform(g, sat_hue)[0, 0].astype(int)
    assert np.ptp(px) <= 1


def test_sample_affine_composes_one_matrix():
    rng = np.random.default_rng(0)
    aug = AugmentConfig(rotate=0.0, scale=(2.0, 2.0), translate=0.0, flip=0.0)
    m, flipped = sample_affine((100, 200), (50, 50), "squash", aug, rng)
    # zoom 2 about the input centre (25, 25): the image centre stays at the input centre
    np.testing.assert_allclose(apply(m, [100.0, 50.0]), [25.0, 25.0])
    np.testing.assert_allclose(apply(m, [150.0, 50.0]), [25.0 + 2 * 50 * 0.25, 25.0])
    assert not flipped
    m, flipped = sample_affine((100, 200), (50, 50), "squash", AugmentConfig(flip=1.0), rng)
    assert flipped
    np.testing.assert_allclose(apply(m, [0.0, 0.0]), [50.0, 0.0])  # left edge -> right edge
    with pytest.raises(ValueError, match="augment.scale"):
        AugmentConfig.from_config({"scale": [1.2, 0.8]})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"augment": {"rotate": "abc"}}, "data.augment.rotate must be a number, got 'abc'"),
        ({"augment": {"color": {"hue": None}}}, "data.augment.color.hue must be a number"),
        ({"augment": {"flip": 2}}, "data.augment.flip is a probability in [0, 1], got 2.0"),
        ({"augment": {"scale": "abc"}}, "data.augment.scale must be [min, max] or one number"),
        ({"aspect": "bogus"}, "data.aspect must be one of ['squash', 'letterbox'], got 'bogus'"),
        ({"max_upsample": "abc"}, "data.max_upsample must be a number > 0, got 'abc'"),
    ],
)
def test_bad_data_options_are_usage_errors_before_the_files_are_read(data, message):
    node = {"train_annotations": "/nonexistent.json", "train_images": "/nonexistent", **data}
    with pytest.raises(UsageError) as e:
        build_dataset({"data": node, "targets": {}}, "train", Topology.named("coco18"))
    assert str(e.value).startswith(message)


# --------------------------------------------------------------------------- masks
def test_mask_covers_crowd_regions_coco_mini(coco_mini):
    topo = Topology.named("coco18")
    ann = coco_mini / "annotations" / "person_keypoints_val2017.json"
    ds = CocoKeypoints(
        ann, coco_mini / "val2017", topo, augment=None, render_targets=False, skip_empty=False
    )
    checked = 0
    for i, rec in enumerate(ds.records):
        if not any(a.get("iscrowd") for a in rec["ignore"]):
            continue
        s = ds[i]
        h, w = rec["hw"]
        crowd = ignore_mask([a for a in rec["ignore"] if a["iscrowd"]], h, w)
        # the crowd region in map pixels (stride 4): a map pixel fully inside it is ignored
        # (squash without augmentation is a plain resize, so an area resize gives the map)
        to_map = cv2.resize(crowd.astype(np.float32), (56, 56), interpolation=cv2.INTER_AREA)
        inside = to_map > 0.999
        assert inside.sum() > 0
        assert float(s["mask"][torch.from_numpy(inside)].max()) < 0.05
        # and nothing is ignored far from every ignore region
        every = ignore_mask(rec["ignore"], h, w).astype(np.float32)
        away = cv2.resize(every, (56, 56), interpolation=cv2.INTER_AREA) == 0
        away = cv2.erode(away.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert float(s["mask"][torch.from_numpy(away)].min()) > 0.999
        checked += 1
    assert checked >= 1


def test_mask_follows_augmentation(tmp_path):
    # one labelled dot set plus an unlabelled person region: the ignore region moves with the image
    h, w = 240, 320
    pts = np.array([[100.0, 100.0], [140.0, 100.0], [120.0, 130.0]])
    img = _dots_image(h, w, pts)
    cv2.rectangle(img, (200, 40), (279, 199), (255, 255, 255), -1)  # the unannotated "person"
    kp = np.concatenate([pts, np.full((3, 1), 2.0)], 1).reshape(-1).tolist()
    unl = {
        "keypoints": [0] * 9,
        "num_keypoints": 0,
        "bbox": [200, 40, 80, 160],
        "segmentation": [[200, 40, 280, 40, 280, 200, 200, 200]],
    }
    ann = _write_set(tmp_path, [(img, [{"keypoints": kp, "num_keypoints": 3}, unl])], DOTS)
    ds = CocoKeypoints(
        ann, tmp_path / "img", DOTS, input_size=(128, 128), augment={**FULL_AUG, "color": {}}
    )
    torch.manual_seed(1)
    for _ in range(6):
        s = ds[0]
        white = (s["image"].min(0).values > 0.9).float()  # the rectangle's pixels
        white_map = torch.nn.functional.avg_pool2d(white[None, None], 4)[0, 0]
        full = white_map > 0.99
        if full.sum() == 0:
            continue
        assert float(s["mask"][full].max()) < 0.05
        # map pixels not touching the rectangle are trained on (bilinear edges bleed one pixel)
        near = torch.nn.functional.max_pool2d(white_map[None, None], 3, 1, 1)[0, 0] > 0
        assert float(s["mask"][~near].min()) > 0.999


# --------------------------------------------------------------------------- bad input
def _copy_images(coco_mini: Path, folder: Path, n: int = 4) -> tuple[Path, list[dict]]:
    data = json.loads((coco_mini / "annotations" / "person_keypoints_val2017.json").read_text())
    ids = []
    for a in data["annotations"]:
        if a["num_keypoints"] > 0 and a["image_id"] not in ids:
            ids.append(a["image_id"])
    keep = set(ids[:n])
    data["images"] = [i for i in data["images"] if i["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    (folder / "img").mkdir(parents=True)
    for rec in data["images"]:
        (folder / "img" / rec["file_name"]).write_bytes(
            (coco_mini / "val2017" / rec["file_name"]).read_bytes()
        )
    path = folder / "ann.json"
    path.write_text(json.dumps(data))
    return path, data["images"]


def test_bad_images_are_skipped_counted_and_warned(tmp_path, coco_mini):
    ann, images = _copy_images(coco_mini, tmp_path)
    files = [tmp_path / "img" / r["file_name"] for r in images]
    raw = files[0].read_bytes()
    files[0].write_bytes(raw[: len(raw) // 2])  # truncated
    files[1].write_bytes(b"this is not a jpeg" * 10)  # corrupt
    files[2].unlink()  # missing
    topo = Topology.named("coco18")
    ds = CocoKeypoints(ann, tmp_path / "img", topo, augment=None, render_targets=False)
    good_id = images[3]["id"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [ds[i]["image_id"] for i in range(4)]
    assert ids == [good_id] * 4  # each bad one replaced (eval mode: the next usable image)
    assert ds.num_bad == 6  # 3 + 2 + 1 replacements on the way to the good image
    text = "\n".join(str(w.message) for w in caught)
    assert "truncated" in text and "not a decodable image" in text and "cannot read" in text
    assert len(caught) == 3  # one warning per bad image
    files[3].unlink()
    with pytest.raises(UserError, match="unusable images in a row"), pytest.warns(UserWarning):
        ds[0]


def test_image_size_disagreeing_with_record(tmp_path, coco_mini):
    ann, images = _copy_images(coco_mini, tmp_path, n=2)
    data = json.loads(ann.read_text())
    data["images"][0]["width"] += 64
    ann.write_text(json.dumps(data))
    ds = CocoKeypoints(
        ann, tmp_path / "img", Topology.named("coco18"), augment=None, render_targets=False
    )
    with pytest.warns(UserWarning, match="but its record says"):
        assert ds[0]["image_id"] == images[1]["id"]


def test_bad_annotation_files(tmp_path):
    topo = Topology.named("coco18")
    with pytest.raises(UserError, match="annotation file .*none.json not found: give the path"):
        CocoKeypoints(tmp_path / "none.json", tmp_path, topo)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoKeypoints(tmp_path / "bad.json", tmp_path, topo)
    (tmp_path / "other.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": [DOTS.to_coco_category(1)]})
    )
    with pytest.raises(
        ValueError,
        match=r"keypoints \['left_dot', 'right_dot', 'centre'\] match no label of topology 'coco18'",
    ):
        CocoKeypoints(tmp_path / "other.json", tmp_path, topo)
    with pytest.raises(ValueError, match="divisible by stride"):
        CocoKeypoints(tmp_path / "other.json", tmp_path, DOTS, input_size=(130, 128))
    cat = DOTS.to_coco_category(1)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 9, "width": 9}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "keypoints": [1, 1, 2]}],
        "categories": [cat],
    }
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"wrong length \(expected 9 numbers\): annotation ids 5"):
        CocoKeypoints(tmp_path / "short.json", tmp_path, DOTS)


# --------------------------------------------------------------------------- contract
def test_sample_contract_and_collate(coco_mini):
    topo = Topology.named("coco18")
    ann = coco_mini / "annotations" / "person_keypoints_train2017.json"
    ds = CocoKeypoints(ann, coco_mini / "train2017", topo, augment=FULL_AUG, max_upsample=1.25)
    torch.manual_seed(0)
    samples = [ds[i] for i in range(4)]
    s = samples[0]
    assert s["image"].shape == (3, 224, 224) and s["image"].dtype == torch.float32
    assert s["keypoints"].dtype == torch.float32 and s["keypoints"].shape[1:] == (18, 3)
    assert s["mask"].shape == (56, 56) and s["mask"].dtype == torch.float32
    assert s["heatmap"].shape == (18, 56, 56) and s["paf"].shape == (42, 56, 56)
    assert s["matrix"].dtype == torch.float64 and s["matrix"].shape == (2, 3)
    assert isinstance(s["image_id"], int)
    # raw COCO-17 file + coco18 topology: the neck was added on load
    kp = s["keypoints"].numpy()
    both = (kp[:, 5, 2] > 0) & (kp[:, 6, 2] > 0)
    np.testing.assert_allclose(kp[both, 17, :2], (kp[both, 5, :2] + kp[both, 6, :2]) / 2, atol=1e-3)
    batch = collate(samples)
    n = max(x["keypoints"].shape[0] for x in samples)
    assert batch["keypoints"].shape == (4, n, 18, 3)
    assert batch["image"].shape == (4, 3, 224, 224) and batch["heatmap"].shape == (4, 18, 56, 56)
    assert batch["image_id"].tolist() == [x["image_id"] for x in samples]
    for b, x in enumerate(samples):
        m = x["keypoints"].shape[0]
        assert torch.equal(batch["keypoints"][b, :m], x["keypoints"])
        assert float(batch["keypoints"][b, m:, :, 2].abs().sum()) == 0.0  # padding has v = 0
    # a heatmap peak where a visible keypoint landed inside the input
    x, y, v = next(
        (float(p[0]), float(p[1]), float(p[2]))
        for p in s["keypoints"].reshape(-1, 3)
        if p[2] > 0 and 4 <= p[0] < 220 and 4 <= p[1] < 220
    )
    part = int(
        next(
            j
            for j in range(18)
            for o in range(kp.shape[0])
            if kp[o, j, 0] == x and kp[o, j, 1] == y
        )
    )
    assert float(s["heatmap"][part, int(y // 4), int(x // 4)]) > 0.5


def test_build_dataset_and_loader(coco_mini):
    cfg = {
        "data": {
            "train_annotations": str(coco_mini / "annotations/person_keypoints_train2017.json"),
            "train_images": str(coco_mini / "train2017"),
            "val_annotations": str(coco_mini / "annotations/person_keypoints_val2017.json"),
            "val_images": str(coco_mini / "val2017"),
            "input_size": [128, 96],
            "aspect": "letterbox",
            "augment": FULL_AUG,
            "targets_on_device": True,
            "max_upsample": 1.25,
        },
        "targets": {"stride": 8, "sigma": 1.5},
    }
    topo = Topology.named("coco18")
    train = build_dataset(cfg, "train", topo)
    assert train.augment is not None and not train.render_targets
    assert train.targets == TargetConfig(stride=8, sigma=1.5) and train.map_size == (16, 12)
    val = build_dataset(cfg["data"], "val", topo, targets=TargetConfig())
    assert val.augment is None and val.map_size == (32, 24)
    # validation scores every image (79 in coco-mini val, 32 with people), training only those
    # with a labelled person; data.val_skip_empty=true restricts validation too
    assert len(val) == 79
    cfg["data"]["val_skip_empty"] = True
    assert len(build_dataset(cfg["data"], "val", topo, targets=TargetConfig())) == 32
    cfg["data"]["skip_empty"] = False
    assert len(build_dataset(cfg, "train", topo)) == 80 > len(train)
    loader = torch.utils.data.DataLoader(train, batch_size=4, num_workers=2, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 128, 96) and "heatmap" not in batch
    with pytest.raises(ValueError, match="split must be"):
        build_dataset(cfg, "test", topo)


def test_targets_on_device_match_worker_targets(coco_mini):
    from datasets.targets import render_targets_torch

    topo = Topology.named("coco18")
    ann = coco_mini / "annotations" / "person_keypoints_train2017.json"
    ds = CocoKeypoints(ann, coco_mini / "train2017", topo, augment=FULL_AUG)
    torch.manual_seed(5)
    batch = collate([ds[i] for i in range(3)])
    heat, paf = render_targets_torch(batch["keypoints"], topo, (56, 56), ds.targets)
    torch.testing.assert_close(heat, batch["heatmap"], atol=1e-4, rtol=0)
    torch.testing.assert_close(paf, batch["paf"], atol=1e-4, rtol=0)


def test_images_are_rgb_in_0_1_not_normalised(tmp_path):
    """The network normalises inside its graph (ONNX input: RGB in [0, 1]), so the dataset must
    not: a flat (R, G, B) = (200, 100, 50) picture fitted without augmentation comes out as
    those values / 255 in RGB order (ImageNet normalisation would give about 1.3, 0.0, -1.2)."""
    from tests._train_data import write_coco_set

    root = write_coco_set(tmp_path / "coco", n_train=2, n_val=1, hw=(64, 96))
    for path in (root / "train2017").glob("*.jpg"):
        cv2.imwrite(str(path), np.full((64, 96, 3), (50, 100, 200), np.uint8))  # BGR on disk
    ann = root / "annotations" / "person_keypoints_train2017_modified.json"
    ds = CocoKeypoints(ann, root / "train2017", Topology.named("coco18"), input_size=(64, 96))
    image = ds[0]["image"]  # (3, H, W)
    assert image.shape == (3, 64, 96) and image.dtype == torch.float32
    centre = image[:, 8:-8, 8:-8].reshape(3, -1)
    want = torch.tensor([200.0, 100.0, 50.0])[:, None] / 255
    torch.testing.assert_close(centre, want.expand_as(centre), atol=2 / 255, rtol=0)


def _tiny_set(tmp_path: Path, n: int = 4) -> tuple[Path, Path]:
    from tests._train_data import write_coco_set

    root = write_coco_set(tmp_path / "coco", n_train=n, n_val=1)
    return root / "annotations" / "person_keypoints_train2017_modified.json", root / "train2017"


@pytest.mark.parametrize("augment", [None, {}], ids=["eval", "train"])
def test_zero_byte_images_take_the_skip_path_also_when_a_replacement_is_bad(tmp_path, augment):
    """A 0-byte file used to raise cv2.error (-215 !buf.empty()) in the worker; and a random
    replacement can land on another bad image: both end in a good sample, counted."""
    ann, images = _tiny_set(tmp_path)
    files = sorted(images.iterdir())
    for f in files[:3]:
        f.write_bytes(b"")  # three of four images empty
    ds = CocoKeypoints(ann, images, Topology.named("coco18"), augment=augment, input_size=(64, 64))
    good_id = int(files[3].stem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = [ds[i % 4] for i in range(12)]
    assert {s["image_id"] for s in samples} == {good_id}
    assert "is empty (0 bytes)" in str(caught[0].message)
    batch = collate(samples)
    assert int(batch["skipped"]) == ds.num_bad == sum(s["skipped"] for s in samples) >= 9
    assert [s["skipped"] for s in samples[3::4]] == [0, 0, 0]  # the good one, asked directly


def test_pixel_cap_in_the_dataset_is_a_skip(tmp_path):
    ann, images = _tiny_set(tmp_path, n=2)
    ds = CocoKeypoints(
        ann, images, Topology.named("coco18"), augment=None, input_size=(64, 64), max_pixels=1000
    )
    with (
        pytest.warns(UserWarning, match="over max_pixels=1000"),
        pytest.raises(UserError, match="2 unusable images in a row"),
    ):
        ds[0]
