"""OpenPose decoder: hand-built maps with known skeletons, one test per parameter, robustness."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from datasets.errors import UsageError
from datasets.targets import TargetConfig, render_targets
from datasets.topology import Topology
from inference.decoder import DEFAULT_PARAMS, OpenPoseDecoder, ReferenceDecoder, build_decoder

REPO = Path(__file__).resolve().parent.parent
COCO18 = Topology.named("coco18")
# Isaac's example: labels Wrist, Elbow; one edge Elbow -> Wrist whose field's horizontal
# component is in PAF channel 1 and vertical in channel 0
ARM = Topology(labels=("Wrist", "Elbow"), edges=((1, 0),), edges_paf=((1, 0),), name="arm")
# x in channel 2i, y in 2i+1: the order segment_field stacks them
CHAIN = Topology(
    labels=("a", "b", "c"), edges=((0, 1), (1, 2)), edges_paf=((0, 1), (2, 3)), name="chain"
)
STRIDE = 4
# a standing person, coco18 order, offsets in input pixels from the hips' centre
_POSE = np.array(
    [
        [0, -60], [-5, -65], [5, -65], [-10, -62], [10, -62], [-20, -40], [20, -40],
        [-25, -15], [25, -15], [-28, 10], [28, 10], [-12, 10], [12, 10], [-13, 45], [13, 45],
        [-14, 80], [14, 80], [0, -40],
    ],
    dtype=np.float64,
)  # fmt: skip


def person(cx: float, cy: float, scale: float = 1.0, jitter: float = 0.0, seed: int = 0):
    """(18, 3) coco18 keypoints of a standing person, all visible, sub-pixel positions."""
    rng = np.random.default_rng(seed)
    kp = np.zeros((18, 3))
    kp[:, :2] = _POSE * scale + (cx, cy) + rng.uniform(-jitter, jitter, (18, 2))
    kp[:, 2] = 2
    return kp


def maps(keypoints, topology=COCO18, map_hw=(56, 56)):
    """Ground-truth heatmap (K, h, w) and PAF (2E, h, w) of (N, K, 3) input-pixel keypoints."""
    return render_targets(np.asarray(keypoints, np.float32), topology, map_hw, TargetConfig())


def match(skeletons, truth):
    """For each true object, the decoded skeleton closest to it and the max position error."""
    out = []
    for t in truth:
        errs = []
        for s in skeletons:
            d = np.hypot(*(s.keypoints[:, :2] - t[:, :2]).T)
            errs.append(np.nanmax(np.where(t[:, 2] > 0, d, np.nan)))
        i = int(np.nanargmin(errs))
        out.append((skeletons[i], errs[i]))
    return out


def gaussian(h, w, points, sigma=1.0):
    """(h, w) max of Gaussians at map coordinates (u, v)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    g = np.zeros((h, w))
    for u, v in points:
        g = np.maximum(g, np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma**2)))
    return g.astype(np.float32)


