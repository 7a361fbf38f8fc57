"""python -m datasets.preprocess [data.root=data/coco] [splits=[train2017,val2017]] [strict=false]

Turn ``person_keypoints_<split>.json`` into ``person_keypoints_<split>_modified.json``:

* keep the annotations of one keypoint category (``category``, default ``person``);
* with ``topology=coco18`` and COCO's 17 person keypoints, append the neck to every annotation
  (``datasets.neck.add_neck``: midpoint of the shoulders, labelled only if both are, visible only
  if both are) and rewrite the category to the 18-keypoint, 21-edge coco18 record;
* with ``topology=auto`` keep the category's own keypoints (``category=NAME|ID|all``; with
  ``topology.connect=auto`` the written skeleton gains the edges that join its pieces), or with a
  topology whose labels equal the category's, write that topology's skeleton;
* validate with the shared reader (``datasets.cocofile``): keypoint arrays of the wrong length or
  with non-numbers, NaN/infinite or negative coordinates, visibility flags outside {0, 1, 2},
  annotations of unknown image ids, bad image records, images whose file is missing. With
  ``strict=true`` (default) any of these stops with a one-line error listing the offending ids;
  with ``strict=false`` the offending annotations (and images) are dropped and counted.

``num_keypoints`` is recomputed (labelled keypoints, v > 0), a missing ``area`` computed. Output
is written atomically.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from datasets.auto_topology import resolve_topology
from datasets.cocofile import (
    AnnotationError,
    AnnotationFileMissing,
    KeypointFile,
    describe_problems,
    load_keypoint_file,
    read_json,
)
from datasets.config import as_list
from datasets.errors import UserError
from datasets.files import resolve_path, write_json
from datasets.neck import add_neck, adds_neck
from datasets.topology import Topology

log = logging.getLogger(__name__)

__all__ = ["AnnotationError", "Summary", "preprocess", "run"]


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
        return describe_problems(self.problems, expected_len)

    def __str__(self) -> str:
        text = (
            f"images {self.images_in} -> {self.images_out}, annotations {self.annotations_in} -> "
            f"{self.annotations_out}{', neck added' if self.neck_added else ''}"
        )
        if self.problems:
            n = sum(len(v) for v in self.problems.values())
            text += f"; skipped {n}: " + self.describe()
        return text


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

    Validation is the shared reader's (``datasets.cocofile``); ``images_dir`` adds the
    missing-file check (``images_dir/file_name``). ``topology=None`` keeps the category's own
    keypoints and skeleton. Raises AnnotationError listing the offending ids when ``strict`` and
    anything is invalid.
    """
    kfile = load_keypoint_file(source or "annotations", category, strict=False, data=data)
    cat = kfile.category
    k_in = len(cat["keypoints"])
    if isinstance(topology, str):
        topology = Topology.named(topology)
    out_cat, neck = _output_category(kfile, topology, source)
    summary = Summary(neck_added=neck, problems=kfile.problems)
    summary.images_in = len(data["images"])
    summary.annotations_in = sum(
        1 for a in data["annotations"] if isinstance(a, dict) and a.get("category_id") == cat["id"]
    )
    images = kfile.data["images"]
    missing = _missing_files(images, images_dir)
    summary.problems.update({"missing_image_file": sorted(missing)} if missing else {})
    out_anns = []
    for ann in kfile.data["annotations"]:
        if ann["image_id"] in missing:
            continue  # counted with its image
        kp = add_neck(ann["keypoints"]).reshape(-1).tolist() if neck else ann["keypoints"]
        n = sum(1 for v in kp[2::3] if v > 0)
        out_anns.append(dict(ann, keypoints=[_number(x) for x in kp], num_keypoints=n))
    if summary.problems and strict:
        raise AnnotationError(
            f"{source or 'annotations'}: invalid input (strict=true; strict=false skips and "
            f"counts these): {summary.describe(3 * k_in)}"
        )
    out_images = [img for img in images if img["id"] not in missing]
    summary.images_out, summary.annotations_out = len(out_images), len(out_anns)
    out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out.update(images=out_images, annotations=out_anns, categories=[out_cat])
    return out, summary


def _output_category(
    kfile: KeypointFile, topology: Topology | None, source: str
) -> tuple[dict[str, Any], bool]:
    """The category record to write, and whether the neck is added (COCO's 17 -> coco18)."""
    cat = kfile.category
    names = list(cat["keypoints"])
    if topology is None:
        return {k: v for k, v in cat.items() if k != "merged_ids"}, False
    neck = adds_neck(names, topology)
    if list(topology.labels) != names and not neck:
        raise AnnotationError(
            f"{source}: category {cat.get('name')!r} keypoints {names} match neither topology "
            f"{topology.name!r} labels {list(topology.labels)} nor COCO's 17 plus a neck; use "
            "topology=auto to keep the category's own keypoints"
        )
    out_cat = topology.to_coco_category(category_id=cat["id"], name=cat.get("name"))
    out_cat["supercategory"] = cat.get("supercategory", out_cat["supercategory"])
    return out_cat, neck


def _missing_files(images: list[dict], images_dir: str | Path | None) -> set[int]:
    if images_dir is None:
        return set()
    folder = Path(images_dir)
    return {
        img["id"]
        for img in tqdm(images, desc="check image files", disable=len(images) < 5000)
        if not (folder / str(img["file_name"])).is_file()
    }


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write compact JSON atomically (large annotation files)."""
    write_json(path, obj, separators=(",", ":"))


def _topology(cfg: Mapping[str, Any], src: Path, data: Mapping[str, Any]) -> Topology | None:
    """The configured topology: ``topology=auto`` derives it from the category (keeping its own
    keypoints; ``topology.connect=auto`` adds joining edges to the written skeleton)."""
    node = cfg.get("topology")
    if node is None or isinstance(node, str):
        return node  # the Python API: None keeps the category, a name is a shipped topology
    kfile = load_keypoint_file(src, cfg.get("category", "person"), strict=False, data=data)
    return resolve_topology(node, kfile)


def run(cfg: Mapping[str, Any]) -> list[tuple[Path, Summary]]:
    """Preprocess every configured split; returns (output path, summary) per split."""
    ann_dir = resolve_path(cfg["annotations_dir"])
    images_root = resolve_path(cfg.get("images_root")) if cfg.get("check_images", True) else None
    results = []
    for split in as_list(cfg["splits"]):
        src = ann_dir / str(cfg["input"]).format(split=split)
        dst = ann_dir / str(cfg["output"]).format(split=split)
        if not src.is_file():
            raise AnnotationFileMissing(
                f"{src} not found: run python -m datasets.download first (or give input=FILE)"
            )
        data = read_json(src)
        out, summary = preprocess(
            data,
            category=cfg.get("category", "person"),
            topology=_topology(cfg, src, data),
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
        except (UserError, FileNotFoundError) as e:
            log.error("%s", e)
            raise SystemExit(1) from None

    main()
