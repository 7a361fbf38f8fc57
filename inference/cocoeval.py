"""COCO keypoint results and AP: skeletons -> COCO result dicts -> pycocotools COCOeval.

The decoder's topology maps onto a COCO category's keypoints by label name, so the coco18
topology (COCO's 17 + neck) writes COCO's 17 and drops the neck. Missing parts are written as
(0, 0, 0), COCO's own notation for an unlabelled keypoint (COCOeval ignores the predicted
visibility and scores every keypoint the ground truth labels).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.neck import add_neck
from datasets.topology import Topology

# COCO's per-keypoint OKS falloffs (pycocotools Params.kpt_oks_sigmas), by keypoint name
COCO_SIGMAS = {
    "nose": 0.026,
    "left_eye": 0.025,
    "right_eye": 0.025,
    "left_ear": 0.035,
    "right_ear": 0.035,
    "left_shoulder": 0.079,
    "right_shoulder": 0.079,
    "left_elbow": 0.072,
    "right_elbow": 0.072,
    "left_wrist": 0.062,
    "right_wrist": 0.062,
    "left_hip": 0.107,
    "right_hip": 0.107,
    "left_knee": 0.087,
    "right_knee": 0.087,
    "left_ankle": 0.089,
    "right_ankle": 0.089,
    # trt_pose's neck is the shoulders' midpoint: it gets the shoulders' falloff
    "neck": 0.079,
}
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

__all__ = [
    "COCO_SIGMAS",
    "STAT_NAMES",
    "category_index",
    "evaluate",
    "gt_keypoints",
    "load_coco",
    "oks_sigmas",
    "skeletons_to_coco",
]


def load_coco(annotations: str | Path | Mapping[str, Any]):
    """A pycocotools COCO from a file path or an in-memory dict, without its console chatter."""
    if isinstance(annotations, Mapping):
        coco = COCO()
        coco.dataset = dict(annotations)
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def person_category(coco_gt, category_id: int | None = None) -> dict[str, Any]:
    """The keypoint category to evaluate: ``category_id``, or the only one with keypoints."""
    cats = [c for c in coco_gt.loadCats(coco_gt.getCatIds()) if c.get("keypoints")]
    if category_id is not None:
        cats = [c for c in cats if c["id"] == category_id]
    if len(cats) != 1:
        names = [(c["id"], c["name"]) for c in coco_gt.loadCats(coco_gt.getCatIds())]
        raise ValueError(
            f"need exactly one keypoint category (category_id={category_id}); file has {names}"
        )
    return cats[0]


def category_index(topology: Topology, category: Mapping[str, Any]) -> np.ndarray:
    """(Kc,) topology part index of each of the category's keypoints, by name (-1 if absent)."""
    names = list(category.get("keypoints") or [])
    if not names:
        raise ValueError(f"COCO category {category.get('name')!r} has no 'keypoints' list")
    index = {n: i for i, n in enumerate(topology.labels)}
    idx = np.array([index.get(n, -1) for n in names], dtype=np.intp)
    if (idx < 0).all():
        raise ValueError(
            f"topology {topology.name!r} labels {list(topology.labels)} share no name with COCO "
            f"category {category.get('name')!r} keypoints {names}"
        )
    return idx


def oks_sigmas(names: Sequence[str]) -> np.ndarray:
    """OKS falloff per keypoint name: COCO's where known, else the mean of COCO's."""
    default = float(np.mean([COCO_SIGMAS[n] for n in list(COCO_SIGMAS)[:17]]))
    return np.array([COCO_SIGMAS.get(n, default) for n in names], dtype=np.float64)