def segment_field(h, w, a, b, width=1.0):
    """(2, h, w) unit field of the limb a -> b (map coordinates) on pixels within ``width``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    length = np.hypot(*d)
    u = d / length
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    px, py = xx - a[0], yy - a[1]
    along = px * u[0] + py * u[1]
    across = np.abs(px * u[1] - py * u[0])
    inside = (along >= 0) & (along <= length) & (across <= width)
    return np.stack([inside * u[0], inside * u[1]]).astype(np.float32)


# --------------------------------------------------------------------------- known skeletons
def test_single_person_positions_are_exact():
    truth = person(112, 110, jitter=3, seed=1)[None]
    skeletons = OpenPoseDecoder(COCO18)(*maps(truth), output_scale=[224, 224])
    assert len(skeletons) == 1
    s = skeletons[0]
    assert s.num_parts == 18 and 0.5 < s.score <= 1.0
    # the log-parabola recovers a Gaussian's centre exactly (float32 maps: ~1e-4 px)
    assert np.abs(s.keypoints[:, :2] - truth[0, :, :2]).max() < 5e-3
    assert (s.keypoints[:, 2] > 0.5).all()


def assert_each_found_once(skeletons, truth, num_parts: int) -> None:
    """Every true object has its own skeleton, with ``num_parts`` parts, each within 0.05 px."""
    matched = match(skeletons, truth)
    assert len({id(s) for s, _ in matched}) == len(truth)
    for s, err in matched:
        assert s.num_parts == num_parts and err < 0.05


def test_two_overlapping_people():
    # side by side with the arms of one inside the other's body outline
    truth = np.stack([person(95, 110, seed=2, jitter=2), person(135, 105, 0.95, seed=3, jitter=2)])
    skeletons = OpenPoseDecoder(COCO18)(*maps(truth), output_scale=[224, 224])
    assert len(skeletons) == 2
    assert_each_found_once(skeletons, truth, 18)


def test_crossing_limbs_are_paired_by_their_fields():
    # two arms (Elbow -> Wrist) crossing in an X on a 40x40 map
    truth = np.array(
        [[[150.0, 150.0, 2], [30.0, 30.0, 2]], [[30.0, 150.0, 2], [150.0, 30.0, 2]]]
    )  # (N, K=2 (wrist, elbow), 3) in input pixels
    heat, paf = maps(truth, ARM, (40, 40))
    skeletons = OpenPoseDecoder(ARM)(heat, paf, output_scale=[160, 160])
    assert len(skeletons) == 2
    for s, err in match(skeletons, truth):
        assert s.num_parts == 2 and err < 0.05


def test_lone_part_is_an_object_only_below_the_part_counter():
    truth = np.array([[[80.0, 60.0, 2], [0.0, 0.0, 0]]])  # a wrist without its elbow
    heat, paf = maps(truth, ARM, (40, 40))
    lone = OpenPoseDecoder(ARM, threshold_part_counter=0)(heat, paf, output_scale=[160, 160])
    assert len(lone) == 1 and lone[0].num_parts == 1
    assert np.abs(lone[0].keypoints[0, :2] - (80, 60)).max() < 5e-3
    assert np.isnan(lone[0].keypoints[1, :2]).all() and lone[0].keypoints[1, 2] == 0
    assert OpenPoseDecoder(ARM, threshold_part_counter=1)(heat, paf) == []


@pytest.mark.parametrize("corner", ["left", "top", "right", "bottom"])
def test_parts_at_the_border(corner):
    # a keypoint in the outermost map pixel: refinement borrows the other axis's curvature
    x, y = {
        "left": (0.9, 60.3),
        "top": (70.2, 1.1),
        "right": (158.7, 90.6),
        "bottom": (40.4, 159.2),
    }[corner]
    elbow = {"left": (40.0, 60.0), "top": (70.0, 40.0), "right": (120.0, 90.0), "bottom": (40, 120)}
    truth = np.array([[[x, y, 2], [*elbow[corner], 2]]])
    skeletons = OpenPoseDecoder(ARM)(*maps(truth, ARM, (40, 40)), output_scale=[160, 160])
    assert len(skeletons) == 1 and skeletons[0].num_parts == 2
    assert np.abs(skeletons[0].keypoints[0, :2] - (x, y)).max() < 0.02


@pytest.mark.parametrize("corner", ["left", "top", "right", "bottom"])
def test_infinite_peak_at_the_border_counts_as_certain(corner):
    # +inf on the outermost pixel: the border refinement's inf / inf must give no offset (it
    # gave NaN, which crashed the edge sampling), and the peak counts with confidence 1
    truth = np.array([[[20.0, 60.0, 2], [60.0, 60.0, 2]]])
    heat, paf = maps(truth, ARM, (40, 40))
    r, c = {"left": (15, 0), "top": (0, 15), "right": (15, 39), "bottom": (39, 15)}[corner]
    heat[0, r, c] = np.inf
    for mp in (None, _maxpool(heat[None], 3)[0]):
        skeletons = OpenPoseDecoder(ARM)(heat, paf, mp)
        lone = [s for s in skeletons if s.keypoints[0, 2] == 1.0]
        assert len(lone) == 1
        assert np.abs(lone[0].keypoints[0, :2] - (c + 0.5, r + 0.5)).max() < 1e-6


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (6, 1), (2, 3), (5, 9)])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_nms_on_tiny_maps_matches_a_padded_maxpool(hw, kernel):
    # the own NMS reads the map in place, marking window offsets beyond the border per pixel
    # class: on maps smaller than the window its peaks are still those of a -inf padded
    # max-pool (first pixel of a plateau), in both layouts
    rng = np.random.default_rng(hw[0] * 10 + hw[1])
    heat = np.round(rng.uniform(0, 1, (2, *hw)), 1).astype(np.float32)  # ties included
    paf = np.zeros((2, *hw), np.float32)
    pooled = _maxpool(heat[None], kernel)[0]
    dec = OpenPoseDecoder(ARM, maxpool_kernel=kernel, threshold_heatmap=0.05, max_peaks_per_part=64)
    own = dec.trace(heat, paf)
    given = dec.trace(heat, paf, pooled)
    hwc = dec.trace(heat.transpose(1, 2, 0), paf.transpose(1, 2, 0), layout="hwc")
    for t in (given, hwc):
        for f in ("peak_part", "peak_row", "peak_col", "peak_score", "peak_xy"):
            np.testing.assert_array_equal(getattr(t, f), getattr(own, f))
    peaks = set(
        zip(own.peak_part.tolist(), own.peak_row.tolist(), own.peak_col.tolist(), strict=True)
    )
    # every pooled maximum above threshold is a peak unless an equal pixel comes before it
    for k, i, j in zip(*np.nonzero((heat > 0.05) & (heat == pooled)), strict=True):
        r = kernel // 2
        lo_i, lo_j = max(i - r, 0), max(j - r, 0)
        win = heat[k, lo_i : i + r + 1, lo_j : j + r + 1]
        here = (i - lo_i) * win.shape[1] + (j - lo_j)
        first = int(np.argmax(win.reshape(-1) == heat[k, i, j]))
        assert ((int(k), int(i), int(j)) in peaks) == (first == here)


def test_custom_two_part_topology_in_hwc_layout():
    truth = np.array([[[40.0, 100.0, 2], [90.0, 60.0, 2]], [[120.0, 30.0, 2], [140.0, 110.0, 2]]])
    heat, paf = maps(truth, ARM, (30, 40))  # 120 x 160 input
    # the swapped channels matter: PAF x of edge 0 lives in channel 1 (limb x components -0.78
    # and -0.24), y in channel 0 (0.62 and -0.97)
    assert np.abs(paf[1]).max() == pytest.approx(50 / np.hypot(50, 40), abs=1e-3)
    assert np.abs(paf[0]).max() == pytest.approx(80 / np.hypot(20, 80), abs=1e-3)
    hwc = OpenPoseDecoder(ARM)(heat.transpose(1, 2, 0), paf.transpose(1, 2, 0), layout="hwc")
    chw = OpenPoseDecoder(ARM)(heat, paf)
    assert len(hwc) == 2
    for a, b in zip(hwc, chw, strict=True):
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
    scaled = OpenPoseDecoder(ARM, output_scale=[120, 160])(heat, paf)
    for _, err in match(scaled, truth):
        assert err < 0.05


# --------------------------------------------------------------------------- one per parameter
def test_threshold_heatmap():
    truth = person(112, 110, jitter=2)[None]
    heat, paf = maps(truth)
    weak = heat * 0.3
    assert len(OpenPoseDecoder(COCO18, threshold_heatmap=0.05)(weak, paf)) == 1
    assert OpenPoseDecoder(COCO18, threshold_heatmap=0.5)(weak, paf) == []


def test_threshold_edge_score():
    truth = person(112, 110, jitter=2)[None]
    heat, paf = maps(truth)
    faint = paf * 0.1  # every sample scores ~0.1
    joined = OpenPoseDecoder(COCO18, threshold_edge_score=0.05)(heat, faint)
    assert len(joined) == 1 and joined[0].num_parts == 18
    apart = OpenPoseDecoder(COCO18, threshold_edge_score=0.2)(heat, faint)
    assert len(apart) == 18 and all(s.num_parts == 1 for s in apart)


def test_threshold_edge_sampling_counter():
    # the field covers only the first ~60% of a 20-pixel limb: 6 of 10 samples pass
    heat = np.stack([gaussian(20, 40, [(30, 10)]), gaussian(20, 40, [(10, 10)])])
    paf = segment_field(20, 40, (10, 10), (22, 10))[::-1]  # ARM: x in channel 1
    trace = OpenPoseDecoder(ARM).trace(heat, paf)
    assert trace.cand_count.tolist() == [6]
    assert len(OpenPoseDecoder(ARM, threshold_edge_sampling_counter=5)(heat, paf)) == 1
    assert len(OpenPoseDecoder(ARM, threshold_edge_sampling_counter=6)(heat, paf)) == 2


def test_edge_sampling_steps():
    # a hole in the field around the limb's middle: 2 samples (t = 1/4, 3/4) miss it, 10 do not
    heat = np.stack([gaussian(20, 40, [(30, 10)]), gaussian(20, 40, [(10, 10)])])
    paf = segment_field(20, 40, (10, 10), (30, 10))[::-1].copy()
    paf[:, :, 19:22] = 0
    two = OpenPoseDecoder(ARM, edge_sampling_steps=2, threshold_edge_sampling_counter=1)
    ten = OpenPoseDecoder(ARM, edge_sampling_steps=10, threshold_edge_sampling_counter=1)
    assert two.trace(heat, paf).cand_score == pytest.approx([1.0])
    assert ten.trace(heat, paf).cand_score == pytest.approx([0.8])


def test_threshold_object_score():
    truth = np.stack([person(70, 110, jitter=2, seed=4), person(160, 110, jitter=2, seed=5)])
    heat, paf = maps(truth)
    heat[:, :, 28:] *= 0.3  # the right-hand person is seen with low confidence
    both = OpenPoseDecoder(COCO18)(heat, paf, output_scale=[224, 224])
    assert len(both) == 2 and both[0].score > 0.8 > 0.7 > both[1].score
    strict = OpenPoseDecoder(COCO18, threshold_object_score=0.75)(
        heat, paf, output_scale=[224, 224]
    )
    assert len(strict) == 1 and strict[0].keypoints[0, 0] < 112


def test_threshold_split_score():
    # part b seen twice, 2 pixels apart: a->b takes one peak, b->c the other, splitting the object
    h, w = 40, 40
    heat = np.stack(
        [
            gaussian(h, w, [(10, 20)]),
            gaussian(h, w, [(20, 20), (20, 22)]),
            gaussian(h, w, [(20, 32)]),
        ]
    )
    paf = np.concatenate(
        [segment_field(h, w, (10, 20), (20, 20)), segment_field(h, w, (20, 22), (20, 32))]
    )
    split = OpenPoseDecoder(CHAIN, threshold_split_score=0)(heat, paf)
    assert sorted(s.num_parts for s in split) == [2, 2]
    merged = OpenPoseDecoder(CHAIN, threshold_split_score=2.5)(heat, paf)
    assert len(merged) == 1 and merged[0].num_parts == 3
    assert merged[0].score > max(s.score for s in split)


@pytest.mark.parametrize("second_x", [160, 130])
def test_threshold_join_fragments_rejoins_people_without_necks(second_x):
    # no neck labelled: no PAF links shoulders to hips, so each person falls apart into head and
    # arms (ears link to shoulders) and hips and legs; each piece must find its own person, also
    # when the other person's pieces are nearly as close (second_x 130)
    truth = np.stack(
        [person(70, 110, seed=4, jitter=2), person(second_x, 105, 0.9, seed=5, jitter=2)]
    )
    truth[:, 17, 2] = 0
    heat, paf = maps(truth)
    apart = OpenPoseDecoder(COCO18, threshold_join_fragments=0)(heat, paf, output_scale=[224, 224])
    assert sorted(s.num_parts for s in apart) == [6, 6, 11, 11]
    for decoder in (OpenPoseDecoder(COCO18), ReferenceDecoder(COCO18)):
        joined = decoder(heat, paf, output_scale=[224, 224])
        assert len(joined) == 2
        assert_each_found_once(joined, truth, 17)


def test_limb_lengths_measure_a_head_and_hips_alike():
    # only the face and the hips are seen: two pieces joined by nothing but the missing neck. In
    # eye-nose limbs the hips are far (no join); coco18's limb_lengths measure both pieces in
    # person-size units, and the hips are where a person's hips would be
    truth = person(112, 110, seed=6, jitter=1)[None]
    truth[0, [5, 6, 7, 8, 9, 10, 13, 14, 15, 16, 17], 2] = 0
    heat, paf = maps(truth)
    alike = Topology.from_dict({**COCO18.to_dict(), "limb_lengths": []})
    assert len(OpenPoseDecoder(alike)(heat, paf)) == 2
    for decoder in (OpenPoseDecoder(COCO18), ReferenceDecoder(COCO18)):
        (one,) = decoder(heat, paf, output_scale=[224, 224])
        assert one.num_parts == 7 and match([one], truth)[0][1] < 0.05


@pytest.mark.parametrize("hips_dy", [100, 120])
def test_fragment_size_is_its_longest_limb(hips_dy):
    # two pieces of one person: the right arm (shoulder, elbow, wrist) and the hips and legs, far
    # below (hips_dy). The upper arm points at the camera, so it looks a tenth of its length;
    # the forearm shows the arm's real size. Measured by the mean of its limbs the arm looked
    # half as large, the legs more than two reaches away, and the pieces stayed apart
    t = person(112, 100, seed=3)
    t[8, :2] = t[6, :2] + (2, 3)
    t[10, :2] = t[8, :2] + (6, -24)
    t[11:17, 1] += hips_dy
    t[[0, 1, 2, 3, 4, 5, 7, 9, 17], 2] = 0
    heat, paf = maps(t[None], map_hw=(120, 56))
    for decoder in (OpenPoseDecoder(COCO18), ReferenceDecoder(COCO18)):
        (one,) = decoder(heat, paf, output_scale=[480, 224])
        assert one.num_parts == 9 and match([one], t[None])[0][1] < 0.05


def test_threshold_part_counter_on_people():
    truth = person(112, 110, jitter=2)[None].copy()
    truth[0, [0, 1, 2, 3, 4, 7, 8, 9, 10, 13, 14, 15, 16], 2] = 0  # 5 parts: neck, shoulders, hips
    heat, paf = maps(truth)
    assert OpenPoseDecoder(COCO18, threshold_part_counter=4)(heat, paf)[0].num_parts == 5
    assert OpenPoseDecoder(COCO18, threshold_part_counter=5)(heat, paf) == []


@pytest.mark.parametrize(
    ("params", "worst", "best"),
    [
        ({"refine_parts_coordinates": False}, 0.2, 0.5),  # whole pixels: up to 1/2 map px off
        ({"refine_method": "centroid"}, 0.02, 0.3),  # a 3x3 centroid is pulled to the centre
        ({"refine_method": "quadratic"}, 0.0, 1e-3),  # exact for a Gaussian
    ],
)
def test_refine_parts_coordinates(params, worst, best):
    rng = np.random.default_rng(7)
    truth = np.zeros((1, 2, 3))
    truth[0, :, :2] = rng.uniform(20, 140, (2, 2))
    truth[0, :, 2] = 2
    truth[0, 1, :2] = truth[0, 0, :2] + 30.3
    heat, paf = maps(truth, ARM, (48, 48))
    s = OpenPoseDecoder(ARM, **params)(heat, paf)[0]  # output in map pixels
    err = np.abs(s.keypoints[:, :2] - truth[0, :, :2] / STRIDE).max()
    assert worst <= err <= best


def test_output_scale():
    truth = person(112, 110, jitter=2)[None]
    heat, paf = maps(truth)
    in_map = OpenPoseDecoder(COCO18)(heat, paf)[0].keypoints
    cfg_scaled = OpenPoseDecoder(COCO18, output_scale=[112, 448])(heat, paf)[0].keypoints
    call_scaled = OpenPoseDecoder(COCO18, output_scale=[1, 1])(heat, paf, output_scale=[112, 448])
    np.testing.assert_allclose(cfg_scaled[:, 0], in_map[:, 0] * 8)  # 448 / 56
    np.testing.assert_allclose(cfg_scaled[:, 1], in_map[:, 1] * 2)  # 112 / 56
    np.testing.assert_array_equal(call_scaled[0].keypoints, cfg_scaled)
    np.testing.assert_allclose(in_map[:, :2], truth[0, :, :2] / STRIDE, atol=2e-3)


def test_maxpool_kernel():
    # two peaks of one part 2 pixels apart: a 3x3 window keeps both, a 5x5 window one
    heat = np.stack(
        [gaussian(20, 20, [(8, 8), (10, 8)], sigma=0.7), np.zeros((20, 20), np.float32)]
    )
    paf = np.zeros((2, 20, 20), np.float32)
    assert len(OpenPoseDecoder(ARM, maxpool_kernel=3).trace(heat, paf).peak_part) == 2
    assert len(OpenPoseDecoder(ARM, maxpool_kernel=5).trace(heat, paf).peak_part) == 1


def test_max_peaks_per_part_keeps_the_strongest():
    rng = np.random.default_rng(0)
    heat = rng.uniform(0, 1, (2, 30, 30)).astype(np.float32)
    paf = rng.uniform(-1, 1, (2, 30, 30)).astype(np.float32)
    free = OpenPoseDecoder(ARM, max_peaks_per_part=10_000).trace(heat, paf)
    capped = OpenPoseDecoder(ARM, max_peaks_per_part=5).trace(heat, paf)
    assert np.bincount(free.peak_part).min() > 5
    assert np.bincount(capped.peak_part).tolist() == [5, 5]
    for k in range(2):
        top = np.sort(free.peak_score[free.peak_part == k])[-5:]
        np.testing.assert_array_equal(np.sort(capped.peak_score[capped.peak_part == k]), top)


# --------------------------------------------------------------------------- inputs
def test_batches_layouts_dtypes_and_given_maxpool_agree():
    truth = [person(80, 110, jitter=2, seed=8)[None], person(140, 100, 0.8, jitter=2, seed=9)[None]]
    pairs = [maps(t) for t in truth]
    heat = np.stack([p[0] for p in pairs])  # (2, K, h, w)
    paf = np.stack([p[1] for p in pairs])
    dec = OpenPoseDecoder(COCO18)
    single = [dec(h, p) for h, p in pairs]
    batched = dec(heat, paf)
    hwc = dec(heat.transpose(0, 2, 3, 1), paf.transpose(0, 2, 3, 1), layout="hwc")
    pooled = _maxpool(heat, 3)
    given = dec(heat, paf, maxpool_heatmap=pooled)
    half = dec(heat.astype(np.float16), paf.astype(np.float16))
    for i in range(2):
        for other in (batched[i], hwc[i], given[i]):
            assert [s.keypoints.tolist() for s in other] == [
                s.keypoints.tolist() for s in single[i]
            ]
        assert len(half[i]) == 1
        np.testing.assert_allclose(half[i][0].keypoints, single[i][0].keypoints, atol=0.05)


def test_bad_inputs_name_the_tensor_and_shape():
    dec = OpenPoseDecoder(COCO18)
    heat, paf = maps(person(112, 110)[None])
    with pytest.raises(ValueError, match=r"heatmap .*\(17, 56, 56\).* 17 part channels"):
        dec(heat[:17], paf)
    with pytest.raises(ValueError, match=r"paf .*40 channels"):
        dec(heat, paf[:40])
    with pytest.raises(ValueError, match="differ in H, W"):
        dec(heat, paf[:, :50])
    with pytest.raises(ValueError, match="maxpool_heatmap"):
        dec(heat, paf, maxpool_heatmap=heat[:, :10])
    with pytest.raises(ValueError, match="layout"):
        dec(heat, paf, layout="nchw")
    with pytest.raises(ValueError, match="3-D"):
        dec(heat[0], paf)
    with pytest.raises(ValueError, match="unknown OpenPoseDecoder parameter"):
        OpenPoseDecoder(COCO18, threshold_heatmaps=0.1)
    with pytest.raises(ValueError, match="maxpool_kernel"):
        OpenPoseDecoder(COCO18, maxpool_kernel=4)
    for name, bad in (
        ("threshold_heatmap", "abc"),
        ("max_objects", 2.5),
        ("edge_sampling_steps", None),
    ):
        with pytest.raises(ValueError, match=f"decoder parameter {name} must be"):
            OpenPoseDecoder(COCO18, **{name: bad})
    assert OpenPoseDecoder(COCO18, max_objects=3.0, threshold_heatmap="0.3").max_objects == 3
    # from a config (the commands' way): the same checks as one-line usage errors
    with pytest.raises(UsageError, match=r"max_objects must be >= 0 .* decoder_overrides="):
        build_decoder({"max_objects": -1}, COCO18)
    with pytest.raises(UsageError, match="unknown OpenPoseDecoder parameter"):
        build_decoder({"bogus": 1}, COCO18)


@pytest.mark.parametrize("kind", ["nan", "inf", "zeros", "ones", "noise", "mixed"])
@pytest.mark.parametrize("layout", ["chw", "hwc"])
def test_degenerate_maps_decode_in_bounded_time(kind, layout):
    rng = np.random.default_rng(1)
    shape_h, shape_p = (18, 120, 160), (42, 120, 160)
    if kind == "nan":
        heat, paf = np.full(shape_h, np.nan, np.float32), np.full(shape_p, np.nan, np.float32)
    elif kind == "inf":
        heat, paf = np.full(shape_h, np.inf, np.float32), np.full(shape_p, -np.inf, np.float32)
    elif kind == "zeros":
        heat, paf = np.zeros(shape_h, np.float32), np.zeros(shape_p, np.float32)
    elif kind == "ones":
        heat, paf = np.ones(shape_h, np.float32), np.ones(shape_p, np.float32)
    elif kind == "noise":
        heat = rng.uniform(0, 1, shape_h).astype(np.float32)
        paf = rng.uniform(-1, 1, shape_p).astype(np.float32)
    else:  # a real person with NaN, inf and noise sprinkled over both maps
        heat, paf = maps(person(112, 110)[None] * (2.5, 2, 1), map_hw=(120, 160))
        for a in (heat, paf):
            flat = a.reshape(-1)
            idx = rng.choice(flat.size, flat.size // 50, replace=False)
            flat[idx[: len(idx) // 3]] = np.nan
            flat[idx[len(idx) // 3 : 2 * len(idx) // 3]] = np.inf
            flat[idx[2 * len(idx) // 3 :]] = rng.uniform(-1, 1, len(idx) - 2 * (len(idx) // 3))
    if layout == "hwc":
        heat, paf = heat.transpose(1, 2, 0), paf.transpose(1, 2, 0)
    dec = OpenPoseDecoder(COCO18)
    t0 = time.perf_counter()
    skeletons = dec(heat, paf, layout=layout)
    seconds = time.perf_counter() - t0
    # the benchmark shows ~35 ms for noise on one core; this bound only catches a blow-up
    assert seconds < 1.0
    for s in skeletons:
        kp = s.keypoints
        present = kp[:, 2] > 0
        assert np.isfinite(s.score) and np.isfinite(kp[present]).all()
        assert np.isnan(kp[~present, :2]).all()
    if kind in ("nan", "zeros"):
        assert skeletons == []
    if kind in ("ones", "inf"):  # a plateau is one peak per part, at its first pixel
        assert all(s.num_parts <= 18 for s in skeletons)
        assert sum(s.num_parts for s in skeletons) == 18


def _same(a, b) -> bool:
    """Two skeleton lists are identical (NaN keypoints of missing parts compare equal)."""
    return len(a) == len(b) and all(
        np.array_equal(s.keypoints, t.keypoints, equal_nan=True)
        and s.score == t.score
        and s.num_parts == t.num_parts
        and np.array_equal(s.peaks, t.peaks)
        for s, t in zip(a, b, strict=True)
    )


def _sprinkled(rng, heat, paf, n=40):
    """Copies of the maps with NaN, +inf and -inf at random pixels of both."""
    heat, paf = heat.copy(), paf.copy()
    for a in (heat, paf):
        flat = a.reshape(-1)
        idx = rng.choice(flat.size, 3 * n, replace=False)
        flat[idx[:n]], flat[idx[n : 2 * n]], flat[idx[2 * n :]] = np.nan, np.inf, -np.inf
    return heat, paf


def test_no_floating_point_warnings_on_nan_inf_plateaus_and_huge_values():
    # the decode enters np.errstate only where NaN/inf/huge values can raise warnings (border
    # or infinite peaks, non-finite or huge PAF samples); everything else must stay quiet
    rng = np.random.default_rng(4)
    heat, paf = maps([person(80, 110, jitter=2, seed=3), person(150, 100, 0.8, seed=4)])
    huge = paf * np.float32(3e37)  # sums of samples overflow float32
    cases = [(heat, paf), _sprinkled(rng, heat, paf), (heat, huge)]
    cases.append((np.full_like(heat, np.inf), np.full_like(paf, -np.inf)))
    for params in ({}, {"refine_method": "centroid"}, {"maxpool_kernel": 5}):
        dec = OpenPoseDecoder(COCO18, **params)
        for h, p in cases:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                skeletons = dec(h, p)
                traced = dec.trace(h, p, maxpool_heatmap=_maxpool(h[None], 3)[0])
            assert _same(skeletons, dec.trace(h, p).skeletons)
            assert all(np.isfinite(s.score) for s in skeletons + traced.skeletons)
    # a given max-pool may make a log-linear ramp a peak: zero curvature, no offset, no 0 / 0
    ramp = np.zeros((2, 5, 7), np.float32)  # (nothing on the border, which takes another path)
    ramp[0, 1:4, 1:6] = 0.1
    ramp[0, 2, 2:5] = 0.25, 0.5, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        traced = OpenPoseDecoder(ARM).trace(ramp, np.zeros((2, 5, 7), np.float32), ramp)
    at = (traced.peak_part == 0) & (traced.peak_row == 2) & (traced.peak_col == 3)
    assert at.sum() == 1 and traced.peak_xy[at][0, 0] == 3.0


def test_short_limbs_border_peaks_and_nan_samples_match_the_reference():
    # short limbs (a small person), lone border peaks and NaN/inf samples: the compiled
    # decoder's candidates, scores and counts are the reference decoder's
    rng = np.random.default_rng(5)
    truth = [person(60, 100, jitter=3, seed=1), person(170, 90, 0.7, jitter=3, seed=2)]
    truth.append(person(112, 40, 0.25, seed=6))  # a small person: limbs shorter than a pixel
    heat, paf = maps(truth)
    border = heat.copy()
    border[3, 0, 20] = border[4, 31, 55] = 0.9  # lone peaks on the border
    for h, p in [(heat, paf), (border, paf), _sprinkled(rng, heat, paf, 3)]:
        fast = OpenPoseDecoder(COCO18).trace(h, p)
        ref = ReferenceDecoder(COCO18).trace(h, p)
        assert fast.cand_edge.size > 0
        for name in ("cand_edge", "cand_a", "cand_b", "cand_score", "cand_count", "cand_ok"):
            a, b = getattr(fast, name), getattr(ref, name)
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
        assert _same(fast.skeletons, ref.skeletons)
    short = OpenPoseDecoder(COCO18).trace(heat, paf)
    d = short.peak_xy[short.cand_b] - short.peak_xy[short.cand_a]
    assert (np.hypot(*d.T)[short.cand_ok] < 1).any()  # the short-limb samples were exercised


def test_cached_shapes_and_scales_still_check_inputs():
    # a decoder remembers validated shapes and output scales; later bad inputs must still fail
    # and other sizes, layouts and scales must still be honoured
    dec = OpenPoseDecoder(COCO18)
    heat, paf = maps(person(112, 110)[None])
    first = dec(heat, paf, output_scale=[224, 224])
    assert len(first) == 1 and _same(dec(heat, paf, output_scale=[224, 224]), first)
    doubled = dec(heat, paf, output_scale=(448, 448))[0].keypoints
    np.testing.assert_allclose(doubled[:, :2], 2 * first[0].keypoints[:, :2])
    with pytest.raises(ValueError, match="output_scale"):
        dec(heat, paf, output_scale=[224, 0])
    with pytest.raises(ValueError, match="output_scale"):
        dec(heat, paf, output_scale=[224, 224, 3])
    with pytest.raises(ValueError, match=r"paf .*40 channels"):
        dec(heat, paf[:40])
    with pytest.raises(ValueError, match="layout"):
        dec(heat, paf, layout="nchw")
    with pytest.raises(ValueError, match="part channels"):  # the chw shapes, read as hwc
        dec(heat, paf, layout="hwc")
    hwc = dec(heat.transpose(1, 2, 0), paf.transpose(1, 2, 0), layout="hwc")
    assert _same(hwc, dec(heat, paf))


def test_byte_order_and_views_give_the_same_skeletons():
    heat, paf = maps([person(80, 110, jitter=2, seed=8), person(150, 100, 0.8, seed=9)])
    dec = OpenPoseDecoder(COCO18)
    native = dec(heat, paf)
    swapped = dec(heat.astype(">f4"), paf.astype(">f4"))
    assert len(native) == 2 and _same(swapped, native)
    assert all(s.keypoints.dtype == np.float64 for s in swapped)
    wide_h = np.zeros((18, 56, 112), np.float32)
    wide_p = np.zeros((42, 56, 112), np.float32)
    wide_h[:, :, ::2], wide_p[:, :, ::2] = heat, paf  # strided views of the same maps
    assert _same(dec(wide_h[:, :, ::2], wide_p[:, :, ::2]), native)


def test_decoder_does_not_import_torch():
    code = "import sys, inference.decoder; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_defaults_match_the_config_file():
    cfg = yaml.safe_load((REPO / "conf" / "decoder" / "default.yaml").read_text())
    assert cfg.pop("_target_") == "inference.decoder.OpenPoseDecoder"
    assert cfg == DEFAULT_PARAMS
    assert OpenPoseDecoder.from_config(cfg, COCO18).params == DEFAULT_PARAMS


def _maxpool(heat: np.ndarray, k: int) -> np.ndarray:
    """(B, K, h, w) max-pool, stride 1, same size, -inf padding (as torch's max_pool2d)."""
    r = k // 2
    padded = np.pad(heat, ((0, 0), (0, 0), (r, r), (r, r)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
    return win.max(axis=(-1, -2))


def test_build_decoder_default_target_and_params():
    dec = build_decoder({"threshold_heatmap": 0.2}, COCO18)
    assert isinstance(dec, OpenPoseDecoder) and dec.threshold_heatmap == 0.2
    dec = build_decoder({"_target_": "inference.decoder.OpenPoseDecoder"}, COCO18)
    assert dec.params == DEFAULT_PARAMS
    with pytest.raises(UsageError, match="_target_"):
        build_decoder({"_target_": "inference.nope.Decoder"}, COCO18)
    with pytest.raises(UsageError, match="unknown"):
        build_decoder({"bogus": 1}, COCO18)


def test_conf_decoder_default_builds():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "decoder" / "default.yaml")
    assert cfg["_target_"] == "inference.decoder.OpenPoseDecoder"
    assert isinstance(build_decoder(cfg, COCO18), OpenPoseDecoder)


@pytest.mark.parametrize("cls", [OpenPoseDecoder, ReferenceDecoder])
def test_warm_up_on_any_topology_leaves_no_state(cls):
    """``warm_up`` (run by the pipeline before its first timed frame) decodes empty maps of the
    topology's shape, also for a topology without edges, and changes nothing after it."""
    cls(Topology(name="dots", labels=("a", "b"), edges=())).warm_up()
    heat, paf = maps([person(90, 100, seed=1)])
    warm = cls(COCO18)
    warm.warm_up()
    for s, t in zip(warm(heat, paf), cls(COCO18)(heat, paf), strict=True):
        assert np.array_equal(s.keypoints, t.keypoints, equal_nan=True) and s.score == t.score
