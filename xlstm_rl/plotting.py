"""Figures of ``xlstm-rl plot`` and ``xlstm-rl compare`` (matplotlib, the ``plot`` extra).

matplotlib is imported when a figure is drawn, never on import, and always with the
non-interactive ``Agg`` backend. Data comes in as plain sequences; nothing here knows about
run directories or result rows.
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlstm_rl.errors import UserError

__all__ = ["Line", "Panel", "plot_lines", "plot_panels", "pyplot", "smooth"]


def pyplot(command: str = "plot") -> Any:
    """``matplotlib.pyplot`` on the Agg backend.

    Args:
        command: The command named in the error message.

    Raises:
        UserError: matplotlib is not installed (one line naming the ``plot`` extra).
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(f"{command} needs matplotlib: pip install 'xlstm-rl[plot]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average (``weight`` of the previous value; 0: unchanged)."""
    out: list[float] = []
    last: float | None = None
    for v in values:
        last = v if last is None else weight * last + (1.0 - weight) * v
        out.append(last)
    return out


def _save(plt: Any, fig: Any, out: str | Path) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_lines(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, xlabel: str,
               ylabel: str, out: str | Path) -> Path:
    """One axes with one line per ``(label, xs, ys)`` (the figure of ``xlstm-rl plot``).

    Returns:
        The written PNG.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, xs, ys in series:
        ax.plot(xs, ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(plt, fig, out)


@dataclass(frozen=True)
class Line:
    """One line with an uncertainty range (drawn as error bars or a shaded band)."""

    label: str
    """Legend entry; lines of the same label share a color across panels."""
    x: Sequence[float]
    """Positions."""
    y: Sequence[float]
    """Central values (NaN: no point)."""
    low: Sequence[float]
    """Lower ends of the range."""
    high: Sequence[float]
    """Upper ends of the range."""


@dataclass(frozen=True)
class Panel:
    """One axes of a multi-panel figure."""

    title: str
    """Axes title."""
    xlabel: str
    """x-axis label."""
    ylabel: str
    """y-axis label."""
    lines: Sequence[Line] = field(default_factory=tuple)
    """The lines, in legend order."""
    hline: float | None = None
    """Draw a dashed horizontal reference line here (e.g. chance level); None: none."""
    log_x: bool = False
    """Logarithmic x axis."""
    ylim: tuple[float, float] | None = None
    """Fixed y range; None: automatic."""


def _dodged(xs: Sequence[float], shift: float, log_x: bool, span: tuple[float, float]
            ) -> list[float]:
    """``xs`` moved sideways by ``shift`` (a fraction of the x range) so that error bars of
    lines sharing x positions do not hide each other."""
    low, high = span
    if log_x and low > 0:
        return [x * (high / low) ** shift for x in xs]
    return [x + (high - low) * shift for x in xs]


def _draw(ax: Any, line: Line, color: Any, style: str, shift: float = 0.0,
          log_x: bool = False, span: tuple[float, float] = (0.0, 1.0)) -> None:
    if style == "errorbar":
        yerr = [[max(0.0, y - lo) for y, lo in zip(line.y, line.low)],
                [max(0.0, hi - y) for y, hi in zip(line.y, line.high)]]
        xs = _dodged(line.x, shift, log_x, span)
        ax.errorbar(xs, line.y, yerr=yerr, label=line.label, color=color, marker="o",
                    markersize=4, capsize=3, linewidth=1.5)
    else:
        ax.plot(line.x, line.y, label=line.label, color=color, linewidth=1.5)
        ax.fill_between(line.x, line.low, line.high, color=color, alpha=0.2, linewidth=0)


def plot_panels(panels: Sequence[Panel], out: str | Path, *, style: str = "band",
                ncols: int = 3, title: str | None = None) -> Path:
    """A grid of panels; each line drawn with error bars (``errorbar``) or a band (``band``).

    With error bars, the lines of a panel are moved sideways by a little each (about 1% of
    the x range apart) so that bars at the same x stay visible.

    Args:
        panels: The panels, filled row by row.
        out: The PNG to write (its folder is created).
        style: ``"errorbar"`` or ``"band"``.
        ncols: Panels per row (fewer when there are fewer panels).
        title: Figure title.

    Returns:
        The written PNG.
    """
    if style not in ("errorbar", "band"):
        raise ValueError(f"style must be 'errorbar' or 'band', got {style!r}")
    if not panels:
        raise ValueError("nothing to plot: no panels")
    plt = pyplot("compare")
    cols = max(1, min(ncols, len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    labels = list(dict.fromkeys(line.label for panel in panels for line in panel.lines))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}
    for ax, panel in zip(axes.flat, panels):
        xs = [float(x) for line in panel.lines for x in line.x]
        span = (min(xs), max(xs)) if xs and max(xs) > min(xs) else (0.0, 1.0)
        for i, line in enumerate(panel.lines):
            shift = 0.012 * (i - (len(panel.lines) - 1) / 2)
            _draw(ax, line, colors[line.label], style, shift, panel.log_x, span)
        if panel.hline is not None:
            ax.axhline(panel.hline, color="grey", linestyle="--", linewidth=1)
        if panel.log_x:
            ax.set_xscale("log")
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        ax.set_title(panel.title, fontsize="medium")
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.tight_layout(rect=(0, 0, 1, 0.92 if title else 0.95))
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="upper center",
                   ncol=min(len(legend), 6), bbox_to_anchor=(0.5, 1.0), frameon=False)
    if title:
        fig.suptitle(title, y=1.04)
    return _save(plt, fig, out)
