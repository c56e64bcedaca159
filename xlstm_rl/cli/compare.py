"""``xlstm-rl compare``: run a memory benchmark matrix and write its report.

Exit codes: 0 when every cell completed, 1 when some cells failed (their rows and the report
say why), 2 for a user error, 130 when interrupted (finished cells are kept; run the same
command again to resume).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from xlstm_rl.cli.errors import UserError
from xlstm_rl.fileio import atomic_write_text

EXIT_FAILED_CELLS = 1
"""Exit code when the matrix ran to the end but some cells failed."""
STATE_FILE = "compare.json"
"""The command, the machine and the accumulated wall time of ``compare`` runs in OUT."""


def _read_state(out: Path) -> dict[str, Any]:
    try:
        state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _notes(preset: Any, cells: list[Any], skipped: list[str], state: dict[str, Any]
           ) -> list[str]:
    from xlstm_rl.compare.presets import TASKS

    notes = [f"preset `{preset.name}`: {preset.description}"]
    for task, algo in dict.fromkeys((c.task, c.algo) for c in cells):
        mine = [c for c in cells if (c.task, c.algo) == (task, algo)]
        notes.append(f"{task}, {algo} ({TASKS[task].description}): {TASKS[task].knob_label} "
                     f"{', '.join(str(x) for x in dict.fromkeys(c.length for c in mine))}; "
                     f"{mine[0].steps} env steps per cell; {len({c.seed for c in mine})} "
                     f"seeds; threshold {TASKS[task].threshold}")
    notes.append(f"cores: {', '.join(dict.fromkeys(c.core for c in cells))}; algorithms: "
                 f"{', '.join(dict.fromkeys(c.algo for c in cells))}; {len(cells)} cells")
    notes += skipped
    if state.get("command"):
        notes.append(f"command: `{state['command']}`")
    if state.get("elapsed_s"):
        notes.append(f"wall time: {state['elapsed_s'] / 60:.1f} min with --jobs "
                     f"{state.get('jobs')} on {state.get('cpus')} CPUs")
    return notes


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this matrix (options as parsed)."""
    parts = ["xlstm-rl", "compare", "--preset", args.preset]
    for flag in ("cores", "tasks", "algos", "lengths"):
        if getattr(args, flag):
            parts += [f"--{flag}", *map(str, getattr(args, flag))]
    for flag in ("seeds", "steps", "jobs", "out"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    for override in args.overrides:
        parts += ["--set", override]
    return " ".join(shlex.quote(p) for p in parts)


def _progress_bar(enabled: bool) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=1, unit="step", unit_scale=True, dynamic_ncols=True)

    def update(done: int, total: int, text: str) -> None:
        bar.total, bar.n = total, done
        bar.set_postfix_str(text, refresh=False)
        bar.refresh()

    return bar, update


def _run(args: argparse.Namespace, cells: list[Any], out: Path, jobs: int) -> Any:
    from xlstm_rl.compare.runner import run_cells

    state = _read_state(out)
    command = _command(args)
    bar, update = _progress_bar(not args.no_progress)
    echo = bar.write if bar is not None else print
    echo(f"compare: {len(cells)} cells, {jobs} at a time; output: {out}")
    start = time.monotonic()
    try:
        summary = run_cells(cells, out, jobs=jobs, progress=update,
                            echo=lambda line: echo(line))
    finally:
        if bar is not None:
            bar.close()
        state.update(command=command, jobs=jobs, cpus=os.cpu_count(),
                     elapsed_s=round(float(state.get("elapsed_s", 0.0))
                                     + time.monotonic() - start, 1))
        atomic_write_text(out / STATE_FILE, json.dumps(state, indent=1) + "\n")
    return summary


def run_compare(args: argparse.Namespace) -> int:
    """Runs ``xlstm-rl compare``; see :func:`xlstm_rl.cli.build_parser`.

    Returns:
        0 when every cell completed, 1 when some failed, 130 when interrupted.
    """
    from xlstm_rl.compare.matrix import build_matrix
    from xlstm_rl.compare.presets import PRESETS
    from xlstm_rl.compare.report import write_report
    from xlstm_rl.compare.rows import load_rows, write_rows_file

    preset = PRESETS[args.preset]
    cells, skipped = build_matrix(preset, cores=args.cores, tasks=args.tasks, algos=args.algos,
                                  seeds=args.seeds, lengths=args.lengths, steps=args.steps,
                                  extra=args.overrides)
    if not cells:
        raise UserError("the matrix is empty: " + ("; ".join(skipped) or "nothing selected"))
    out = Path(args.out or f"compare-{preset.name}")
    jobs = args.jobs or preset.jobs or os.cpu_count() or 1
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if args.list:
        for cell in cells:
            print(f"{cell.id}: {cell.config} " + " ".join(f"--set {o}" for o in cell.overrides))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    summary = None if args.report_only else _run(args, cells, out, jobs)
    wanted = {cell.id for cell in cells}
    rows = [row for row in load_rows(out) if row["id"] in wanted]
    write_rows_file(out, rows)
    files = write_report(out, rows, title=f"xlstm-rl compare: preset {preset.name}",
                         notes=_notes(preset, cells, skipped, _read_state(out)))
    print(f"report: {', '.join(str(f) for f in files)} ({len(rows)}/{len(cells)} cells)")
    if summary is not None and summary.interrupted:
        print("interrupted; run the same command again to resume (finished cells are kept)",
              file=sys.stderr)
        return 130
    failed = [row["id"] for row in rows if row["status"] != "ok"]
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED_CELLS
    return 0
