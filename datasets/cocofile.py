"""One reader for COCO keypoint files, shared by preprocessing, training, evaluation and the oracle.

``load_keypoint_file(path, category, strict)`` reads the file (UTF-8 JSON object with ``images``,
``annotations`` and ``categories`` lists), picks the keypoint categories (``category``: a name,
an id, ``all``, or None for the only one), validates every image record and every annotation of
those categories, and returns a :class:`KeypointFile` whose ``data`` is a clean single-category
COCO dict that pycocotools, the dataset and the oracle read without further checks:

* several categories that share one keypoint list (AP-10K style) become one object class;
* ``area`` is computed where missing (segmentation area, else bbox, else keypoint extent),
  ``bbox`` where missing or malformed (keypoint extent), ``num_keypoints`` is recounted, ``iscrowd``
  defaults to 0, missing annotation ids are numbered;
* images without annotations are kept (their false positives count in evaluation).

Bad input is a :class:`AnnotationError` (a ``UserError``): one line naming the file, the problem,
the offending image / annotation ids and the fix. With ``strict=False`` bad annotations (and image
records) are skipped and counted in ``KeypointFile.problems``: NaN/inf/negative coordinates,
visibility outside {0, 1, 2}, keypoint arrays of the wrong length or with non-numbers, unknown
image ids, image records without an integer ``id`` or a positive ``height``/``width``.

``align(file, topology, keypoint_map)`` renames the file's keypoints to the topology's labels (by
name, by COCO spelling, or through ``keypoint_map``) and refuses names that match nothing, so a
zebra file evaluated against the person topology is an error naming the zebra's keypoints, not a
silent AP 0.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.errors import UserError
from datasets.neck import add_neck, adds_neck
from datasets.topology import Topology, as_whole, canonical_name

log = logging.getLogger(__name__)

SHOW_IDS = 20  # ids listed per problem in messages

PROBLEMS = {
    "missing_image_file": "images whose file is missing",
    "bad_image_record": "image records without an integer id, positive height/width or file_name",
    "duplicate_image_id": "image records whose id an earlier record has",
    "unknown_image_id": "annotations of an image id not in 'images'",
    "unknown_category_id": "annotations of a category_id that no category has",
    "bad_keypoint_length": "annotations with a keypoint array of the wrong length",
    "non_numeric_keypoints": "annotations with keypoint values that are not numbers",
    "nan_coordinates": "annotations with NaN or infinite keypoint values",
    "negative_coordinates": "annotations with negative keypoint coordinates",
    "bad_visibility": "annotations with a visibility flag outside {0, 1, 2}",
}

IMAGE_PROBLEMS = ("missing_image_file", "bad_image_record", "duplicate_image_id")  # of images


class AnnotationError(UserError, ValueError):
    """An unusable annotation file; the message names the file, the ids and the fix."""


class AnnotationFileMissing(UserError, FileNotFoundError):
    """No annotation file at the given path."""


@dataclass
class KeypointFile:
    """A validated COCO keypoint file, reduced to one object class (see the module docstring)."""

    path: Path
    data: dict[str, Any]  # images, annotations (one category_id), categories=[category]
    source_categories: list[dict[str, Any]]  # the file's categories that were merged
    problems: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    @property
    def category(self) -> dict[str, Any]:
        return self.data["categories"][0]

    @property
    def keypoints(self) -> list[str]:
        return list(self.category["keypoints"])

    def skipped(self) -> int:
        return sum(len(v) for v in self.problems.values())


def describe_problems(problems: Mapping[str, Sequence[Any]], expected_len: int | None) -> str:
    """``N what: ids a, b, ... and M more`` per problem kind, joined on one line by ``; ``."""
    parts = []
    for kind, ids in problems.items():
        what = PROBLEMS[kind]
        if kind == "bad_keypoint_length" and expected_len is not None:
            what += f" (expected {expected_len} numbers)"
        kind_of = "image" if kind in IMAGE_PROBLEMS else "annotation"
        shown = ", ".join(str(i) for i in ids[:SHOW_IDS])
        more = f" and {len(ids) - SHOW_IDS} more" if len(ids) > SHOW_IDS else ""
        parts.append(f"{len(ids)} {what}: {kind_of} ids {shown}{more}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- reading
def missing_hint(path: Path) -> str:
    """The next step for a missing annotation file: COCO's own files come from
    ``datasets.download``, the ``_modified`` ones (with the neck) from ``datasets.preprocess``."""
    if path.name.endswith("_modified.json"):
        raw = path.with_name(path.name.replace("_modified.json", ".json"))
        step = "" if raw.is_file() else "run python -m datasets.download, then "
        return (
            f"{step or 'run '}python -m datasets.preprocess (or set data.root=..., or train on the "
            "generated set with data=synthetic)"
        )
    if path.name.startswith("person_keypoints_"):
        return "run python -m datasets.download (or give annotations=FILE images=DIR)"
    return "give the path of a COCO keypoint file"


def read_json(path: str | Path) -> dict[str, Any]:
    """A COCO file as a dict; every unreadable file is an AnnotationError naming it."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationFileMissing(f"annotation file {path} not found: {missing_hint(path)}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(
            f"{path} is not a text file (not UTF-8 at byte {e.start}): give a COCO keypoint "
            "JSON file"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): fix or "
            "regenerate the file"
        ) from None
    if not isinstance(data, dict):
        raise AnnotationError(
            f"{path}: the top level is a JSON {type(data).__name__}, not an object: a COCO file is "
            '{"images": [...], "annotations": [...], "categories": [...]}'
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(
                f"{path}: no '{key}' list at the top level (keys: {sorted(data)}): a COCO keypoint "
                "file has images, annotations and categories"
            )
    return data


def select_categories(
    data: Mapping[str, Any], category: str | int | None, source: Any
) -> list[dict[str, Any]]:
    """The keypoint categories ``category`` names: a name, an id, ``all``, or None (the only one,
    or all of them when they share one keypoint list)."""
    cats = [
        c
        for c in data["categories"]
        if isinstance(c, dict) and isinstance(c.get("keypoints"), list) and c["keypoints"]
    ]
    listing = ", ".join(f"{c.get('id')}:{c.get('name')}" for c in cats[:12])
    listing += f" and {len(cats) - 12} more" if len(cats) > 12 else ""
    if not cats:
        raise AnnotationError(
            f"{source}: no category with a 'keypoints' list: this is not a COCO keypoint file"
        )
    if category is not None and str(category) != "all":
        chosen = [c for c in cats if str(category) in (str(c.get("name")), str(c.get("id")))]
        if not chosen:
            raise AnnotationError(
                f"{source}: no keypoint category {category!r}; give category=NAME|ID|all from: "
                f"{listing}"
            )
        return chosen[:1]
    groups = {tuple(c["keypoints"]) for c in cats}
    if len(groups) > 1:
        raise AnnotationError(
            f"{source}: {len(cats)} keypoint categories with {len(groups)} different keypoint "
            f"lists; pick one with category=NAME or category=ID ({listing})"
        )
    return cats


def load_keypoint_file(
    path: str | Path,
    category: str | int | None = None,
    strict: bool = True,
    data: Mapping[str, Any] | None = None,
) -> KeypointFile:
    """Read, select and validate (see the module docstring); ``data``: an already loaded dict."""
    path = Path(path)
    if data is None:
        data = read_json(path)
    cats = [_whole_id(c, path) for c in select_categories(data, category, path)]
    merged = _merged_category(cats, path)
    if len(cats) > 1:
        log.info(
            "%s: %d categories share one keypoint list: one object class %r (category=NAME for "
            "one of them)",
            path,
            len(cats),
            merged["name"],
        )
    problems: dict[str, list[Any]] = defaultdict(list)
    images = _valid_images(data["images"], problems)
    anns = _category_annotations(data, {c["id"] for c in cats}, problems)
    anns = _valid_annotations(anns, len(merged["keypoints"]), images, problems)
    for a in anns:
        a["category_id"] = merged["id"]
    _refuse_normalised(anns, images, path)
    if problems and strict:
        raise AnnotationError(
            f"{path}: invalid input: {describe_problems(problems, 3 * len(merged['keypoints']))}"
            " (fix the file, or strict=false to skip and count these)"
        )
    out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out.update(images=list(images.values()), annotations=anns, categories=[merged])
    return KeypointFile(path, out, cats, problems)


def _refuse_normalised(anns: list[dict], images: Mapping[int, dict], path: Path) -> None:
    """Labelled keypoints that all lie in [0, 1] are normalised coordinates (a YOLO-style
    converter's), not COCO's pixels: training and scoring would use a speck in each image's
    corner. (The first keypoint beyond 1 ends the check.)"""
    n = 0
    for a in anns:
        kp = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
        xy = kp[kp[:, 2] > 0, :2]
        if (xy > 1.0).any():
            return
        n += len(xy)
    side = min((min(im["width"], im["height"]) for im in images.values()), default=0)
    if n >= 3 and side > 4:
        raise AnnotationError(
            f"{path}: all {n} labelled keypoints lie in [0, 1] x [0, 1] in images of "
            f"{side} px and more: the coordinates look normalised, and COCO keypoints are "
            "pixels: multiply each x by its image's width and each y by its height"
        )


def _whole_id(cat: dict[str, Any], path: Path) -> dict[str, Any]:
    """The keypoint category with its id as an int (7.0 is 7); any other id is an error: the
    annotations name their category by this id, and COCO's evaluation compares it as a number."""
    cid = as_whole(cat.get("id"))
    if cid is None:
        raise AnnotationError(
            f"{path}: keypoint category {cat.get('name')!r} has id {cat.get('id')!r}: give it an "
            "integer id (and the same number as its annotations' category_id)"
        )
    return {**cat, "id": cid}


def _category_annotations(
    data: Mapping[str, Any], ids: set[int], problems: dict[str, list[Any]]
) -> list[dict[str, Any]]:
    """The annotations of the categories ``ids`` (a category_id of 7.0 matches 7; the caller
    copies them and sets the merged category's id); those of a category_id that no category of
    the file has are problems (another category's, as in a file that also holds boxes of other
    objects, are left out silently)."""
    known = {as_whole(c.get("id")) for c in data["categories"] if isinstance(c, dict)} - {None}
    out = []
    for a in data["annotations"]:
        cid = as_whole(a.get("category_id")) if isinstance(a, dict) else None
        if isinstance(a, dict) and cid not in known:
            problems["unknown_category_id"].append(a.get("id"))
        elif cid in ids:
            out.append(a)
    return out


def _merged_category(cats: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """One category for several that share a keypoint list: the first's id and skeleton, the
    common name (or supercategory, or the file's name)."""
    first = dict(cats[0])
    if len(cats) > 1:
        names = {c.get("name") for c in cats}
        supers = {c.get("supercategory") for c in cats}
        name = (
            names.pop()
            if len(names) == 1
            else (supers.pop() if len(supers) == 1 and None not in supers else path.stem)
        )
        first.update(name=str(name), supercategory=str(name))
        first["merged_ids"] = [c.get("id") for c in cats]
    first["keypoints"] = [str(n) for n in first["keypoints"]]
    return first


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _valid_images(records: list[Any], problems: dict[str, list[Any]]) -> dict[int, dict]:
    """Image records by id, with whole-number id/height/width as ints; bad ones (no whole id,
    no positive height/width, no file_name) and repeated ids are problems."""
    images: dict[int, dict] = {}
    for i, img in enumerate(records):
        if not isinstance(img, dict):
            problems["bad_image_record"].append(f"#{i}")
            continue
        whole = {k: as_whole(img.get(k)) for k in ("id", "height", "width")}
        sized = all((whole[k] or 0) > 0 for k in ("height", "width"))
        if whole["id"] is None or not sized or not isinstance(img.get("file_name"), str):
            problems["bad_image_record"].append(img.get("id", f"#{i}"))
        elif whole["id"] in images:
            problems["duplicate_image_id"].append(whole["id"])
        else:
            images[whole["id"]] = {**img, **whole}
    return images


def _valid_annotations(
    anns: list[dict], k: int, images: Mapping[int, Any], problems: dict[str, list[Any]]
) -> list[dict]:
    """Copies of the usable annotations with area/bbox/num_keypoints filled in."""
    out = []
    next_id = 1 + max((a["id"] for a in anns if _is_int(a.get("id"))), default=0)
    for ann in anns:
        ann = dict(ann)
        image_id = as_whole(ann.get("image_id"))
        if image_id is not None:  # (an image id of 7.0 is image 7)
            ann["image_id"] = image_id
        if not _is_int(ann.get("id")):
            ann["id"], next_id = next_id, next_id + 1
        if ann.get("keypoints") in (None, []):  # none labelled: COCO writes 3K zeros for that
            ann["keypoints"] = [0] * (3 * k)
        problem = annotation_problem(ann, k, images)
        if problem:
            problems[problem].append(ann["id"])
            continue
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(k, 3)
        ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
        ann.setdefault("iscrowd", 0)
        if not _box_ok(ann.get("bbox")):
            ann["bbox"] = _keypoint_box(kp)
        if not isinstance(ann.get("area"), int | float) or not math.isfinite(ann["area"]):
            ann["area"] = _area(ann, images[ann["image_id"]])
        out.append(ann)
    return out


def annotation_problem(ann: Mapping[str, Any], k: int, images: Any) -> str | None:
    """The PROBLEMS key of an annotation's first defect, or None when it is usable."""
    if ann.get("image_id") not in images:
        return "unknown_image_id"
    kp = ann.get("keypoints")
    if not isinstance(kp, list) or len(kp) != 3 * k:
        return "bad_keypoint_length"
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in kp):
        return "non_numeric_keypoints"
    values = np.asarray(kp, dtype=np.float64).reshape(k, 3)
    if not np.isfinite(values).all():
        return "nan_coordinates"
    if (values[values[:, 2] > 0, :2] < 0).any():
        return "negative_coordinates"
    if not np.isin(values[:, 2], (0.0, 1.0, 2.0)).all():
        return "bad_visibility"
    return None


def _box_ok(box: Any) -> bool:
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, int | float) and math.isfinite(v) for v in box)
    )