def skeletons_to_coco(
    skeletons: Iterable[Any],
    image_id: int,
    topology: Topology,
    category: Mapping[str, Any],
    transform: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """COCO keypoint result dicts for one image's skeletons.

    ``skeletons``: objects with ``keypoints`` (K, 3) (x, y, score; NaN x for missing parts) and
    ``score``, in image pixels (or in any frame that ``transform``, a 2x3 affine, maps to image
    pixels). Parts absent from the category (coco18's neck) are dropped; missing parts are
    written as 0, 0, 0.
    """
    idx = category_index(topology, category)
    out = []
    for sk in skeletons:
        kp = np.asarray(sk.keypoints, dtype=np.float64)
        if kp.shape != (topology.num_parts, 3):
            raise ValueError(
                f"skeleton keypoints {kp.shape} do not match topology {topology.name!r} "
                f"({topology.num_parts} parts)"
            )
        xy = kp[:, :2]
        if transform is not None:
            xy = xy @ np.asarray(transform)[:, :2].T + np.asarray(transform)[:, 2]
        res = np.zeros((idx.size, 3))
        present = idx >= 0
        src = idx[present]
        ok = np.isfinite(xy[src]).all(1)
        rows = np.flatnonzero(present)[ok]
        res[rows, :2] = xy[src[ok]]
        res[rows, 2] = 2.0
        score = float(sk.score)
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category["id"]),
                "keypoints": [round(float(v), 2) for v in res.reshape(-1)],
                "score": score if np.isfinite(score) else 0.0,
            }
        )
    return out


def gt_keypoints(
    annotations: Sequence[Mapping[str, Any]], category: Mapping[str, Any], topology: Topology
) -> np.ndarray:
    """(N, K, 3) ground-truth keypoints of COCO annotations in the topology's part order.

    Parts are matched by name; a ``neck`` the category lacks is computed from the shoulders with
    ``datasets.neck.add_neck`` (COCO's 17 -> coco18). Other parts the category lacks stay
    unlabelled (v = 0).
    """
    names = list(category.get("keypoints") or [])
    kp = np.zeros((len(annotations), len(names), 3))
    for i, ann in enumerate(annotations):
        vals = np.asarray(ann.get("keypoints") or [], dtype=np.float64)
        if vals.size != 3 * len(names):
            raise ValueError(
                f"annotation id={ann.get('id')} has {vals.size} keypoint numbers; category "
                f"{category.get('name')!r} needs 3 x {len(names)}"
            )
        kp[i] = vals.reshape(-1, 3)
    if "neck" in topology.labels and "neck" not in names and len(names) == 17:
        kp = add_neck(kp) if len(annotations) else np.zeros((0, 18, 3))
        names = names + ["neck"]
    out = np.zeros((len(annotations), topology.num_parts, 3))
    index = {n: i for i, n in enumerate(names)}
    for j, label in enumerate(topology.labels):
        if label in index:
            out[:, j] = kp[:, index[label]]
    return out


def evaluate(
    coco_gt,
    results: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int] | None = None,
    sigmas: Sequence[float] | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """COCO keypoint AP/AR of ``results`` against ``coco_gt``; prints the standard table.

    ``image_ids`` restricts the evaluation (default: every image of the ground truth, so false
    detections on images without people count). ``sigmas`` default to COCO's by keypoint name.
    Returns the ten numbers of the table by name (``STAT_NAMES``); -1 where COCO has none.
    """
    cat = person_category(coco_gt)
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    if not results:
        # COCO.loadRes refuses an empty list; no detection scores 0 wherever there are people
        if verbose:
            print("no detections: AP = 0")
        has_gt = any(coco_gt.getAnnIds(imgIds=ids, iscrowd=False))
        return dict.fromkeys(STAT_NAMES, 0.0 if has_gt else -1.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(list(results))
    ev = COCOeval(coco_gt, coco_dt, "keypoints")
    ev.params.imgIds = ids
    ev.params.catIds = [cat["id"]]
    ev.params.kpt_oks_sigmas = np.asarray(
        sigmas if sigmas is not None else oks_sigmas(cat["keypoints"]), dtype=np.float64
    )
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        ev.evaluate()
        ev.accumulate()
    if verbose:
        ev.summarize()
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats, strict=True)}
