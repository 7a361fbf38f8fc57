"""User errors: one line on stderr that says what is wrong and how to fix it.

Every stage raises :class:`UserError` for mistakes the user can fix (a missing file, a bad
override, a malformed annotation) with a message that names the culprit and the fix, e.g.::

    raise UserError(f"no COCO annotations at {path}: run python -m datasets.download, "
                    "then python -m datasets.preprocess")

Each command's entry point wraps its task function in :func:`user_errors`, which prints
``error: <message>`` and exits with the error's code (2 for usage errors, 1 otherwise). A full
traceback is printed only with ``HYDRA_FULL_ERROR=1`` or ``debug=true``; programming errors
(every other exception) keep their tracebacks.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """A mistake the user can fix; ``str(error)`` is one line naming the problem and the fix."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(UserError):
    """A bad command line or override (exit code 2)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


def _debug(args: tuple[Any, ...]) -> bool:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return True
    cfg = args[0] if args else None
    try:
        return bool(cfg.get("debug", False))  # DictConfig or dict
    except AttributeError:
        return False


def one_line(error: UserError) -> str:
    """The error's message on one line. A UserError raised in a DataLoader worker comes back as
    ``Caught UserError in DataLoader worker process 0.\nOriginal Traceback ...`` ending in
    ``datasets.errors.UserError: <message>``: the message is that last line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(error).__name__
    last = lines[-1]
    name = f"{type(error).__name__}: "
    return last.split(name, 1)[1] if name in last else last


def user_errors(fn: F) -> F:
    """Decorate a command's task function: a :class:`UserError` becomes ``error: ...`` on stderr
    and ``SystemExit(error.exit_code)`` (SystemExit passes through Hydra's own error handler)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if _debug(args):
                raise
            print(f"error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None

    return wrapper  # type: ignore[return-value]
