"""COCO keypoint files shaped like the public datasets a new user brings (generated, never stored).

Each kind reproduces the structure that broke the toolkit, not the real data:

* ``ap10k``: 54 animal categories sharing one 17-keypoint list (AP-10K style), ``category=all``;
* ``locust``: 35 keypoints (``forelegL1`` style names) whose skeleton is in 9 pieces;
* ``fly``: 32 keypoints whose skeleton is in 7 pieces;
* ``horse``: 22 keypoints and no skeleton at all;
* ``zebra``: 9 keypoints, a connected skeleton;
* ``crowdpose``: 14 keypoints with ``L_``/``R_`` names, crowded people, no ``area`` field;
* ``occluded``: COCO person keypoints with many occluded (v=1) and unlabelled (v=0) parts.

Objects are articulated bodies (limbs of random length and direction per file, every joint bent
at random per object), or with ``layout="random"`` one rigid template of random points per file
(keypoints at least ``MIN_GAP`` apart); rotated, scaled, jittered and placed in images of
several sizes; a few images have no objects.
"""

from __future__ import annotations

import numpy as np

from datasets.neck import COCO_PERSON_KEYPOINTS

MIN_GAP = 0.25  # template units (the template spans about [-1, 1])
KINDS = ("ap10k", "locust", "fly", "horse", "zebra", "crowdpose", "occluded")

AP10K = [
    "left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
    "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee",
    "left_back_paw", "right_hip", "right_knee", "right_back_paw",
]  # fmt: skip
AP10K_SKELETON = [
    [1, 2], [1, 3], [2, 3], [3, 4], [4, 5], [4, 6], [6, 7], [7, 8], [4, 9], [9, 10], [10, 11],
    [5, 12], [12, 13], [13, 14], [5, 15], [15, 16], [16, 17],
]  # fmt: skip
CROWDPOSE = [
    "L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow", "L_Wrist", "R_Wrist", "L_Hip", "R_Hip",
    "L_Knee", "R_Knee", "L_Ankle", "R_Ankle", "Head", "Neck",
]  # fmt: skip
CROWDPOSE_SKELETON = [
    [13, 14], [14, 1], [14, 2], [1, 3], [3, 5], [2, 4], [4, 6], [14, 7], [14, 8], [7, 9], [9, 11],
    [8, 10], [10, 12],
]  # fmt: skip
COCO_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip


# (fraction occluded but labelled (v=1), fraction unlabelled (v=0)) per kind: lab recordings of
# insects and the zebra label everything; field and crowd pictures miss some parts
UNSEEN = {
    "ap10k": (0.1, 0.04),
    "locust": (0.0, 0.0),
    "fly": (0.0, 0.0),
    "horse": (0.1, 0.02),
    "zebra": (0.05, 0.0),
    "crowdpose": (0.2, 0.04),
    "occluded": (0.4, 0.02),
}


def _chain(names: list[str], chain: list[str]) -> list[list[int]]:
    return [
        [names.index(a) + 1, names.index(b) + 1] for a, b in zip(chain[:-1], chain[1:], strict=True)
    ]


def _insect(num_leg_joints: int, extra: list[list[str]]) -> tuple[list[str], list[list[int]]]:
    """Body chain + 6 free legs (``forelegL1`` ...) + ``extra`` chains: one piece per chain."""
    body = ["head", "pronotum", "thorax", "abdomen_mid", "abdomen_tip"]
    legs = [
        [f"{leg}leg{side}{j}" for j in range(1, num_leg_joints + 1)]
        for leg in ("fore", "mid", "hind")
        for side in ("L", "R")
    ]
    chains = [body, *legs, *extra]
    names = [n for c in chains for n in c]
    skeleton = [e for c in chains for e in _chain(names, c)]
    return names, skeleton


def category_of(kind: str) -> tuple[list[str], list[list[int]]]:
    """(keypoint names, 1-based skeleton) of a kind."""
    if kind == "ap10k":
        return AP10K, AP10K_SKELETON
    if kind == "locust":  # 5 + 6 x 4 + 2 x 3 = 35 keypoints, 1 + 6 + 2 = 9 pieces
        return _insect(
            4, [["antennaL1", "antennaL2", "antennaL3"], ["antennaR1", "antennaR2", "antennaR3"]]
        )
    if kind == "fly":  # 5 + 6 x 4 + 3 = 32 keypoints; eyes and wings join the body: 7 pieces
        names, skel = _insect(4, [])
        names = names + ["eyeL", "eyeR", "wing_tip"]
        skel = skel + [[1, 30], [1, 31], [3, 32]]
        return names, skel
    if kind == "horse":  # 22 keypoints, no skeleton
        parts = [
            "Eye",
            "Shoulder",
            "Elbow",
            "Knee_front",
            "Hoof_front",
            "Hip",
            "Stifle",
            "Hock",
            "Hoof_back",
        ]
        names = ["Nose", "Poll", "Withers", "Tail_base"] + [f"{p}_{s}" for p in parts for s in "LR"]
        return names, []
    if kind == "zebra":
        names = [
            "snout",
            "head",
            "neck",
            "forelegL1",
            "forelegR1",
            "hindlegL1",
            "hindlegR1",
            "tailbase",
            "tailtip",
        ]
        return names, [[1, 2], [2, 3], [3, 4], [3, 5], [3, 8], [8, 6], [8, 7], [8, 9]]
    if kind == "crowdpose":
        return CROWDPOSE, CROWDPOSE_SKELETON
    if kind == "occluded":
        return list(COCO_PERSON_KEYPOINTS), COCO_SKELETON
    raise ValueError(kind)


