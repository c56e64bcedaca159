"""Result rows: one JSON object per cell, read from its run directory, written atomically.

A row holds the cell's spec, ``status`` (``ok`` or ``failed``, with the ``error`` line), the
final and best evaluation score, ``steps_to_threshold`` (the step of the first evaluation
whose score reached the task's threshold, None if none did), wall time, env-steps/s and the
evaluation curve ``[[step, score], ...]`` for learning-curve plots. Scores are the task's
``score_key`` of the evaluations (success rate; return / horizon for CartPole).
"""
from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xlstm_rl.compare.matrix import Cell
from xlstm_rl.compare.presets import TASKS
from xlstm_rl.fileio import atomic_write_text
from xlstm_rl.rundir import read_metrics

__all__ = ["EVAL_JSON_KEYS", "RESULTS_DIR", "RESULTS_FILE", "build_row", "last_step", "load_rows",
           "read_row", "write_row", "write_rows_file"]

RESULTS_DIR = "results"
"""Folder of the per-cell rows (``<cell id>.json``) under the output directory."""
RESULTS_FILE = "results.jsonl"
"""All rows in one file (sorted by cell id), written with the report."""


EVAL_JSON_KEYS = {"return_mean": "mean_return"}
"""``eval.json`` names of the evaluation metrics whose ``metrics.jsonl`` names (``eval/<key>``)
differ; the others (``success_rate``) are the same in both."""


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def last_step(path: Path) -> int:
    """The ``step`` of the last complete row of a ``metrics.jsonl`` (0 when there is none)."""
    rows = read_metrics(path)
    return int(rows[-1].get("step", 0)) if rows else 0


def _curve(metrics: list[dict[str, Any]], cell: Cell) -> list[list[float]]:
    task = TASKS[cell.task]
    curve: dict[int, float] = {}
    for row in metrics:
        value = _finite(row.get(f"eval/{task.score_key}"))
        if value is not None and "step" in row:
            curve[int(row["step"])] = task.score(value, cell.length)
    return [[step, curve[step]] for step in sorted(curve)]


def build_row(cell: Cell, run_dir: Path, *, wall_s: float, error: str | None = None
              ) -> dict[str, Any]:
    """The result row of a finished (``error`` None) or failed cell.

    Args:
        cell: The cell.
        run_dir: Its run directory (``metrics.jsonl``, ``eval.json``).
        wall_s: Wall time spent on the cell, all attempts together.
        error: The failed run's error line; None when the run completed.

    Returns:
        The row (plain JSON data; non-finite numbers become None).
    """
    task = TASKS[cell.task]
    metrics = read_metrics(run_dir / "metrics.jsonl")
    curve = _curve(metrics, cell)
    final: dict[str, Any] = {}
    if error is None:
        try:
            final = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            error = f"no readable eval.json in {run_dir}: {exc}"
    steps = int(final.get("global_step", metrics[-1].get("step", 0) if metrics else 0))
    raw = _finite(final.get(EVAL_JSON_KEYS.get(task.score_key, task.score_key)))
    final_score = None if raw is None else task.score(raw, cell.length)
    if final_score is not None and (not curve or curve[-1][0] < steps):
        curve.append([steps, final_score])
    reached = [step for step, score in curve if score >= task.threshold]
    sps = [v for v in (_finite(r.get("perf/sps")) for r in metrics) if v is not None]
    return {
        "id": cell.id, "status": "failed" if error else "ok", "error": error,
        **cell.spec(), "steps_done": steps,
        "final_score": final_score, "final_return": _finite(final.get("mean_return")),
        "best_score": max((score for _, score in curve), default=None),
        "steps_to_threshold": reached[0] if reached else None,
        "wall_s": round(wall_s, 2),
        "env_steps_per_s": round(steps / wall_s, 1) if wall_s > 0 else None,
        "train_sps": round(statistics.median(sps), 1) if sps else None,
        "curve": curve, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write_row(results_dir: Path, row: dict[str, Any]) -> Path:
    """Writes ``row`` as ``<results_dir>/<id>.json`` atomically (the folder is created)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(results_dir / f"{row['id']}.json",
                             json.dumps(row, indent=1, sort_keys=True) + "\n")


def read_row(path: Path) -> dict[str, Any] | None:
    """The row in ``path``, or None when it is missing or unreadable."""
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) and "id" in row else None


def load_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of an output directory: ``results/*.json``, else ``results.jsonl``; by id."""
    folder = out / RESULTS_DIR
    if folder.is_dir():
        rows = [read_row(path) for path in sorted(folder.glob("*.json"))]
    else:
        try:
            lines = (out / RESULTS_FILE).read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        rows = [json.loads(line) for line in lines if line.strip()]
    return sorted((r for r in rows if r is not None), key=lambda r: str(r["id"]))


def write_rows_file(out: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Writes every row, one per line, to ``<out>/results.jsonl`` atomically."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    return atomic_write_text(out / RESULTS_FILE, text)
