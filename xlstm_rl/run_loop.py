"""The run loop of ``xlstm-rl train``: iterations, metrics, evaluations, checkpoints, stops.

It drives any :class:`xlstm_rl.trainer.Trainer` and nothing else of an algorithm. A training
checkpoint holds the trainer's :meth:`~xlstm_rl.trainer.Trainer.state_dict` (``policy``,
``obs_norm``, ``trainer``) plus ``run``, the loop's own progress (:class:`RunState`).

Guarantees:

* A checkpoint is never written with non-finite values (the writer refuses, and a
  :class:`~xlstm_rl.errors.TrainingFault` stops the run first), so ``latest`` and ``best``
  always hold the last good state.
* SIGINT / SIGTERM is acted on within one env step wherever the loop is (collecting,
  updating after the current minibatch pass, evaluating), after a grace of
  :data:`STOP_GRACE_SECONDS` for work in progress: the last complete state is written as
  ``latest`` and the run exits 130 / 143.
* ``metrics.jsonl`` is appended one line per iteration; on resume, rows past the checkpoint
  (and a line torn by a kill) are dropped with an atomic rewrite, and TensorBoard events past
  the checkpoint are purged.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from xlstm_rl.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from xlstm_rl.config import RunConfig
from xlstm_rl.distributed import DistContext
from xlstm_rl.errors import StopRequested, TrainingFault
from xlstm_rl.fileio import atomic_write_text, remove_stale_temp_files
from xlstm_rl.rundir import (CHECKPOINT_DIR, EVAL_FILE, METRICS_FILE, TB_DIR, checkpoint_path,
                             read_metrics)
from xlstm_rl.trainer import Trainer

__all__ = ["INTERRUPT_EXIT", "RunLoop", "RunState", "checkpoint_state", "restore_trainer",
           "training_spaces"]

INTERRUPT_EXIT = {2: 130, 15: 143}  # SIGINT, SIGTERM
STOP_GRACE_SECONDS = 2.0
"""Work in progress when a stop signal arrives may finish within this time (a short evaluation
completes and is kept); longer work is cut and the state from before it is written."""


@dataclass(frozen=True)
class RunState:
    """Progress of a run beyond the trainer's own state (saved in every checkpoint)."""

    best_return: float = -math.inf
    """Best evaluation mean return so far (``best.safetensors`` holds that state)."""
    last_eval_step: int = -1
    """Env step of the last evaluation (-1: none yet)."""
    last_checkpoint_step: int = 0
    """Env step of the last periodic checkpoint."""
    reached_target: bool = False
    """An evaluation reached ``train.target_return``; training stops."""


def training_spaces(trainer: Trainer) -> dict[str, Any]:
    """JSON descriptions of the trainer's single-env observation and action spaces."""
    from xlstm_rl.spaces import space_to_json

    return {"observation": space_to_json(trainer.observation_space),
            "action": space_to_json(trainer.action_space)}


def checkpoint_state(trainer: Trainer, run: RunState) -> dict[str, Any]:
    """The nested state written to a training checkpoint (layout in the module docstring)."""
    return {**trainer.state_dict(), "run": dataclasses.asdict(run)}


def restore_trainer(trainer: Trainer, ckpt: Checkpoint) -> RunState:
    """Loads a training checkpoint into ``trainer``; returns the saved :class:`RunState`.

    Raises:
        CheckpointError: If the checkpoint has no trainer state or does not fit the trainer.
    """
    saved = ckpt.state
    if not isinstance(saved.get("trainer"), dict) or not isinstance(saved.get("policy"), dict):
        raise CheckpointError(f"{ckpt.path} is not a training checkpoint (no trainer state)")
    state = {"policy": saved["policy"], "obs_norm": saved.get("obs_norm") or {},
             "trainer": saved["trainer"]}
    try:
        trainer.load_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{ckpt.path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt.path}: the trainer state does not fit this run "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from exc
    fields = {f.name for f in dataclasses.fields(RunState)}
    return RunState(**{k: v for k, v in (saved.get("run") or {}).items() if k in fields})


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _due(step: int, last: int, every: int) -> bool:
    return every > 0 and step // every > max(last, 0) // every


