"""User errors of the command line: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from xlstm_rl.errors import USER_ERRORS, UserError, first_line

__all__ = ["EXIT_USER_ERROR", "USER_ERRORS", "UserError", "as_user_error", "check_device",
           "one_line", "report"]

EXIT_USER_ERROR = 2
"""Exit code of every user error (bad arguments, config, environment id, checkpoint, or a
training fault such as a NaN reward)."""

MAX_MESSAGE = 300
"""Longest error message shown (characters); longer ones are cut with an ellipsis."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none),
    cut to :data:`MAX_MESSAGE` characters."""
    return first_line(exc, MAX_MESSAGE)


def report(exc: BaseException) -> int:
    """Prints ``error: <message>`` (one line) on stderr and returns :data:`EXIT_USER_ERROR`."""
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return EXIT_USER_ERROR


@contextlib.contextmanager
def as_user_error(what: str | None = None,
                  types: tuple[type[BaseException], ...] = (ValueError,)) -> Iterator[None]:
    """Turns the given exceptions raised inside the block into a :class:`UserError`.

    Use it around code whose errors describe bad input (building environments from an id and
    keyword arguments, networks from a space), never around a whole training loop.

    Args:
        what: Optional prefix for the message (``"environment"``).
        types: Exception types to convert (default ``ValueError``).
    """
    try:
        yield
    except USER_ERRORS:
        raise
    except types as exc:
        prefix = f"{what}: " if what else ""
        raise UserError(prefix + one_line(exc)) from exc


def check_device(device: str) -> str:
    """Checks a torch device string before any work is done.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...

    Returns:
        The device string, unchanged.

    Raises:
        UserError: If torch does not know the device or it is not available here.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"unknown device {device!r} (expected cpu, cuda, cuda:N or auto)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} requested but CUDA is not available here; use "
                            "--device cpu (or train.device=auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} requested but only {torch.cuda.device_count()} "
                            "CUDA device(s) exist")
    return device
