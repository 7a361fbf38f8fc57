"""python -m datasets.synthetic [data.root=data/synthetic] [data.synthetic.num_train=256] [force=true]

A small COCO-format keypoint data set of rendered figures with exact annotations: the offline
default for the quick start, the smoke experiment and CI. For the coco18 topology the figures are
bold front-facing stick people (head with eyes and nose, filled torso, thick limbs with outlines)
in random poses, sizes and in-plane rotations; for any other topology, random articulated trees
with the topology's edges. Every image holds several figures on a random gradient background with
distractor shapes; figures overlap and may be cut by the image border.

Annotations follow COCO: keypoints (x, y, v) in pixels with centres at +0.5, v = 2 visible, 1
inside the image but covered by a later figure, 0 (written as 0, 0, 0) outside the image;
``segmentation`` is each figure's visible region as polygons, with ``bbox`` and ``area`` from it.
Now and then a figure is left unlabelled (``num_keypoints`` 0) and an image gets a crowd of tiny
figures as one ``iscrowd`` RLE region, so the ignore masks are exercised. The category is the
topology's (for coco18: the 18 keypoints with the neck, 21 edges), so no preprocessing is needed.

Layout under ``data.root``: ``annotations/person_keypoints_{train,val}.json``, ``train/``,
``val/`` and ``synthetic.json`` (the settings it was generated with). ``ensure(data_cfg)``
generates it when absent or generated with other settings, writing into a temporary folder that is
renamed into place at the end, so an interrupted run leaves nothing that looks complete.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from datasets.files import resolve_path
from datasets.topology import Topology, topology_from_config

log = logging.getLogger(__name__)

FORMAT = 3  # bump when the generator changes, so ensure() regenerates old sets
SPLITS = ("train", "val")
DEFAULTS = {
    "num_train": 256,
    "num_val": 64,
    "image_size": [256, 256],
    "max_figures": 3,
    "figure_size": [0.35, 0.9],  # figure height as a fraction of the image's shorter side
    "seed": 0,
    "jpeg_quality": 90,
    "unlabelled_prob": 0.08,  # per figure: drawn but with no keypoints (an ignore region)
    "crowd_prob": 0.1,  # per image: a crowd of tiny figures annotated as one iscrowd region
}

# coco18 figure in body units (torso length 1), front-facing: the figure's left is image +x
_SHOULDER = (0.36, 0.05)
_HIP = (0.22, 1.0)
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.55, 0.5, 0.62, 0.6
_HEAD_R = 0.27
_NOSE, _EYE, _EAR = (0.0, -0.42), (0.1, -0.5), (0.24, -0.45)


@functools.cache
def _coco18_labels() -> list[str]:
    return list(Topology.named("coco18").labels)


def _person_pose(rng: np.random.Generator) -> np.ndarray:
    """(18, 2) coco18 keypoints of a random pose in body units, neck at the origin, y down."""
    p = np.zeros((18, 2))
    width = rng.uniform(0.85, 1.15)
    p[17] = (0.0, 0.0)  # neck
    p[0] = _NOSE
    for side, sign in ((0, 1.0), (1, -1.0)):  # 0 = left (image +x), 1 = right
        p[1 + side] = (sign * _EYE[0], _EYE[1])
        p[3 + side] = (sign * _EAR[0], _EAR[1])
        sh = np.array((sign * _SHOULDER[0] * width, _SHOULDER[1]))
        hip = np.array((sign * _HIP[0] * width, _HIP[1]))
        p[5 + side], p[11 + side] = sh, hip
        # angles from "straight down", positive = away from the body's midline
        a = math.radians(rng.uniform(-20, 160))
        b = a + math.radians(rng.uniform(-20, 130))
        elbow = sh + _UPPER_ARM * np.array((sign * math.sin(a), math.cos(a)))
        p[7 + side] = elbow
        p[9 + side] = elbow + _FOREARM * np.array((sign * math.sin(b), math.cos(b)))
        a = math.radians(rng.uniform(-15, 50))
        b = a + math.radians(rng.uniform(-50, 15))
        knee = hip + _THIGH * np.array((sign * math.sin(a), math.cos(a)))
        p[13 + side] = knee
        p[15 + side] = knee + _SHIN * np.array((sign * math.sin(b), math.cos(b)))
    # turn the head a little so the face is not always centred
    p[:5] += (rng.uniform(-0.06, 0.06), 0.0)
    return p


def _tree_pose(topology: Topology, rng: np.random.Generator) -> np.ndarray:
    """(K, 2) positions for any topology: a random layout grown along the edges, unit scale."""
    k = topology.num_parts
    pos = np.full((k, 2), np.nan)
    adj: dict[int, list[int]] = {i: [] for i in range(k)}
    for a, b in topology.edges:
        adj[a].append(b)
        adj[b].append(a)
    for root in range(k):
        if not np.isnan(pos[root, 0]):
            continue
        pos[root] = rng.uniform(-0.6, 0.6, 2)  # a new component (or an isolated part)
        stack = [root]
        while stack:
            i = stack.pop()
            for j in adj[i]:
                if np.isnan(pos[j, 0]):
                    ang = rng.uniform(0, 2 * math.pi)
                    pos[j] = pos[i] + rng.uniform(0.45, 0.8) * np.array(
                        (math.cos(ang), math.sin(ang))
                    )
                    stack.append(j)
    return pos - pos.mean(0)


def _random_color(rng: np.random.Generator, away_from: np.ndarray | None = None) -> np.ndarray:
    """A saturated BGR colour, far in brightness from ``away_from`` when given."""
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        c[rng.integers(3)] = rng.uniform(180, 255)  # keep it vivid
        if away_from is None or abs(c.mean() - away_from.mean()) > 60:
            return c
    return 255 - away_from


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random two-colour gradient with a few distractor shapes and mild noise (BGR uint8)."""
    ends = rng.uniform(0, 255, (2, 1, 3)).astype(np.uint8)
    if rng.random() < 0.5:
        ends = ends.transpose(1, 0, 2)  # horizontal instead of vertical gradient
    img = cv2.resize(ends, (w, h), interpolation=cv2.INTER_LINEAR)
    for _ in range(rng.integers(0, 4)):  # distractors: blobs and boxes, never limb-like lines
        color = tuple(float(x) for x in rng.uniform(0, 255, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), int(rng.integers(5, w // 5)), color, -1, cv2.LINE_AA)
        else:
            x2, y2 = x + int(rng.integers(10, w // 3)), y + int(rng.integers(10, h // 3))
            cv2.rectangle(img, (x, y), (x2, y2), color, -1)
    noise = rng.integers(0, 12, (h, w, 3), dtype=np.uint8)
    return cv2.subtract(cv2.add(img, noise), np.full_like(img, 6))


def _pix(p: np.ndarray) -> tuple[int, int]:
    """cv2 drawing point (integer pixel centres) of a continuous (centre +0.5) coordinate,
    at 4 bits of sub-pixel precision (cv2 ``shift=4``)."""
    return int(round((p[0] - 0.5) * 16)), int(round((p[1] - 0.5) * 16))


_PERSON_LIMBS = [(5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16)]


def _draw_figure(
    canvases: list[tuple[np.ndarray, Any]],
    kp: np.ndarray,
    topology: Topology,
    unit: float,
    person: bool,
    rng: np.random.Generator,
) -> None:
    """Draw one figure (keypoints ``kp`` (K, 2) in pixels) on each (canvas, colour) pair.

    A colour of None means "the figure's real colours" (the picture); any other value paints
    the whole figure in it (the label map used for occlusion and segmentation).
    """
    thick = max(2, int(round(0.2 * unit)))
    outline = max(1, thick // 4)
    limbs = _PERSON_LIMBS if person else list(topology.edges)
    for canvas, fill in canvases:
        real = fill is None
        if real:
            h, w = canvas.shape[:2]
            x, y = (int(np.clip(kp[-1, 0], 0, w - 1)), int(np.clip(kp[-1, 1], 0, h - 1)))
            body = _random_color(rng, away_from=canvas[y, x].astype(float))
            dark = tuple(float(v) for v in body * 0.35)
            col = tuple(float(v) for v in body)
            line = cv2.LINE_AA
        else:
            dark = col = fill
            line = cv2.LINE_8
        if person:
            torso = np.array([_pix(kp[i]) for i in (5, 6, 12, 11)], np.int32)
            cv2.fillPoly(canvas, [torso], dark, line, shift=4)
            inner = torso.mean(0) + (torso - torso.mean(0)) * 0.85
            cv2.fillPoly(canvas, [inner.astype(np.int32)], col, line, shift=4)
            cv2.line(canvas, _pix(kp[17]), _pix(kp[0]), dark, thick, line, shift=4)
        for a, b in limbs:
            cv2.line(canvas, _pix(kp[a]), _pix(kp[b]), dark, thick + 2 * outline, line, shift=4)
        for a, b in limbs:
            cv2.line(canvas, _pix(kp[a]), _pix(kp[b]), col, thick, line, shift=4)
        joint_r = max(16, int(round(0.12 * unit * 16)))
        for i in range(5 if person else 0, topology.num_parts):
            cv2.circle(canvas, _pix(kp[i]), joint_r, dark, -1, line, shift=4)
        if person:  # head centred on the nose, with eyes and a nose dot
            r16 = int(round(_HEAD_R * unit * 16))
            cv2.circle(canvas, _pix(kp[0]), r16 + outline * 16, dark, -1, line, shift=4)
            cv2.circle(canvas, _pix(kp[0]), r16, col, -1, line, shift=4)
            if real:
                dot = max(16, int(round(0.05 * unit * 16)))
                for i in (1, 2):
                    cv2.circle(canvas, _pix(kp[i]), dot, (20, 20, 20), -1, line, shift=4)
                cv2.circle(canvas, _pix(kp[0]), dot, (30, 30, 200), -1, line, shift=4)


def _place(pose: np.ndarray, size: float, angle: float, centre: np.ndarray) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return pose @ rot.T * size + centre


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    ]


def _polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) < 3:
            continue
        # contour points are pixel indices of boundary pixels; +0.5 for pixel centres
        polys.append((c.reshape(-1).astype(np.float64) + 0.5).tolist())
    return polys


def render_image(
    topology: Topology, size_hw: tuple[int, int], rng: np.random.Generator, settings: Mapping
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One BGR image and its annotations (without ids)."""
    h, w = size_hw
    person = list(topology.labels) == _coco18_labels()
    img = _background(h, w, rng)
    # a crowd of tiny figures first, so labelled figures stand in front of it
    crowd = _draw_crowd(img, topology, person, rng, settings)
    labels, figures = _draw_figures(img, topology, person, rng, settings)
    anns = []
    for i, (kp, unlabelled) in enumerate(figures):
        ann = _figure_annotation(kp, unlabelled, i + 1, labels, topology)
        if ann is not None:
            anns.append(ann)
    if crowd is not None:
        ann = _crowd_annotation(crowd, labels, topology)
        if ann is not None:
            anns.append(ann)
    return img, anns


def _draw_crowd(
    img: np.ndarray, topology: Topology, person: bool, rng: np.random.Generator, settings: Mapping
) -> np.ndarray | None:
    """Now and then draw a crowd of tiny figures on ``img``; returns its (H, W) uint8 region
    (1 where a crowd figure painted), or None when there is no crowd."""
    h, w = img.shape[:2]
    span = min(h, w)
    crowd = None
    if rng.random() < float(settings["crowd_prob"]):
        crowd = np.zeros((h, w), np.uint8)
        centre = np.array((rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h))
        for _ in range(int(rng.integers(5, 10))):
            pose = _person_pose(rng) if person else _tree_pose(topology, rng)
            unit = span * rng.uniform(0.025, 0.04)
            at = centre + rng.normal(0, span * 0.06, 2)
            kp = _place(pose - pose.mean(0), unit, rng.normal(0, 0.3), at)
            _draw_figure([(img, None), (crowd, 1)], kp, topology, unit, person, rng)
    return crowd


def _draw_figures(
    img: np.ndarray, topology: Topology, person: bool, rng: np.random.Generator, settings: Mapping
) -> tuple[np.ndarray, list[tuple[np.ndarray, bool]]]:
    """Draw the labelled figures on ``img``, later ones in front. Returns the (H, W) uint16 label
    map (which figure, 1-based, painted each pixel last; 0 = none) and per figure its (K, 2)
    keypoints in pixels and whether it is left unlabelled."""
    h, w = img.shape[:2]
    span = min(h, w)
    labels = np.zeros((h, w), np.uint16)
    figures = []
    for i in range(int(rng.integers(1, int(settings["max_figures"]) + 1))):
        pose = _person_pose(rng) if person else _tree_pose(topology, rng)
        extent = 2.9 if person else 1.6  # body units from head top to feet
        unit = span * rng.uniform(*settings["figure_size"]) / extent
        # mostly upright; now and then any way up
        angle = math.radians(rng.normal(0, 25) if rng.random() < 0.95 else rng.uniform(-180, 180))
        # mostly inside, sometimes hanging over an edge
        centre = np.array((rng.uniform(-0.05, 1.05) * w, rng.uniform(0.0, 1.0) * h))
        kp = _place(pose - pose.mean(0), unit, angle, centre)
        _draw_figure([(img, None), (labels, i + 1)], kp, topology, unit, person, rng)
        figures.append((kp, rng.random() < float(settings["unlabelled_prob"])))
    return labels, figures


def _figure_annotation(
    kp: np.ndarray, unlabelled: bool, label: int, labels: np.ndarray, topology: Topology
) -> dict[str, Any] | None:
    """The annotation of figure ``label`` (its value in the label map) from its visible region,
    or None when it is buried under later figures. Keypoints inside the image are visible (2)
    or, where a later figure covers them, occluded (1); an unlabelled figure gets none."""
    h, w = labels.shape
    visible = (labels == label).astype(np.uint8)
    area = int(visible.sum())
    if area < 12:
        return None  # buried under later figures: nothing to annotate
    out = np.zeros((topology.num_parts, 3))
    if not unlabelled:
        inside = (kp[:, 0] >= 0) & (kp[:, 1] >= 0) & (kp[:, 0] < w) & (kp[:, 1] < h)
        for k in np.nonzero(inside)[0]:
            covered = labels[int(kp[k, 1]), int(kp[k, 0])] > label
            out[k] = (kp[k, 0], kp[k, 1], 1 if covered else 2)
    return {
        "keypoints": np.round(out.reshape(-1), 2).tolist(),
        "num_keypoints": int((out[:, 2] > 0).sum()),
        "segmentation": _polygons(visible),
        "area": float(area),
        "bbox": _bbox(visible),
        "iscrowd": 0,
    }


def _crowd_annotation(
    crowd: np.ndarray, labels: np.ndarray, topology: Topology
) -> dict[str, Any] | None:
    """The iscrowd RLE annotation of the part of the crowd left in view, or None when too little
    of it is."""
    h, w = labels.shape
    region = (crowd > 0) & (labels == 0)  # the part of the crowd left in view
    if region.sum() < 12:
        return None
    rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
    return {
        "keypoints": [0] * (3 * topology.num_parts),
        "num_keypoints": 0,
        "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
        "area": float(region.sum()),
        "bbox": _bbox(region),
        "iscrowd": 1,
    }


def generate(root: Path, topology: Topology, settings: Mapping[str, Any]) -> dict[str, int]:
    """Write the train and val splits under ``root`` (which must not exist); returns counts."""
    settings = {**DEFAULTS, **dict(settings)}
    h, w = (int(x) for x in settings["image_size"])
    category = topology.to_coco_category(1, "person" if topology.name == "coco18" else None)
    (root / "annotations").mkdir(parents=True)
    counts = {}
    for s, split in enumerate(SPLITS):
        n = int(settings[f"num_{split}"])
        folder = root / split
        folder.mkdir()
        images, anns = [], []
        for i in tqdm(range(n), desc=f"synthetic {split}", disable=n < 50):
            rng = np.random.default_rng([int(settings["seed"]), s, i])
            img, objs = render_image(topology, (h, w), rng, settings)
            image_id = s * 1_000_000 + i + 1
            name = f"{image_id:012d}.jpg"
            ok = cv2.imwrite(
                str(folder / name), img, [cv2.IMWRITE_JPEG_QUALITY, int(settings["jpeg_quality"])]
            )
            if not ok:
                raise OSError(f"cannot write {folder / name}")
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            for obj in objs:
                anns.append(
                    {
                        "id": len(anns) + 1 + s * 10_000_000,
                        "image_id": image_id,
                        "category_id": 1,
                        **obj,
                    }
                )
        data = {
            "info": {"description": "pafpose synthetic figures", "version": str(FORMAT)},
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": [category],
        }
        with open(root / "annotations" / f"person_keypoints_{split}.json", "w") as f:
            json.dump(data, f, separators=(",", ":"))
        counts[split] = n
    return counts


def _stamp(topology: Topology, settings: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "topology": topology.to_dict(), "settings": {**DEFAULTS, **settings}}


def ensure(
    data_cfg: Mapping[str, Any], topology: Topology | None = None, force: bool = False
) -> Path:
    """Generate the synthetic set under ``data_cfg.root`` unless it is there with these settings.

    Atomic: generated into a temporary sibling folder, then renamed into place (an older set
    with other settings is replaced). Safe to call from several processes at once.
    """
    topology = topology or Topology.named("coco18")
    root = resolve_path(data_cfg["root"])
    settings = dict(data_cfg.get("synthetic") or {})
    want = _stamp(topology, settings)
    stamp = root / "synthetic.json"
    if not force and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == want:
                log.info("synthetic set already in %s (same settings)", root)
                return root
        except ValueError:
            pass
        log.info("%s holds a synthetic set made with other settings; regenerating", root)
    elif root.exists() and any(root.iterdir()) and not stamp.is_file():
        raise FileExistsError(
            f"{root} exists but is not a synthetic data set (no synthetic.json); "
            "choose another data.root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp", dir=root.parent))
    try:
        work = tmp / "set"
        counts = generate(work, topology, settings)
        (work / "synthetic.json").write_text(json.dumps(want, indent=1))
        old = None
        if root.exists():
            old = tmp / "old"
            os.replace(root, old)
        try:
            os.replace(work, root)
        except OSError:
            if not (stamp.is_file() and json.loads(stamp.read_text()) == want):
                raise  # another process won the race with the same settings otherwise
        log.info("synthetic set written to %s: %s", root, counts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def run(cfg: Mapping[str, Any]) -> Path:
    """Entry point: generate (or regenerate with ``force``) the configured synthetic set."""
    topology = topology_from_config(cfg["topology"]) if cfg.get("topology") else None
    return ensure(cfg["data"], topology, force=bool(cfg.get("force", False)))


if __name__ == "__main__":
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path="../conf", config_name="synthetic")
    def main(cfg: DictConfig) -> None:
        run(OmegaConf.to_container(cfg, resolve=True))

    main()
