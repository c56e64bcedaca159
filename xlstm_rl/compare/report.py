"""The report of a comparison: a markdown table and two PNG figures, from the result rows.

- ``report.md``: per (task, algorithm, length) the final evaluation score of every core as
  the mean over seeds with a 95% percentile-bootstrap interval, then one detail row per
  (task, algorithm, length, core): seeds, mean [CI], interquartile mean (from 5 seeds on),
  best score, seeds that reached the threshold, median steps to reach it, env-steps/s and
  wall time, and the failed cells with their error lines.
- ``score_vs_length.png``: final score against memory length, one line per core (mean and
  95% bootstrap interval over seeds), one panel per task and algorithm.
- ``learning_curves.png``: evaluation score against env steps, one line per core (mean over
  seeds, band from the lowest to the highest seed), one panel per task, algorithm and length.
  A run stopped early at the threshold keeps its last score until the end of the budget.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlstm_rl.compare.presets import ALL_CORES, TASKS
from xlstm_rl.compare.stats import IQM_MIN_SEEDS, bootstrap_ci, iqm, mean
from xlstm_rl.fileio import atomic_write_text

__all__ = ["REPORT_FILE", "SCORE_PNG", "CURVES_PNG", "Group", "group_rows", "render_markdown",
           "write_report"]

REPORT_FILE = "report.md"
SCORE_PNG = "score_vs_length.png"
CURVES_PNG = "learning_curves.png"

Key = tuple[str, str, int, str]
"""``(task, algo, length, core)``."""


@dataclass(frozen=True)
class Group:
    """The seeds of one (task, algorithm, length, core)."""

    key: Key
    """``(task, algo, length, core)``."""
    rows: tuple[dict[str, Any], ...]
    """Its result rows, failed ones included."""

    @property
    def ok(self) -> list[dict[str, Any]]:
        """Rows of completed runs."""
        return [r for r in self.rows if r["status"] == "ok"]

    @property
    def scores(self) -> list[float]:
        """Final scores of the completed runs that have one, by seed."""
        return [float(r["final_score"]) for r in sorted(self.ok, key=lambda r: r["seed"])
                if r["final_score"] is not None]


def _order(task: str, algo: str, length: int, core: str) -> tuple[Any, ...]:
    tasks = list(TASKS)
    return (tasks.index(task) if task in tasks else len(tasks), task, algo, length,
            ALL_CORES.index(core) if core in ALL_CORES else len(ALL_CORES), core)


def group_rows(rows: Iterable[dict[str, Any]]) -> list[Group]:
    """Rows grouped by (task, algorithm, length, core), in table order."""
    groups: dict[Key, list[dict[str, Any]]] = {}
    for row in rows:
        key = (str(row["task"]), str(row["algo"]), int(row["length"]), str(row["core"]))
        groups.setdefault(key, []).append(row)
    return [Group(key, tuple(groups[key])) for key in sorted(groups, key=lambda k: _order(*k))]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _mean_ci(scores: Sequence[float]) -> str:
    if not scores:
        return "-"
    low, high = bootstrap_ci(scores)
    return f"{mean(scores):.2f} [{low:.2f}, {high:.2f}]"


def _steps(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.0f}k" if value >= 1000 else f"{value:.0f}"


def _summary_table(groups: Sequence[Group]) -> list[str]:
    cores = list(dict.fromkeys(g.key[3] for g in groups))
    lines = ["| task | algo | length | " + " | ".join(cores) + " |",
             "|---|---|---:|" + "---|" * len(cores)]
    by_cell = {g.key: g for g in groups}
    for task, algo, length in dict.fromkeys(g.key[:3] for g in groups):
        cells = [by_cell.get((task, algo, length, core)) for core in cores]
        lines.append(f"| {task} | {algo} | {length} | "
                     + " | ".join(_mean_ci(g.scores) if g else "" for g in cells) + " |")
    return lines


def _detail_row(group: Group) -> str:
    task, algo, length, core = group.key
    ok, scores = group.ok, group.scores
    show_iqm = len(scores) >= IQM_MIN_SEEDS
    best = [float(r["best_score"]) for r in ok if r["best_score"] is not None]
    reached = [float(r["steps_to_threshold"]) for r in ok if r["steps_to_threshold"] is not None]
    sps = [float(r["env_steps_per_s"]) for r in ok if r.get("env_steps_per_s")]
    wall = [float(r["wall_s"]) for r in ok]
    failed = len(group.rows) - len(ok)
    cells = [task, algo, str(length), core, f"{len(ok)}" + (f" (+{failed} failed)" if failed
                                                           else ""),
             _mean_ci(scores), _fmt(iqm(scores)) if show_iqm else "-",
             _fmt(mean(best)) if best else "-", f"{len(reached)}/{len(ok)}",
             _steps(statistics.median(reached)) if reached else "-",
             _fmt(mean(sps), 0) if sps else "-", _fmt(mean(wall), 0) if wall else "-"]
    return "| " + " | ".join(cells) + " |"


def render_markdown(rows: Sequence[dict[str, Any]], *, title: str, notes: Sequence[str] = (),
                    figures: Sequence[str] = ()) -> str:
    """The report's markdown text.

    Args:
        rows: Result rows.
        title: The heading.
        notes: Lines shown under the heading (matrix, budget, skipped algorithms).
        figures: PNG file names (relative to the report) to show at the end.
    """
    groups = group_rows(rows)
    out = [f"# {title}", ""]
    out += [f"- {note}" for note in notes] + ([""] if notes else [])
    out += ["Score: the final evaluation's success rate (CartPole: return / horizon), mean "
            "over seeds [95% percentile-bootstrap interval of the mean].", ""]
    out += _summary_table(groups) + ["", "## Details", ""]
    out += ["| task | algo | length | core | seeds | final score | IQM | best score | "
            "reached | steps to threshold (median) | env-steps/s | wall s |",
            "|---|---|---:|---|---|---|---|---|---|---:|---:|---:|"]
    out += [_detail_row(g) for g in groups]
    out += ["", f"IQM: interquartile mean, given from {IQM_MIN_SEEDS} seeds on. reached: seeds "
            "whose evaluation reached the task's threshold; steps to threshold: the median "
            "step of the first evaluation that did. env-steps/s: steps / wall time of a cell "
            "(one torch thread, evaluations included)."]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        out += ["", "## Failed cells", ""] + [f"- `{r['id']}`: {r['error']}" for r in failed]
    if figures:
        out += [""] + [f"![{name}]({name})" for name in figures]
    return "\n".join(out) + "\n"


def _score_panels(groups: Sequence[Group]) -> list[Any]:
    from xlstm_rl.plotting import Line, Panel

    panels = []
    for task_name, algo in dict.fromkeys((g.key[0], g.key[1]) for g in groups):
        task = TASKS[task_name]
        lines = []
        for core in dict.fromkeys(g.key[3] for g in groups):
            points = [g for g in groups if g.key[:2] == (task_name, algo) and g.key[3] == core
                      and g.scores]
            cis = [bootstrap_ci(g.scores) for g in points]
            if points:
                lines.append(Line(core, [g.key[2] for g in points],
                                  [mean(g.scores) for g in points], [c[0] for c in cis],
                                  [c[1] for c in cis]))
        lengths = sorted({g.key[2] for g in groups if g.key[:2] == (task_name, algo)})
        panels.append(Panel(f"{task_name} ({algo})", task.knob_label, "final score", lines,
                            hline=task.chance, log_x=lengths[-1] >= 8 * lengths[0],
                            ylim=(-0.05, 1.05)))
    return panels


def _band(group: Group) -> tuple[list[float], list[float], list[float], list[float]] | None:
    curves = [(r["curve"], int(r["steps"])) for r in group.ok if r.get("curve")]
    if not curves:
        return None
    start = max(curve[0][0] for curve, _ in curves)
    grid = sorted({step for curve, budget in curves for step, _ in curve if step >= start}
                  | {max(budget for _, budget in curves)})
    per_seed = []
    for curve, _ in curves:
        values, i, last = [], 0, curve[0][1]
        for step in grid:
            while i < len(curve) and curve[i][0] <= step:
                last, i = curve[i][1], i + 1
            values.append(last)
        per_seed.append(values)
    columns = list(zip(*per_seed))
    return ([float(s) for s in grid], [mean(c) for c in columns], [min(c) for c in columns],
            [max(c) for c in columns])


def _curve_panels(groups: Sequence[Group]) -> list[Any]:
    from xlstm_rl.plotting import Line, Panel

    panels = []
    for task_name, algo, length in dict.fromkeys(g.key[:3] for g in groups):
        lines = []
        for group in (g for g in groups if g.key[:3] == (task_name, algo, length)):
            band = _band(group)
            if band is not None:
                lines.append(Line(group.key[3], *band))
        panels.append(Panel(f"{task_name} L={length} ({algo})", "env steps", "eval score",
                            lines, hline=TASKS[task_name].chance, ylim=(-0.05, 1.05)))
    return panels


def write_report(out: Path, rows: Sequence[dict[str, Any]], *, title: str,
                 notes: Sequence[str] = (), plots: bool = True) -> list[Path]:
    """Writes ``report.md`` and (with ``plots``) the two PNGs into ``out``.

    Returns:
        The files written.
    """
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    groups = group_rows(rows)
    if plots and any(g.scores for g in groups):
        from xlstm_rl.plotting import plot_panels

        written.append(plot_panels(_score_panels(groups), out / SCORE_PNG, style="errorbar",
                                   title="final score vs memory length"))
        written.append(plot_panels(_curve_panels(groups), out / CURVES_PNG, style="band",
                                   ncols=4, title="learning curves (mean, min-max over seeds)"))
    text = render_markdown(rows, title=title, notes=notes,
                           figures=[p.name for p in written])
    written.insert(0, atomic_write_text(out / REPORT_FILE, text))
    return written
