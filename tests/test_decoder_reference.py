"""The fast decoder (numba) gives exactly the reference decoder's results: every hand-built case
of the decoder tests, degenerate maps and the oracle maps of both coco-mini files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.topology import Topology
from inference.decoder import OpenPoseDecoder, ReferenceDecoder
from inference.decoder.fast import _strongest
from tests.test_decoder import (
    ARM,
    CHAIN,
    COCO18,
    _maxpool,
    _sprinkled,
    gaussian,
    maps,
    person,
    segment_field,
)

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini" / "annotations"
FIELDS = (
    "peak_part", "peak_row", "peak_col", "peak_score", "peak_xy", "cand_edge", "cand_a",
    "cand_b", "cand_score", "cand_count", "cand_ok", "accepted",
)  # fmt: skip


def assert_identical(topology: Topology, heat, paf, mp=None, layout="chw", **params) -> None:
    ref = ReferenceDecoder(topology, **params).trace(heat, paf, mp, layout)
    fast = OpenPoseDecoder(topology, **params).trace(heat, paf, mp, layout)
    for name in FIELDS:
        a, b = getattr(ref, name), getattr(fast, name)
        assert a.shape == b.shape and np.array_equal(a, b), name
    assert len(ref.skeletons) == len(fast.skeletons)
    for s, t in zip(ref.skeletons, fast.skeletons, strict=True):
        assert np.array_equal(s.keypoints, t.keypoints, equal_nan=True)
        assert s.score == t.score and s.num_parts == t.num_parts
        assert np.array_equal(s.peaks, t.peaks)
    # the fast decoder's own skeleton path (keypoints built in the compiled core, rejected edge
    # candidates sampled only until they cannot pass) agrees too
    direct = OpenPoseDecoder(topology, **params)(heat, paf, mp, layout)
    assert len(direct) == len(fast.skeletons)
    for s, t in zip(direct, fast.skeletons, strict=True):
        assert np.array_equal(s.keypoints, t.keypoints, equal_nan=True) and s.score == t.score
        assert np.array_equal(s.peaks, t.peaks)


def _people(n=2, hw=(56, 56)):
    truth = [person(70 + 60 * i, 110 - 5 * i, 1 - 0.1 * i, jitter=2, seed=i) for i in range(n)]
    return maps(truth, map_hw=hw)


def _cases():
    rng = np.random.default_rng(3)
    heat, paf = _people()
    yield (
        "overlap",
        COCO18,
        maps([person(95, 110, seed=2, jitter=2), person(135, 105, 0.95, seed=3, jitter=2)]),
        {},
    )
    cross = np.array([[[150.0, 150.0, 2], [30.0, 30.0, 2]], [[30.0, 150.0, 2], [150.0, 30.0, 2]]])
    yield "crossing", ARM, maps(cross, ARM, (40, 40)), {}
    for x, y in ((0.9, 60.3), (70.2, 1.1), (158.7, 90.6), (40.4, 159.2)):
        border = np.array([[[x, y, 2], [80.0, 80.0, 2]]])
        yield f"border{x}", ARM, maps(border, ARM, (40, 40)), {}
    two = np.array([[[40.0, 100.0, 2], [90.0, 60.0, 2]], [[120.0, 30.0, 2], [140.0, 110.0, 2]]])
    yield "two-part", ARM, maps(two, ARM, (30, 40)), {}
    h3 = np.stack([gaussian(40, 40, [(10, 20)]), gaussian(40, 40, [(20, 20), (20, 22)]),
                   gaussian(40, 40, [(20, 32)])])  # fmt: skip
    p3 = np.concatenate(
        [segment_field(40, 40, (10, 20), (20, 20)), segment_field(40, 40, (20, 22), (20, 32))]
    )
    yield "split", CHAIN, (h3, p3), {}
    yield "sprinkled", COCO18, _sprinkled(rng, heat, paf), {}
    small = [person(60, 100, jitter=3, seed=1), person(112, 40, 0.25, seed=6)]  # short limbs
    yield "short-limbs", COCO18, maps(small), {}
    noise = (rng.uniform(0, 1, (18, 24, 32)).astype(np.float32),
             rng.uniform(-1, 1, (42, 24, 32)).astype(np.float32))  # fmt: skip
    yield "noise", COCO18, noise, {}
    yield "noise-unlimited", COCO18, noise, {"max_objects": 0, "max_peaks_per_part": 8}
    nan = (np.full((18, 12, 12), np.nan, np.float32), np.full((42, 12, 12), np.nan, np.float32))
    yield "nan", COCO18, nan, {}
    inf = (np.full((18, 12, 12), np.inf, np.float32), np.full((42, 12, 12), -np.inf, np.float32))
    yield "inf", COCO18, inf, {}
    ones = (np.ones((18, 12, 12), np.float32), np.ones((42, 12, 12), np.float32))
    yield "ones", COCO18, ones, {}
    ties = np.round(rng.uniform(0, 1, (2, 5, 9)), 1).astype(np.float32)
    for kernel in (1, 3, 5):
        yield (
            f"ties-k{kernel}",
            ARM,
            (ties, np.zeros((2, 5, 9), np.float32)),
            {"maxpool_kernel": kernel},
        )
    yield "centroid", COCO18, (heat, paf), {"refine_method": "centroid"}
    yield "no-refine", COCO18, (heat, paf), {"refine_parts_coordinates": False}
    yield "thresholds", COCO18, (heat * 0.5, paf * 0.3), {
        "threshold_heatmap": 0.2, "threshold_edge_score": 0.1, "threshold_edge_sampling_counter": 6,
        "threshold_part_counter": 3, "threshold_object_score": 0.1, "threshold_split_score": 0,
        "threshold_join_fragments": 0, "edge_sampling_steps": 7,
    }  # fmt: skip
    yield "max-objects", COCO18, _people(3), {"max_objects": 2}


CASES = list(_cases())


@pytest.mark.parametrize(("name", "topology", "maps_", "params"), CASES, ids=[c[0] for c in CASES])
def test_fast_equals_reference(name, topology, maps_, params):
    heat, paf = maps_
    assert_identical(topology, heat, paf, **params)
    # the same maps as HWC views, with a given max-pool, and as float16 / float64
    assert_identical(
        topology, heat.transpose(1, 2, 0), paf.transpose(1, 2, 0), layout="hwc", **params
    )
    kernel = params.get("maxpool_kernel", 3)
    assert_identical(topology, heat, paf, _maxpool(heat[None], kernel)[0], **params)
    for dtype in (np.float16, np.float64):
        assert_identical(topology, heat.astype(dtype), paf.astype(dtype), **params)


def test_batches_match_single_images():
    heat, paf = _people()
    h2, p2 = np.stack([heat, heat[:, ::-1]]), np.stack([paf, paf[:, ::-1]])
    for dec in (ReferenceDecoder(COCO18), OpenPoseDecoder(COCO18)):
        batched = dec(h2, p2)
        for i in range(2):
            single = dec(h2[i], p2[i])
            assert len(single) == len(batched[i]) > 0
            for s, t in zip(single, batched[i], strict=True):
                assert np.array_equal(s.keypoints, t.keypoints, equal_nan=True)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("input_hw", [(224, 224), (480, 640)])
def test_fast_equals_reference_on_coco_mini_oracle_maps(split, input_hw):
    ann = COCO_MINI / f"person_keypoints_{split}2017.json"
    if not ann.is_file():
        pytest.skip(f"coco-mini not found at {ann}")
    from inference.cocoeval import load_coco, person_category
    from inference.oracle import iter_oracle

    gt = load_coco(ann)
    for s in iter_oracle(gt, COCO18, person_category(gt), input_hw):
        assert_identical(COCO18, s.heatmap, s.paf)


def test_strongest_peaks_are_the_reference_stable_sort():
    # max_peaks_per_part keeps the strongest peaks of a part, ties to the earlier one: the fast
    # decoder selects them by insertion, the reference by numpy's stable sort
    rng = np.random.default_rng(1)
    for _ in range(300):
        n, cap = int(rng.integers(1, 400)), int(rng.integers(1, 50))
        score = np.round(rng.random(n) * rng.integers(1, 6), 1)  # many ties
        want = np.sort(np.argsort(-score, kind="stable")[:cap])
        assert np.array_equal(_strongest(score, n, cap), want), (n, cap)


def _random_case(rng):
    """A random topology (1-8 parts, random directed edges, limb lengths or not), maps of up to
    five objects at random places (some parts unseen, some off the map) with or without noise,
    and random decoder parameters: a case nobody built by hand."""
    k = int(rng.integers(1, 9))
    pairs = [rng.choice(k, 2, replace=k < 2) for _ in range(int(rng.integers(0, 2 * k + 1)))]
    edges = tuple((int(a), int(b)) for a, b in pairs if a != b)
    lengths = (
        tuple(float(x) for x in rng.uniform(0.2, 2.0, len(edges))) if rng.random() < 0.5 else ()
    )
    labels = tuple(f"p{i}" for i in range(k))
    topology = Topology(name="random", labels=labels, edges=edges, limb_lengths=lengths)
    h, w = (int(x) for x in rng.integers(3, 48, 2))
    pts = rng.uniform(-2, [w + 1, h + 1], (int(rng.integers(0, 6)), k, 2))
    seen = rng.random(pts.shape[:2]) < 0.8
    heat = np.zeros((k, h, w), np.float32)
    for p in range(k):
        if seen[:, p].any():
            heat[p] = gaussian(h, w, pts[seen[:, p], p], sigma=float(rng.uniform(0.5, 2.5)))
    paf = np.zeros((2 * len(edges), h, w), np.float32)
    for (a, b), (cx, cy) in zip(edges, topology.edges_paf, strict=True):
        for o in np.flatnonzero(seen[:, a] & seen[:, b]):  # (a zero-length limb: a NaN field)
            fx, fy = segment_field(h, w, pts[o, a], pts[o, b])
            paf[cx] += fx
            paf[cy] += fy
    if rng.random() < 0.5:
        heat += rng.normal(0, rng.uniform(0, 0.3), heat.shape).astype(np.float32)
        paf += rng.normal(0, rng.uniform(0, 0.3), paf.shape).astype(np.float32)
    if rng.random() < 0.2:
        heat = np.round(heat, 1)  # plateaus
    steps = int(rng.integers(2, 15))
    params = {
        "threshold_heatmap": float(rng.uniform(-0.1, 0.9)),
        "threshold_edge_score": float(rng.uniform(-0.5, 0.9)),
        "edge_sampling_steps": steps,
        "threshold_edge_sampling_counter": int(rng.integers(0, steps + 1)),
        "threshold_split_score": float(rng.uniform(0, 5)),
        "threshold_join_fragments": float(rng.uniform(0, 4)),
        "maxpool_kernel": int(rng.choice([1, 3, 5, 7])),
        "max_peaks_per_part": int(rng.integers(1, 40)),
        "max_objects": int(rng.integers(0, 30)),
        "threshold_part_counter": int(rng.integers(0, 4)),
        "threshold_object_score": float(rng.uniform(0, 0.5)),
        "refine_method": str(rng.choice(["quadratic", "centroid"])),
        "refine_parts_coordinates": bool(rng.random() < 0.8),
    }
    return topology, heat, paf, params if rng.random() < 0.5 else {}


@pytest.mark.parametrize("seed", range(4))
def test_fast_equals_reference_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        topology, heat, paf, params = _random_case(rng)
        assert_identical(topology, heat, paf, **params)
