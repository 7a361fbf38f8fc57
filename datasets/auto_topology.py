"""The topology a command runs with: a named/inline one, or ``topology=auto`` from a COCO file.

Every command (train, eval, oracle eval, preprocess, visualize, ``python -m datasets.topology``)
resolves its ``topology`` config node with :func:`resolve_topology`, so they all derive, validate
and report it the same way:

* ``name: auto``: labels and edges from the file's keypoint category (``keypoints``, 1-based
  ``skeleton``; several categories sharing one keypoint list are one class, ``category=all``),
  named after the category;
* ``flip_pairs``: given, or found by name (``datasets.topology.pairs_by_name``) and printed; none
  found -> ``hflip`` false (training does not flip), with a warning;
* ``sigmas``: a list (one per label) or a mapping {label: sigma} over COCO's by name and
  ``default_sigma`` (0.0625) for the rest;
* validation: no edges, or edges that leave keypoints unconnected, is a one-line error with the
  fix; ``connect: auto`` instead adds the fewest edges that join the pieces (a minimum spanning
  tree over the mean keypoint distances in the annotations, relative to object size), printed;
  ``connect: redundant`` also adds a second spanning tree over the pairs not yet linked, so one
  unlabelled keypoint no longer splits an object (about twice the PAF channels);
* ``limb_lengths``: given, or each edge's mean length in the annotations relative to object size
  (the decoder's unit when it joins pieces of one object), printed with the topology.

The result is a plain :class:`Topology`; commands store ``topology.to_dict()`` (config, checkpoint,
ONNX metadata), so no later stage derives it again.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datasets.cocofile import KeypointFile, load_keypoint_file, safe_name
from datasets.errors import UsageError, UserError
from datasets.files import atomic_write_text
from datasets.topology import (
    CONF_DIR,
    DEFAULT_SIGMA,
    Topology,
    components,
    default_sigmas,
    joining_edges,
    topology_from_config,
)

log = logging.getLogger("datasets.topology")

SHIPPED = ("auto", "coco18")  # conf/topology files of the toolkit itself


def is_auto(topology_cfg: Mapping[str, Any] | None) -> bool:
    return topology_cfg is not None and str(topology_cfg.get("name")) == "auto"


def resolve_topology(
    topology_cfg: Mapping[str, Any], kfile: KeypointFile | None = None
) -> Topology:
    """The validated topology of a config node (see the module docstring); ``kfile`` is the COCO
    file it is derived from (``auto``) or whose annotations measure joining edges (``connect``)."""
    cfg = dict(topology_cfg or {})
    if is_auto(cfg):
        if kfile is None:
            raise UsageError(
                "topology=auto derives the topology from a COCO keypoint file, and this command "
                "has none: give annotations=FILE (or data=coco data.train_annotations=FILE)"
            )
        topo = _from_category(cfg, kfile)
    else:
        try:
            topo = topology_from_config(cfg)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"topology: {e}") from None
    topo = _with_sigmas(topo, cfg)
    if cfg.get("limb_lengths"):  # before connect, which measures those of the edges it adds
        topo = _replaced(topo, "limb_lengths", [float(x) for x in cfg["limb_lengths"]])
    # the annotations' keypoint distances, measured once and only where needed (connect, lengths)
    measured = (
        None if kfile is None else functools.cache(functools.partial(mean_distances, kfile, topo))
    )
    topo = _connected(topo, cfg.get("connect"), measured)
    if measured is not None and not topo.limb_lengths:
        lengths = limb_lengths(topo.edges, measured())
        topo = Topology.from_dict({**topo.to_dict(), "limb_lengths": lengths})
    return topo


def topology_for_file(
    topology_cfg: Mapping[str, Any],
    annotations: str | Path | None,
    category: str | int | None = None,
    strict: bool = True,
) -> Topology:
    """``resolve_topology`` with the COCO file read only where the node needs it (``auto``,
    ``connect``)."""
    kfile = None
    if annotations and (is_auto(topology_cfg) or (topology_cfg or {}).get("connect")):
        kfile = load_keypoint_file(annotations, category, strict)
    return resolve_topology(topology_cfg, kfile)


def _from_category(cfg: Mapping[str, Any], kfile: KeypointFile) -> Topology:
    flip_pairs = cfg.get("flip_pairs")
    try:
        topo = Topology.from_coco_category(kfile.category, flip_pairs=flip_pairs)
    except ValueError as e:
        raise UserError(f"{kfile.path}: {e}") from None  # (each message says its fix)
    topo = Topology.from_dict({**topo.to_dict(), "name": safe_name(topo.name)})
    if flip_pairs is None and topo.flip_pairs:
        log.info(
            "topology %s: flip pairs by name: %s",
            topo.name,
            ", ".join(f"{topo.labels[a]}/{topo.labels[b]}" for a, b in topo.flip_pairs),
        )
    elif flip_pairs is None:
        log.warning(
            "topology %s: no left/right keypoint pairs found by name, so training does not flip "
            "images horizontally; give topology.flip_pairs=[[i,j],...] (or [] for a symmetric "
            "object) to flip",
            topo.name,
        )
    return topo


def _with_sigmas(topo: Topology, cfg: Mapping[str, Any]) -> Topology:
    """``sigmas`` from the config: a list, or a mapping {label: sigma} over the defaults."""
    given = cfg.get("sigmas")
    default = float(cfg.get("default_sigma") or DEFAULT_SIGMA)
    if given is None and default == DEFAULT_SIGMA:
        return topo
    sigmas = list(default_sigmas(topo.labels, default))
    if isinstance(given, Mapping):
        unknown = [k for k in given if k not in topo.labels]
        if unknown:
            raise UsageError(
                f"topology.sigmas names {unknown}, which are not labels of {topo.name!r}"
            )
        sigmas = [float(given.get(lab, s)) for lab, s in zip(topo.labels, sigmas, strict=True)]
    elif given is not None:
        sigmas = [float(s) for s in given]
    return _replaced(topo, "sigmas", sigmas)


def _replaced(topo: Topology, key: str, value: Any) -> Topology:
    """``topo`` with one field given by the config (a bad value is the user's: one line)."""
    try:
        return Topology.from_dict({**topo.to_dict(), key: value})
    except ValueError as e:
        raise UsageError(f"topology.{key}: {e}") from None


CONNECT = ("auto", "redundant")


def _connected(topo: Topology, connect: Any, measured: Callable[[], np.ndarray] | None) -> Topology:
    """Refuse a topology without edges or in pieces, unless ``connect`` may join them: ``auto``
    adds the fewest joining edges; ``redundant`` also adds a second spanning tree, so that one
    unlabelled or unseen keypoint does not split an object in two (more PAF channels).
    ``measured()``: the annotations' ``mean_distances`` (None: no annotation file)."""
    mode = str(connect).lower() if connect not in (None, False) else "none"
    if mode not in ("none", "null", *CONNECT):
        raise UsageError(f"topology.connect={connect!r}: use null, auto or redundant")
    pieces = components(topo.num_parts, topo.edges)
    # one keypoint is one piece without edges (it decodes; a network for it is refused by
    # models.build_model, which needs a PAF)
    joined = len(pieces) == 1 and (topo.num_edges > 0 or topo.num_parts == 1)
    if joined and mode != "redundant":
        return topo
    if measured is None or (not joined and mode not in CONNECT):
        raise UserError(_pieces_message(topo, pieces, measured is not None, mode))
    dist = measured()
    added = [] if joined else joining_edges(topo.num_parts, topo.edges, dist)
    if added:
        log.info(
            "topology %s: skeleton in %d pieces; connect=%s added %d edges: %s",
            *(topo.name, len(pieces), mode, len(added), _names(topo, added)),
        )
    if mode == "redundant":
        extra = _second_tree(topo.num_parts, [*topo.edges, *added], dist)
        log.info(
            "topology %s: connect=redundant added a second tree of %d edges: %s",
            *(topo.name, len(extra), _names(topo, extra)),
        )
        added += extra
    d = topo.to_dict()
    d["edges"] = d["edges"] + [list(e) for e in added]
    if d["limb_lengths"]:  # given for the file's edges: the new ones as measured
        d["limb_lengths"] += limb_lengths(added, dist, fill=float(np.median(d["limb_lengths"])))
    # existing fields keep their channels; the new edges take the next ones in trt_pose's layout
    n = len(d["edges_paf"])
    d["edges_paf"] = d["edges_paf"] + [[2 * (n + i) + 1, 2 * (n + i)] for i in range(len(added))]
    return Topology.from_dict(d)


def _names(topo: Topology, edges: list[tuple[int, int]]) -> str:
    return ", ".join(f"{topo.labels[a]}->{topo.labels[b]}" for a, b in edges)


def _pieces_message(topo: Topology, pieces: list[list[int]], have_file: bool, mode: str) -> str:
    shown = "; ".join(
        "+".join(topo.labels[i] for i in p[:4]) + ("+..." if len(p) > 4 else "") for p in pieces[:4]
    )
    shown += "; ..." if len(pieces) > 4 else ""
    if len(pieces) == 1 and topo.num_edges:  # connect=redundant without annotations to measure
        return f"topology.connect={mode} measures edges on annotations, and this command has none"
    what = "no edges" if not topo.num_edges else f"edges in {len(pieces)} unconnected pieces"
    hint = (
        "add topology.connect=auto to join them with the fewest edges (measured on the annotations)"
        if have_file
        else "give the edges in the topology (connect=auto needs annotations to measure)"
    )
    return (
        f"topology {topo.name!r} has {what} ({shown}): the decoder joins keypoints into one "
        f"object only along edges; {hint}"
    )


def _second_tree(k: int, edges: list, dist: np.ndarray) -> list[tuple[int, int]]:
    """A spanning tree over the pairs not yet linked (shortest mean distance first), leaving out
    pairs never labelled together: every part gains a second route to the rest."""
    free = np.array(dist, dtype=np.float64)
    for a, b in edges:
        free[a][b] = free[b][a] = np.inf
    return [(a, b) for a, b in joining_edges(k, [], free) if np.isfinite(free[a][b])]


def mean_distances(kfile: KeypointFile, topo: Topology) -> np.ndarray:
    """(K, K) mean distance between each pair of keypoints over the annotations labelling both,
    in units of the object's size (sqrt of its area), so large and small objects weigh alike;
    inf for pairs never labelled together."""
    index = {n: i for i, n in enumerate(kfile.keypoints)}
    cols = [index.get(lab, -1) for lab in topo.labels]
    k = topo.num_parts
    total, count = np.zeros((k, k)), np.zeros((k, k))
    for ann in kfile.data["annotations"]:
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        kp = np.stack([kp[c] if c >= 0 else np.zeros(3) for c in cols])
        scale = math.sqrt(ann.get("area") or 0.0) or 1.0
        on = kp[:, 2] > 0
        if on.sum() < 2:
            continue
        d = np.hypot(*(kp[:, None, :2] - kp[None, :, :2]).transpose(2, 0, 1)) / scale
        both = on[:, None] & on[None, :]
        total[both] += d[both]
        count[both] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.inf)