class RunLoop:
    """Drives a trainer to ``train.total_steps`` with logging, evaluation and checkpoints.

    Args:
        trainer: Any :class:`~xlstm_rl.trainer.Trainer`.
        config: The run config.
        run_dir: The run directory (created).
        spaces: From :func:`training_spaces`.
        run_state: The :class:`RunState` of a resumed run (its trainer already restored with
            :func:`restore_trainer`); None for a fresh run.
        show_bar: Show a tqdm progress bar (only on a terminal).
        dist: The process group of a data-parallel run: every rank runs the loop in lockstep
            (the trainer's collectives happen at the same points), rank 0 alone evaluates,
            logs and writes files; stops are agreed on at iteration boundaries.
    """

    def __init__(self, trainer: Trainer, config: RunConfig, run_dir: Path,
                 spaces: dict[str, Any], run_state: RunState | None = None,
                 show_bar: bool = True, dist: DistContext | None = None) -> None:
        from xlstm_rl.logging import MetricLogger

        self.dist = dist or DistContext()
        main = self.dist.is_main
        self.trainer, self.config, self.run_dir, self.spaces = trainer, config, run_dir, spaces
        self.run_state = RunState() if run_state is None else run_state
        target = config.train.target_return  # judged by this run's config, not the saved one
        self._update_state(reached_target=target is not None
                           and self.run_state.best_return >= target)
        purge = None
        if run_state is not None and main:
            self._drop_metrics_after(trainer.global_step)
            purge = trainer.global_step + 1
        if main:
            for folder in (run_dir, run_dir / CHECKPOINT_DIR):
                remove_stale_temp_files(folder)
        self.logger = MetricLogger(run_dir / TB_DIR if main else None, purge_step=purge)
        trainer.logger = self.logger
        self.show_bar, self.bar = show_bar and main, None
        self.last_eval: dict[str, float] | None = None
        self.stop: Any = None
        self._state: dict[str, Any] | None = None  # the trainer's state after the last iteration

    def _drop_metrics_after(self, step: int) -> None:
        """After a hard kill, rows past the checkpoint are redone: drop them (atomically)."""
        path = self.run_dir / METRICS_FILE
        if path.is_file():
            rows = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    def __enter__(self) -> RunLoop:
        from tqdm import tqdm

        per_iteration = self.trainer.steps_per_iteration  # the last iteration may overshoot
        total = math.ceil(self.config.train.total_steps / per_iteration) * per_iteration
        self.bar = tqdm(total=total, initial=self.trainer.global_step,
                        unit="step", unit_scale=True, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} steps "
                                   "[{elapsed}<{remaining}{postfix}]",
                        disable=None if self.show_bar else True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        self.logger.close()

    def _update_state(self, **changes: Any) -> None:
        self.run_state = dataclasses.replace(self.run_state, **changes)

    def _stop_requested(self) -> bool:
        return self.stop is not None and self.stop.signum is not None

    def _cut_work_in_progress(self) -> bool:
        """True once a stop signal is older than the grace period (polled inside work)."""
        if not self._stop_requested():
            return False
        import time

        return time.monotonic() - getattr(self.stop, "received_at", 0.0) >= STOP_GRACE_SECONDS

    def capture(self) -> None:
        """Takes the trainer's state (on every rank: it may gather from all of them)."""
        self._state = self.trainer.state_dict()

    def write(self, which: str) -> Path | None:
        """Writes ``checkpoints/<which>.safetensors`` from the captured state and the current
        run progress (rank 0; other ranks write nothing).

        Raises:
            TrainingFault: If the state holds a non-finite value (nothing is written).
        """
        from xlstm_rl.checkpoint import NonFiniteCheckpointError

        if not self.dist.is_main or self._state is None:
            return None
        counters = self._state["trainer"].get("counters", {})
        extra = {"global_step": int(counters.get("global_step", self.trainer.global_step)),
                 "iteration": int(counters.get("iteration", self.trainer.iteration)),
                 "evaluation": self.last_eval}
        state = {**self._state, "run": dataclasses.asdict(self.run_state)}
        try:
            return save_checkpoint(checkpoint_path(self.run_dir, which), state,
                                   config=self.config.to_dict(), spaces=self.spaces, extra=extra)
        except NonFiniteCheckpointError as exc:
            raise TrainingFault(f"training stopped at step {extra['global_step']}: {exc}; "
                                f"checkpoints/{which}.safetensors was left as it was") from exc

    def save(self, which: str) -> Path | None:
        """:meth:`capture` then :meth:`write` (call it on every rank)."""
        self.capture()
        return self.write(which)

    def evaluate(self) -> dict[str, float]:
        """Evaluates the current policy, logs it, and updates ``best.safetensors``.

        Raises:
            StopRequested: A stop signal arrived during the evaluation.
        """
        from xlstm_rl.evaluation import evaluate_on_fresh_envs

        train, env, step = self.config.train, self.config.env, self.trainer.global_step
        result = evaluate_on_fresh_envs(self.trainer.acting_policy(), env, train.eval_episodes,
                                        num_envs=train.eval_num_envs,
                                        deterministic=train.eval_deterministic,
                                        seed=train.seed + 10_000,
                                        max_episode_steps=train.eval_max_episode_steps,
                                        should_stop=self._cut_work_in_progress)
        self.last_eval = result
        self._update_state(last_eval_step=step)
        tags = {"eval/return_mean": result["mean_return"], "eval/return_std": result["std_return"],
                "eval/length_mean": result["mean_length"],
                "eval/capped_episodes": result["capped_episodes"]}
        if "success_rate" in result:
            tags["eval/success_rate"] = result["success_rate"]
        self.logger.log(tags, step)
        if result["mean_return"] > self.run_state.best_return:
            self._update_state(best_return=result["mean_return"])
            self.write("best")
        if train.target_return is not None and result["mean_return"] >= train.target_return:
            self._update_state(reached_target=True)
        return tags

    def _record(self, metrics: dict[str, float], evaluation: dict[str, float]) -> None:
        row = {"step": self.trainer.global_step,
               **{k: _finite(v) for k, v in {**metrics, **evaluation}.items()}}
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.bar is None:
            return
        self.bar.update(self.trainer.global_step - self.bar.n)
        post = {"sps": f"{metrics.get('perf/sps', 0):.0f}"}
        if _finite(metrics.get("episode/return")) is not None:
            post["return"] = f"{metrics['episode/return']:.3g}"
        if _finite(metrics.get("episode/success")) is not None:
            post["success"] = f"{metrics['episode/success']:.2f}"
        if evaluation:
            post["eval"] = f"{evaluation['eval/return_mean']:.3g}"
        self.bar.set_postfix(post, refresh=False)

    def _stop_now(self) -> bool:
        """A stop signal reached this rank, or any rank (agreed on by every rank)."""
        return self.dist.any(self._stop_requested())

    def _exit_code(self) -> int:
        signum = getattr(self.stop, "signum", None)
        return INTERRUPT_EXIT.get(int(signum), 130) if signum is not None else 130

    def _evaluate_if_due(self) -> dict[str, float]:
        """Rank 0 evaluates when due; every rank learns whether the target was reached."""
        train = self.config.train
        evaluation: dict[str, float] = {}
        if not _due(self.trainer.global_step, self.run_state.last_eval_step, train.eval_every):
            return evaluation
        if self.dist.is_main:
            try:
                evaluation = self.evaluate()
            except StopRequested:
                pass  # the iteration itself is complete: it is checkpointed below
        self._update_state(last_eval_step=self.trainer.global_step,
                           reached_target=self.dist.any(self.run_state.reached_target))
        return evaluation

    def run(self, stop: Any) -> int:
        """Trains until ``total_steps`` (or the target return, or a stop signal).

        Args:
            stop: An object whose ``signum`` attribute becomes non-None on SIGINT / SIGTERM.

        Returns:
            0 when done, 130 / 143 when stopped by SIGINT / SIGTERM (after a checkpoint).

        Raises:
            TrainingFault: Non-finite or malformed values (the checkpoints are left as they
                were).
        """
        train, trainer = self.config.train, self.trainer
        self.stop = stop
        trainer.total_steps = train.total_steps
        if self._state is None:
            self.capture()
        # one process stops mid-iteration; ranks stop together at iteration boundaries
        inner_stop = None if self.dist.enabled else self._cut_work_in_progress
        while trainer.global_step < train.total_steps and not self.run_state.reached_target:
            if self._stop_now():
                self.write("latest")  # the state from before this iteration
                return self._exit_code()
            try:
                metrics = trainer.train_iteration(inner_stop)
            except StopRequested:
                self.write("latest")
                return self._exit_code()
            self.capture()
            evaluation = self._evaluate_if_due()
            if self.dist.is_main:
                self._record(metrics, evaluation)
            if self._stop_now():
                self.write("latest")
                return self._exit_code()
            if _due(trainer.global_step, self.run_state.last_checkpoint_step,
                    train.checkpoint_every):
                self._update_state(last_checkpoint_step=trainer.global_step)
                self.write("latest")
        return 0

    def finish(self) -> dict[str, float] | None:
        """Final evaluation (unless one just ran), checkpoints and ``eval.json``.

        Returns:
            The summary (``{}`` on ranks other than 0), or None when a stop signal interrupted
            the final evaluation (the trained state is still written as ``latest``).
        """
        if self._state is None:
            self.capture()
        if not self.dist.is_main:
            return {}
        if self.last_eval is None or self.run_state.last_eval_step != self.trainer.global_step:
            try:
                self.evaluate()
            except StopRequested:
                self.write("latest")
                return None
        self.write("latest")
        last_eval = cast("dict[str, float]", self.last_eval)  # set by evaluate()
        summary = {"global_step": self.trainer.global_step, **last_eval,
                   "best_return": self.run_state.best_return,
                   "deterministic": self.config.train.eval_deterministic}
        text = json.dumps({k: _json_number(v) for k, v in summary.items()}, indent=2,
                          allow_nan=False)
        atomic_write_text(self.run_dir / EVAL_FILE, text + "\n")
        self.logger.flush()
        return summary


def _json_number(value: Any) -> Any:
    """Non-finite floats as strings ("-inf"), so ``eval.json`` is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
