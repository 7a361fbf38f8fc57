"""Test-time augmentation in map space: mirrored maps un-flip exactly, scaled copies come back
into the plain frame, and a small model runs through every view."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.errors import UsageError
from datasets.topology import Topology
from inference.decoder import OpenPoseDecoder
from inference.tta import (
    TTAConfig,
    check_flip,
    maxpool,
    paf_flip_table,
    tta_maps,
    unflip_maps,
    with_tta,
)
from tests.test_decoder import COCO18, maps, person

ARM_LR = Topology(
    labels=("l_wrist", "l_elbow", "r_wrist", "r_elbow"),
    edges=((1, 0), (2, 3)),  # the right arm is listed the other way round
    flip_pairs=((0, 2), (1, 3)),
    name="arms",
)


def _mirror(keypoints: np.ndarray, width: float, topology: Topology) -> np.ndarray:
    out = keypoints[:, topology.flip_permutation()].copy()
    out[..., 0] = width - out[..., 0]
    return out


@pytest.mark.parametrize("topology", [COCO18, ARM_LR], ids=["coco18", "reversed-edge"])
def test_flipped_oracle_maps_decode_to_the_same_skeletons(topology):
    if topology is COCO18:
        truth = np.stack(
            [person(80, 110, jitter=2, seed=8), person(150, 100, 0.8, jitter=2, seed=9)]
        )
    else:
        truth = np.array([[[60, 50, 2], [90, 80, 2], [150, 60, 2], [120, 100, 2]]], float)
    heat, paf = maps(truth, topology)
    m_heat, m_paf = maps(_mirror(truth, 224, topology), topology)
    u_heat, u_paf = unflip_maps(m_heat[None], m_paf[None], topology)
    np.testing.assert_allclose(u_heat[0], heat, atol=1e-5)
    np.testing.assert_allclose(u_paf[0], paf, atol=1e-5)
    dec = OpenPoseDecoder(topology)
    plain, unflipped = dec(heat, paf), dec(u_heat[0], u_paf[0])
    assert len(plain) == len(unflipped) > 0  # (the two arms of ARM_LR are two objects)
    assert sum(s.num_parts for s in plain) == truth.shape[0] * topology.num_parts
    for a, b in zip(plain, unflipped, strict=True):
        assert a.num_parts == b.num_parts
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-3)


def test_paf_flip_table_signs():
    src, sign = paf_flip_table(ARM_LR)
    assert src.tolist() == [1, 0] and sign.tolist() == [-1.0, -1.0]
    src, sign = paf_flip_table(COCO18)
    assert sorted(src.tolist()) == list(range(COCO18.num_edges))
    perm = COCO18.flip_permutation()
    for e, (a, b) in enumerate(COCO18.edges):
        sa, sb = COCO18.edges[src[e]]
        assert (sa, sb) == ((perm[a], perm[b]) if sign[e] > 0 else (perm[b], perm[a]))
    assert (sign < 0).any()  # coco18 lists hip-hip / eye edges one way only: reversed mirrors


def test_flip_needs_left_right_pairs_closed_under_the_mirror():
    check_flip(COCO18)
    check_flip(ARM_LR)
    sideless = Topology(labels=("head", "tail"), edges=((0, 1),), name="worm", hflip=False)
    with pytest.raises(UsageError, match="tta.flip: topology 'worm' has no left/right part"):
        check_flip(sideless)
    one_arm = Topology(
        labels=("l_wrist", "l_elbow", "r_wrist", "r_elbow"), edges=((1, 0),),
        flip_pairs=((0, 2), (1, 3)), name="one-arm",
    )  # fmt: skip
    with pytest.raises(UsageError, match=r"mirror image of edge \[1, 0\] is not an edge.*without"):
        check_flip(one_arm)


def test_tta_with_flip_averages_the_unflipped_mirror():
    truth = person(100, 110, jitter=2, seed=3)[None]
    heat, paf = maps(truth)
    m_heat, m_paf = maps(_mirror(truth, 224, COCO18))

    def oracle(batch):  # a perfect network: the mirror image is marked by its first column
        mirrored = [bool(x[0, 0, 0] > 0.5) for x in batch]
        return {
            "heatmap": np.stack([m_heat if m else heat for m in mirrored]),
            "part_affinity_fields": np.stack([m_paf if m else paf for m in mirrored]),
        }

    image = np.zeros((1, 3, 224, 224), np.float32)
    image[..., -1] = 1.0  # the last column, the mirror's first
    out = tta_maps(oracle, image, COCO18, TTAConfig(flip=True))
    np.testing.assert_allclose(out["heatmap"][0], heat, atol=1e-5)
    np.testing.assert_allclose(out["part_affinity_fields"][0], paf, atol=1e-5)
    plain = tta_maps(oracle, image, COCO18, TTAConfig())
    assert np.array_equal(plain["heatmap"][0], heat)


def test_scaled_views_come_back_to_the_plain_frame():
    import cv2

    yy, xx = np.mgrid[0:224, 0:224] + 0.5
    blob = np.exp(-((xx - 90) ** 2 + (yy - 130) ** 2) / (2 * 20.0**2)).astype(np.float32)
    image = np.stack([blob] * 3)[None]

    def net(batch):  # equivariant stand-in: each channel is the image at stride 4
        out = np.stack([cv2.resize(x[0], (56, 56), interpolation=cv2.INTER_AREA) for x in batch])
        return {
            "heatmap": out[:, None].repeat(18, 1),
            "part_affinity_fields": out[:, None].repeat(42, 1),
        }

    plain = net(image)["heatmap"][0, 0]
    for scales in ((0.75,), (1.25,), (1.0, 0.75, 1.25)):
        out = tta_maps(net, image, COCO18, TTAConfig(scales=scales))["heatmap"][0, 0]
        assert np.abs(out - plain)[8:-8, 8:-8].max() < 0.03
        assert np.unravel_index(out.argmax(), out.shape) == np.unravel_index(
            plain.argmax(), plain.shape
        )


def test_tta_config_and_maxpool():
    assert not TTAConfig.from_config({}).active
    cfg = TTAConfig.from_config({"flip": True, "scales": [1.0, 0.75, 1.25]})
    assert cfg.active and cfg.scales == (1.0, 0.75, 1.25)
    for bad in ([0.0], "abc", ["x"]):
        with pytest.raises(UsageError, match=r"tta.scales must be numbers in \[0.1, 4\]"):
            TTAConfig.from_config({"scales": bad})
    assert TTAConfig.from_config({"scales": 0.75}).scales == (0.75,)
    heat = np.random.default_rng(0).uniform(0, 1, (1, 2, 9, 9)).astype(np.float32)
    pooled = maxpool(heat, 3)
    assert pooled[0, 1, 4, 4] == heat[0, 1, 3:6, 3:6].max()
    assert pooled[0, 0, 0, 0] == heat[0, 0, :2, :2].max()


def test_tta_on_a_small_model_through_the_torch_runtime(tmp_path):
    pytest.importorskip("torch")
    from inference.runtime import load_runtime
    from tests.deploy_fixtures import INPUT_SIZE, make_checkpoint, random_image

    rt = load_runtime(make_checkpoint(tmp_path / "tiny.pth"))
    x, _ = rt.preprocess(random_image(*INPUT_SIZE))
    batch = np.stack([x, x[:, ::-1, :]])  # (2, 3, H, W)
    plain = rt(batch)
    mirrored = rt(np.ascontiguousarray(batch[..., ::-1]))
    u_heat, u_paf = unflip_maps(mirrored["heatmap"], mirrored["part_affinity_fields"], COCO18)
    flip = with_tta(rt, {"flip": True})
    out = flip(batch)
    np.testing.assert_allclose(out["heatmap"], (plain["heatmap"] + u_heat) / 2, atol=1e-5)
    np.testing.assert_allclose(
        out["part_affinity_fields"], (plain["part_affinity_fields"] + u_paf) / 2, atol=1e-5
    )
    np.testing.assert_array_equal(out["maxpool_heatmap"], maxpool(out["heatmap"], 3))
    multi = with_tta(rt, {"flip": True, "scales": [1.0, 0.75, 1.25]})
    maps_ = multi(batch)
    assert maps_["heatmap"].shape == plain["heatmap"].shape
    assert np.isfinite(maps_["part_affinity_fields"]).all()
    dec = multi.make_decoder(threshold_heatmap=0.0)  # random weights: decode whatever is there
    assert isinstance(dec(maps_["heatmap"][0], maps_["part_affinity_fields"][0]), list)
    assert with_tta(rt, {"flip": False, "scales": [1.0]}) is rt
