"""``xlstm-rl compare``: a memory benchmark of cores x algorithms x tasks x memory lengths x seeds.

The pieces, each importable without torch:

- :mod:`~xlstm_rl.compare.presets`: the tasks (each with a memory-length knob and a success
  threshold), the per-core model settings and the named presets ``quick`` and ``full``;
- :mod:`~xlstm_rl.compare.matrix`: the cells of a matrix, each one ``xlstm-rl train`` run;
- :mod:`~xlstm_rl.compare.runner`: runs cells as parallel subprocesses, resumably;
- :mod:`~xlstm_rl.compare.rows`: one result row per cell, read from its run directory;
- :mod:`~xlstm_rl.compare.stats`: bootstrap confidence intervals and the interquartile mean;
- :mod:`~xlstm_rl.compare.report`: the markdown table and the PNG figures.
"""
from __future__ import annotations

from xlstm_rl.compare.matrix import Cell, build_matrix
from xlstm_rl.compare.presets import CORE_SETTINGS, PRESETS, TASKS, Preset, Task, TaskPlan

__all__ = ["CORE_SETTINGS", "PRESETS", "TASKS", "Cell", "Preset", "Task", "TaskPlan",
           "build_matrix"]
