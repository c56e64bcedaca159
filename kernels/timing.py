"""Side-by-side timing for benchmarks (torch only, so it runs on a bare GPU machine).

Candidates run interleaved, round-robin, in one process and each gets the median of its
repetitions: ratios between them hold on a shared, noisy machine even when absolute times drift.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(fns: dict[str, Callable[[], object]], device: torch.device,
                      repeats: int = 7, warmup: int = 2, budget_s: float = 20.0
                      ) -> dict[str, float]:
    """Median seconds per call of each function, repetitions interleaved round-robin.

    Args:
        fns: name -> zero-argument callable to time.
        device: where the work runs (CUDA is synchronized around every call).
        repeats: timed rounds (fewer if ``budget_s`` runs out; at least one).
        warmup: untimed calls of each function first.
        budget_s: stop starting new rounds after this many seconds.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}
