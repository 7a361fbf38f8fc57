"""Atomic writes: the destination is the old file or the new one, and no temp file is left."""

from __future__ import annotations

import json

import pytest

from datasets.files import atomic_write_text, write_json


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
