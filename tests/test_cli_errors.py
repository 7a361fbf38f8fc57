"""The headline commands on a fresh machine (no COCO, no runs/): each ends in one line on stderr
that names the problem and the next step, with exit code 1 (2 for bad usage); a traceback only
with HYDRA_FULL_ERROR=1. Run from an empty folder, with the repo on PYTHONPATH."""

from __future__ import annotations

import collections
import json
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


COCO_MINI_VAL = REPO.parent / "shared/data/coco-mini/annotations/person_keypoints_val2017.json"
BAD_OVERRIDES = {  # eval's oracle-mode, decoder and TTA overrides (no model needed)
    "decoder_overrides={max_objects:-1}": "error: max_objects must be >= 0 (0: unlimited), got -1",
    "decoder.threshold_heatmap=abc": "error: decoder parameter threshold_heatmap must be float",
    "decoder_overrides={bogus:1}": "error: unknown OpenPoseDecoder parameter(s) ['bogus']",
    "tta.scales=[0]": "error: tta.scales must be numbers in [0.1, 4]",
    "input_size=[102,102]": "error: input_size [102, 102] must be a multiple of the maps' stride 4",
    "aspect=bogus": "error: aspect must be one of ['squash', 'letterbox'], got 'bogus'",
    "noise=-1": "error: noise must be a number >= 0 (0: none), got -1",
    "max_images=-3": "error: max_images must be a whole number >= 1, got -3",
    "seed=abc": "error: seed must be a whole number >= 0, got 'abc'",
    "input_size=abc": "error: input_size must be N or [H, W] with positive sizes, got 'abc'",
    "targets.sigma=-1": "error: targets.sigma must be a number > 0 (map pixels), got -1",
}


@pytest.mark.parametrize("override", list(BAD_OVERRIDES))
def test_bad_decoder_and_tta_overrides_one_line(tmp_path, override):
    if not COCO_MINI_VAL.is_file():
        pytest.skip(f"coco-mini not found at {COCO_MINI_VAL}")
    args = ["inference.eval", "oracle=true", f"annotations={COCO_MINI_VAL}", "max_images=2"]
    proc = _run(tmp_path, *args, override, f"output={tmp_path / 'out'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(BAD_OVERRIDES[override]), proc.stderr


@pytest.mark.parametrize("override", ["input_size=[102,102]", "aspect=bogus"])
def test_visualize_oracle_settings_are_checked(tmp_path, override):
    """visualize oracle=true takes the same checked settings as eval's oracle mode."""
    if not COCO_MINI_VAL.is_file():
        pytest.skip(f"coco-mini not found at {COCO_MINI_VAL}")
    images = COCO_MINI_VAL.parents[1] / "val2017"
    args = [
        "inference.visualize",
        "oracle=true",
        f"annotations={COCO_MINI_VAL}",
        f"images={images}",
    ]
    proc = _run(tmp_path, *args, "image=000000192699.jpg", override, f"output={tmp_path / 'o'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    expected = BAD_OVERRIDES[override]  # the same line as eval gives
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected), proc.stderr


def test_decoder_overrides_on_the_command_line(tmp_path):
    """``decoder_overrides={NAME:VALUE}`` as the README writes it: the cap applies."""
    if not COCO_MINI_VAL.is_file():
        pytest.skip(f"coco-mini not found at {COCO_MINI_VAL}")
    args = ["inference.eval", "oracle=true", f"annotations={COCO_MINI_VAL}", "max_images=8"]
    out = tmp_path / "out"
    proc = _run(tmp_path, *args, "decoder_overrides={max_objects:1}", f"output={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    per_image = collections.Counter(r["image_id"] for r in results)
    assert results and max(per_image.values()) == 1


PREDICT, SERVE, VISUALIZE = "inference.predict", "inference.serve", "inference.visualize"
BAD_NUMBERS = [  # (command, override, error line): checked before the model or input is read
    (PREDICT, "batch_size=abc", "error: batch_size must be a whole number >= 1, got 'abc'"),
    (PREDICT, "batch_size=0", "error: batch_size must be a whole number >= 1, got 0"),
    (PREDICT, "threads=-1", "error: threads must be a whole number >= 1, got -1"),
    (PREDICT, "device=gpu", "error: device='gpu': use device=cpu, cuda or cuda:N"),
    (SERVE, "port=abc", "error: port must be a whole number >= 1, got 'abc'"),
    (SERVE, "port=99999", "error: port must be a whole number 1-65535, got 99999"),
    (VISUALIZE, "scale=0", "error: scale must be a whole number >= 1, got 0"),
    (VISUALIZE, "scale=100", "error: scale must be 1-16, got 100"),
    (VISUALIZE, "grid_cols=abc", "error: grid_cols must be a whole number >= 1, got 'abc'"),
]


@pytest.mark.parametrize(("command", "override", "expected"), BAD_NUMBERS)
def test_bad_numbers_and_device_one_line(tmp_path, command, override, expected):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"never opened")
    (tmp_path / "photo.jpg").write_bytes(b"never read")
    source = "image=photo.jpg" if command == VISUALIZE else "input=photo.jpg"
    proc = _run(tmp_path, command, source, f"model={model}", override)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [expected], proc.stderr


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
