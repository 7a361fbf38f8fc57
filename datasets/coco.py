"""COCO-format keypoint dataset: augmented image, keypoints, ignore mask and (optionally) targets.

One sample, for an input of size (H, W) at output stride s:

* ``image``: float32 (3, H, W), RGB in [0, 1]. Not mean/std normalised: the model normalises
  inside (mean/std live in the model config and travel to the ONNX graph), so this pipeline and
  every runtime feed the same [0, 1] RGB.
* ``keypoints``: float32 (N, K, 3), (x, y, v) in input pixels (centres at +0.5), one row per
  object with at least one labelled keypoint. Keypoints that the augmentation moves outside the
  input keep their coordinates and visibility; the target renderers skip anything outside the
  map, so they need no special value. Unlabelled keypoints (v = 0) are written as (0, 0, 0).
* ``mask``: float32 (H/s, W/s) loss weights: 1 train, 0 ignore (crowd regions and people without
  labelled keypoints: ``datasets.targets.ignore_mask``), fractional at region borders.
* ``heatmap`` (K, H/s, W/s) and ``paf`` (2E, H/s, W/s) float32 when ``render_targets``; with
  ``data.targets_on_device=true`` the trainer renders them per batch instead.
* ``image_id`` int, ``matrix`` float64 (2, 3): original image -> input affine (the inverse maps
  predictions back).

Speed: each sample is decoded and warped once. The augmentation is composed into one matrix
(``datasets.augment``); when that matrix shrinks the image enough, the JPEG is decoded at 1/2, 1/4
or 1/8 size by libjpeg's scaled IDCT (``cv2.IMREAD_REDUCED_COLOR_*``), which is much cheaper than a
full decode, and the reduction is folded into the warp matrix.

Bad images: a missing, empty, corrupt or truncated file, one over ``max_pixels`` (checked from the
header before decoding: ``datasets.images``), or one whose size disagrees with its record, gives
a warning (once per image), is counted in ``num_bad`` (per process: each loader worker keeps its
own count) and in the sample's ``skipped`` (summed per batch by ``collate``, so the trainer can
report it), and another sample is returned, so training goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from datasets.augment import AugmentConfig, color_matrix, flip_keypoints, sample_affine
from datasets.auto_topology import is_auto, topology_for_file
from datasets.cocofile import (
    AnnotationError,
    align,
    describe_problems,
    keypoints_array,
    load_keypoint_file,
)
from datasets.config import real_number
from datasets.errors import UsageError, UserError
from datasets.files import resolve_path
from datasets.geometry import (
    ASPECT_POLICIES,
    aspect_option,
    compose,
    cv2_matrix,
    decode_reduction,
    warp_image,
)
from datasets.images import MAX_PIXELS, ImageError, decode_bgr, read_bytes
from datasets.synthetic import ensure
from datasets.targets import (
    TargetConfig,
    ignore_mask,
    mask_to_weights,
    pad_keypoints,
    render_targets,
)
from datasets.topology import Topology

log = logging.getLogger(__name__)

BadImage = ImageError  # the name this module used before datasets.images


class CocoKeypoints(Dataset):
    """Keypoint samples from a COCO-format file whose category matches ``topology``.

    The file may be preprocessed (``datasets.preprocess``) or raw COCO person keypoints: a
    17-keypoint COCO person category with the coco18 topology gets the neck added on load
    (``datasets.neck.add_neck``, the same rule as preprocessing).

    ``augment=None`` is evaluation mode: the image is only fitted into the input (``aspect``).
    """

    def __init__(
        self,
        annotations: str | Path,
        images: str | Path,
        topology: Topology,
        input_size: Sequence[int] = (224, 224),
        targets: TargetConfig | None = None,
        augment: Mapping[str, Any] | AugmentConfig | None = None,
        aspect: str = "squash",
        render_targets: bool = True,
        skip_empty: bool = True,
        max_upsample: float = 1.0,
        category: str | int | None = None,
        max_pixels: int | None = MAX_PIXELS,
        strict: bool = True,
        keypoint_map: Mapping[str, Any] | None = None,
    ) -> None:
        self.annotations_path = Path(annotations)
        self.strict = bool(strict)
        self.keypoint_map = dict(keypoint_map or {})
        self.images_dir = Path(images)
        self.topology = topology
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.targets = targets = targets or TargetConfig()
        self.augment = (
            augment
            if isinstance(augment, AugmentConfig) or augment is None
            else AugmentConfig.from_config(augment)
        )
        if aspect not in ASPECT_POLICIES:
            raise ValueError(f"aspect must be one of {ASPECT_POLICIES}, got {aspect!r}")
        if self.augment is not None and self.augment.flip and not topology.hflip:
            # a flip would swap left and right parts the topology cannot pair up
            log.warning("topology %r has no flip pairs: horizontal flip off", topology.name)
            self.augment = dataclasses.replace(self.augment, flip=0.0)
        self.aspect = aspect
        self.render_targets = render_targets
        self.max_upsample = float(max_upsample)
        self.max_pixels = max_pixels
        h, w = self.input_size
        if h % targets.stride or w % targets.stride:
            raise ValueError(f"input_size {[h, w]} must be divisible by stride {targets.stride}")
        self.map_size = (h // targets.stride, w // targets.stride)
        self.flip_perm = topology.flip_permutation()
        self.num_bad = 0  # samples replaced because their image was unusable (this process)
        self._warned: set[int] = set()
        self.timings: dict[str, float] | None = None  # set to {} to accumulate stage seconds
        self._load(category, skip_empty)

    # ------------------------------------------------------------------ index
    def _load(self, category: str | int | None, skip_empty: bool) -> None:
        """Index the images through the shared COCO reader (``datasets.cocofile``): validated,
        categories merged or picked, keypoints renamed to the topology's labels and reordered
        (COCO's 17 get the neck)."""
        kfile = load_keypoint_file(self.annotations_path, category, self.strict)
        if kfile.problems:
            log.warning(
                "%s: skipped %d invalid records (strict=false): %s",
                self.annotations_path,
                kfile.skipped(),
                describe_problems(kfile.problems, 3 * len(kfile.keypoints)),
            )
        kfile = align(kfile, self.topology, self.keypoint_map, every_label=True)
        self.num_skipped_annotations = kfile.skipped()
        k = self.topology.num_parts
        per_image: dict[int, tuple[list[dict], list[dict]]] = {}
        for ann in kfile.data["annotations"]:
            kps, ignore = per_image.setdefault(ann["image_id"], ([], []))
            if ann.get("iscrowd", 0) or not ann["num_keypoints"]:
                ignore.append(ann)  # ignore_mask decides from iscrowd / num_keypoints
            else:
                kps.append(ann)
        self.records = []
        for img in kfile.data["images"]:
            anns, ignore = per_image.get(img["id"], ([], []))
            if skip_empty and not anns:
                continue
            keypoints = keypoints_array(anns, kfile.keypoints, self.topology).astype(np.float32)
            keypoints[keypoints[..., 2] <= 0] = 0.0
            self.records.append(
                {
                    "id": int(img["id"]),
                    "file": self.images_dir / img["file_name"],
                    "hw": (int(img["height"]), int(img["width"])),
                    "keypoints": keypoints.reshape(-1, k, 3),
                    "ignore": ignore,
                }
            )
        if not self.records:
            raise AnnotationError(
                f"{self.annotations_path}: no images with labelled "
                f"{kfile.category.get('name')!r} objects: check the file (or category=...)"
            )

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------ samples
    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        for skipped, i in enumerate(self._candidates(index, rng)):
            try:
                sample = self._sample(i, rng)
            except ImageError as e:
                self.num_bad += 1
                rec = self.records[i]
                if rec["id"] not in self._warned:
                    self._warned.add(rec["id"])
                    warnings.warn(
                        f"skipping image id {rec['id']} ({e}); {self.num_bad} bad so far",
                        stacklevel=2,
                    )
                continue
            # images replaced on the way to this sample: the loaders' workers each count their
            # own, so the count travels with the batch to the trainer's summary
            sample["skipped"] = skipped
            return sample
        raise UserError(
            f"{self.annotations_path}: {skipped + 1} unusable images in a row under "
            f"{self.images_dir} (see the warnings above): check that the images are there "
            "and readable, or set data.*_images=... to their folder"
        )

    def _candidates(self, index: int, rng: np.random.Generator) -> Iterator[int]:
        """``index``, then its replacements should it be bad, each tried once, at most 50 in
        all: in training random others (a replacement can be bad too: the caller goes on), in
        evaluation the next images, deterministically."""
        yield index
        tries = min(len(self), 50) - 1
        if self.augment is None:
            yield from ((index + k) % len(self) for k in range(1, tries + 1))
            return
        # drawn without repeats, lazily: a permutation of a 56k-image set costs per sample
        seen = {index}
        while len(seen) <= tries:
            i = int(rng.integers(len(self)))
            if i not in seen:
                seen.add(i)
                yield i

    def _tick(self, stage: str, t0: float) -> float:
        t1 = time.perf_counter()
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + (t1 - t0)
        return t1

    def _sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        rec = self.records[index]
        t = time.perf_counter()
        h, w = rec["hw"]
        hi, wi = self.input_size
        matrix, flipped = sample_affine((h, w), self.input_size, self.aspect, self.augment, rng)
        r = decode_reduction(matrix, self.max_upsample)
        t = self._tick("sample", t)
        if self.timings is not None:  # how often each decode size is used (benchmark)
            self.timings[f"count_1/{r}"] = self.timings.get(f"count_1/{r}", 0) + 1
        image = self._decode(rec, r)
        t = self._tick("decode", t)

        reduced = compose(matrix, np.array([[r, 0.0, 0.0], [0.0, r, 0.0]]))
        warped = warp_image(image, reduced, (hi, wi))
        mean = None
        if self.augment is not None and self.augment.contrast:
            mean = np.array(cv2.mean(warped)[2::-1])  # RGB mean of the BGR image
        rgb = cv2.transform(warped, color_matrix(self.augment, rng, mean))
        image_t = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        t = self._tick("warp", t)

        if rec["ignore"]:
            full = self._ignore_mask(rec)
            mask_in = cv2.warpAffine(
                full * np.uint8(255), cv2_matrix(matrix), (wi, hi), flags=cv2.INTER_LINEAR
            )
            weights = mask_to_weights(mask_in.astype(np.float32) / 255.0, self.map_size)
        else:
            weights = np.ones(self.map_size, np.float32)
        t = self._tick("mask", t)

        kp = rec["keypoints"].copy()  # (N, K, 3) original pixels
        if len(kp):
            kp[..., :2] = kp[..., :2] @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2]
            if flipped:
                kp = flip_keypoints(kp, self.flip_perm)
            kp[kp[..., 2] <= 0] = 0.0
        kp = np.ascontiguousarray(kp, dtype=np.float32)
        sample = {
            "image": image_t,
            "keypoints": torch.from_numpy(kp),
            "mask": torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)),
            "image_id": rec["id"],
            "matrix": torch.from_numpy(matrix.astype(np.float64)),
        }
        t = self._tick("keypoints", t)
        if self.render_targets:
            heat, paf = render_targets(kp, self.topology, self.map_size, self.targets)
            sample["heatmap"] = torch.from_numpy(heat)  # (K, H/s, W/s)
            sample["paf"] = torch.from_numpy(paf)  # (2E, H/s, W/s)
            self._tick("targets", t)
        return sample

    def _ignore_mask(self, rec: dict[str, Any]) -> np.ndarray:
        """(h, w) uint8 ignore mask of the original image (``datasets.targets.ignore_mask``).

        Rasterising every polygon again costs more than the rest of the sample, so the mask is
        kept per image as one compressed RLE (a few hundred bytes) and decoded on later visits.
        """
        rle = rec.get("ignore_rle")
        if rle is None:
            h, w = rec["hw"]
            full = ignore_mask(rec["ignore"], h, w)
            rec["ignore_rle"] = mask_utils.encode(np.asfortranarray(full))
            return full
        return mask_utils.decode(rle)

    def _decode(self, rec: Mapping[str, Any], r: int) -> np.ndarray:
        """BGR uint8 image decoded at 1/r size; raises ImageError."""
        path = rec["file"]
        # COCO's width/height describe the stored pixels; EXIF rotation would disagree with them
        image = decode_bgr(read_bytes(path), path, r, self.max_pixels, exif=False)
        h, w = rec["hw"]
        if image.shape[:2] != (math.ceil(h / r), math.ceil(w / r)):
            raise ImageError(
                f"{path} is {image.shape[1] * r}x{image.shape[0] * r} (1/{r} decode "
                f"{image.shape[1]}x{image.shape[0]}) but its record says {w}x{h}"
            )
        return image


