"""Runs the cells of a matrix as parallel ``python -m xlstm_rl train`` subprocesses.

Layout under the output directory ``OUT``::

    OUT/cells/<id>/run/       the cell's run directory (metrics.jsonl, eval.json, checkpoints)
    OUT/cells/<id>/train.log  the output of every attempt, appended
    OUT/cells/<id>/spec.json  the spec the run directory was started with
    OUT/cells/<id>/wall.json  wall seconds of interrupted attempts (added to the row's)
    OUT/results/<id>.json     the cell's result row, written atomically once it ends

Resume: a cell whose ``ok`` row matches its spec is skipped; an interrupted cell continues
from its latest checkpoint (``train --resume``); failed cells and cells without a run
directory start afresh. Ctrl-C (or SIGTERM) asks every running cell to stop, which writes its
checkpoint (a second Ctrl-C kills them at once); no row is written for an interrupted cell.
Each child runs in its own session, so the terminal's Ctrl-C reaches only this process,
which forwards it once. Started with SIGINT ignored (``compare ... &`` from a script), compare
keeps ignoring it and SIGTERM is the way to stop it; the handlers found are restored at the end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import xlstm_rl
from xlstm_rl.compare.matrix import Cell
from xlstm_rl.compare.rows import RESULTS_DIR, build_row, last_step, read_row, write_row
from xlstm_rl.fileio import atomic_write_text

__all__ = ["RunSummary", "cell_action", "run_cells"]

STOP_GRACE_S = 60.0
"""Seconds interrupted cells get to write their checkpoint before they are killed."""
POLL_S = 0.25
"""Seconds between checks of the running cells."""


@dataclass
class RunSummary:
    """What :func:`run_cells` did."""

    ran: list[str] = field(default_factory=list)
    """Cells that ran to the end (ok)."""
    failed: list[str] = field(default_factory=list)
    """Cells that failed (their rows say why)."""
    skipped: list[str] = field(default_factory=list)
    """Cells whose rows were already there."""
    interrupted: bool = False
    """The run was stopped by Ctrl-C / SIGTERM before every cell ended."""


@dataclass
class _Running:
    cell: Cell
    proc: subprocess.Popen
    log: IO[str]
    log_start: int
    started: float
    prior_wall: float


def _cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.id


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cell_action(out: Path, cell: Cell) -> str:
    """What a run of the matrix does with ``cell``: ``skip``, ``resume`` or ``fresh``."""
    row = read_row(out / RESULTS_DIR / f"{cell.id}.json")
    spec = cell.spec()
    if row is not None and row.get("status") == "ok" and _same_spec(row, spec):
        return "skip"
    folder = _cell_dir(out, cell)
    started_with = _read_json(folder / "spec.json")
    latest = folder / "run" / "checkpoints" / "latest.safetensors"
    failed = row is not None and row.get("status") == "failed"
    if started_with == spec and latest.is_file() and not failed:
        return "resume"
    return "fresh"


def _same_spec(row: dict[str, Any], spec: dict[str, Any]) -> bool:
    return all(row.get(key) == value for key, value in spec.items())


def _child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = str(Path(xlstm_rl.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _start(out: Path, cell: Cell, action: str) -> _Running:
    folder = _cell_dir(out, cell)
    folder.mkdir(parents=True, exist_ok=True)
    if action == "fresh":
        atomic_write_text(folder / "spec.json", json.dumps(cell.spec(), sort_keys=True))
        atomic_write_text(folder / "wall.json", "0.0")
    prior = _read_json(folder / "wall.json")
    argv = cell.train_argv(folder / "run", resume=action == "resume")
    log = open(folder / "train.log", "a", encoding="utf-8")  # closed in _finish
    log.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {action}: {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_child_env(),
                            start_new_session=True)
    return _Running(cell, proc, log, log.tell(), time.monotonic(),
                    float(prior) if isinstance(prior, (int, float)) else 0.0)


def _error_line(path: Path, start: int) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:500]


def _finish(out: Path, run: _Running, stopping: bool) -> tuple[str, str | None]:
    """Records an ended cell; returns ``(ok | failed | interrupted, error line)``."""
    run.log.close()
    code = run.proc.returncode
    folder = _cell_dir(out, run.cell)
    wall = run.prior_wall + time.monotonic() - run.started
    if stopping and code in (130, 143, -signal.SIGINT, -signal.SIGKILL):
        atomic_write_text(folder / "wall.json", f"{wall:.2f}")
        return "interrupted", None
    error = None
    if code != 0:
        error = f"exit {code}: {_error_line(folder / 'train.log', run.log_start)}"
    row = build_row(run.cell, folder / "run", wall_s=wall, error=error)
    write_row(out / RESULTS_DIR, row)
    return str(row["status"]), row["error"]


class _StopSignals:
    """Turns SIGINT / SIGTERM into a counter while the matrix runs (main thread only).

    A SIGINT inherited as ignored (a job started with ``&`` by a non-interactive shell, some CI
    runners) stays ignored: whoever started compare said Ctrl-C is not for it. Compare then
    drops SIGINT with a handler of its own rather than leaving it ignored, so that the cells,
    which otherwise would inherit the ignored SIGINT through exec, start with its default
    action, as they do under a terminal. SIGTERM is always acted on. On exit the handlers found
    are put back exactly.
    """

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            found = signal.getsignal(signum)
            ignored = signum == signal.SIGINT and found == signal.SIG_IGN
            try:
                signal.signal(signum, self._drop if ignored else self._handle)
            except ValueError:  # not the main thread: Ctrl-C stays with the caller
                continue
            # None: a handler installed outside Python, which cannot be put back
            self._previous[signum] = signal.SIG_DFL if found is None else found
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1

    def _drop(self, signum: int, frame: Any) -> None:
        """An ignored SIGINT (see the class docstring)."""

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _signal_all(running: Sequence[_Running], signum: int) -> None:
    for run in running:
        if run.proc.poll() is None:
            try:
                os.killpg(run.proc.pid, signum)
            except ProcessLookupError:
                pass


class _Scheduler:
    """Starts cells up to ``jobs`` at a time, reaps them, reports progress, handles stops."""

    def __init__(self, cells: Sequence[Cell], out: Path, jobs: int,
                 progress: Callable[[int, int, str], None] | None,
                 echo: Callable[[str], None]) -> None:
        self.cells, self.out, self.jobs = list(cells), out, max(1, jobs)
        self.progress, self.echo = progress, echo
        self.summary = RunSummary()
        self.pending: list[tuple[Cell, str]] = []
        for cell in self.cells:
            action = cell_action(out, cell)
            if action == "skip":
                self.summary.skipped.append(cell.id)
            else:
                self.pending.append((cell, action))
        skipped = set(self.summary.skipped)
        self.done_steps = sum(cell.steps for cell in self.cells if cell.id in skipped)
        self.running: list[_Running] = []
        self.stops_sent = 0
        self.deadline = float("inf")
        self.last_report = 0.0

    def stop(self, count: int) -> None:
        """Forwards the ``count``-th stop request: SIGINT first, SIGKILL after a second one."""
        if count and self.stops_sent < min(count, 2):
            _signal_all(self.running, signal.SIGINT if count == 1 else signal.SIGKILL)
            self.stops_sent, self.pending = min(count, 2), []
            self.deadline = min(self.deadline, time.monotonic() + STOP_GRACE_S)
            self.summary.interrupted = True
        if time.monotonic() > self.deadline:
            _signal_all(self.running, signal.SIGKILL)

    def launch(self) -> None:
        """Starts pending cells while there are free slots (never after a stop request)."""
        while self.pending and len(self.running) < self.jobs and not self.stops_sent:
            cell, action = self.pending.pop(0)
            self.running.append(_start(self.out, cell, action))

    def reap(self) -> None:
        """Records the cells that ended."""
        for run in [r for r in self.running if r.proc.poll() is not None]:
            self.running.remove(run)
            status, error = _finish(self.out, run, stopping=bool(self.stops_sent))
            if status != "interrupted":
                self.done_steps += run.cell.steps
                (self.summary.ran if status == "ok" else self.summary.failed).append(run.cell.id)
            self.echo(f"{status}: {run.cell.id}" + (f" ({error})" if error else ""))

    def report(self) -> None:
        """Calls ``progress`` about once a second."""
        if self.progress is None or time.monotonic() - self.last_report < 1.0:
            return
        self.last_report = time.monotonic()
        live = sum(min(last_step(_cell_dir(self.out, r.cell) / "run" / "metrics.jsonl"),
                       r.cell.steps) for r in self.running)
        s = self.summary
        ended = len(s.ran) + len(s.failed) + len(s.skipped)
        self.progress(self.done_steps + live, sum(c.steps for c in self.cells),
                      f"cells {ended}/{len(self.cells)}, running {len(self.running)}, "
                      f"failed {len(s.failed)}")


def run_cells(cells: Sequence[Cell], out: Path, *, jobs: int = 1,
              progress: Callable[[int, int, str], None] | None = None,
              echo: Callable[[str], None] = print) -> RunSummary:
    """Runs every cell that has no matching ``ok`` row yet, ``jobs`` at a time.

    Args:
        cells: The matrix.
        out: The output directory.
        jobs: Cells run at once (each child uses one torch thread).
        progress: Called about every second with ``(steps done, steps total, status text)``;
            the steps of running cells are read from their ``metrics.jsonl``.
        echo: Prints one line per cell that ends.

    Returns:
        The summary; ``interrupted`` when Ctrl-C / SIGTERM stopped it.
    """
    scheduler = _Scheduler(cells, out, jobs, progress, echo)
    with _StopSignals() as signals:
        while scheduler.pending or scheduler.running:
            scheduler.stop(signals.count)
            scheduler.launch()
            scheduler.reap()
            scheduler.report()
            time.sleep(POLL_S)
        if signals.count:
            scheduler.summary.interrupted = True
    sys.stdout.flush()
    return scheduler.summary
