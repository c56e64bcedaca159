"""Statistics over seeds: mean, percentile-bootstrap confidence interval, interquartile mean."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["IQM_MIN_SEEDS", "bootstrap_ci", "iqm", "mean"]

IQM_MIN_SEEDS = 5
"""The report gives the interquartile mean only from this many seeds on."""


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean (NaN for no values)."""
    return float(np.mean(values)) if len(values) else math.nan


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean.

    Draws ``resamples`` samples of ``len(values)`` values with replacement, takes each
    sample's mean and returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles of those means (numpy's ``inverted_cdf`` quantile, so the bounds are means that
    occur). Seeded, so a report is reproducible. One value gives ``(v, v)``.

    Args:
        values: One value per seed.
        confidence: Coverage of the interval, in (0, 1).
        resamples: Number of bootstrap samples.
        seed: Seed of the resampling.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no values.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], method="inverted_cdf")
    return float(low), float(high)


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean after cutting ``floor(n / 4)`` values from each end.

    The same as ``scipy.stats.trim_mean(values, 0.25)`` (and the IQM of Agarwal et al. 2021,
    "Deep RL at the Edge of the Statistical Precipice", for per-seed scores).

    Returns:
        The IQM; NaN for no values.
    """
    data = np.sort(np.asarray(values, dtype=np.float64))
    if data.size == 0:
        return math.nan
    cut = data.size // 4
    return float(data[cut:data.size - cut].mean())
