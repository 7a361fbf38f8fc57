"""python -m inference.eval model=MODEL [annotations=FILE images=DIR]   |   ... oracle=true input_size=224

COCO keypoint AP (pycocotools) of a pose model, or of the decoder alone on oracle maps.

Model mode (``model=`` a .onnx, .engine/.plan or .pth, through ``inference.runtime``): every
image of the annotation file (not only those with people, unless ``only_with_people=true``) is
pre-processed exactly as training's evaluation mode did (the runtime's ``preprocess``: the model's
input size and aspect policy), run, decoded with the model's own decoder parameters, mapped back
to the original image (squash: ``output_scale`` = the original [rows, cols]; letterbox: the
inverse fit), written as COCO results (the 18-part topology mapped onto COCO's 17 by name) and
scored. The annotation file is any COCO keypoint file (read and validated by
``datasets.cocofile``; ``category=NAME|ID|all``); its keypoint names must match the model's
topology (``topology.keypoint_map`` maps or drops the others), and COCO's 17 person keypoints
are scored against coco18 without the neck. ``stats.json`` records the OKS sigmas used.

Oracle mode (``oracle=true``): no images and no network. For every image, the ground truth is
fitted into the network input (``input_size``, ``aspect``), rendered with ``datasets.targets``
(``targets`` settings; the neck from the shoulders) at input / stride, optionally blurred and
made noisy (``noise``, ``blur``), then decoded and scored the same way: the decoder's upper
bound for that resolution and target convention. With ``model=`` too, the model's input size,
aspect, targets and topology are used.

Writes ``results.json`` (COCO results) and ``stats.json`` (the AP/AR numbers and settings)
atomically into ``output`` (default: the Hydra run dir outputs/eval/<time>), and prints the
standard AP/AR table.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from datasets.auto_topology import resolve_topology
from datasets.cocofile import KeypointFile, load_keypoint_file
from datasets.config import as_plain, real_number, whole_number
from datasets.errors import UsageError, UserError, user_errors
from datasets.files import resolve_path, write_json
from datasets.images import MAX_PIXELS, ImageError, read_rgb
from datasets.targets import TargetConfig
from datasets.topology import Topology
from inference.cli import alias_model_argument, default_output_to_run_dir, output_dir
from inference.cocoeval import (
    evaluate,
    ground_truth,
    skeletons_to_coco,
)
from inference.decoder import OpenPoseDecoder, build_decoder
from inference.oracle import decode_image, oracle_results, oracle_settings
from inference.runtime import load_runtime
from inference.stream import source_limits
from inference.tta import TTAConfig, with_tta

log = logging.getLogger("inference.eval")


@dataclass
class Setup:
    """What the maps are made for: from the model (its metadata) or, in oracle mode, the config."""

    topology: Topology
    input_hw: tuple[int, int]
    aspect: str
    targets: TargetConfig
    decoder: dict[str, Any]  # the model's own decoder parameters ({} in oracle mode)
    runtime: Any = None


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate as configured (see the module docstring); returns stats, paths and counts."""
    cfg = as_plain(cfg)
    annotations = resolve_path(cfg.get("annotations"))
    if annotations is None:
        raise UsageError("give annotations=PATH (a COCO keypoint file)")
    out_dir = output_dir(cfg, "eval")
    model_path = resolve_path(cfg.get("model_path") or cfg.get("model"))
    kfile = load_keypoint_file(annotations, cfg.get("category"), bool(cfg.get("strict", True)))
    setup = _setup(cfg, model_path, kfile)
    decoder = _decoder(cfg, setup)
    gt, category, sigmas = ground_truth(kfile, setup.topology, _keypoint_map(cfg))
    ids = _image_ids(gt, category, cfg)
    t0 = time.perf_counter()
    skipped: list[str] = []
    if cfg.get("oracle"):
        what, results = _oracle(gt, category, decoder, setup, ids, cfg)
        evaluated = ids
    else:
        images = _images_dir(cfg.get("images"), annotations)
        what = f"model {model_path.name} (input {_hw(setup.input_hw)}, {setup.aspect})"
        batch, skip = whole_number(cfg, "batch_size"), bool(cfg.get("skip_unreadable"))
        max_pixels = source_limits(cfg)["max_pixels"]
        results, evaluated, skipped = model_results(
            setup.runtime, decoder, gt, category, ids, images, batch, skip, max_pixels
        )
    seconds = time.perf_counter() - t0
    results_path = write_json(out_dir / "results.json", results)
    n_people = sum(_has_people(gt, i, category) for i in evaluated)
    print(
        f"{what}: {len(evaluated)} images ({n_people} with objects), {len(results)} detections, "
        f"{seconds:.1f} s" + (f"; {len(skipped)} unreadable images skipped" if skipped else "")
    )
    summary = {
        "stats": evaluate(gt, results, image_ids=evaluated, sigmas=sigmas),
        **_object_class(setup.topology, category, sigmas, kfile),
        "mode": "oracle" if cfg.get("oracle") else "model",
        "annotations": str(annotations),
        "model": str(model_path) if model_path else None,
        "input_size": list(setup.input_hw),
        "aspect": setup.aspect,
        "targets": setup.targets.__dict__,
        "decoder": decoder.params,
        "noise": cfg.get("noise"),
        "blur": cfg.get("blur"),
        "num_images": len(evaluated),
        "num_detections": len(results),
        "skipped_images": skipped,
        "num_images_with_people": n_people,
    }
    if n_people == 0:  # evaluate() printed the note; stats.json says it too
        summary["note"] = "no ground-truth people in the evaluated images: AP/AR undefined (-1)"
    write_json(out_dir / "stats.json", summary)
    log.info("wrote %s and %s", results_path, out_dir / "stats.json")
    return {**summary, "results": str(results_path), "output": str(out_dir)}


