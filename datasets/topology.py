"""Skeleton topology: the one definition of parts, directed edges, PAF channels and flip pairs.

Vocabulary is the Isaac OpenPoseDecoder's: ``labels`` (part names), ``edges`` ([from, to] indices
into ``labels``) and ``edges_paf`` ([horizontal_channel, vertical_channel] into the
part_affinity_fields tensor, one pair per edge). ``flip_pairs`` are the left/right part pairs a
horizontal flip swaps.

The topology travels with the model as plain data (``to_dict``): config -> checkpoint -> ONNX
metadata -> decoder config. Every stage rebuilds it with ``Topology.from_dict``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "topology"


@dataclass(frozen=True)
class Topology:
    """Parts and directed edges of an articulated object.

    Edge ``i`` points from part ``edges[i][0]`` to part ``edges[i][1]``; its field's horizontal
    (x) component lives in PAF channel ``edges_paf[i][0]`` and its vertical (y) component in
    ``edges_paf[i][1]``.
    """

    labels: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    edges_paf: tuple[tuple[int, int], ...] = ()
    flip_pairs: tuple[tuple[int, int], ...] = ()
    name: str = "custom"
    # COCO ids of the category this topology was built from, when there was one
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        object.__setattr__(self, "edges", tuple((int(a), int(b)) for a, b in self.edges))
        paf = self.edges_paf or tuple((2 * i, 2 * i + 1) for i in range(len(self.edges)))
        object.__setattr__(self, "edges_paf", tuple((int(a), int(b)) for a, b in paf))
        object.__setattr__(self, "flip_pairs", tuple((int(a), int(b)) for a, b in self.flip_pairs))
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
            raise ValueError(f"topology {self.name!r}: duplicate labels in {list(self.labels)}")
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

        Each skeleton link ``[a, b]`` becomes the directed edge ``a-1 -> b-1`` with PAF channels
        ``2i, 2i+1``. Flip pairs are taken as given, or else matched by name: ``left_x``/``right_x``,
        ``l_x``/``r_x`` and ``LeftX``/``RightX`` pair up.
        """
        names = list(category.get("keypoints") or [])
        skeleton = category.get("skeleton") or []
        if not names:
            raise ValueError(
                f"COCO category id={category.get('id')} name={category.get('name')!r} "
                "has no 'keypoints' list"
            )
        edges = []
        for i, link in enumerate(skeleton):
            if len(link) != 2 or not all(1 <= int(j) <= len(names) for j in link):
                raise ValueError(
                    f"COCO category {category.get('name')!r}: skeleton[{i}]={list(link)} is not a"
                    f" pair of 1-based keypoint indices in 1..{len(names)}"
                )
            edges.append((int(link[0]) - 1, int(link[1]) - 1))
        pairs = [tuple(p) for p in flip_pairs] if flip_pairs is not None else _pairs_by_name(names)
        topo = cls(
            labels=tuple(names),
            edges=tuple(edges),
            flip_pairs=tuple(pairs),
            name=str(category.get("name", "custom")),
        )
        topo.meta["category_id"] = category.get("id")
        return topo

    def to_coco_category(self, category_id: int = 1, name: str | None = None) -> dict[str, Any]:
        """The COCO category record of this topology (1-based ``skeleton``).

        COCO's skeleton carries no PAF channel order; it is exact only for the default order
        (edge i -> channels 2i, 2i+1), which every topology built from a category has.
        """
        return {
            "id": category_id,
            "name": name or self.name,
            "supercategory": name or self.name,
            "keypoints": list(self.labels),
            "skeleton": [[a + 1, b + 1] for a, b in self.edges],
        }


_SIDE = [
    (re.compile(r"^left_(.+)$"), "right_{}"),
    (re.compile(r"^l_(.+)$"), "r_{}"),
    (re.compile(r"^Left(.+)$"), "Right{}"),
    (re.compile(r"^left(.+)$"), "right{}"),
]


def _pairs_by_name(names: Sequence[str]) -> list[tuple[int, int]]:
    index = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, n in enumerate(names):
        for pattern, other in _SIDE:
            m = pattern.match(n)
            if m and other.format(m.group(1)) in index:
                pairs.append((i, index[other.format(m.group(1))]))
                break
    return pairs


def topology_from_config(cfg: Mapping[str, Any]) -> Topology:
    """The topology of a config node: a mapping with labels/edges, or ``{"name": NAME}`` alone."""
    if "labels" not in cfg and "name" in cfg:
        return Topology.named(str(cfg["name"]))
    return Topology.from_dict(cfg)
