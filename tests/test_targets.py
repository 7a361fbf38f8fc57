"""Target rendering: heatmaps, PAFs, ignore masks; numpy per sample == torch batched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.errors import UsageError
from datasets.targets import (
    TargetConfig,
    ignore_mask,
    mask_to_weights,
    pad_keypoints,
    render_heatmaps,
    render_pafs,
    render_targets,
    render_targets_torch,
)
from datasets.topology import Topology

# x in channel 0, y in 1, so the assertions below read paf[0] as x
ARM = Topology(labels=("Wrist", "Elbow"), edges=((1, 0),), edges_paf=((0, 1),), name="arm")
CFG = TargetConfig(stride=4, sigma=1.0, paf_width=1.0)


def at_map(u: float, v: float, vis: float = 2.0, stride: int = 4) -> list[float]:
    """A keypoint (x, y, v) in input pixels that sits at map index coordinate (u, v)."""
    return [(u + 0.5) * stride, (v + 0.5) * stride, vis]


def random_people(rng, n: int, k: int, hw: tuple[int, int], stride: int = 4) -> np.ndarray:
    h, w = hw
    x = rng.uniform(-10, w * stride + 10, (n, k))
    y = rng.uniform(-10, h * stride + 10, (n, k))
    v = rng.integers(0, 3, (n, k))
    return np.stack([x, y, v], -1).astype(np.float32)


# ----------------------------------------------------------------------------- heatmaps
def test_heatmap_peak_at_keypoint_and_subpixel_centroid():
    kp = np.array([[at_map(20.3, 11.7), at_map(5.0, 30.0)]], np.float32)  # (1, 2, 3)
    heat = render_heatmaps(kp, 2, (40, 32), CFG)
    assert heat.shape == (2, 40, 32) and heat.dtype == np.float32
    # integer keypoint: the peak is exactly 1 at that pixel
    assert heat[1, 30, 5] == pytest.approx(1.0)
    assert np.unravel_index(heat[1].argmax(), heat[1].shape) == (30, 5)
    # sub-pixel keypoint: peak at the nearest pixel, weighted centroid recovers the position
    assert np.unravel_index(heat[0].argmax(), heat[0].shape) == (12, 20)
    ys, xs = np.mgrid[0:40, 0:32]
    m = heat[0]
    cx, cy = (m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()
    assert cx == pytest.approx(20.3, abs=0.01) and cy == pytest.approx(11.7, abs=0.01)
    # Gaussian with sigma in map pixels: one pixel away from an integer centre is exp(-1/2)
    assert heat[1, 30, 6] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert heat[1, 30, 5 + 5] == 0.0  # beyond truncate * sigma = 4 pixels


def test_heatmap_max_over_objects():
    kp = np.array([[at_map(10, 10)], [at_map(12, 10)]], np.float32)  # two objects, one part
    heat = render_heatmaps(kp, 1, (20, 20), CFG)
    # between the two peaks the value is the max of the two Gaussians, not their sum
    assert heat[0, 10, 11] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert heat[0, 10, 10] == pytest.approx(1.0) and heat[0, 10, 12] == pytest.approx(1.0)


def test_sigma_is_in_map_pixels():
    kp = np.array([[at_map(10, 10)]], np.float32)
    wide = render_heatmaps(kp, 1, (20, 20), TargetConfig(sigma=2.0))
    assert wide[0, 10, 12] == pytest.approx(np.exp(-0.5), rel=1e-5)


def test_invisible_and_outside_keypoints_contribute_nothing():
    kp = np.array(
        [[at_map(3, 3, vis=0), [-1.0, 10.0, 2], [10.0, 20 * 4 + 0.1, 2], [np.nan, 5, 2]]],
        np.float32,
    )
    heat, paf = render_targets(
        kp, Topology(("a", "b", "c", "d"), ((0, 1), (1, 2)), ((0, 1), (2, 3))), (20, 20), CFG
    )
    assert not heat.any() and not paf.any()


def test_min_visibility_two_drops_occluded_keypoints():
    kp = np.array([[at_map(3, 3, vis=1), at_map(9, 9, vis=2)]], np.float32)
    labelled = render_heatmaps(kp, 2, (20, 20), CFG)
    visible = render_heatmaps(kp, 2, (20, 20), TargetConfig(min_visibility=2))
    assert labelled[0].max() == pytest.approx(1.0) and visible[0].max() == 0.0
    assert visible[1].max() == pytest.approx(1.0)


def test_empty_samples():
    for empty in (np.zeros((0, 2, 3)), [], None):
        heat, paf = render_targets(np.asarray(empty if empty is not None else []), ARM, (8, 8), CFG)
        assert heat.shape == (2, 8, 8) and paf.shape == (2, 8, 8)
        assert not heat.any() and not paf.any()
    heat_t, paf_t = render_targets_torch(torch.zeros(3, 0, 2, 3), ARM, (8, 8), CFG)
    assert heat_t.shape == (3, 2, 8, 8) and paf_t.shape == (3, 2, 8, 8) and not heat_t.any()


def test_bad_keypoint_shape_is_named():
    with pytest.raises(ValueError, match=r"\(N, 2, 3\).*\(1, 3, 3\)"):
        render_targets(np.zeros((1, 3, 3)), ARM, (8, 8), CFG)
    with pytest.raises(ValueError, match=r"\(B, N, 2, 3\)"):
        render_targets_torch(torch.zeros(1, 3, 3), ARM, (8, 8), CFG)


# ----------------------------------------------------------------------------- PAFs
def test_paf_unit_on_limb_zero_elsewhere_direction_and_channels():
    # Isaac's example: labels Wrist, Elbow; edge Elbow -> Wrist; its field in channels [1, 0]
    # (horizontal component in channel 1, vertical in channel 0)
    topo = Topology(labels=("Wrist", "Elbow"), edges=((1, 0),), edges_paf=((1, 0),))
    wrist, elbow = at_map(20, 10), at_map(8, 10)  # the limb points in +x from elbow to wrist
    paf = render_pafs(np.array([[wrist, elbow]], np.float32), topo, (20, 30), CFG)
    hx, vy = paf[1], paf[0]
    on_limb = hx[10, 8:21]
    assert np.allclose(on_limb, 1.0) and np.allclose(vy[10, 8:21], 0.0)
    assert np.allclose(hx[9, 8:21], 1.0) and np.allclose(hx[11, 8:21], 1.0)  # band half-width 1
    assert not hx[12].any() and not hx[8].any()  # outside the band
    assert not hx[10, :8].any() and not hx[10, 21:].any()  # beyond the ends
    norm = np.hypot(paf[0], paf[1])
    assert np.allclose(norm[norm > 0], 1.0)


def test_paf_diagonal_direction():
    kp = np.array([[at_map(20, 20), at_map(5, 5)]], np.float32)  # Elbow (5,5) -> Wrist (20,20)
    paf = render_pafs(kp, ARM, (30, 30), CFG)
    s = np.sqrt(0.5)
    assert paf[0, 12, 12] == pytest.approx(s) and paf[1, 12, 12] == pytest.approx(s)
    assert paf[0, 12, 15] == 0.0  # 3 / sqrt(2) = 2.1 pixels off the limb


def test_paf_averaged_where_objects_overlap():
    # a horizontal and a vertical limb crossing at (10, 10)
    kp = np.array([[at_map(18, 10), at_map(2, 10)], [at_map(10, 18), at_map(10, 2)]], np.float32)
    paf = render_pafs(kp, ARM, (20, 20), CFG)
    assert paf[0, 10, 10] == pytest.approx(0.5) and paf[1, 10, 10] == pytest.approx(0.5)
    assert paf[0, 10, 4] == pytest.approx(1.0) and paf[1, 10, 4] == 0.0  # only the first limb
    # two identical limbs average to the same unit field
    same = render_pafs(np.concatenate([kp[:1], kp[:1]]), ARM, (20, 20), CFG)
    assert np.allclose(same, render_pafs(kp[:1], ARM, (20, 20), CFG))


def test_paf_edge_with_missing_end_contributes_nothing():
    for wrist in (at_map(18, 10, vis=0), [-4.0, 42.0, 2.0]):
        paf = render_pafs(np.array([[wrist, at_map(2, 10)]], np.float32), ARM, (20, 20), CFG)
        assert not paf.any()
    # zero-length limb has no direction
    paf = render_pafs(np.array([[at_map(5, 5), at_map(5, 5)]], np.float32), ARM, (20, 20), CFG)
    assert not paf.any()


def test_paf_short_limb_still_marks_the_pixel_nearest_its_midpoint():
    # 0.4 map pixels long, between pixel centres: no pixel centre lies within its length
    kp = np.array([[at_map(10.6, 5.0), at_map(10.2, 5.0)]], np.float32)
    paf = render_pafs(kp, ARM, (12, 12), CFG)
    assert paf[0, 5, 10] == pytest.approx(1.0) and paf[1, 5, 10] == 0.0
    assert np.count_nonzero(paf[0]) == 1
    heat_t, paf_t = render_targets_torch(torch.from_numpy(kp)[None], ARM, (12, 12), CFG)
    assert np.allclose(paf_t[0].numpy(), paf)


def test_paf_three_overlapping_limbs_average():
    # three limbs of one edge through pixel (10, 10): +x, +y and the diagonal (+x +y) / sqrt(2)
    kp = np.array(
        [
            [at_map(18, 10), at_map(2, 10)],
            [at_map(10, 18), at_map(10, 2)],
            [at_map(16, 16), at_map(4, 4)],
        ],
        np.float32,
    )
    paf = render_pafs(kp, ARM, (20, 20), CFG)
    s = np.sqrt(0.5)
    assert paf[0, 10, 10] == pytest.approx((1 + s) / 3) and paf[1, 10, 10] == pytest.approx(
        (1 + s) / 3
    )
    # pixels covered by one limb only keep that limb's unit vector
    assert paf[0, 10, 3] == pytest.approx(1.0) and paf[1, 10, 3] == 0.0
    assert paf[0, 3, 10] == 0.0 and paf[1, 3, 10] == pytest.approx(1.0)


def test_paf_zero_length_limb_next_to_real_ones():
    # a zero-length limb (object 1) is skipped without disturbing the other objects' limbs
    real = np.array([[at_map(18, 10), at_map(2, 10)], [at_map(10, 2), at_map(10, 18)]], np.float32)
    dot = np.array([[at_map(5, 5), at_map(5, 5)]], np.float32)
    both = render_pafs(np.concatenate([real[:1], dot, real[1:]]), ARM, (20, 20), CFG)
    alone = render_pafs(real, ARM, (20, 20), CFG)
    assert np.array_equal(both, alone)
    assert alone[0, 10, 3] == pytest.approx(1.0) and alone[1, 3, 10] == pytest.approx(-1.0)


def test_paf_width():
    kp = np.array([[at_map(18, 10), at_map(2, 10)]], np.float32)
    wide = render_pafs(kp, ARM, (20, 20), TargetConfig(paf_width=2.0))
    assert wide[0, 12, 10] == pytest.approx(1.0) and wide[0, 13, 10] == 0.0


# ----------------------------------------------------------------------------- batched path
@pytest.mark.parametrize("hw", [(56, 56), (30, 40)])
def test_batched_torch_equals_per_sample_numpy(hw):
    rng = np.random.default_rng(1)
    topo = Topology.named("coco18")
    samples = [random_people(rng, n, 18, hw) for n in (0, 1, 3, 6)]
    batch = pad_keypoints(samples, 18)
    assert batch.shape == (4, 6, 18, 3)
    heat_b, paf_b = render_targets_torch(batch, topo, hw, CFG)
    for i, s in enumerate(samples):
        heat, paf = render_targets(s, topo, hw, CFG)
        assert np.abs(heat_b[i].numpy() - heat).max() < 1e-5
        assert np.abs(paf_b[i].numpy() - paf).max() < 1e-5
    assert heat_b.abs().sum() > 0 and paf_b.abs().sum() > 0


def test_batched_torch_equals_per_sample_numpy_permuted_channels_and_edge_cases():
    # PAF channels in a scrambled order, a non-square map, limbs in every direction, keypoints
    # on the map border, zero-length limbs and several objects sharing limbs
    topo = Topology(
        labels=("a", "b", "c", "d"),
        edges=((0, 1), (1, 2), (3, 1), (2, 0)),
        edges_paf=((5, 2), (0, 7), (3, 1), (6, 4)),
    )
    hw = (17, 23)
    rng = np.random.default_rng(3)
    samples = [random_people(rng, n, 4, hw) for n in (1, 4, 7)]
    samples[1][0, 3] = samples[1][0, 1]  # zero-length limb d -> b
    samples[2][:, :, 2] = 2  # every keypoint labelled: crowded, overlapping limbs
    samples[2][0, 0, :2] = [0.0, 0.0]  # on the top-left image corner
    samples[2][1, 2, :2] = [hw[1] * 4 - 1e-3, hw[0] * 4 - 1e-3]  # just inside the bottom right
    heat_b, paf_b = render_targets_torch(pad_keypoints(samples, 4), topo, hw, CFG)
    for i, s in enumerate(samples):
        heat, paf = render_targets(s, topo, hw, CFG)
        assert np.abs(heat_b[i].numpy() - heat).max() < 1e-5
        assert np.abs(paf_b[i].numpy() - paf).max() < 1e-5
        assert np.array_equal(paf, render_pafs(s, topo, hw, CFG))
        assert np.array_equal(heat, render_heatmaps(s, 4, hw, CFG))
    assert np.count_nonzero(paf_b[2]) > 100


def _devices() -> list[str]:
    devs = []
    if torch.cuda.is_available():
        devs.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devs.append("mps")
    return devs


@pytest.mark.gpu
@pytest.mark.parametrize("device", _devices() or ["cuda"])
def test_device_equals_cpu(device):
    rng = np.random.default_rng(2)
    topo = Topology.named("coco18")
    batch = pad_keypoints([random_people(rng, n, 18, (56, 56)) for n in (2, 5)], 18)
    heat_c, paf_c = render_targets_torch(batch, topo, (56, 56), CFG)
    heat_d, paf_d = render_targets_torch(batch.to(device), topo, (56, 56), CFG)
    assert heat_d.device.type == device
    assert torch.allclose(heat_d.cpu(), heat_c, atol=1e-5)
    assert torch.allclose(paf_d.cpu(), paf_c, atol=1e-5)


# ----------------------------------------------------------------------------- ignore mask
def test_ignore_mask_covers_crowd_and_unlabelled_people_only():
    anns = [
        # crowd region as a polygon
        {"iscrowd": 1, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]], "num_keypoints": 0},
        # a labelled person: trained on
        {"iscrowd": 0, "segmentation": [[40, 40, 60, 40, 60, 60, 40, 60]], "num_keypoints": 5},
        # a person nobody annotated: ignored
        {"iscrowd": 0, "segmentation": [[70, 10, 90, 10, 90, 30, 70, 30]], "num_keypoints": 0},
        # no segmentation: falls back to the bbox
        {"iscrowd": 1, "bbox": [0, 70, 10, 10]},
    ]
    m = ignore_mask(anns, 100, 100)
    assert m.dtype == np.uint8 and m.shape == (100, 100)
    assert m[20, 20] == 1 and m[20, 80] == 1 and m[75, 5] == 1
    assert m[50, 50] == 0 and m[5, 50] == 0


def test_ignore_mask_rle_crowd():
    from pycocotools import mask as mask_utils

    full = np.zeros((50, 40), np.uint8, order="F")
    full[5:15, 20:30] = 1
    rle = mask_utils.encode(full)
    m = ignore_mask([{"iscrowd": 1, "segmentation": rle}], 50, 40)
    assert (m == full).all()
    # uncompressed RLE (COCO crowd annotations use counts as a list)
    counts = []
    flat, cur, run = full.flatten(order="F"), 0, 0
    for value in flat:
        if value != cur:
            counts.append(run)
            cur, run = value, 0
        run += 1
    counts.append(run)
    m = ignore_mask([{"iscrowd": 1, "segmentation": {"size": [50, 40], "counts": counts}}], 50, 40)
    assert (m == full).all()


def test_mask_to_weights_area_average():
    mask = np.zeros((8, 8), np.uint8)
    mask[0:4, 0:4] = 1  # top-left map pixel fully ignored
    mask[4:6, 4:8] = 1  # bottom-right map pixel half ignored
    w = mask_to_weights(mask, (2, 2))
    assert np.allclose(w, [[0.0, 1.0], [1.0, 0.5]])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sigma", -1, "targets.sigma must be a number > 0 (map pixels), got -1"),
        ("sigma", "abc", "targets.sigma must be a number > 0 (map pixels), got 'abc'"),
        ("paf_width", 0, "targets.paf_width must be a number > 0"),
        ("stride", "abc", "targets.stride must be a whole number >= 1, got 'abc'"),
        ("stride", 2.5, "targets.stride must be a whole number >= 1, got 2.5"),
        ("min_visibility", 3, "targets.min_visibility must be 1 or 2"),
    ],
)
def test_bad_target_settings_are_usage_errors(field, value, message):
    with pytest.raises(UsageError) as e:
        TargetConfig.from_config({field: value})
    assert str(e.value).startswith(message)
    assert TargetConfig.from_config({"stride": "8", "sigma": 2}).stride == 8  # typed once
