"""What can be checked of the NGC image and the DGX launcher without Docker or GPUs."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_base_is_an_ngc_pytorch_image():
    ins = _instructions()
    args = {k: v for k, v in (a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)}
    frm = [a for w, a in ins if w == "FROM"]
    assert len(frm) == 1
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], frm[0])
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", image), image


def test_every_copied_path_exists_and_is_in_the_build_context():
    ignore = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    copies = [a for w, a in _instructions() if w == "COPY"]
    assert copies
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in parts[:-1]:
            path = REPO / src
            assert path.exists(), f"Dockerfile copies {src}, which is not in the repository"
            assert not any(fnmatch.fnmatch(src, pat) for pat in ignore), f"{src} is .dockerignored"
    copied = {shlex.split(a)[0] for a in copies}
    # the user commands (python -m <folder>) all reach the image
    for folder in ("conf", "datasets", "models", "train", "export", "inference"):
        assert folder in copied


def _pins(tmp_path: Path) -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "docker" / "pin_image_packages.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = tmp_path / "constraints.txt"
    path.write_text(out)
    return path


def test_pins_keep_the_installed_torch(tmp_path):
    import torch
    import torchvision

    lines = _pins(tmp_path).read_text().splitlines()
    base = lambda v: str(v).split("+")[0]  # noqa: E731 - local version labels (+cu..) vary
    assert any(
        re.fullmatch(rf"torch=={re.escape(base(torch.__version__))}(\+.*)?", ln) for ln in lines
    )
    assert any(ln.startswith(f"torchvision=={base(torchvision.__version__)}") for ln in lines)


def _dry_install(constraints: Path) -> subprocess.CompletedProcess:
    # --no-index: only what is installed here may satisfy the spec, so "resolves" means "resolves
    # without replacing anything the image ships"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-c",
            str(constraints),
            ".[dev]",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PIP_NO_INPUT="1"),
    )


def test_install_spec_resolves_with_the_image_packages_pinned(tmp_path):
    res = _dry_install(_pins(tmp_path))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    would = [ln for ln in res.stdout.splitlines() if ln.startswith("Would install")]
    assert would and would[0].split()[2:] == ["pafpose-0.1.0"], would


def test_a_pin_that_cannot_hold_fails_the_install(tmp_path):
    # the same command must fail rather than silently replace torch
    bad = tmp_path / "bad.txt"
    bad.write_text("torch==0.0.1\n")
    res = _dry_install(bad)
    assert res.returncode != 0


def test_dgx_launcher_commands():
    script = REPO / "scripts" / "train_dgx.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = dict(os.environ, DRY_RUN="1", NPROC="8", RUN_ID="r1", PYTHON="python")
    one = subprocess.run(
        [str(script), "experiment=resnet18_224"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert one.stdout.split() == [
        "python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=8",
        "-m",
        "train",
        "hydra.run.dir=outputs/train/r1",
        "experiment=resnet18_224",
    ]
    multi = subprocess.run(
        [str(script), "x=1"],
        env=dict(env, NNODES="2", RDZV_ENDPOINT="dgx01:29400"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--rdzv_endpoint=dgx01:29400" in multi.stdout and "--rdzv_id=r1" in multi.stdout
    missing = subprocess.run(
        [str(script)], env=dict(env, NNODES="2"), capture_output=True, text=True
    )
    assert missing.returncode != 0 and "RDZV_ENDPOINT" in missing.stderr
