"""The trainer interface: everything the run loop (:mod:`xlstm_rl.run_loop`) asks of an algorithm.

An algorithm registered in :mod:`xlstm_rl.algorithms` builds an object with this interface;
the run loop, the CLI and checkpoints use nothing else. Checkpoint layout of
:meth:`Trainer.state_dict` (the run loop adds ``run``, its own progress)::

    policy    the acting network's weights (what ``load_policy`` reads)
    obs_norm  observation-normalization statistics ({} when not normalizing)
    trainer   everything else needed to resume exactly: optimizer, RNG, env snapshots, ...

The state holds only tensors, numpy arrays, plain scalars, strings and nested dicts / lists of
them, so :mod:`xlstm_rl.checkpoint` writes it without pickle.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from xlstm_rl.errors import StopRequested, TrainingFault

__all__ = ["StopCheck", "StopRequested", "Trainer", "TrainingFault"]

StopCheck = Callable[[], bool]
"""Returns True once the run should stop (SIGINT / SIGTERM received)."""


@runtime_checkable
class Trainer(Protocol):
    """What the run loop uses of an algorithm's trainer.

    Attributes:
        global_step: Env steps taken for training so far (all envs together).
        iteration: Completed training iterations.
        total_steps: The run's step budget (set by the run loop before training; schedules such
            as learning-rate annealing use it as their horizon).
        logger: A ``MetricLogger`` every iteration's metrics go to (set by the run loop), or
            None.
    """

    global_step: int
    iteration: int
    total_steps: int
    logger: Any

    @property
    def steps_per_iteration(self) -> int:
        """Env steps one :meth:`train_iteration` adds to ``global_step``."""
        ...

    @property
    def observation_space(self) -> Any:
        """Observation space of one env (``gymnasium.Space``)."""
        ...

    @property
    def action_space(self) -> Any:
        """Action space of one env (``gymnasium.Space``)."""
        ...

    def train_iteration(self, should_stop: StopCheck | None = None) -> dict[str, float]:
        """Runs one iteration (collect + update) and returns its metrics (tag -> number).

        Raises:
            StopRequested: If ``should_stop`` turned True mid-iteration (optional: a trainer
                whose iterations are short may ignore it and return normally).
            TrainingFault: Non-finite or malformed environment output, or a non-finite loss,
                gradient or parameter; nothing is updated with the bad values.
        """
        ...

    def acting_policy(self) -> Any:
        """The current policy for evaluation (an :class:`xlstm_rl.policy.Policy` sharing the
        trainer's weights; it does not change the trainer's state or RNG)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The state in the checkpoint layout (module docstring)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output (also the environments) for an exact resume.

        Raises:
            xlstm_rl.checkpoint.CheckpointError: If the state does not fit this trainer.
        """
        ...

    def close(self) -> None:
        """Releases the environments (the logger belongs to the caller)."""
        ...