# --------------------------------------------------------------------------- batching
def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack samples; keypoints are padded to (B, max N, K, 3) with v = 0 (at least 1 slot)."""
    first = samples[0]
    k = first["keypoints"].shape[1]
    out = {
        "image": torch.stack([s["image"] for s in samples]),  # (B, 3, H, W)
        "mask": torch.stack([s["mask"] for s in samples]),  # (B, H/s, W/s)
        "keypoints": pad_keypoints([s["keypoints"] for s in samples], k),  # (B, N, K, 3)
        "image_id": torch.tensor([int(s["image_id"]) for s in samples], dtype=torch.long),
        "matrix": torch.stack([s["matrix"] for s in samples]),  # (B, 2, 3) float64
        # bad images the workers replaced while making this batch (datasets skip-and-count)
        "skipped": torch.tensor(sum(int(s.get("skipped", 0)) for s in samples)),
    }
    for key in ("heatmap", "paf"):
        if key in first:
            out[key] = torch.stack([s[key] for s in samples])  # (B, C, H/s, W/s)
    return out


def build_dataset(
    cfg: Mapping[str, Any],
    split: str,
    topology: Topology,
    targets: TargetConfig | Mapping[str, Any] | None = None,
) -> CocoKeypoints:
    """The ``split`` ("train" or "val") dataset of a config.

    ``cfg`` is either the whole config (``data`` and ``targets`` nodes) or the ``data`` node alone
    (then ``targets`` gives the target settings; defaults otherwise). Training augments and, unless
    ``data.targets_on_device``, renders targets in the workers; "val" only fits the image. A data
    config with a ``synthetic`` node is generated first when its files are missing.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if "data" in cfg:
        data = cfg["data"]
        targets = targets if targets is not None else cfg.get("targets")
    else:
        data = cfg
    if not isinstance(targets, TargetConfig):
        targets = TargetConfig.from_config(targets)
    if data.get("synthetic") is not None:
        ensure(data)
    train = split == "train"
    augment, aspect, max_upsample = _data_options(data, train)
    return CocoKeypoints(
        annotations=resolve_path(data[f"{split}_annotations"]),
        images=resolve_path(data[f"{split}_images"]),
        topology=topology,
        input_size=tuple(data.get("input_size", (224, 224))),
        targets=targets,
        augment=augment,
        aspect=aspect,
        render_targets=not bool(data.get("targets_on_device", False)),
        # validation keeps images without people (their false positives count), as inference.eval
        skip_empty=bool(
            data.get("skip_empty", True) if train else data.get("val_skip_empty", False)
        ),
        max_upsample=max_upsample,
        max_pixels=data.get("max_pixels", MAX_PIXELS),
        **_file_options(cfg, data),
    )


