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

from datasets.cocofile import (
    AnnotationError,
    KeypointFile,
    align,
    keypoints_array,
    load_keypoint_file,
)
from datasets.errors import UserError
from datasets.topology import COCO_SIGMAS, Topology, default_sigmas

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

__all__ = [
    "COCO_SIGMAS",
    "STAT_NAMES",
    "category_index",
    "evaluate",
    "ground_truth",
    "gt_keypoints",
    "load_coco",
    "oks_sigmas",
    "skeletons_to_coco",
]


def load_coco(
    annotations: str | Path | Mapping[str, Any],
    category: str | int | None = None,
    strict: bool = True,
) -> COCO:
    """A pycocotools COCO from a file path or an in-memory dict, read and validated by the shared
    reader (``datasets.cocofile``: one object class, ``area`` filled in), without its chatter."""
    if isinstance(annotations, Mapping):
        kfile = load_keypoint_file("annotations", category, strict, data=annotations)
    else:
        kfile = load_keypoint_file(annotations, category, strict)
    return coco_from_dict(kfile.data)


def coco_from_dict(data: Mapping[str, Any]) -> COCO:
    """A pycocotools COCO of an already validated COCO dict (``KeypointFile.data``)."""
    coco = COCO()
    coco.dataset = dict(data)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def ground_truth(
    kfile: KeypointFile, topology: Topology, keypoint_map: Mapping[str, Any] | None = None
) -> tuple[COCO, dict[str, Any], np.ndarray]:
    """What evaluation scores against: (COCO, its one category, OKS sigmas per its keypoint).

    The file's keypoints are renamed to the topology's labels (``datasets.cocofile.align``: names
    that match no label are an error naming them, unless ``keypoint_map`` maps or drops them);
    the sigmas are the topology's.
    """
    kfile = align(kfile, topology, keypoint_map)
    category = kfile.category
    sigma = dict(zip(topology.labels, topology.sigmas, strict=True))
    sigmas = np.array([sigma[n] for n in category["keypoints"]], dtype=np.float64)
    return coco_from_dict(kfile.data), category, sigmas


def person_category(coco_gt, category_id: int | None = None) -> dict[str, Any]:
    """The keypoint category to evaluate: ``category_id``, or the only one with keypoints."""
    cats = [c for c in coco_gt.loadCats(coco_gt.getCatIds()) if c.get("keypoints")]
    if category_id is not None:
        cats = [c for c in cats if c["id"] == category_id]
    if len(cats) != 1:
        names = [(c["id"], c["name"]) for c in coco_gt.loadCats(coco_gt.getCatIds())]
        raise UserError(
            f"need exactly one keypoint category (category_id={category_id}); file has {names}: "
            "read it with load_coco(path, category=NAME|ID|all)"
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
    """OKS falloff per keypoint name: COCO's where known (any spelling), else ``DEFAULT_SIGMA``
    (0.0625, the mean of COCO's 17); a topology's own ``sigmas`` take precedence in ``eval``."""
    return np.array(default_sigmas(names), dtype=np.float64)


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
    for ann in annotations:
        if len(ann.get("keypoints") or []) != 3 * len(names):
            raise AnnotationError(
                f"annotation id={ann.get('id')} has {len(ann.get('keypoints') or [])} keypoint "
                f"numbers; category {category.get('name')!r} needs 3 x {len(names)}: read the "
                "file with load_coco, which validates it"
            )
    return keypoints_array(annotations, names, topology)


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
    people = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=ids, catIds=[cat["id"]], iscrowd=False))
    if not any(a.get("num_keypoints", 0) > 0 for a in people):
        # COCOeval scores only annotated people; without any it prints -1 everywhere
        if verbose:
            print(
                f"note: no ground-truth {cat.get('name', 'object')} with labelled keypoints in "
                f"the {len(ids)} evaluated images, so AP/AR are undefined (-1); evaluate on "
                "images with annotated people (only_with_people=true, or another annotations=...)"
            )
        return dict.fromkeys(STAT_NAMES, -1.0)
    if not results:
        # COCO.loadRes refuses an empty list; no detection scores 0 wherever there are people
        if verbose:
            print("no detections: AP = 0")
        return dict.fromkeys(STAT_NAMES, 0.0)
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
