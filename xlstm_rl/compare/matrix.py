"""The cells of a comparison matrix: one ``xlstm-rl train`` run each.

A cell is (algorithm, task, memory length, core, seed) with a step budget. Its run is the
task's base config for the algorithm plus ``--set`` overrides: the core's settings, the
memory length, one torch thread, the preset's evaluation schedule and early stop, then the
user's own overrides. Everything a cell runs is in :meth:`Cell.spec`, so a result row written
for another spec (a changed budget or override) is never mistaken for this cell's.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlstm_rl.compare.presets import ALL_CORES, CORE_SETTINGS, TASKS, Preset, Task, TaskPlan
from xlstm_rl.errors import UserError
from xlstm_rl.suggest import did_you_mean

__all__ = ["Cell", "build_matrix", "check_names"]


@dataclass(frozen=True)
class Cell:
    """One training run of the matrix."""

    algo: str
    """Registered algorithm name."""
    task: str
    """Task name (a key of :data:`~xlstm_rl.compare.presets.TASKS`)."""
    length: int
    """Value of the task's memory-length knob."""
    core: str
    """Memory core."""
    seed: int
    """``train.seed``."""
    config: str
    """Packaged base config (or YAML path) the run starts from."""
    overrides: tuple[str, ...]
    """``--set`` overrides, applied in order after the config."""
    steps: int
    """Step budget (``--total-steps``)."""

    @property
    def id(self) -> str:
        """A file-name-safe unique name, e.g. ``ppo-tmaze-L20-mlstm-s0``."""
        return f"{self.algo}-{self.task}-L{self.length}-{self.core}-s{self.seed}"

    @property
    def group(self) -> tuple[str, str, int, str]:
        """The cell without its seed: ``(algo, task, length, core)``."""
        return (self.algo, self.task, self.length, self.core)

    def spec(self) -> dict[str, Any]:
        """Everything that determines the run, as plain data (stored with its result)."""
        return {"algo": self.algo, "task": self.task, "length": self.length, "core": self.core,
                "seed": self.seed, "config": self.config, "overrides": list(self.overrides),
                "steps": self.steps}

    def train_argv(self, run_dir: Path, resume: bool) -> list[str]:
        """The ``python -m xlstm_rl train ...`` command line of this cell.

        Args:
            run_dir: The cell's run directory.
            resume: Continue the run in ``run_dir`` from its latest checkpoint instead of
                starting it afresh (replacing what is there).
        """
        head = [sys.executable, "-m", "xlstm_rl", "train"]
        if resume:
            return [*head, "--resume", str(run_dir), "--no-progress"]
        sets = [item for override in self.overrides for item in ("--set", override)]
        return [*head, self.config, *sets, "--total-steps", str(self.steps), "--seed",
                str(self.seed), "--run-dir", str(run_dir), "--overwrite", "--no-progress"]

    def describe(self) -> str:
        """The cell as one line of JSON (for logs)."""
        return json.dumps(self.spec(), sort_keys=True)


def check_names(kind: str, names: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
    """``names`` after checking each is in ``valid`` (duplicates dropped, order kept).

    Raises:
        UserError: One line naming the unknown entry, the closest valid ones and all of them.
    """
    for name in names:
        if name not in valid:
            raise UserError(f"unknown {kind} {name!r}{did_you_mean(name, valid)} "
                            f"(choose from {', '.join(valid)})")
    return tuple(dict.fromkeys(names))


def _base_config(algo: str, task: Task) -> tuple[str | None, str]:
    """The base config of ``algo`` on ``task``, or None and why it is skipped."""
    from xlstm_rl.config import load_config, packaged_configs

    name = f"{algo}-mlstm-{task.config_suffix}"
    if name not in packaged_configs():
        return None, f"{algo} on {task.name}: skipped, no packaged config {name!r}"
    config, _ = load_config(name)
    if config.algo != algo or config.env.id != task.env_id:
        return None, (f"{algo} on {task.name}: skipped, {name!r} runs {config.algo} on "
                      f"{config.env.id}, not {task.env_id}")
    return name, ""


def _cell_overrides(preset: Preset, task: Task, algo: str, core: str, length: int,
                    plan: TaskPlan, extra: Sequence[str]) -> tuple[str, ...]:
    target = task.target_return(length) if preset.stop_at_target else None
    return (*CORE_SETTINGS[core], f"{task.knob}={length}",
            *task.episode_overrides(algo, length), "train.torch_threads=1",
            f"train.eval_every={plan.eval_every}", f"train.eval_episodes={plan.eval_episodes}",
            f"train.target_return={'null' if target is None else target}",
            *preset.extra, *extra)


def build_matrix(preset: Preset, *, cores: Sequence[str] | None = None,
                 tasks: Sequence[str] | None = None, algos: Sequence[str] | None = None,
                 seeds: int | None = None, lengths: Sequence[int] | None = None,
                 steps: int | None = None, extra: Sequence[str] = ()
                 ) -> tuple[list[Cell], list[str]]:
    """The cells of ``preset``, narrowed or changed by the command-line options.

    Args:
        preset: The named preset.
        cores: Cores to run (default: the preset's).
        tasks: Tasks to run (default: the preset's); a task outside the preset runs with the
            first plan's algorithms, lengths, budget and evaluation schedule.
        algos: Algorithms (default: each plan's, else the preset's, else every registered
            one); a plan with its own list is narrowed to these.
        seeds: Seeds per cell (default: the preset's).
        lengths: Memory lengths for every task (default: each plan's).
        steps: Step budget per cell (default: each plan's).
        extra: ``--set`` overrides for every cell, applied last.

    Returns:
        ``(cells, notes)``; the notes say which algorithm / task pairs were skipped and why.

    Raises:
        UserError: An unknown core, task or algorithm, or a non-positive count.
    """
    from xlstm_rl.algorithms import algorithm_names

    registered = algorithm_names()
    chosen = check_names("algorithm", algos, registered) if algos else None
    core_list = check_names("core", cores or preset.cores, ALL_CORES)
    task_list = check_names("task", tasks or [p.task for p in preset.plans], tuple(TASKS))
    for label, value in (("--seeds", seeds), ("--steps", steps)):
        if value is not None and value < 1:
            raise UserError(f"{label} must be at least 1, got {value}")
    if lengths is not None and any(length < 1 for length in lengths):
        raise UserError(f"memory lengths must be at least 1, got {list(lengths)}")
    cells: list[Cell] = []
    notes: list[str] = []
    for task_name in task_list:
        task = TASKS[task_name]
        for plan in preset.plans_for(task_name) or [preset.plans[0]]:
            plan_algos = check_names("algorithm", plan.algos or preset.algos or registered,
                                     registered)
            if chosen is not None:  # --algos: narrows a plan's own list, else replaces it
                plan_algos = tuple(a for a in chosen if plan.algos is None or a in plan_algos)
            n_seeds = seeds or plan.seeds or preset.seeds
            for algo in plan_algos:
                base, why = _base_config(algo, task)
                if base is None:
                    notes.append(why)
                    continue
                for length in lengths or plan.lengths:
                    for core in core_list:
                        overrides = _cell_overrides(preset, task, algo, core, length, plan, extra)
                        cells.extend(Cell(algo, task_name, length, core, seed, base, overrides,
                                          steps or plan.steps) for seed in range(n_seeds))
    return cells, list(dict.fromkeys(notes))  # two plans may skip the same pair