def limb_lengths(edges, dist: np.ndarray, fill: float | None = None) -> list[float]:
    """Each edge's mean length in the annotations (``mean_distances``); an edge never labelled
    at both ends gets ``fill`` (default: the median of the measured ones, else 1)."""
    measured = [float(dist[a][b]) for a, b in edges]
    seen = [x for x in measured if math.isfinite(x) and x > 0]
    if fill is None:
        fill = float(np.median(seen)) if seen else 1.0
    return [round(x, 4) if math.isfinite(x) and x > 0 else fill for x in measured]


def stored_config(topology: Topology, topology_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The resolved topology as a config node (what a run's config and checkpoint keep), with
    the resolution keys that later readers of the data still need (``keypoint_map``)."""
    out = topology.to_dict()
    if topology_cfg and topology_cfg.get("keypoint_map"):
        out["keypoint_map"] = dict(topology_cfg["keypoint_map"])
    return out


def write_topology_yaml(topology: Topology, path: str | Path | None = None) -> Path:
    """Write ``conf/topology/<name>.yaml`` (or ``path``): usable as ``topology=<name>``."""
    name = safe_name(topology.name)
    if name in SHIPPED:  # never replace a topology the toolkit ships
        name += "_derived"
    path = Path(path) if path else CONF_DIR / f"{name}.yaml"
    text = (
        f"# {topology.name}: derived by python -m datasets.topology; labels, directed edges "
        "[from, to],\n# edges_paf [x_channel, y_channel] per edge, flip_pairs, OKS sigmas, "
        "limb_lengths (mean, / sqrt(area))\n"
    )
    d = {**topology.to_dict(), "connect": None, "keypoint_map": None}
    text += yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=100)
    return atomic_write_text(path, text)


def describe(topology: Topology) -> str:
    """A few lines that show a topology: parts, edges by name, PAF channels, flip pairs, sigmas."""
    t = topology
    lines = [
        f"topology {t.name}: {t.num_parts} keypoints, {t.num_edges} edges, "
        f"{t.num_paf_channels} PAF channels",
        "labels: " + ", ".join(f"{i}:{n}" for i, n in enumerate(t.labels)),
        "edges: " + ", ".join(f"{t.labels[a]}->{t.labels[b]}" for a, b in t.edges),
        "edges_paf: " + str([list(p) for p in t.edges_paf]),
        "flip_pairs: "
        + (", ".join(f"{t.labels[a]}/{t.labels[b]}" for a, b in t.flip_pairs) or "none")
        + ("" if t.hflip else " (horizontal flip off)"),
        "sigmas: " + ", ".join(f"{n}={s:g}" for n, s in zip(t.labels, t.sigmas, strict=True)),
        "limb_lengths: "
        + (
            ", ".join(
                f"{t.labels[a]}->{t.labels[b]}={x:g}"
                for (a, b), x in zip(t.edges, t.limb_lengths, strict=True)
            )
            or "all alike"
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> Topology:
    """``python -m datasets.topology FILE [category=NAME|ID|all] [connect=auto] [output=PATH]
    [strict=false]``: derive, print and write the topology of a COCO file's category."""
    files = [a for a in argv if "=" not in a]
    opts = {k.removeprefix("topology."): v for k, v in (a.split("=", 1) for a in argv if "=" in a)}
    unknown = sorted(set(opts) - {"category", "connect", "output", "strict"})
    if len(files) != 1 or unknown:
        raise UsageError(
            "usage: python -m datasets.topology FILE [category=NAME|ID|all] [connect=auto] "
            "[output=PATH] [strict=false]" + (f" (unknown: {unknown})" if unknown else "")
        )
    strict = opts.get("strict", "true").lower() not in ("false", "0", "no")
    kfile = load_keypoint_file(files[0], opts.get("category"), strict)
    topology = resolve_topology({"name": "auto", "connect": opts.get("connect")}, kfile)
    print(describe(topology))
    path = write_topology_yaml(topology, opts.get("output"))
    print(
        f"wrote {path}: use it with topology={path.stem}"
        if not opts.get("output")
        else f"wrote {path}"
    )
    return topology
