"""Checkpoints: atomic writes, weights_only reads, clear errors."""

from __future__ import annotations

import pytest
import torch

from datasets.errors import UserError
from models.checkpoint import FORMAT_VERSION, load_checkpoint
from train.checkpoint import save_checkpoint, unwrap_model


def _state(value: float = 1.0) -> dict:
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[75, 150], gamma=0.1)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    torch.nn.init.constant_(lin.weight, value)
    return {
        "epoch": 1,
        "step": 10,
        "model": lin.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "config": {"model": {"stride": 4}, "data": {"input_size": [224, 224]}},
        "meta": {"world_size": 1},
    }


def test_roundtrip_plain_data_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "last.pth", _state())
    ck = load_checkpoint(path)
    assert ck["format_version"] == FORMAT_VERSION
    assert ck["step"] == 10 and ck["config"]["data"]["input_size"] == [224, 224]
    torch.testing.assert_close(ck["model"]["weight"], torch.ones(2, 3))
    # optimizer and scheduler states restore into fresh objects
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(lin.parameters())
    opt.load_state_dict(ck["optimizer"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1])
    sched.load_state_dict(ck["scheduler"])
    assert sched.last_epoch == 1 and sorted(sched.milestones) == [75, 150]
    assert not list(tmp_path.glob("sub/.*tmp")), "temporary file left behind"


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pth", _state(1.0))

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    torch.testing.assert_close(load_checkpoint(path)["model"]["weight"], torch.ones(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match=r"checkpoint not found: .*nope.pth: training writes"):
        load_checkpoint(tmp_path / "nope.pth")
    trunc = tmp_path / "trunc.pth"
    good = save_checkpoint(tmp_path / "good.pth", _state())
    trunc.write_bytes(good.read_bytes()[:100])
    with pytest.raises(UserError, match=r"cannot read checkpoint .*trunc.pth \("):
        load_checkpoint(trunc)
    torch.save({"epoch": 1}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"partial.pth lacks \['format_version', 'step', 'model'"):
        load_checkpoint(tmp_path / "partial.pth")


class Thing:
    """An arbitrary class: weights_only loading must refuse to rebuild it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format_version": 1, "epoch": 0, "step": 0, "model": {}, "config": Thing()}, path)
    with pytest.raises(UserError, match=r"evil.pth holds pickled Python objects"):
        load_checkpoint(path)


def test_unwrap_compiled_and_ddp_like():
    lin = torch.nn.Linear(2, 2)
    assert unwrap_model(torch.nn.DataParallel(lin)) is lin
    compiled = torch.compile(lin)  # wrapping only; nothing is compiled until called
    assert unwrap_model(compiled) is lin
