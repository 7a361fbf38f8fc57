"""python -m inference.visualize image=PATH model=MODEL   |   ... image=PATH oracle=true

Pictures of the decoder's steps on one image, as in the Isaac "2D Skeleton Pose Estimation"
walk-through: the network input, the part heatmaps (one colour per part), their max-pool, the
NMS peaks (opacity = confidence), the part candidates left by ``threshold_heatmap``, the edge
candidates, the Part Affinity Field of one edge as arrows (with its two parts' candidates), the
edges that pass the PAF line-integral thresholds, and the final skeletons. One PNG per step in
``output`` and ``grid.png`` with all of them.

Maps come from a model (``model=`` any runtime: .onnx, .engine, .pth) or, with ``oracle=true``,
from the ground truth of a COCO keypoint file (``annotations``/``images``), rendered exactly as
training targets: the decoder's upper bound, useful to tune its thresholds.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig

from datasets.auto_topology import topology_for_file
from datasets.coco import CocoKeypoints
from datasets.config import as_plain, whole_number
from datasets.errors import UsageError, UserError, user_errors
from datasets.files import resolve_path
from datasets.images import read_rgb
from datasets.topology import Topology
from inference.cli import alias_model_argument, default_output_to_run_dir, output_dir
from inference.decoder import build_decoder
from inference.draw import (
    colorize_maps,
    darken,
    draw_paf_arrows,
    draw_points,
    draw_segments,
    draw_skeletons,
    heatmap_overlay,
    limb_colors,
    make_grid,
    map_to_image,
    overlay,
    part_colors,
    titled,
    write_rgb,
)
from inference.oracle import oracle_settings
from inference.runtime import load_runtime, maxpool_nchw

log = logging.getLogger("inference.visualize")
MAX_SCALE = 16  # pictures are the network input enlarged at most this many times


@dataclass
class Maps:
    """One image's network input and maps (NCHW without batch), and how to decode them."""

    view: np.ndarray  # (H, W, 3) uint8 network input picture
    heatmap: np.ndarray  # (K, h, w)
    paf: np.ndarray  # (2E, h, w)
    maxpool: np.ndarray | None  # (K, h, w) from the graph, or None (the decoder pools)
    topology: Topology
    decoder_params: dict[str, Any]
    source: str


