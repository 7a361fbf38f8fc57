"""python -m datasets.preprocess [data.root=data/coco] [splits=[train2017,val2017]] [strict=false]

Turn ``person_keypoints_<split>.json`` into ``person_keypoints_<split>_modified.json``:

* keep the annotations of one keypoint category (``category``, default ``person``);
* with ``topology=coco18`` and COCO's 17 person keypoints, append the neck to every annotation
  (``datasets.neck.add_neck``: midpoint of the shoulders, labelled only if both are, visible only
  if both are) and rewrite the category to the 18-keypoint, 21-edge coco18 record;
* with ``topology=null`` keep the category's own keypoints and skeleton (custom objects), or with a
  topology whose labels equal the category's, write that topology's skeleton;
* validate: keypoint arrays of the wrong length, NaN/infinite or negative coordinates, visibility
  flags outside {0, 1, 2}, annotations of unknown image ids, images whose file is missing. With
  ``strict=true`` (default) any of these stops with an error listing the offending ids; with
  ``strict=false`` the offending annotations (and images) are dropped and counted in a summary.

``num_keypoints`` is recomputed (labelled keypoints, v > 0). Output is written atomically.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from datasets.files import resolve_path, write_json
from datasets.neck import add_neck
from datasets.topology import Topology

log = logging.getLogger(__name__)

SHOW_IDS = 20  # ids listed per problem in messages

PROBLEMS = {
    "missing_image_file": "images whose file is missing",
    "unknown_image_id": "annotations of an image id not in 'images'",
    "bad_keypoint_length": "annotations with a keypoint array of the wrong length",
    "nan_coordinates": "annotations with NaN or infinite keypoint values",
    "negative_coordinates": "annotations with negative keypoint coordinates",
    "bad_visibility": "annotations with a visibility flag outside {0, 1, 2}",
}


class AnnotationError(ValueError):
    """Invalid annotations; the message lists every problem with the offending ids."""


@dataclass
class Summary:
    """What preprocessing kept and what it dropped (``strict=false``), per problem kind."""

    images_in: int = 0
    images_out: int = 0
    annotations_in: int = 0
    annotations_out: int = 0
    neck_added: bool = False
    problems: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def describe(self, expected_len: int | None = None) -> str:
        lines = []
        for kind, ids in self.problems.items():
            what = PROBLEMS[kind]
            if kind == "bad_keypoint_length" and expected_len is not None:
                what += f" (expected {expected_len} numbers)"
            kind_of = "image" if kind == "missing_image_file" else "annotation"
            shown = ", ".join(str(i) for i in ids[:SHOW_IDS])
            more = f" and {len(ids) - SHOW_IDS} more" if len(ids) > SHOW_IDS else ""
            lines.append(f"  {len(ids)} {what}: {kind_of} ids {shown}{more}")
        return "\n".join(lines)

    def __str__(self) -> str:
        text = (
            f"images {self.images_in} -> {self.images_out}, annotations {self.annotations_in} -> "
            f"{self.annotations_out}{', neck added' if self.neck_added else ''}"
        )
        if self.problems:
            n = sum(len(v) for v in self.problems.values())
            text += f"; skipped {n}:\n" + self.describe()
        return text


def find_category(data: Mapping[str, Any], category: str | int, source: str = "") -> dict:
    """The keypoint category named (or with id) ``category``."""
    cats = [c for c in data.get("categories", []) if c.get("keypoints")]
    for c in cats:
        if c.get("name") == category or str(c.get("id")) == str(category):
            return c
    raise AnnotationError(
        f"{source or 'annotations'}: no keypoint category {category!r}; keypoint categories: "
        f"{[(c.get('id'), c.get('name')) for c in cats]}"
    )


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def preprocess(
    data: Mapping[str, Any],
    category: str | int = "person",
    topology: str | Topology | None = "coco18",
    images_dir: str | Path | None = None,
    strict: bool = True,
    source: str = "",
) -> tuple[dict[str, Any], Summary]:
    """Validate and convert one COCO keypoint file (already loaded); returns (new file, summary).

    ``images_dir`` enables the missing-file check (``images_dir/file_name``). Raises
    AnnotationError listing the offending ids when ``strict`` and anything is invalid.
    """
    cat = find_category(data, category, source)
    names = list(cat["keypoints"])
    k_in = len(names)
    if isinstance(topology, str):
        topology = Topology.named(topology)
    neck = False
    if topology is None:
        out_cat = {k: v for k, v in cat.items()}
    else:
        labels = list(topology.labels)
        if labels == names:
            pass
        elif labels[:-1] == names and labels[-1] == "neck" and k_in == 17:
            neck = True
        else:
            raise AnnotationError(
                f"{source}: category {cat.get('name')!r} keypoints {names} match neither topology "
                f"{topology.name!r} labels {labels} nor COCO's 17 plus a neck; use topology=null "
                "to keep the category's own keypoints"
            )
        out_cat = topology.to_coco_category(category_id=cat["id"], name=cat.get("name"))
        out_cat["supercategory"] = cat.get("supercategory", out_cat["supercategory"])

    summary = Summary(neck_added=neck)
    images = list(data.get("images", []))
    summary.images_in = len(images)
    bad_images: set[int] = set()
    if images_dir is not None:
        folder = Path(images_dir)
        for img in tqdm(images, desc="check image files", disable=len(images) < 5000):
            if not (folder / str(img.get("file_name", ""))).is_file():
                bad_images.add(img["id"])
                summary.problems["missing_image_file"].append(img["id"])
    image_ids = {img["id"] for img in images}

    anns = [a for a in data.get("annotations", []) if a.get("category_id") == cat["id"]]
    summary.annotations_in = len(anns)
    out_anns = []
    for ann in anns:
        problem = _check_annotation(ann, k_in, image_ids)
        if problem:
            summary.problems[problem].append(ann.get("id"))
            continue
        if ann["image_id"] in bad_images:
            continue  # counted with its image
        kp = ann["keypoints"]
        if neck:
            kp = add_neck(kp).reshape(-1).tolist()
        new = dict(ann)
        new["keypoints"] = [_number(x) for x in kp]
        new["num_keypoints"] = sum(1 for v in new["keypoints"][2::3] if v > 0)
        out_anns.append(new)

    if summary.problems and strict:
        raise AnnotationError(
            f"{source or 'annotations'}: invalid input (strict=true; strict=false skips and "
            f"counts these):\n{summary.describe(3 * k_in)}"
        )
    out_images = [img for img in images if img["id"] not in bad_images]
    summary.images_out, summary.annotations_out = len(out_images), len(out_anns)
    out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out.update(images=out_images, annotations=out_anns, categories=[out_cat])
    return out, summary


def _check_annotation(ann: Mapping[str, Any], k: int, image_ids: set[int]) -> str | None:
    if ann.get("image_id") not in image_ids:
        return "unknown_image_id"
    kp = ann.get("keypoints")
    if not isinstance(kp, list) or len(kp) != 3 * k:
        return "bad_keypoint_length"
    try:
        values = [float(x) for x in kp]
    except (TypeError, ValueError):
        return "nan_coordinates"
    if not all(math.isfinite(x) for x in values):
        return "nan_coordinates"
    if any(x < 0 for i, x in enumerate(values) if i % 3 != 2):
        return "negative_coordinates"
    if any(v not in (0.0, 1.0, 2.0) for v in values[2::3]):
        return "bad_visibility"
    return None


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write compact JSON atomically (large annotation files)."""
    write_json(path, obj, separators=(",", ":"))


