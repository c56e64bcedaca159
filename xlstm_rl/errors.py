"""The library's user-facing exceptions, in one module that imports nothing heavy.

Every message is one line that says what was wrong and what is allowed; the command line
prints it as ``error: <message>`` and exits with code 2 (:data:`USER_ERRORS`). The modules
that raise them re-export them (``xlstm_rl.checkpoint.CheckpointError`` is the same class).
"""
from __future__ import annotations

__all__ = ["USER_ERRORS", "CheckpointError", "ConfigError", "EnvFault", "first_line",
           "NonFiniteCheckpointError", "RunDirError", "SpaceError", "StopRequested",
           "TrainingFault", "UserError"]


class UserError(Exception):
    """A mistake in what the user asked for on the command line."""


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


class NonFiniteCheckpointError(CheckpointError):
    """A state holding NaN or infinite values was not written."""


class SpaceError(ValueError):
    """A space that cannot be described or rebuilt."""


class RunDirError(ValueError):
    """A run directory that cannot be used as asked."""


class TrainingFault(ValueError):
    """Training cannot go on: a loss, gradient or parameter became non-finite, or the
    environment misbehaved (:class:`EnvFault`). The message says where it started."""


class EnvFault(TrainingFault):
    """The environment returned a non-finite reward or observation, or an observation that
    does not fit its observation space; the message names the env, the sub-env and the step."""


class StopRequested(Exception):
    """Raised inside an iteration or an evaluation once SIGINT / SIGTERM asked the run to stop."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, cut to ``limit`` characters with an
    ellipsis (its type name when the message is empty)."""
    for line in str(exc)[:100 * limit].splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[:limit - 3] + "..."
    return type(exc).__name__


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ConfigError, CheckpointError,
                                                SpaceError, RunDirError, TrainingFault)
"""Exception types the command line reports as one-line errors with exit code 2."""