def maps_from_model(image_path: Path, model_path: Path, device: str = "cpu") -> Maps:
    """Run a model (any runtime) on one image."""
    rt = load_runtime(model_path, device=device)
    x, _ = rt.preprocess(read_rgb(image_path))
    out = rt(x[None])
    view = (x.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
    return Maps(
        view,
        out["heatmap"][0],
        out["part_affinity_fields"][0],
        out["maxpool_heatmap"][0],
        rt.info.topology,
        dict(rt.info.decoder),
        f"{model_path.name} ({rt.backend})",
    )


def _oracle_topology(cfg: Mapping[str, Any]) -> Topology:
    """The configured topology; ``topology=auto`` from the annotation file's category."""
    return topology_for_file(
        cfg["topology"],
        resolve_path(cfg["annotations"]),
        cfg.get("category"),
        bool(cfg.get("strict", True)),
    )


def maps_from_ground_truth(image: str, cfg: Mapping[str, Any], topology: Topology) -> Maps:
    """Targets rendered from the COCO annotations of ``image`` (a file name or an image id)."""
    input_hw, aspect, targets = oracle_settings({"input_size": (224, 224), **cfg})
    ds = CocoKeypoints(
        annotations=resolve_path(cfg["annotations"]),
        images=resolve_path(cfg["images"]),
        topology=topology,
        input_size=input_hw,
        targets=targets,
        augment=None,
        aspect=aspect,
        category=cfg.get("category"),
        strict=bool(cfg.get("strict", True)),
        keypoint_map=(cfg.get("topology") or {}).get("keypoint_map"),
    )
    name = Path(str(image)).name
    index = next(
        (
            i
            for i, r in enumerate(ds.records)
            if r["file"].name == name or str(r["id"]) == str(image)
        ),
        None,
    )
    if index is None:
        raise UserError(
            f"{cfg['annotations']}: no image {image!r} with labelled keypoints (by file name or id);"
            f" e.g. {[r['file'].name for r in ds.records[:3]]}"
        )
    s = ds[index]
    view = (s["image"].numpy().transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
    return Maps(
        view, s["heatmap"].numpy(), s["paf"].numpy(), None, topology, {}, f"ground truth of {name}"
    )


def pick_edge(edge: Any, topology: Topology, trace) -> int:
    """The edge to draw as arrows: an index, ``"from-to"`` label names, or None = the edge type
    with the most accepted connections."""
    if edge is None:
        accepted = trace.cand_edge[trace.accepted] if len(trace.accepted) else np.zeros(0, int)
        counts = np.bincount(accepted, minlength=topology.num_edges)
        return int(np.argmax(counts))
    if isinstance(edge, int) or str(edge).isdigit():
        e = int(edge)
        if not 0 <= e < topology.num_edges:
            raise UsageError(f"edge={e} is out of range: give 0..{topology.num_edges - 1}")
        return e
    names = str(edge).split("-")
    for i, (a, b) in enumerate(topology.edges):
        if [topology.labels[a], topology.labels[b]] == names:
            return i
    raise UsageError(
        f"no edge {edge!r}; give edge=FROM-TO from "
        f"{['-'.join((topology.labels[a], topology.labels[b])) for a, b in topology.edges]}"
    )


def zoom_window(
    mask: np.ndarray, points: np.ndarray, margin: int = 2, min_size: int = 1
) -> tuple[int, int, int, int]:
    """Map rows/cols [j0, j1) x [i0, i1) around ``mask`` and map points (u, v), padded by
    ``margin``, grown to the map's aspect ratio (so the zoom fills the frame undistorted)."""
    mh, mw = mask.shape
    rows, cols = np.nonzero(mask)
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    us = np.concatenate([cols, pts[:, 0]]) if len(pts) else cols
    vs = np.concatenate([rows, pts[:, 1]]) if len(pts) else rows
    if len(us) == 0:
        return 0, mh, 0, mw
    j0, j1 = int(np.floor(vs.min())) - margin, int(np.ceil(vs.max())) + 1 + margin
    i0, i1 = int(np.floor(us.min())) - margin, int(np.ceil(us.max())) + 1 + margin
    # grow the short side to the map's aspect ratio, then shift inside the map
    hh, ww = max(j1 - j0, min_size), max(i1 - i0, min_size)
    if hh * mw > ww * mh:
        ww = min(mw, int(np.ceil(hh * mw / mh)))
        hh = min(mh, hh)
    else:
        hh = min(mh, int(np.ceil(ww * mh / mw)))
        ww = min(mw, ww)
    cj, ci = (j0 + j1) // 2, (i0 + i1) // 2
    j0 = min(max(cj - hh // 2, 0), mh - hh)
    i0 = min(max(ci - ww // 2, 0), mw - ww)
    return j0, j0 + hh, i0, i0 + ww


Step = tuple[str, str, np.ndarray]  # (file stem, title, RGB picture)


def render_steps(
    maps: Maps, decoder_overrides: Mapping[str, Any] | None = None, scale: int = 2, edge: Any = None
) -> list[Step]:
    """The step pictures as (file stem, title, RGB image), in decoding order."""
    topo = maps.topology
    params = {
        **maps.decoder_params,
        **{k: v for k, v in (decoder_overrides or {}).items() if v is not None},
    }
    params.pop("output_scale", None)
    decoder = build_decoder(params, topo)
    h, w = maps.view.shape[:2]
    size = (h * scale, w * scale)
    base = np.repeat(np.repeat(maps.view, scale, axis=0), scale, axis=1)  # nearest upscale
    trace = decoder.trace(maps.heatmap, maps.paf, maps.maxpool, output_scale=list(size))
    steps: list[Step] = [("01_input", f"input {w}x{h} ({maps.source})", base)]
    steps += _peak_steps(maps, decoder, base, size)
    cand_steps, cand, segs = _candidate_steps(maps, decoder, trace, base, size)
    steps += cand_steps
    steps.append(_paf_step(maps, trace, base, size, edge))
    cand_colors = [part_colors(topo)[k] for k in trace.peak_part]
    ok = np.flatnonzero(trace.cand_ok)
    lc = limb_colors(topo)
    edge_img = draw_segments(
        darken(base, 0.35), segs[ok], [lc[i] for i in trace.cand_edge[ok]], thickness=2
    )
    steps.append(
        (
            "08_edges",
            f"edges: {len(ok)} pass score {decoder.threshold_edge_score:g} x "
            f">{decoder.threshold_edge_sampling_counter}, {len(trace.accepted)} matched",
            draw_points(edge_img, cand, cand_colors),
        )
    )
    steps.append(
        (
            "09_skeletons",
            f"skeletons: {len(trace.skeletons)}",
            draw_skeletons(base, trace.skeletons, topo, label_scores=True),
        )
    )
    return steps


def _peak_steps(maps: Maps, decoder: Any, base: np.ndarray, size: tuple[int, int]) -> list[Step]:
    """Steps 2-4: the heatmaps, their max-pool, and every local maximum (NMS)."""
    topo = maps.topology
    if maps.maxpool is not None:
        pooled = maps.maxpool
    else:
        pooled = maxpool_nchw(maps.heatmap[None], decoder.maxpool_kernel)[0]
    # NMS: every local maximum (heatmap == maxpool), opacity = confidence, before the threshold
    part, row, col = np.nonzero((maps.heatmap >= pooled) & (maps.heatmap > 0))
    conf = maps.heatmap[part, row, col]
    pts = map_to_image(np.stack([col, row], 1), maps.heatmap.shape[1:], size)
    pc = part_colors(topo)
    k = decoder.maxpool_kernel
    return [
        ("02_heatmap", "part heatmaps", heatmap_overlay(base, maps.heatmap, topo)),
        ("03_maxpool", f"max-pool {k}x{k}", heatmap_overlay(base, pooled, topo)),
        (
            "04_peaks",
            f"NMS peaks: {len(part)} (opacity = confidence)",
            draw_points(darken(base, 0.35), pts, [pc[k] for k in part], conf),
        ),
    ]


def _candidate_steps(
    maps: Maps, decoder: Any, trace: Any, base: np.ndarray, size: tuple[int, int]
) -> tuple[list[Step], np.ndarray, np.ndarray]:
    """Steps 5-6: part candidates after ``threshold_heatmap`` (refined positions) and every edge
    candidate; also their picture positions (P, 2) and segments (C, 2, 2)."""
    topo = maps.topology
    cand = map_to_image(trace.peak_xy, maps.heatmap.shape[1:], size)
    cand_colors = [part_colors(topo)[k] for k in trace.peak_part]
    segs = (
        np.stack([cand[trace.cand_a], cand[trace.cand_b]], 1)
        if len(trace.cand_a)
        else np.zeros((0, 2, 2))
    )
    lc = limb_colors(topo)
    candidates = draw_segments(
        darken(base, 0.35), segs, [lc[e] for e in trace.cand_edge], thickness=1
    )
    steps = [
        (
            "05_part_candidates",
            f"part candidates >= {decoder.threshold_heatmap:g}: {len(trace.peak_part)}",
            draw_points(darken(base, 0.35), cand, cand_colors),
        ),
        (
            "06_edge_candidates",
            f"edge candidates: {len(trace.cand_a)}",
            draw_points(candidates, cand, cand_colors),
        ),
    ]
    return steps, cand, segs


def _paf_step(maps: Maps, trace: Any, base: np.ndarray, size: tuple[int, int], edge: Any) -> Step:
    """Step 7: one edge's PAF as arrows, zoomed on its strongest matched connection (else on
    the whole field), with the candidates of the edge's two parts."""
    topo = maps.topology
    (h, w), (mh, mw) = base.shape[:2], maps.heatmap.shape[1:]
    e = pick_edge(edge, topo, trace)
    a, b = topo.edges[e]
    cx, cy = topo.edges_paf[e]
    ends = np.isin(trace.peak_part, [a, b])
    norm = np.hypot(maps.paf[cx], maps.paf[cy])
    mine = [c for c in trace.accepted if trace.cand_edge[c] == e]
    if mine:
        best = max(mine, key=lambda c: trace.cand_score[c])
        pts = trace.peak_xy[[trace.cand_a[best], trace.cand_b[best]]]
        j0, j1, i0, i1 = zoom_window(np.zeros_like(norm, bool), pts, margin=3, min_size=12)
    else:
        j0, j1, i0, i1 = zoom_window(norm > 0.05, trace.peak_xy[ends])
    # magnified like the reference's picture: the field's region fills the frame, one arrow per
    # map pixel
    crop = base[j0 * h // mh : j1 * h // mh, i0 * w // mw : i1 * w // mw]
    crop = cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    sub = (slice(j0, j1), slice(i0, i1))
    field = colorize_maps(norm[sub][None], [limb_colors(topo)[e]], size)
    arrows = draw_paf_arrows(
        overlay(darken(crop, 0.35), field, 0.5),
        maps.paf[cx][sub],
        maps.paf[cy][sub],
        color=(255, 255, 255),
    )
    local = map_to_image(trace.peak_xy[ends] - [i0, j0], (j1 - j0, i1 - i0), size)
    pc = part_colors(topo)
    return (
        f"07_paf_{topo.labels[a]}-{topo.labels[b]}",
        f"PAF {topo.labels[a]} -> {topo.labels[b]} (zoom x{mh / (j1 - j0):.1f})",
        draw_points(
            arrows, local, [pc[k] for k in trace.peak_part[ends]], radius=max(4, size[0] // 60)
        ),
    )


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Write the step pictures for ``cfg.image``; returns the output folder and file paths."""
    cfg = as_plain(cfg)
    image = cfg.get("image")
    if image is None:
        raise UsageError("give image=PATH (with model=MODEL, or oracle=true)")
    scale, cols = whole_number(cfg, "scale", 2), whole_number(cfg, "grid_cols", 3)
    if scale > MAX_SCALE:  # each picture is the network input times scale, squared in memory
        raise UsageError(f"scale must be 1-{MAX_SCALE}, got {scale}")
    out_dir = output_dir(cfg, "visualize")
    if cfg.get("oracle"):
        maps = maps_from_ground_truth(str(image), cfg, _oracle_topology(cfg))
    else:
        model = resolve_path(cfg.get("model_path") or cfg.get("model"))
        if model is None:
            raise UsageError("give model=PATH (.onnx, .engine or .pth), or oracle=true")
        image_path = resolve_path(image)
        if not image_path.is_file():
            raise UserError(f"image not found: {image_path}: give image=PATH")
        maps = maps_from_model(image_path, model, str(cfg.get("device", "cpu")))
    steps = render_steps(maps, cfg.get("decoder_overrides"), scale, cfg.get("edge"))
    paths = []
    for stem, _, img in steps:
        path = out_dir / f"{stem}.png"
        write_rgb(path, img)
        paths.append(path)
    grid = make_grid([titled(img, title) for _, title, img in steps], cols=cols)
    write_rgb(out_dir / "grid.png", grid)
    for (_, title, _), p in zip(steps, paths, strict=True):
        print(f"{p.name:40s} {title}")
    print(f"wrote {len(paths)} step pictures and grid.png to {out_dir}")
    return {
        "output": out_dir,
        "steps": paths,
        "grid": out_dir / "grid.png",
        "titles": [t for _, t, _ in steps],
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="visualize")
@user_errors
def main(cfg: DictConfig) -> None:
    run(default_output_to_run_dir(cfg))


if __name__ == "__main__":
    sys.argv = alias_model_argument(sys.argv)
    main()
