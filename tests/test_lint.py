"""The house rules CI enforces: the import layers (import-linter), ruff lint and ruff format.

Each runs the real tool on the repository, so a violation anywhere in the tree fails the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_import_layers_kept():
    exe = BIN / "lint-imports"
    assert exe.is_file(), f"{exe} missing: install the dev extra (pip install -e '.[dev]')"
    out = _run(str(exe), "--no-cache")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_every_inference_module_has_a_layer():
    """``inference/`` holds core modules and commands; the layers contract names each module, so
    a new one (a new command or runtime) must be placed in a layer or it would go unchecked."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(REPO / "pyproject.toml", "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.replace(":", "|").split("|")}
    folder = REPO / "inference"
    modules = {f"inference.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    modules |= {f"inference.{p.parent.name}" for p in folder.glob("*/__init__.py")}
    assert modules - named == set(), "add these modules to a layer in pyproject.toml"


@pytest.mark.parametrize("args", [("check", "."), ("format", "--check", ".")])
def test_ruff(args):
    out = _run(sys.executable, "-m", "ruff", *args)
    assert out.returncode == 0, out.stdout + out.stderr


def test_onnx_runtime_path_does_not_import_torch():
    """The model contract and the ONNX Runtime predict command are numpy-only: torch (hundreds of
    MB, seconds to import) is loaded only by the torch and TensorRT backends."""
    code = (
        "import sys, inference.predict, inference.eval, models.contract;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch');"
        "assert not bad, bad[:5]"
    )
    out = _run(sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