def _keypoint_box(kp: np.ndarray) -> list[float]:
    """[x, y, w, h] around the labelled keypoints (zeros when none are labelled)."""
    xy = kp[kp[:, 2] > 0, :2]
    if not len(xy):
        return [0.0, 0.0, 0.0, 0.0]
    lo, hi = xy.min(0), xy.max(0)
    return [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]


def _area(ann: Mapping[str, Any], image: Mapping[str, Any]) -> float:
    """Object area: of the segmentation (polygons or RLE), else of the bbox (COCOeval needs it
    for its area ranges and OKS scale)."""
    seg = ann.get("segmentation")
    if seg:
        from pycocotools import mask as mask_utils  # C extension; only for files without area

        try:
            h, w = image["height"], image["width"]
            if isinstance(seg, list):
                rles = mask_utils.frPyObjects([p for p in seg if len(p) >= 6], h, w)
                rle = mask_utils.merge(rles) if rles else None
            else:
                rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            if rle is not None and float(mask_utils.area(rle)) > 0:
                return float(mask_utils.area(rle))
        except (TypeError, ValueError, KeyError):
            pass  # a malformed segmentation: fall back to the box
    x, y, bw, bh = ann["bbox"]
    return float(bw * bh)


# --------------------------------------------------------------------------- topology names
def align(
    kfile: KeypointFile,
    topology: Topology,
    keypoint_map: Mapping[str, Any] | None = None,
    every_label: bool = False,
) -> KeypointFile:
    """The file with its keypoints renamed to the topology's labels (and unmapped ones dropped).

    A file keypoint matches a label of the same name, or of the same COCO spelling
    (``L_Shoulder`` = ``left_shoulder``), or the label ``keypoint_map[name]``; ``keypoint_map``
    maps a name to null to drop it deliberately. Unmatched names are an error that names them.
    ``every_label`` (training) also refuses labels the file cannot provide (the neck of COCO's 17
    is derived, so it counts as provided).
    """
    names = kfile.keypoints
    target = _match_names(names, topology, dict(keypoint_map or {}), kfile.path)
    if every_label:
        have = {t for t in target if t is not None}
        missing = [
            lab for lab in topology.labels if lab not in have and not adds_neck(names, topology)
        ]
        if missing:
            raise AnnotationError(
                f"{kfile.path}: topology {topology.name!r} labels {missing} are not in category "
                f"{kfile.category.get('name')!r} keypoints {names}: train with topology=auto (the "
                "file's own keypoints), or map file names onto them with topology.keypoint_map="
                "{FILE_NAME: LABEL}"
            )
    if target == names:
        return kfile
    keep = [i for i, t in enumerate(target) if t is not None]
    cat = dict(kfile.category, keypoints=[target[i] for i in keep])
    renumber = {old: new + 1 for new, old in enumerate(keep)}
    cat["skeleton"] = [
        [renumber[a - 1], renumber[b - 1]]
        for a, b in kfile.category.get("skeleton") or []
        if a - 1 in renumber and b - 1 in renumber
    ]
    cols = np.array([[3 * i, 3 * i + 1, 3 * i + 2] for i in keep], dtype=np.intp).reshape(-1)
    anns = []
    for a in kfile.data["annotations"]:
        kp = np.asarray(a["keypoints"], dtype=np.float64)[cols]
        anns.append(dict(a, keypoints=kp.tolist(), num_keypoints=int((kp[2::3] > 0).sum())))
    data = dict(kfile.data, annotations=anns, categories=[cat])
    return KeypointFile(kfile.path, data, kfile.source_categories, kfile.problems)


