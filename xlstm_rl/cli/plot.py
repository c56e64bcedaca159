"""``xlstm-rl plot RUN_DIR...``: learning curves from TensorBoard logs, one line per run."""
from __future__ import annotations

import argparse
from pathlib import Path

from xlstm_rl.cli.errors import UserError
from xlstm_rl.suggest import close_matches, format_suggestions

DEFAULT_TAGS = ("episode/return", "charts/episode_return", "eval/return_mean")
"""Tags tried in order when ``--tag`` is not given."""


def _event_dir(run: Path) -> Path:
    if not run.is_dir():
        raise UserError(f"run directory not found: {run}")
    for candidate in (run / "tb", run):
        if any(candidate.glob("events.out.tfevents.*")):
            return candidate
    raise UserError(f"{run} holds no TensorBoard event files")


def read_scalars(run: str | Path, tag: str | None) -> tuple[str, list[int], list[float]]:
    """Reads one scalar series of a run's TensorBoard logs.

    Args:
        run: The run directory (event files in ``tb/`` or in the directory itself).
        tag: The scalar tag, or None for the first of :data:`DEFAULT_TAGS` that exists.

    Returns:
        ``(tag, steps, values)``, sorted by step (the last value wins for a repeated step,
        as after a resume).

    Raises:
        UserError: If the directory has no event files or the tag is not there.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(_event_dir(Path(run))), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    chosen = tag if tag is not None else next((t for t in DEFAULT_TAGS if t in tags), None)
    if chosen is None or chosen not in tags:
        close = close_matches(tag or DEFAULT_TAGS[0], tags, cutoff=0.4)
        hint = format_suggestions(close) if close else (
            f"; tags: {', '.join(sorted(tags)[:8])}" if tags else "; it has no scalars")
        raise UserError(f"{run} has no scalar {tag or DEFAULT_TAGS[0]!r}{hint}")
    by_step = {e.step: e.value for e in acc.Scalars(chosen)}
    steps = sorted(by_step)
    return chosen, steps, [by_step[s] for s in steps]


def run_plot(args: argparse.Namespace) -> int:
    """Runs ``xlstm-rl plot``; see :func:`xlstm_rl.cli.build_parser`.

    Returns:
        0 on success.
    """
    from xlstm_rl.plotting import plot_lines, pyplot, smooth

    if not 0.0 <= args.smooth < 1.0:
        raise UserError(f"--smooth must lie in [0, 1), got {args.smooth}")
    series = [(Path(run), *read_scalars(run, args.tag)) for run in args.runs]
    pyplot()  # a missing matplotlib is one line, before anything is drawn
    lines = [(run.name or str(run), steps, smooth(values, args.smooth))
             for run, _, steps, values in series]
    out = plot_lines(lines, xlabel="env steps", ylabel=series[0][1], out=args.out)
    print(f"plotted {series[0][1]!r} of {len(series)} run(s): {out}")
    return 0