def _template(k: int, rng: np.random.Generator) -> np.ndarray:
    """(K, 2) points in [-1, 1]^2, pairwise at least MIN_GAP apart."""
    pts: list[np.ndarray] = []
    while len(pts) < k:
        p = rng.uniform(-1, 1, 2)
        if all(np.hypot(*(p - q)) >= MIN_GAP for q in pts):
            pts.append(p)
    return np.array(pts)


def _body(k: int, skeleton: list[list[int]], rng: np.random.Generator):
    """An articulated body: each keypoint's parent (-1: a root), limb length and direction.
    The skeleton's edges are the limbs (a tree grown from keypoint 0); a keypoint the skeleton
    leaves unconnected (a leg of an insect, any keypoint of a file without skeleton) hangs from
    a random keypoint placed before it, as a leg hangs from the thorax."""
    nbrs: list[list[int]] = [[] for _ in range(k)]
    for a, b in skeleton:
        nbrs[a - 1].append(b - 1)
        nbrs[b - 1].append(a - 1)
    parent, order = np.full(k, -1), []
    for root in range(k):
        if root in order:
            continue
        if order:  # a new piece: attach its first keypoint near one already placed
            parent[root] = order[int(rng.integers(len(order)))]
        queue = [root]
        order.append(root)
        while queue:
            a = queue.pop(0)
            for b in nbrs[a]:
                if b not in order:
                    parent[b] = a
                    order.append(b)
                    queue.append(b)
    length = rng.uniform(0.3, 0.6, k)
    angle = rng.uniform(-np.pi, np.pi, k)
    return parent, order, length, angle


def _pose(body, rng: np.random.Generator, bend: float = 0.3) -> np.ndarray:
    """(K, 2) keypoints of one instance of ``body``: every joint bent by N(0, ``bend``) rad
    (bends add up along a limb chain), scaled to span about [-1, 1]."""
    parent, order, length, angle = body
    pts, turn = np.zeros((len(parent), 2)), np.zeros(len(parent))
    for b in order:
        a = parent[b]
        if a < 0:
            continue
        turn[b] = turn[a] + rng.normal(0.0, bend)
        t = angle[b] + turn[b]
        pts[b] = pts[a] + length[b] * np.array([np.cos(t), np.sin(t)])
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / max(float(np.abs(pts).max()), 1e-6)


def make_file(
    kind: str,
    num_images: int = 24,
    seed: int = 0,
    unlabelled: float | None = None,
    layout: str = "articulated",
) -> dict:
    """A COCO keypoint file of ``kind`` (see the module docstring); images are records only.
    ``unlabelled``: the fraction of parts left unlabelled (default: the kind's, ``UNSEEN``).
    ``layout``: ``articulated`` (limbs of the skeleton bent at random per object, ``_body``) or
    ``random`` (one rigid template of random points per file, adjacent parts no closer than
    any two: a stress case that real objects do not present)."""
    rng = np.random.default_rng(seed)
    names, skeleton = category_of(kind)
    if layout == "random":
        template = _template(len(names), rng)
    elif layout == "articulated":
        body = _body(len(names), skeleton, rng)
    else:
        raise ValueError(layout)
    crowded = kind in ("crowdpose", "occluded")
    single = kind in ("locust", "fly", "zebra", "horse")  # one animal per (lab) picture
    occluded, default_unlabelled = UNSEEN[kind]
    unlabelled = default_unlabelled if unlabelled is None else unlabelled
    if kind == "ap10k":
        cats = [
            {"id": i + 1, "name": f"species_{i + 1}", "supercategory": f"family_{i % 10}",
             "keypoints": names, "skeleton": skeleton}
            for i in range(54)
        ]  # fmt: skip
    else:
        cats = [
            {"id": 1, "name": kind, "supercategory": kind, "keypoints": names, "skeleton": skeleton}
        ]
    images, anns = [], []
    for image_id in range(1, num_images + 1):
        w, h = [(640, 480), (480, 640), (800, 600)][image_id % 3]
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": w, "height": h})
        count = 0 if image_id % 8 == 0 else 1 if single else int(rng.integers(2, 4))
        for i in range(count):
            # side by side across the image; crowded kinds overlap their neighbours a little
            step = w / count
            size = min(step * (0.55 if crowded else 0.45), h * 0.4) * rng.uniform(0.8, 1.0)
            size = size * (0.75 if single else 1.0)  # a whole animal in the picture, turned
            ang = rng.uniform(-0.5, 0.5)
            rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
            shape = template if layout == "random" else _pose(body, rng)
            pts = (shape + rng.normal(0, 0.02, shape.shape)) @ rot.T * size
            centre = np.array([step * (i + 0.5), h / 2 + rng.uniform(-0.1, 0.1) * h])
            pts = pts + centre
            v = np.where(rng.random(len(names)) < occluded, 1, 2)
            v[rng.random(len(names)) < unlabelled] = 0
            inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
            v[~inside] = 0
            kp = np.concatenate([np.where(v[:, None] > 0, pts, 0.0), v[:, None]], 1)
            on = pts[v > 0]
            lo, hi = on.min(0), on.max(0)
            ann = {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cats[int(rng.integers(len(cats)))]["id"],
                "keypoints": [round(float(x), 2) for x in kp.reshape(-1)],
                "num_keypoints": int((v > 0).sum()),
                "iscrowd": 0,
                "bbox": [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])],
            }
            if kind != "crowdpose":  # CrowdPose files carry no area
                ann["area"] = float((hi[0] - lo[0]) * (hi[1] - lo[1]))
            anns.append(ann)
    return {"images": images, "annotations": anns, "categories": cats}
