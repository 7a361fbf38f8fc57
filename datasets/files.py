"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every stage writes its outputs (annotation files, stamps, configs, results, decoder configs)
through these two functions: data goes to a temporary file in the destination's folder, which
then replaces the destination with ``os.replace`` (atomic on POSIX within one filesystem); a
failure removes the temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _atomic(path: str | Path, write: Callable[[IO[str]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return _atomic(path, lambda f: f.write(text))


def write_json(path: str | Path, data: Any, **dump_kwargs: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (streamed, so large files are not copied into
    a string first); ``dump_kwargs`` go to ``json.dump`` (``indent``, ``separators``, ...)."""
    return _atomic(path, lambda f: json.dump(data, f, **dump_kwargs))