def _match_names(
    names: Sequence[str], topology: Topology, keypoint_map: dict[str, Any], source: Path
) -> list[str | None]:
    labels = list(topology.labels)
    by_spelling = {canonical_name(lab): lab for lab in labels}
    target: list[str | None] = []
    unmatched = []
    for n in names:
        if n in keypoint_map:
            t = keypoint_map[n]
            if t is not None and str(t) not in labels:
                raise AnnotationError(
                    f"topology.keypoint_map maps {n!r} to {t!r}, which is not a label of topology "
                    f"{topology.name!r} ({labels})"
                )
            target.append(None if t is None else str(t))
        elif n in labels:
            target.append(n)
        elif canonical_name(n) in by_spelling:
            target.append(by_spelling[canonical_name(n)])
        else:
            unmatched.append(n)
    if unmatched:
        shown = ", ".join(f"{n}: null" for n in unmatched[:3])
        raise AnnotationError(
            f"{source}: keypoints {unmatched} match no label of topology {topology.name!r} "
            f"({len(labels)} labels: {', '.join(labels[:6])}{', ...' if len(labels) > 6 else ''})"
            f": use topology=auto for the file's own keypoints, or topology.keypoint_map="
            f"{{{shown}}} to map (NAME: LABEL) or drop (NAME: null) them"
        )
    if len(set(t for t in target if t)) != len([t for t in target if t]):
        raise AnnotationError(
            f"{source}: two keypoints of {list(names)} map onto one label of topology "
            f"{topology.name!r}: fix topology.keypoint_map"
        )
    return target


def keypoints_array(
    annotations: Sequence[Mapping[str, Any]], names: Sequence[str], topology: Topology
) -> np.ndarray:
    """(N, K, 3) float64 keypoints of aligned annotations in the topology's label order: parts
    matched by name, COCO's 17 get the neck (``datasets.neck``), others stay unlabelled."""
    kp = np.zeros((len(annotations), len(names), 3))
    for i, ann in enumerate(annotations):
        kp[i] = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    names = list(names)
    if adds_neck(names, topology):
        kp = add_neck(kp) if len(annotations) else np.zeros((0, len(names) + 1, 3))
        names = names + ["neck"]
    out = np.zeros((len(annotations), topology.num_parts, 3))
    index = {n: i for i, n in enumerate(names)}
    for j, label in enumerate(topology.labels):
        if label in index:
            out[:, j] = kp[:, index[label]]
    return out


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A file-name-safe spelling of a category name (for conf/topology/<name>.yaml)."""
    return _SAFE.sub("_", str(name)).strip("_") or "custom"
