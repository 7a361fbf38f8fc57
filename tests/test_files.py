"""Atomic writes: the destination is the old file or the new one, and no temp file is left."""

from __future__ import annotations

import json
import os
import stat

import pytest

from datasets.files import atomic_path, atomic_write_text, claim_dir, umask, write_json


def test_write_json_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2}, indent=2)
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = atomic_write_text(tmp_path / "config.yaml", "old: 1\n")
    with pytest.raises(TypeError):
        write_json(path, {"not serialisable": object()})
    assert path.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_claim_dir_gives_each_caller_its_own(tmp_path):
    base = tmp_path / "outputs" / "predict" / "2026-01-01_00-00-00"
    assert claim_dir(base) == base
    assert claim_dir(base) == base.with_name(base.name + "_1")
    assert claim_dir(base) == base.with_name(base.name + "_2")
    empty = tmp_path / "mine"
    empty.mkdir()
    assert claim_dir(empty) == empty  # a folder no run claimed is used as it is


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_respect_the_umask(tmp_path, mask):
    """mkstemp makes 0600 files; outputs get 0666 & ~umask as open() would give them."""
    old = os.umask(mask)
    try:
        assert umask() == mask
        write_json(tmp_path / "a.json", {"x": 1})
        atomic_write_text(tmp_path / "b.txt", "hi")
        with atomic_path(tmp_path / "c.bin") as tmp:
            tmp.write_bytes(b"\0")
    finally:
        os.umask(old)
    for name in ("a.json", "b.txt", "c.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