def run(cfg: Mapping[str, Any]) -> list[tuple[Path, Summary]]:
    """Preprocess every configured split; returns (output path, summary) per split."""
    ann_dir = resolve_path(cfg["annotations_dir"])
    images_root = resolve_path(cfg.get("images_root")) if cfg.get("check_images", True) else None
    results = []
    for split in cfg["splits"]:
        src = ann_dir / str(cfg["input"]).format(split=split)
        dst = ann_dir / str(cfg["output"]).format(split=split)
        if not src.is_file():
            raise FileNotFoundError(f"{src} not found (run python -m datasets.download first?)")
        with open(src) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{src} is not valid JSON: {e}") from e
        out, summary = preprocess(
            data,
            category=cfg.get("category", "person"),
            topology=cfg.get("topology"),
            images_dir=None if images_root is None else images_root / str(split),
            strict=bool(cfg.get("strict", True)),
            source=str(src),
        )
        write_json_atomic(dst, out)
        log.info("%s -> %s: %s", src.name, dst, summary)
        results.append((dst, summary))
    return results


if __name__ == "__main__":
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path="../conf", config_name="preprocess")
    def main(cfg: DictConfig) -> None:
        try:
            run(OmegaConf.to_container(cfg, resolve=True))
        except (AnnotationError, FileNotFoundError) as e:
            log.error("%s", e)
            raise SystemExit(1) from None

    main()
