"""The training loop of ``xlstm-rl train``: progress bar, metrics, evaluations, checkpoints.

A training checkpoint holds (see :mod:`xlstm_rl.checkpoint` for the file format)::

    policy    the network's state_dict (what ``load_policy`` needs)
    obs_norm  observation normalization statistics ({} when not normalizing)
    trainer   the rest of the trainer state: optimizer, RNG, collector, env snapshots, counters
    run       progress of the run: best evaluation return, last evaluation / checkpoint step
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlstm_rl.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from xlstm_rl.config import RunConfig
from xlstm_rl.rundir import EVAL_FILE, METRICS_FILE, TB_DIR, checkpoint_path

INTERRUPT_EXIT = {2: 130, 15: 143}  # SIGINT, SIGTERM


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


def training_spaces(trainer: Any) -> dict[str, Any]:
    """JSON descriptions of the trainer's single-env observation and action spaces."""
    from xlstm_rl.spaces import space_to_json

    envs = trainer.envs
    return {"observation": space_to_json(envs.single_observation_space),
            "action": space_to_json(envs.single_action_space)}


def checkpoint_state(trainer: Any, run: RunState) -> dict[str, Any]:
    """The nested state written to a training checkpoint (layout in the module docstring)."""
    state = trainer.state_dict()
    policy, obs_norm = state.pop("model"), state.pop("obs_norm")
    return {"policy": policy, "obs_norm": obs_norm, "trainer": state,
            "run": dataclasses.asdict(run)}


def restore_trainer(trainer: Any, ckpt: Checkpoint) -> RunState:
    """Loads a training checkpoint into ``trainer``; returns the saved :class:`RunState`.

    Raises:
        CheckpointError: If the checkpoint has no trainer state or its weights do not match
            the trainer's network.
    """
    from xlstm_rl.policy import check_weights

    saved = ckpt.state
    if not isinstance(saved.get("trainer"), dict) or not isinstance(saved.get("policy"), dict):
        raise CheckpointError(f"{ckpt.path} is not a training checkpoint (no trainer state)")
    check_weights(trainer.policy, saved["policy"], str(ckpt.path))
    state = dict(saved["trainer"], model=saved["policy"], obs_norm=saved.get("obs_norm", {}))
    trainer.load_state_dict(state)
    fields = {f.name for f in dataclasses.fields(RunState)}
    return RunState(**{k: v for k, v in (saved.get("run") or {}).items() if k in fields})


def _finite(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _due(step: int, last: int, every: int) -> bool:
    return every > 0 and step // every > max(last, 0) // every


class TrainProgress:
    """Drives a trainer to ``train.total_steps`` with logging, evaluation and checkpoints.

    Args:
        trainer: A ``PPOTrainer``.
        config: The run config.
        run_dir: The run directory (created).
        spaces: From :func:`training_spaces`.
        run_state: The :class:`RunState` of a resumed run (its trainer already restored with
            :func:`restore_trainer`); None for a fresh run.
        show_bar: Show a tqdm progress bar (only on a terminal).
    """

    def __init__(self, trainer: Any, config: RunConfig, run_dir: Path, spaces: dict[str, Any],
                 run_state: RunState | None = None, show_bar: bool = True) -> None:
        from xlstm_rl.logging import MetricLogger

        self.trainer, self.config, self.run_dir, self.spaces = trainer, config, run_dir, spaces
        self.run_state = RunState() if run_state is None else run_state
        if run_state is not None:
            self._drop_metrics_after(trainer.global_step)
        self.logger = MetricLogger(run_dir / TB_DIR)
        trainer.logger = self.logger
        self.show_bar, self.bar = show_bar, None
        self.last_eval: dict[str, float] | None = None

    def _drop_metrics_after(self, step: int) -> None:
        """After a hard kill, rows past the checkpoint are redone: drop them."""
        path = self.run_dir / METRICS_FILE
        if path.is_file():
            rows = [line for line in path.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line).get("step", 0) <= step]
            path.write_text("".join(rows))

    def __enter__(self) -> "TrainProgress":
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

    def save(self, which: str) -> Path:
        """Writes ``checkpoints/<which>.safetensors``."""
        extra = {"global_step": self.trainer.global_step, "iteration": self.trainer.iteration,
                 "evaluation": self.last_eval}
        return save_checkpoint(checkpoint_path(self.run_dir, which),
                               checkpoint_state(self.trainer, self.run_state),
                               config=self.config.to_dict(), spaces=self.spaces, extra=extra)

    def evaluate(self) -> dict[str, float]:
        """Evaluates the current policy, logs it, and updates ``best.safetensors``."""
        train, step = self.config.train, self.trainer.global_step
        result = self.trainer.evaluate(train.eval_episodes, deterministic=train.eval_deterministic,
                                       num_envs=train.eval_num_envs)
        self.last_eval = result
        self._update_state(last_eval_step=step)
        tags = {"eval/return_mean": result["mean_return"], "eval/return_std": result["std_return"],
                "eval/length_mean": result["mean_length"]}
        if "success_rate" in result:
            tags["eval/success_rate"] = result["success_rate"]
        self.logger.log(tags, step)
        if result["mean_return"] > self.run_state.best_return:
            self._update_state(best_return=result["mean_return"])
            self.save("best")
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

    def run(self, stop: Any) -> int:
        """Trains until ``total_steps`` (or the target return, or a stop signal).

        Args:
            stop: An object whose ``signum`` attribute becomes non-None on SIGINT / SIGTERM.

        Returns:
            0 when done, 130 / 143 when stopped by SIGINT / SIGTERM (after a checkpoint).
        """
        train, trainer = self.config.train, self.trainer
        trainer.total_steps = train.total_steps
        while trainer.global_step < train.total_steps and not self.run_state.reached_target:
            metrics = trainer.train_iteration()
            step = trainer.global_step
            evaluation = self.evaluate() if _due(step, self.run_state.last_eval_step,
                                                 train.eval_every) else {}
            self._record(metrics, evaluation)
            if stop.signum is not None:
                self.save("latest")
                return INTERRUPT_EXIT.get(int(stop.signum), 130)
            if _due(step, self.run_state.last_checkpoint_step, train.checkpoint_every):
                self._update_state(last_checkpoint_step=step)
                self.save("latest")
        return 0

    def finish(self) -> dict[str, float]:
        """Final evaluation (unless one just ran), checkpoints and ``eval.json``."""
        if self.last_eval is None or self.run_state.last_eval_step != self.trainer.global_step:
            self.evaluate()
        self.save("latest")
        summary = {"global_step": self.trainer.global_step, **self.last_eval,
                   "best_return": self.run_state.best_return,
                   "deterministic": self.config.train.eval_deterministic}
        (self.run_dir / EVAL_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        self.logger.flush()
        return summary
