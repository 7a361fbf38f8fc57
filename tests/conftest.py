"""Shared fixtures: the real COCO subset in ../shared/data/coco-mini, one torch thread for tests
of small tensors, and a CUDA skip marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COCO_MINI = Path(os.environ.get("COCO_MINI", REPO.parent / "shared" / "data" / "coco-mini"))


@pytest.fixture
def one_torch_thread():
    """Small tensors: one torch thread (OpenMP threads oversubscribe a busy shared machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """Path of the coco-mini folder (annotations/, train2017/, val2017/), or skip."""
    ann = COCO_MINI / "annotations" / "person_keypoints_val2017.json"
    if not ann.is_file():
        pytest.skip(f"coco-mini not found at {COCO_MINI} (set COCO_MINI=/path/to/coco-mini)")
    return COCO_MINI


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip with a reason where CUDA is not available."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
