"""Skeleton topology: the one definition of parts, directed edges, PAF channels and flip pairs.

``python -m datasets.topology FILE [category=NAME|ID|all] [connect=auto]`` prints the topology of a
COCO keypoint file's category and writes ``conf/topology/<name>.yaml`` (``datasets.auto_topology``).

Vocabulary is the Isaac OpenPoseDecoder's: ``labels`` (part names), ``edges`` ([from, to] indices
into ``labels``) and ``edges_paf`` ([horizontal_channel, vertical_channel] into the
part_affinity_fields tensor, one pair per edge). ``flip_pairs`` are the left/right part pairs a
horizontal flip swaps.

The topology travels with the model as plain data (``to_dict``): config -> checkpoint -> ONNX
metadata -> decoder config. Every stage rebuilds it with ``Topology.from_dict``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "topology"


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
# OKS falloff of a keypoint name COCO does not know: the mean of COCO's 17 (0.0625), a middling
# joint. Override per topology with `sigmas: [...]` (one per label) or `default_sigma`.
DEFAULT_SIGMA = 0.0625


@dataclass(frozen=True)
class Topology:
    """Parts and directed edges of an articulated object.

    Edge ``i`` points from part ``edges[i][0]`` to part ``edges[i][1]``; its field's horizontal
    (x) component lives in PAF channel ``edges_paf[i][0]`` and its vertical (y) component in
    ``edges_paf[i][1]``. Without ``edges_paf`` the layout is trt_pose's: edge i's x in channel
    2i+1 and y in 2i (``[[1, 0], [3, 2], ...]``, as the Isaac trt_pose app configures it).

    ``sigmas`` are the OKS falloffs per label (default: COCO's by name, ``DEFAULT_SIGMA``
    otherwise); ``limb_lengths`` the typical length of each edge in any unit (e.g. relative to
    the object's size; only their ratios matter): the decoder measures an object's size in them
    when it joins pieces of one object (default: all edges alike); ``hflip`` is false when a horizontal flip would swap unpaired left/right parts
    (auto-derived topologies without recognisable side names), and training then does not flip.
    """

    labels: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    edges_paf: tuple[tuple[int, int], ...] = ()
    flip_pairs: tuple[tuple[int, int], ...] = ()
    name: str = "custom"
    sigmas: tuple[float, ...] = ()
    hflip: bool = True
    limb_lengths: tuple[float, ...] = ()
    # COCO ids of the category this topology was built from, when there was one
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        object.__setattr__(self, "edges", tuple((int(a), int(b)) for a, b in self.edges))
        paf = self.edges_paf or tuple((2 * i + 1, 2 * i) for i in range(len(self.edges)))
        object.__setattr__(self, "edges_paf", tuple((int(a), int(b)) for a, b in paf))
        object.__setattr__(self, "flip_pairs", tuple((int(a), int(b)) for a, b in self.flip_pairs))
        sigmas = self.sigmas or default_sigmas(self.labels)
        object.__setattr__(self, "sigmas", tuple(float(s) for s in sigmas))
        object.__setattr__(self, "hflip", bool(self.hflip))
        object.__setattr__(self, "limb_lengths", tuple(float(x) for x in self.limb_lengths))
        self.validate()

    # ---------------------------------------------------------------- shape
    @property
    def num_parts(self) -> int:
        return len(self.labels)

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    @property
    def num_paf_channels(self) -> int:
        return 2 * len(self.edges)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistency."""
        k = self.num_parts
        if k == 0:
            raise ValueError(f"topology {self.name!r}: no labels")
        if len(set(self.labels)) != k:
            raise ValueError(
                f"topology {self.name!r}: duplicate labels in {list(self.labels)}: give each "
                "keypoint a name of its own"
            )
        for i, (a, b) in enumerate(self.edges):
            if not (0 <= a < k and 0 <= b < k):
                raise ValueError(
                    f"topology {self.name!r}: edge {i} {[a, b]} indexes outside labels (0..{k - 1})"
                )
            if a == b:
                raise ValueError(f"topology {self.name!r}: edge {i} {[a, b]} is a self-loop")
        if len(self.edges_paf) != len(self.edges):
            raise ValueError(
                f"topology {self.name!r}: {len(self.edges_paf)} edges_paf entries for "
                f"{len(self.edges)} edges"
            )
        channels = [c for pair in self.edges_paf for c in pair]
        if sorted(channels) != list(range(2 * len(self.edges))):
            raise ValueError(
                f"topology {self.name!r}: edges_paf must use each channel 0..{2 * self.num_edges - 1}"
                f" exactly once, got {[list(p) for p in self.edges_paf]}"
            )
        if len(self.sigmas) != k or not all(s > 0 and math.isfinite(s) for s in self.sigmas):
            raise ValueError(
                f"topology {self.name!r}: sigmas must be {k} positive numbers (one per label), "
                f"got {list(self.sigmas)}"
            )
        lengths = self.limb_lengths
        if lengths and (
            len(lengths) != self.num_edges or not all(x > 0 and math.isfinite(x) for x in lengths)
        ):
            raise ValueError(
                f"topology {self.name!r}: limb_lengths must be {self.num_edges} positive numbers "
                f"(one per edge) or empty, got {list(lengths)}"
            )
        seen: set[int] = set()
        for a, b in self.flip_pairs:
            if not (0 <= a < k and 0 <= b < k) or a == b or a in seen or b in seen:
                raise ValueError(f"topology {self.name!r}: bad flip pair {[a, b]}")
            seen.update((a, b))

    def flip_permutation(self) -> list[int]:
        """Part index permutation of a horizontal flip: new part i takes old part perm[i]."""
        perm = list(range(self.num_parts))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    # ---------------------------------------------------------------- plain data
    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists of str/int) for checkpoints, ONNX metadata and decoder configs."""
        return {
            "name": self.name,
            "labels": list(self.labels),
            "edges": [list(e) for e in self.edges],
            "edges_paf": [list(e) for e in self.edges_paf],
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "sigmas": list(self.sigmas),
            "hflip": self.hflip,
            "limb_lengths": list(self.limb_lengths),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Topology:
        """Build from a mapping with ``labels`` and ``edges`` (``edges_paf``/``flip_pairs`` optional).

        Accepts plain dicts and OmegaConf DictConfigs.
        """
        missing = [k for k in ("labels", "edges") if k not in d]
        if missing:
            raise ValueError(f"topology needs {missing}; got keys {sorted(d.keys())}")
        return cls(
            labels=tuple(d["labels"]),
            edges=tuple(tuple(e) for e in d["edges"]),
            edges_paf=tuple(tuple(e) for e in (d.get("edges_paf") or ())),
            flip_pairs=tuple(tuple(p) for p in (d.get("flip_pairs") or ())),
            name=str(d.get("name", "custom")),
            sigmas=tuple(d.get("sigmas") or ()),
            hflip=bool(d.get("hflip", True)),
            limb_lengths=tuple(d.get("limb_lengths") or ()),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> Topology:
        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f))

    @classmethod
    def named(cls, name: str) -> Topology:
        """A topology shipped under ``conf/topology/<name>.yaml`` (e.g. ``coco18``)."""
        path = CONF_DIR / f"{name}.yaml"
        if not path.is_file():
            avail = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"no topology {name!r} in {CONF_DIR} (available: {avail})")
        return cls.from_yaml(path)

    # ---------------------------------------------------------------- COCO
    @classmethod
    def from_coco_category(
        cls, category: Mapping[str, Any], flip_pairs: Sequence[Sequence[int]] | None = None
    ) -> Topology:
        """Topology of a COCO keypoint category: ``keypoints`` names and 1-based ``skeleton``.

        Each skeleton link ``[a, b]`` becomes the directed edge ``a-1 -> b-1`` with trt_pose's PAF
        channels (x in 2i+1, y in 2i). Flip pairs are taken as given, or else matched by name
        (``pairs_by_name``); with none found, ``hflip`` is false.
        """
        names = list(category.get("keypoints") or [])
        skeleton = category.get("skeleton") or []
        if not names:
            raise ValueError(
                f"COCO category id={category.get('id')} name={category.get('name')!r} "
                "has no 'keypoints' list: a keypoint category names its keypoints there"
            )
        edges = coco_skeleton_edges(skeleton, len(names), repr(category.get("name")))
        pairs = [tuple(p) for p in flip_pairs] if flip_pairs is not None else pairs_by_name(names)
        topo = cls(
            labels=tuple(names),
            edges=tuple(edges),
            flip_pairs=tuple(pairs),
            name=str(category.get("name", "custom")),
            hflip=flip_pairs is not None or bool(pairs),
        )
        topo.meta["category_id"] = category.get("id")
        return topo

    def to_coco_category(self, category_id: int = 1, name: str | None = None) -> dict[str, Any]:
        """The COCO category record of this topology (1-based ``skeleton``).

        COCO's skeleton carries no PAF channel order; it is exact only for the default order
        (trt_pose's, edge i -> channels 2i+1 (x), 2i (y)), which every topology built from a
        category has.
        """
        return {
            "id": category_id,
            "name": name or self.name,
            "supercategory": name or self.name,
            "keypoints": list(self.labels),
            "skeleton": [[a + 1, b + 1] for a, b in self.edges],
        }


def canonical_name(name: str) -> str:
    """A keypoint name in COCO's spelling where it is one: ``L_Eye``, ``leftEye``, ``Left Eye``,
    ``eye_L`` -> ``left_eye`` (lower case, words joined by ``_``, the side word first and spelt
    out)."""
    words = [w.lower() for w in _WORD.findall(str(name))]
    side = {"l": "left", "r": "right", "left": "left", "right": "right"}
    if len(words) > 1 and words[-1] in side and words[0] not in side:
        words = [words[-1], *words[:-1]]  # eye_L -> left_eye
    if len(words) > 1 and words[0] in side:
        words[0] = side[words[0]]
    return "_".join(words)


def default_sigmas(labels: Sequence[str], default: float = DEFAULT_SIGMA) -> tuple[float, ...]:
    """OKS falloff per label: COCO's for the names COCO knows (any spelling), else ``default``."""
    return tuple(COCO_SIGMAS.get(canonical_name(n), default) for n in labels)


def as_whole(x: Any) -> int | None:
    """``x`` as an int when it is a whole number (7, or 7.0 as JSON converters often write it);
    None for anything else (strings, booleans, 7.5, NaN)."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    return int(x) if isinstance(x, float) and x.is_integer() else None


def coco_skeleton_edges(skeleton: Any, k: int, name: str) -> list[tuple[int, int]]:
    """The 0-based directed edges of a COCO ``skeleton`` (1-based ``[a, b]`` links between
    ``k`` keypoints of category ``name``). ValueError naming the first bad link and the fix (a
    skeleton that uses index 0 is 0-based: add 1 to every index); a link given again, either
    way round, is dropped with a warning (one limb, one PAF)."""
    if not isinstance(skeleton, list):
        raise ValueError(f"COCO category {name}: 'skeleton' must be a list of [a, b] pairs")
    pairs = [
        [as_whole(j) for j in link] if isinstance(link, list | tuple) and len(link) == 2 else None
        for link in skeleton
    ]
    used = [j for pair in pairs if pair for j in pair if j is not None]
    zero_based = 0 in used and max(used) < k
    edges, first = [], {}
    for i, (link, pair) in enumerate(zip(skeleton, pairs, strict=True)):
        _check_link(name, i, link, pair, k, zero_based)
        limb = (min(pair), max(pair))
        if limb in first:
            log.warning(
                "COCO category %s: skeleton[%d]=%s repeats skeleton[%d]: dropped (one PAF per limb)",
                name, i, link, first[limb],
            )  # fmt: skip
            continue
        first[limb] = i
        edges.append((pair[0] - 1, pair[1] - 1))
    return edges


def _check_link(name: str, i: int, link: Any, pair: list | None, k: int, zero_based: bool) -> None:
    """ValueError unless skeleton[i] (``link``, read as ``pair``) joins two keypoints 1..k."""
    if pair is None or not all(j is not None and 1 <= j <= k for j in pair):
        fix = "it uses index 0, so it counts from 0: add 1 to every index" if zero_based else (
            f"give pairs of keypoint numbers 1..{k}"
        )  # fmt: skip
        raise ValueError(
            f"COCO category {name}: skeleton[{i}]={link!r} is not a pair of 1-based keypoint "
            f"indices in 1..{k}; {fix}"
        )
    if pair[0] == pair[1]:
        raise ValueError(
            f"COCO category {name}: skeleton[{i}]={link!r} joins keypoint {pair[0]} to itself: "
            "remove it"
        )


# words of a name: "forelegL1" -> foreleg, L, 1; "L_Eye" -> L, Eye; "LeftEye" -> Left, Eye
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_OTHER_SIDE = {"left": "right", "right": "left", "l": "r", "r": "l"}


def _other_side_names(name: str) -> list[str]:
    """Every spelling of ``name`` with one side word (left/right/l/r) swapped, same case."""
    out = []
    for m in _WORD.finditer(name):
        word = m.group()
        other = _OTHER_SIDE.get(word.lower())
        if other is None:
            continue
        if word.isupper():
            other = other.upper()
        elif word[0].isupper():
            other = other.capitalize()
        out.append(name[: m.start()] + other + name[m.end() :])
    return out


def pairs_by_name(names: Sequence[str]) -> list[tuple[int, int]]:
    """Left/right part pairs found by name, case-insensitive: ``left_eye``/``right_eye``,
    ``l_knee``/``r_knee``, ``L_Eye``/``R_Eye``, ``eye_L``/``eye_R``, ``LeftEye``/``RightEye``,
    ``forelegL1``/``forelegR1``. Side words are found at word boundaries (``_``, case changes,
    digits), so ``rear`` or ``leg`` never count as sides."""
    exact = {n: i for i, n in enumerate(names)}
    folded = {n.lower(): i for i, n in enumerate(names)}
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for i, n in enumerate(names):
        if i in used:
            continue
        for other in _other_side_names(n):
            j = exact.get(other, folded.get(other.lower()))
            if j is not None and j != i and j not in used:
                pairs.append((i, j))
                used.update((i, j))
                break
    return pairs


def _union_find(num_parts: int, edges: Sequence[Sequence[int]]) -> tuple[list[int], Any]:
    """Parent table and ``find`` of the pieces that ``edges`` join (path-halving union-find)."""
    root = list(range(num_parts))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for a, b in edges:
        root[find(int(a))] = find(int(b))
    return root, find


def components(num_parts: int, edges: Sequence[Sequence[int]]) -> list[list[int]]:
    """Connected pieces of the (undirected) skeleton graph, each a sorted list of part indices."""
    _, find = _union_find(num_parts, edges)
    pieces: dict[int, list[int]] = {}
    for i in range(num_parts):
        pieces.setdefault(find(i), []).append(i)
    return sorted(pieces.values())


def joining_edges(
    num_parts: int, edges: Sequence[Sequence[int]], distance: Any
) -> list[tuple[int, int]]:
    """The fewest edges that join the skeleton's pieces into one: a minimum spanning tree over the
    pieces (Kruskal), where joining parts a and b costs ``distance[a][b]`` (e.g. their mean
    distance in the annotations; inf where never seen together, still usable as a last resort).
    Each new edge points from the lower index to the higher."""
    root, find = _union_find(num_parts, edges)
    candidates = sorted(
        (float(distance[a][b]) if math.isfinite(float(distance[a][b])) else math.inf, a, b)
        for a in range(num_parts)
        for b in range(a + 1, num_parts)
    )
    added = []
    for _, a, b in candidates:
        ra, rb = find(a), find(b)
        if ra != rb:
            root[ra] = rb
            added.append((a, b))
    return added


def topology_from_config(cfg: Mapping[str, Any]) -> Topology:
    """The topology of a config node: a mapping with labels/edges, or ``{"name": NAME}`` alone."""
    if "labels" not in cfg and "name" in cfg:
        return Topology.named(str(cfg["name"]))
    return Topology.from_dict(cfg)


if __name__ == "__main__":
    import logging
    import sys

    from datasets.auto_topology import main
    from datasets.errors import user_errors

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    user_errors(main)(sys.argv[1:])
