"""Files: user paths, image folders and atomic writes.

Atomic writes: a reader sees the old file or the new one, never half of either. Every stage writes
its outputs (annotation files, stamps, configs, results, decoder configs) through
``atomic_write_text`` / ``write_json``: data goes to a temporary file in the destination's folder,
which then replaces the destination with ``os.replace`` (atomic on POSIX within one filesystem); a
failure removes the temporary file.

Permissions: ``mkstemp`` creates files readable by their owner only (0600); every output gets
the mode a plain ``open`` would give it (0666 less the umask) before it takes its final name, so
others on shared storage can read checkpoints, ONNX files and results as the umask allows.

User paths: the Hydra apps do not change directory, and every path a user types is resolved
against the launch directory with ``resolve_path``.

Run directories: ``claim_dir`` gives each run a directory of its own, even when two commands
start within the same second (the time-stamped default names would otherwise be shared).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from hydra.utils import to_absolute_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def resolve_path(p: str | Path | None) -> Path | None:
    """A user path (``~`` expanded) made absolute against the launch directory, as
    ``hydra.utils.to_absolute_path`` does inside or outside a Hydra app; None for None or ""."""
    if p is None or str(p) == "":
        return None
    return Path(to_absolute_path(os.path.expanduser(str(p))))


def list_images(folder: str | Path) -> list[Path]:
    """Image files (``IMAGE_SUFFIXES``) directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file name beside ``path`` for a writer that needs a name (``torch.save``, the
    ONNX exporter); it replaces ``path`` when the block ends without an exception, else it is
    removed. The folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (``os.umask`` can only
    be read by setting it, which races with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


CLAIM_MARKER = ".claimed"


def claim_dir(base: str | Path) -> Path:
    """A run directory of this process's own: ``base``, else ``base_1``, ``base_2``, ... The
    claim is the exclusive creation of a marker file inside, so of two commands started within
    the same second (same time-stamped name) each gets its own directory; an existing directory
    that no run claimed (an empty folder the user made) is taken as it is."""
    base = Path(base)
    for n in itertools.count():
        path = base if n == 0 else base.with_name(f"{base.name}_{n}")
        path.mkdir(parents=True, exist_ok=True)
        try:
            (path / CLAIM_MARKER).open("x").close()
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


def _atomic(path: str | Path, write: Callable[[IO[str]], None]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        write(f)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return _atomic(path, lambda f: f.write(text))


def write_json(path: str | Path, data: Any, **dump_kwargs: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (streamed, so large files are not copied into
    a string first); ``dump_kwargs`` go to ``json.dump`` (``indent``, ``separators``, ...)."""
    return _atomic(path, lambda f: json.dump(data, f, **dump_kwargs))


def where_checkpoints_are(path: Path, runs: Path = Path("runs")) -> str:
    """The next step for a checkpoint path that does not exist: training writes checkpoints to
    ``runs/<name>/``; name the ones with this file name, if any."""
    runs = runs if runs.is_absolute() else Path.cwd() / runs
    found = sorted(runs.glob(f"*/{path.name}"))[:3] if runs.is_dir() else []
    if found:
        return "did you mean " + " or ".join(str(p) for p in found) + "?"
    return "training writes checkpoints to runs/<name>/ (epoch_N.pth, last.pth): give one of them"