def _data_options(data: Mapping[str, Any], train: bool) -> tuple[Any, str, float]:
    """The data node's augment (training only), aspect and max_upsample, checked: a bad value
    is a one-line usage error naming the ``data.*`` override."""
    try:
        augment = AugmentConfig.from_config(data.get("augment")) if train else None
    except ValueError as e:
        raise UsageError(f"data.{e}") from None
    aspect = aspect_option(data.get("aspect", "squash"), "data.aspect")
    max_upsample = real_number(data.get("max_upsample", 1.0), "data.max_upsample", strict=True)
    return augment, aspect, max_upsample


def training_topology(cfg: Mapping[str, Any]) -> Topology:
    """The topology a training run uses: its ``topology`` node resolved
    (``datasets.auto_topology``); ``topology=auto`` and ``topology.connect=auto`` read
    ``data.train_annotations`` (with ``category``)."""
    node = cfg["topology"]
    data = cfg.get("data") or {}
    if is_auto(node) or node.get("connect"):
        if data.get("synthetic") is not None:
            raise UsageError(
                "topology=auto derives the topology from COCO keypoint files, and data=synthetic "
                "generates its files from the topology: give data=coco data.train_annotations=FILE"
                " data.train_images=DIR (and data.val_*), or a named topology"
            )
    opts = _file_options(cfg, data)
    return topology_for_file(
        node, resolve_path(data.get("train_annotations")), opts["category"], opts["strict"]
    )


def _file_options(cfg: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """How the annotation file is read: ``category`` (top level, or ``data.category``),
    ``strict`` (top level, default true) and the topology node's ``keypoint_map``."""
    topo = cfg.get("topology") or {}
    return {
        "category": cfg.get("category", data.get("category")),
        "strict": bool(cfg.get("strict", True)),
        "keypoint_map": topo.get("keypoint_map") if isinstance(topo, Mapping) else None,
    }
