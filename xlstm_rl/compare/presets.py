"""Tasks, per-core model settings and the named presets of ``xlstm-rl compare``.

Fairness: every core of a task runs the same base config (the task's packaged
``<algo>-mlstm-<suffix>`` config: environment, algorithm hyper-parameters, encoder, width 64,
evaluation schedule) with only ``model.core`` (and, for ``xlstm``, the block pattern)
changed, the same step budget and the same seeds. The base configs' hyper-parameters were
chosen on the short versions of the tasks (corridor / delay 10) and are shared unchanged by
every core; no core gets hyper-parameters of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ALL_CORES", "CORE_SETTINGS", "PRESETS", "TASKS", "Preset", "Task", "TaskPlan"]

ALL_CORES: tuple[str, ...] = ("mlstm", "slstm", "xlstm", "lstm", "gru", "mlp")
"""Every memory core, in table order."""

CORE_SETTINGS: dict[str, tuple[str, ...]] = {
    "mlstm": ("model.core=mlstm",),
    "slstm": ("model.core=slstm",),
    "xlstm": ("model.core=xlstm", "model.pattern=ms"),
    "lstm": ("model.core=lstm",),
    "gru": ("model.core=gru",),
    "mlp": ("model.core=mlp",),
}
"""``--set`` overrides that select each core on top of a task's base config. Widths, heads,
encoder and optimizer come from the base config and are the same for every core; ``xlstm``
is one mLSTM block followed by one sLSTM block (pattern ``ms``, as in ``ppo-xlstm-tmaze``)."""


@dataclass(frozen=True)
class Task:
    """A memory task with one knob that sets how long the agent must remember."""

    name: str
    """Short name used in cell ids, tables and ``--tasks``."""
    config_suffix: str
    """Base config of algorithm ``A`` is the packaged config ``A-mlstm-<config_suffix>``; an
    algorithm without one is skipped for this task."""
    env_id: str
    """The environment id the base config must name (a mismatch skips the algorithm)."""
    knob: str
    """Config key set to the memory length, e.g. ``env.kwargs.corridor_length``."""
    knob_label: str
    """Axis label of the knob in tables and figures."""
    score_key: str
    """Key of ``eval.json`` (``<key>``) and of ``metrics.jsonl`` (``eval/<key>``) scored:
    ``success_rate``, or ``return_mean`` for tasks without a success flag."""
    score_per_length: bool = False
    """Divide the score by the knob value (returns that grow with the length, as CartPole's
    survival time with its horizon), so that 1.0 is perfect at every length."""
    threshold: float = 0.95
    """A cell has reached the task when its score is at least this; the step of the first
    evaluation that does so is its ``steps_to_threshold``."""
    chance: float | None = None
    """Score of a policy without memory (drawn as a dashed line); None: not defined."""
    description: str = ""
    """One line for the report."""
    episode_keys: tuple[str, ...] = ()
    """Config keys set to ``knob + episode_extra`` at every length, for the algorithm whose
    section they are in (R2D2's ``r2d2.trace_len`` and ``r2d2.period``): one stored sequence
    then holds a whole episode at every length, as the base config does at its own length."""
    episode_extra: int = 2
    """See :attr:`episode_keys`."""

    def score(self, value: float, length: int) -> float:
        """The score of a raw ``score_key`` value at memory length ``length``."""
        return value / length if self.score_per_length else value

    def episode_overrides(self, algo: str, length: int) -> tuple[str, ...]:
        """``--set`` overrides of :attr:`episode_keys` for ``algo`` at ``length``."""
        return tuple(f"{key}={length + self.episode_extra}" for key in self.episode_keys
                     if key.split(".")[0] == algo)

    def target_return(self, length: int) -> float:
        """The evaluation return at which a run may stop early (the threshold, as a return)."""
        return self.threshold * length if self.score_per_length else self.threshold


TASKS: dict[str, Task] = {task.name: task for task in (
    Task(name="tmaze", config_suffix="tmaze", env_id="xlstm_rl/TMaze-v0",
         knob="env.kwargs.corridor_length", knob_label="T-maze corridor length",
         score_key="success_rate", chance=0.5,
         description="T-maze: a cue at t = 0, the turn after the corridor (chance 0.5)",
         episode_keys=("r2d2.trace_len", "r2d2.period")),
    Task(name="recall", config_suffix="recall", env_id="xlstm_rl/DelayedRecall-v0",
         knob="env.kwargs.delay", knob_label="recall delay",
         score_key="success_rate", chance=0.25,
         description="delayed recall: one of 4 tokens across the delay's distractors "
                     "(chance 0.25)",
         episode_keys=("r2d2.trace_len", "r2d2.period")),
    Task(name="cartpole-pos", config_suffix="cartpole-pos",
         env_id="xlstm_rl/PositionOnlyCartPole-v0",
         knob="env.kwargs.max_episode_steps", knob_label="CartPole horizon (steps)",
         score_key="return_mean", score_per_length=True,
         description="CartPole seeing positions only; score = return / horizon (the memory "
                     "needed is short: velocities from consecutive frames)"),
)}
"""The tasks ``xlstm-rl compare`` knows, by name."""


@dataclass(frozen=True)
class TaskPlan:
    """One task of a preset: its memory lengths and the step budget of each cell."""

    task: str
    """A name in :data:`TASKS`."""
    lengths: tuple[int, ...]
    """Values of the task's knob, one column of the matrix each."""
    steps: int
    """Environment steps per cell (the same for every core, algorithm and length)."""
    eval_every: int
    """Evaluate every this many steps (the resolution of ``steps_to_threshold``)."""
    eval_episodes: int = 64
    """Episodes per evaluation."""
    algos: tuple[str, ...] | None = None
    """Algorithms of this plan (None: the preset's); a task may have one plan per algorithm,
    each with its own lengths and budget. ``--algos`` narrows them."""
    seeds: int | None = None
    """Seeds per cell of this plan (None: the preset's); ``--seeds`` overrides both."""


@dataclass(frozen=True)
class Preset:
    """A named matrix: cores x algorithms x task plans x seeds."""

    name: str
    """The ``--preset`` value."""
    description: str
    """One line for ``--help`` and the report."""
    plans: tuple[TaskPlan, ...]
    """The tasks with their lengths and budgets."""
    cores: tuple[str, ...] = ALL_CORES
    """Cores compared."""
    algos: tuple[str, ...] | None = None
    """Algorithms compared; None: every registered algorithm that has a base config for the
    task (so a newly registered algorithm joins as soon as its configs exist). ``--algos``
    overrides it, e.g. ``--algos ppo r2d2``."""
    seeds: int = 3
    """Seeds per cell (``train.seed`` 0 .. seeds - 1)."""
    jobs: int | None = None
    """Default number of cells run at once (one torch thread each); None: the CPU count."""
    stop_at_target: bool = True
    """Stop a cell once an evaluation reaches the task's threshold (saves most of the budget
    of solved cells; their learning curves are drawn flat after the stop)."""
    extra: tuple[str, ...] = field(default=())
    """``--set`` overrides applied to every cell after the preset's own."""

    def plans_for(self, task: str) -> list[TaskPlan]:
        """The plans of ``task`` (empty when the preset does not include it)."""
        return [p for p in self.plans if p.task == task]


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset(name="quick",
           description="PPO on the T-maze at corridors 5 and 20, 6 cores, 2 seeds, 32k steps "
                       "per cell (minutes with a few free CPU cores)",
           plans=(TaskPlan("tmaze", lengths=(5, 20), steps=32_768, eval_every=4096,
                           eval_episodes=32),),
           algos=("ppo",), seeds=2),
    Preset(name="full",
           description="PPO on the T-maze (corridors 10, 20, 40) and delayed recall (delays "
                       "10, 20, 40), 98k steps per cell, 5 seeds; R2D2 on the T-maze "
                       "(corridors 10, 20), 49k steps, 3 seeds; 6 cores (216 cells, about "
                       "1.5 h with 2 free CPU cores)",
           plans=(TaskPlan("tmaze", lengths=(10, 20, 40), steps=98_304, eval_every=8_192,
                           eval_episodes=32, algos=("ppo",)),
                  TaskPlan("recall", lengths=(10, 20, 40), steps=98_304, eval_every=8_192,
                           eval_episodes=32, algos=("ppo",)),
                  TaskPlan("tmaze", lengths=(10, 20), steps=49_152, eval_every=4_096,
                           eval_episodes=32, algos=("r2d2",), seeds=3)),
           algos=("ppo", "r2d2"), seeds=5),
)}
"""The named presets of ``xlstm-rl compare --preset``."""
