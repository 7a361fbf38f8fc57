"""The headline commands on a fresh machine (no COCO, no runs/): each ends in one line on stderr
that names the problem and the next step, with exit code 1 (2 for bad usage); a traceback only
with HYDRA_FULL_ERROR=1. Run from an empty folder, with the repo on PYTHONPATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    full_env.pop("HYDRA_FULL_ERROR", None) if "HYDRA_FULL_ERROR" not in env else None
    return subprocess.run(
        [sys.executable, "-m", *args, f"hydra.run.dir={cwd / 'hydra'}"],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


CASES = {
    "train": (
        ["train", "experiment=resnet18_224"],
        1,
        "error: annotation file {cwd}/data/coco/annotations/person_keypoints_train2017_"
        "modified.json not found: run python -m datasets.download, then python -m "
        "datasets.preprocess",
    ),
    "export": (
        ["export", "ckpt=epoch_249.pth"],
        1,
        "error: checkpoint not found: {cwd}/epoch_249.pth: training writes checkpoints to "
        "runs/<name>/ (epoch_N.pth, last.pth): give one of them",
    ),
    "eval": (
        ["inference.eval"],
        1,
        "error: annotation file {cwd}/data/coco/annotations/person_keypoints_val2017.json not "
        "found: run python -m datasets.download (or give annotations=FILE images=DIR)",
    ),
    "predict": (
        ["inference.predict", "input=photo.jpg", "model=runs/x/last.pth"],
        1,
        "error: input not found: photo.jpg (give an image, a folder of images, a video",
    ),
    "export-usage": (["export"], 2, "error: give the checkpoint: python -m export ckpt=runs/"),
    "tensorrt": (
        ["export.tensorrt", "onnx=model.onnx"],
        1,
        "error: ONNX model not found: {cwd}/model.onnx: export one first",
    ),
    "predict-usage": (
        ["inference.predict"],
        2,
        "error: give input=<image|folder|video|camera|URL> and model=<.onnx|.engine|.pth>",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fresh_machine_one_line_error(tmp_path, case):
    args, code, expected = CASES[case]
    proc = _run(tmp_path, *args)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected.format(cwd=tmp_path)), proc.stderr


def test_full_traceback_on_request(tmp_path):
    proc = _run(tmp_path, "export", "ckpt=epoch_249.pth", HYDRA_FULL_ERROR="1")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "UserError: checkpoint not found" in proc.stderr


def test_checkpoint_hint_names_the_runs_that_have_it(tmp_path):
    (tmp_path / "runs" / "resnet18_224").mkdir(parents=True)
    (tmp_path / "runs" / "resnet18_224" / "epoch_249.pth").write_bytes(b"")
    proc = _run(tmp_path, "export", "ckpt=epoch_249.pth")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint not found: {tmp_path}/epoch_249.pth: did you mean "
        f"{tmp_path}/runs/resnet18_224/epoch_249.pth?"
    )
