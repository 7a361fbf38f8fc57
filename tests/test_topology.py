"""Topology: coco18 against trt_pose's published links, COCO categories, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.auto_topology import describe, resolve_topology
from datasets.cocofile import load_keypoint_file
from datasets.topology import Topology, topology_from_config

# trt_pose tasks/human_pose/human_pose.json "skeleton" (1-based), the 21 links the Isaac person
# decoder configuration uses too.
TRT_POSE_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 8], [7, 9], [8, 10], [9, 11], [2, 3],
    [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7], [18, 1], [18, 6], [18, 7], [18, 12], [18, 13],
]  # fmt: skip
# The Isaac trt_pose app's OpenPoseDecoder "edges_paf": [horizontal, vertical] channels per edge;
# trt_pose renders link k's row (vertical) component in channel 2k and its column one in 2k+1.
ISAAC_TRT_POSE_EDGES_PAF = [
    [1, 0], [3, 2], [5, 4], [7, 6], [9, 8], [11, 10], [13, 12], [15, 14], [17, 16], [19, 18],
    [21, 20], [23, 22], [25, 24], [27, 26], [29, 28], [31, 30], [33, 32], [35, 34], [37, 36],
    [39, 38], [41, 40],
]  # fmt: skip
COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
COCO_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip


def test_coco18_matches_trt_pose_links():
    t = Topology.named("coco18")
    assert t.num_parts == 18 and t.num_edges == 21
    assert list(t.labels[:17]) == COCO_KEYPOINTS and t.labels[17] == "neck"
    assert [[a + 1, b + 1] for a, b in t.edges] == TRT_POSE_SKELETON
    assert [list(p) for p in t.edges_paf] == ISAAC_TRT_POSE_EDGES_PAF


def test_coco18_is_the_isaac_trt_pose_decoder_config():
    # labels, edges and edges_paf of the Isaac trt_pose app's OpenPoseDecoder, value for value
    t = Topology.named("coco18")
    assert list(t.labels) == COCO_KEYPOINTS + ["neck"]
    assert [list(e) for e in t.edges] == [[a - 1, b - 1] for a, b in TRT_POSE_SKELETON]
    assert [list(p) for p in t.edges_paf] == ISAAC_TRT_POSE_EDGES_PAF
    assert ISAAC_TRT_POSE_EDGES_PAF[:2] == [[1, 0], [3, 2]] and ISAAC_TRT_POSE_EDGES_PAF[-1] == [
        41,
        40,
    ]


def test_coco18_is_coco_skeleton_minus_cross_links_plus_neck():
    t = Topology.named("coco18")
    edges = {tuple(e) for e in t.to_coco_category()["skeleton"]}
    cross = {(6, 12), (7, 13), (6, 7)}  # shoulder-hip (both sides) and shoulder-shoulder
    assert (
        edges - {(18, 1), (18, 6), (18, 7), (18, 12), (18, 13)}
        == {tuple(e) for e in COCO_SKELETON} - cross
    )


def test_coco18_flip_pairs_swap_left_and_right():
    t = Topology.named("coco18")
    perm = t.flip_permutation()
    for i, name in enumerate(t.labels):
        flipped = t.labels[perm[i]]
        if name.startswith("left_"):
            assert flipped == "right_" + name[5:]
        elif name.startswith("right_"):
            assert flipped == "left_" + name[6:]
        else:
            assert flipped == name


def test_topology_from_coco_category_arm():
    # the reference document's example: labels Wrist, Elbow and the single edge Elbow -> Wrist
    cat = {"id": 3, "name": "arm", "keypoints": ["Wrist", "Elbow"], "skeleton": [[2, 1]]}
    t = Topology.from_coco_category(cat)
    assert t.labels == ("Wrist", "Elbow")
    assert t.edges == ((1, 0),)
    assert t.edges_paf == ((1, 0),)  # the reference's "edges_paf": [[1, 0]]
    assert t.flip_pairs == () and not t.hflip  # no side names: no horizontal flip
    assert t.meta["category_id"] == 3
    assert Topology.from_dict(t.to_dict()) == t
    assert t.to_coco_category(category_id=3)["skeleton"] == [[2, 1]]


def test_topology_from_coco_person_category_finds_flip_pairs():
    cat = {"id": 1, "name": "person", "keypoints": COCO_KEYPOINTS, "skeleton": COCO_SKELETON}
    t = Topology.from_coco_category(cat)
    assert t.num_edges == 19
    assert set(t.flip_pairs) == {
        (1, 2),
        (3, 4),
        (5, 6),
        (7, 8),
        (9, 10),
        (11, 12),
        (13, 14),
        (15, 16),
    }


def test_round_trip_plain_data_and_config():
    t = Topology.named("coco18")
    d = t.to_dict()
    assert len(d["limb_lengths"]) == 21 and d["limb_lengths"][19] > 5 * d["limb_lengths"][10]
    assert Topology.from_dict(d) == t
    assert topology_from_config({"name": "coco18"}) == t
    assert topology_from_config(d) == t


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": ["a", "b"], "edges": [[0, 2]]}, "outside labels"),
        ({"labels": ["a", "b"], "edges": [[1, 1]]}, "self-loop"),
        ({"labels": ["a", "a"], "edges": []}, "duplicate labels"),
        ({"labels": ["a", "b"], "edges": [[0, 1]], "edges_paf": [[0, 0]]}, "exactly once"),
        ({"labels": ["a", "b"], "edges": [[0, 1]], "edges_paf": [[0, 1], [2, 3]]}, "edges_paf"),
        ({"labels": ["a", "b"], "edges": [], "flip_pairs": [[0, 0]]}, "flip pair"),
        ({"labels": [], "edges": []}, "no labels"),
        ({"labels": ["a", "b"], "edges": [[0, 1]], "limb_lengths": [1, 2]}, "limb_lengths"),
        ({"labels": ["a", "b"], "edges": [[0, 1]], "limb_lengths": [0]}, "limb_lengths"),
    ],
)
def test_bad_topologies_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Topology.from_dict(kwargs)


@pytest.mark.parametrize(
    ("skeleton", "message"),
    [
        (
            [[0, 1], [1, 2]],
            r"skeleton\[0\]=\[0, 1\] .* it uses index 0, so it counts from 0: add 1",
        ),
        ([[1, 2], [2, 4]], r"skeleton\[1\]=\[2, 4\] is not a pair .* in 1..3; give pairs"),
        ([[1, 2], 3], r"skeleton\[1\]=3 is not a pair"),
        ([[1, 2.5]], r"skeleton\[0\]=\[1, 2.5\] is not a pair"),
        ([["1", "2"]], r"skeleton\[0\]=\['1', '2'\] is not a pair"),
        ([[1, 2, 3]], r"skeleton\[0\]=\[1, 2, 3\] is not a pair"),
        ([[1, 2], [3, 3]], r"skeleton\[1\]=\[3, 3\] joins keypoint 3 to itself: remove it"),
        ({"1": 2}, r"'skeleton' must be a list of \[a, b\] pairs"),
    ],
)
def test_bad_coco_skeleton_names_the_link_and_the_fix(skeleton, message):
    cat = {
        "id": 1,
        "name": "arm",
        "keypoints": ["Wrist", "Elbow", "Shoulder"],
        "skeleton": skeleton,
    }
    with pytest.raises(ValueError, match=message):
        Topology.from_coco_category(cat)


def test_coco_skeleton_repeated_links_are_dropped_and_whole_floats_read(caplog):
    """A link given twice, either way round, would give one limb two PAFs: the first stays."""
    skeleton = [[1, 2], [2.0, 3.0], [2, 1], [1, 2]]
    cat = {
        "id": 1,
        "name": "arm",
        "keypoints": ["Wrist", "Elbow", "Shoulder"],
        "skeleton": skeleton,
    }
    assert Topology.from_coco_category(cat).edges == ((0, 1), (1, 2))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        "COCO category 'arm': skeleton[2]=[2, 1] repeats skeleton[0]: dropped (one PAF per limb)",
        "COCO category 'arm': skeleton[3]=[1, 2] repeats skeleton[0]: dropped (one PAF per limb)",
    ]


def test_unknown_named_topology_lists_available():
    with pytest.raises(FileNotFoundError, match="coco18"):
        Topology.named("no_such_topology")


def test_side_names_in_any_spelling():
    from datasets.topology import canonical_name, default_sigmas, pairs_by_name

    names = ["L_Eye", "R_Eye", "forelegL1", "forelegR1", "eye_l", "eye_r", "LeftEar", "RightEar",
             "rear", "leg", "left_hip", "right_hip", "HipL", "HipR"]  # fmt: skip
    pairs = {(names[a], names[b]) for a, b in pairs_by_name(names)}
    assert pairs == {
        ("L_Eye", "R_Eye"), ("forelegL1", "forelegR1"), ("eye_l", "eye_r"),
        ("LeftEar", "RightEar"), ("left_hip", "right_hip"), ("HipL", "HipR"),
    }  # fmt: skip
    assert {canonical_name(n) for n in ("L_Eye", "eye_L", "leftEye", "Left Eye")} == {"left_eye"}
    assert canonical_name("rear") == "rear" and canonical_name("forelegL1") == "foreleg_l_1"
    assert default_sigmas(["R_Knee", "tail"]) == (0.087, 0.0625)
    assert default_sigmas(["tail"], default=0.1) == (0.1,)


def test_limb_lengths_measured_on_the_annotations():
    # two objects a-b-c: a-b is a third of b-c at every size; c-d never labelled at both ends
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "num_keypoints": 3,
         "area": (10.0 * f) ** 2, "bbox": [0, 0, 40 * f, 1],
         "keypoints": [0, 0, 2, 10 * f, 0, 2, 40 * f, 0, 2, 0, 0, 0]}
        for i, f in enumerate((1.0, 3.0))
    ]  # fmt: skip
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 200}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing", "keypoints": ["a", "b", "c", "d"],
                        "skeleton": [[1, 2], [2, 3], [3, 4]]}],
    }  # fmt: skip
    kfile = load_keypoint_file(Path("thing.json"), data=data)
    topo = resolve_topology({"name": "auto"}, kfile)
    assert topo.limb_lengths == pytest.approx((1.0, 3.0, 2.0))  # c-d: the median of the others
    assert "limb_lengths: a->b=1, b->c=3, c->d=2" in describe(topo)
    given = resolve_topology({"name": "auto", "limb_lengths": [1, 1, 1]}, kfile)
    assert given.limb_lengths == (1.0, 1.0, 1.0)
