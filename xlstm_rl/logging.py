"""Scalar metrics: TensorBoard event files in a run directory plus an in-memory history.

Tags follow ``group/name``: ``episode/return``, ``episode/length``, ``episode/success``,
``loss/policy``, ``loss/value``, ``loss/entropy``, ``ppo/approx_kl``, ``ppo/clip_fraction``,
``ppo/explained_variance``, ``ppo/learning_rate``, ``perf/sps``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class MetricLogger:
    """Writes scalars to TensorBoard (when ``run_dir`` is given) and keeps them in ``history``.

    Args:
        run_dir: directory for the event files; ``None`` keeps the history only.
        flush_secs: TensorBoard flush period.
        purge_step: On resume, the first step to be redone: TensorBoard hides events at or
            after it that earlier (killed or interrupted) sessions wrote, so curves have no
            duplicate points.

    Attributes:
        history: one dict per :meth:`log` call, ``{"step": step, tag: value, ...}``.
    """

    def __init__(self, run_dir: str | Path | None = None, flush_secs: int = 30,
                 purge_step: int | None = None) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.history: list[dict[str, float]] = []
        self._writer = None
        if self.run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.run_dir), flush_secs=flush_secs,
                                         purge_step=purge_step)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Records ``metrics`` (tag -> number) at ``step``; non-finite or non-numeric values are
        skipped (a NaN success rate means "no episode reported success this time")."""
        row: dict[str, float] = {"step": int(step)}
        for tag, value in metrics.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(value):
                continue
            row[tag] = value
            if self._writer is not None:
                self._writer.add_scalar(tag, value, int(step))
        self.history.append(row)

    def latest(self, tag: str, default: float | None = None) -> float | None:
        """The most recent value logged under ``tag``."""
        for row in reversed(self.history):
            if tag in row:
                return row[tag]
        return default

    def series(self, tag: str) -> list[tuple[int, float]]:
        """All ``(step, value)`` pairs logged under ``tag``."""
        return [(int(row["step"]), row[tag]) for row in self.history if tag in row]

    def flush(self) -> None:
        """Writes pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer (the history stays readable)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
