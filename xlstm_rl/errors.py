"""The library's user-facing exceptions, in one module that imports nothing heavy.

Every message is one line that says what was wrong and what is allowed; the command line
prints it as ``error: <message>`` and exits with code 2.
"""
from __future__ import annotations

__all__ = ["EnvFault", "StopRequested", "TrainingFault"]


class TrainingFault(ValueError):
    """Training cannot go on: a loss, gradient or parameter became non-finite, or the
    environment misbehaved (:class:`EnvFault`). The message says where it started."""


class EnvFault(TrainingFault):
    """The environment returned a non-finite reward or observation, or an observation that
    does not fit its observation space; the message names the env, the sub-env and the step."""


class StopRequested(Exception):
    """Raised inside an iteration or an evaluation once SIGINT / SIGTERM asked the run to stop."""