def _keypoint_map(cfg: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``topology.keypoint_map``: file keypoint names mapped onto (or dropped from) the model's."""
    return (cfg.get("topology") or {}).get("keypoint_map")


def _object_class(topology: Any, category: Mapping[str, Any], sigmas: Any, kfile: Any) -> dict:
    """What was scored, for stats.json: topology, category, OKS sigmas and skipped records."""
    return {
        "topology": topology.name,
        "category": category.get("name"),
        "sigmas": dict(zip(category["keypoints"], map(float, sigmas), strict=True)),
        "skipped_annotations": {k: len(v) for k, v in kfile.problems.items()},
    }


def _image_ids(gt: Any, category: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[int]:
    """Every image of the file, or those with people (``only_with_people``), first ``max_images``."""
    ids = sorted(gt.getImgIds())
    if cfg.get("only_with_people"):
        ids = [i for i in ids if _has_people(gt, i, category)]
    most = whole_number(cfg, "max_images", None)
    if most is not None:
        ids = ids[:most]
    return ids


def _setup(cfg: Mapping[str, Any], model_path: Path | None, kfile: KeypointFile) -> Setup:
    """Open the model and read its settings, or take them from the config in oracle mode (the
    topology resolved against the annotation file: ``topology=auto`` derives it from there)."""
    if model_path is None:
        if not cfg.get("oracle"):
            raise UsageError("give model=PATH (.onnx, .engine/.plan or .pth), or oracle=true")
        if TTAConfig.from_config(cfg.get("tta")).active:
            raise UsageError("tta.flip / tta.scales need a network: give model=PATH")
        return _oracle_setup(cfg, kfile)
    threads = whole_number(cfg, "threads", None)
    kwargs = {"threads": threads} if threads and model_path.suffix == ".onnx" else {}
    runtime = load_runtime(model_path, device=str(cfg.get("device") or "cpu"), **kwargs)
    runtime = with_tta(runtime, cfg.get("tta"))  # mirror / scales averaged in map space
    info = runtime.info
    targets = TargetConfig.from_config(info.targets or cfg.get("targets"))
    topology, input_hw, aspect = info.topology, tuple(info.input_size), info.aspect
    return Setup(topology, input_hw, aspect, targets, dict(info.decoder or {}), runtime)


def _oracle_setup(cfg: Mapping[str, Any], kfile: KeypointFile) -> Setup:
    """Oracle mode's settings from the config, checked: one line per mistake."""
    input_hw, aspect, targets = oracle_settings(cfg)
    for name in ("noise", "blur"):
        real_number(cfg.get(name) or 0.0, name, hint=" (0: none)")
    return Setup(resolve_topology(cfg["topology"], kfile), input_hw, aspect, targets, {})


def _decoder(cfg: Mapping[str, Any], setup: Setup) -> Any:
    """The config's decoder, then the model's own parameters (e.g. its max-pool kernel), then
    ``decoder_overrides``; ``output_scale`` is set per image from its size."""
    params = {**(cfg.get("decoder") or {}), **setup.decoder, **(cfg.get("decoder_overrides") or {})}
    params.pop("output_scale", None)
    return build_decoder(params, setup.topology)


def _oracle(
    gt: Any,
    category: Mapping[str, Any],
    decoder: Any,
    setup: Setup,
    ids: Sequence[int],
    cfg: Mapping[str, Any],
) -> tuple[str, list[dict[str, Any]]]:
    """Oracle-mode results and a description of the maps."""
    noise, blur = float(cfg.get("noise") or 0.0), float(cfg.get("blur") or 0.0)
    (h, w), stride = setup.input_hw, setup.targets.stride
    what = f"oracle maps {h // stride}x{w // stride} (input {_hw(setup.input_hw)}, {setup.aspect}"
    what += f", noise {noise}, blur {blur})" if noise or blur else ")"
    results = oracle_results(
        *(gt, setup.topology, category, decoder, setup.input_hw, setup.targets, setup.aspect),
        *(ids, noise, blur, whole_number(cfg, "seed", 0, minimum=0)),
    )
    return what, results


def _hw(hw: Sequence[int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def model_results(
    runtime: Any,
    decoder: OpenPoseDecoder,
    coco_gt: Any,
    category: Mapping[str, Any],
    ids: Sequence[int],
    images: Path,
    batch_size: int = 1,
    skip_unreadable: bool = False,
    max_pixels: int | None = MAX_PIXELS,
) -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """Run the model on every image; COCO results, the evaluated ids, and skipped files."""
    info = runtime.info
    results: list[dict[str, Any]] = []
    evaluated: list[int] = []
    skipped: list[str] = []
    batch: list[tuple[int, tuple[int, int], np.ndarray, np.ndarray]] = []

    def flush() -> None:
        maps = runtime(np.stack([b[2] for b in batch]))  # (B, 3, H, W) -> dict of (B, C, h, w)
        for i, (image_id, orig_hw, _, matrix) in enumerate(batch):
            skeletons = decode_image(
                decoder,
                maps["heatmap"][i],
                maps["part_affinity_fields"][i],
                orig_hw,
                matrix,
                info.input_size,
                info.aspect,
                maxpool_heatmap=maps["maxpool_heatmap"][i],
            )
            results.extend(skeletons_to_coco(skeletons, image_id, info.topology, category))
            evaluated.append(image_id)
        batch.clear()

    for image_id in tqdm(ids, desc="eval", unit="img"):
        record = coco_gt.imgs[image_id]
        path = images / record["file_name"]
        try:
            rgb = read_rgb(path, max_pixels)
        except ImageError as e:
            if not skip_unreadable:
                raise ImageError(
                    f"image id={image_id}: {e} (images={images}; skip_unreadable=true "
                    "evaluates without it)"
                ) from None
            log.warning("skipping image id=%d: %s", image_id, e)
            skipped.append(str(path))
            continue
        x, matrix = runtime.preprocess(rgb)  # (3, H, W) float32, 2x3 original -> input
        batch.append((image_id, rgb.shape[:2], x, matrix))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return results, evaluated, skipped


def _has_people(coco_gt: Any, image_id: int, category: Mapping[str, Any]) -> bool:
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id], catIds=[category["id"]]))
    return any(a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0) for a in anns)


def _images_dir(images: Any, annotations: Path) -> Path:
    """``images``, or the COCO layout's folder for the file: annotations/x_val2017.json -> val2017."""
    path = resolve_path(images)
    if path is None:
        m = re.search(r"_([A-Za-z]+\d*)(?:_modified)?$", annotations.stem)
        if m:
            path = annotations.parent.parent / m.group(1)
    if path is None or not path.is_dir():
        raise UserError(f"image folder {path} not found for {annotations.name}; give images=DIR")
    return path


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@user_errors
def main(cfg: DictConfig) -> None:
    run(default_output_to_run_dir(cfg))


if __name__ == "__main__":
    sys.argv = alias_model_argument(sys.argv)
    main()
