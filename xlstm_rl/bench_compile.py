"""What the compiled C kernels still buy over ``torch.compile`` (Inductor) of the PyTorch path.

Three ways to run an mLSTM core on CPU, timed side by side in one process: eager with the C
kernels (the library's default), eager PyTorch (``kernels.cpu.disabled()``), and the PyTorch
path compiled by Inductor. Two workloads: the acting step (a no-grad ``core.step`` on a batch
of envs) and a PPO-sized update (``core`` forward and backward over ``[batch, steps]``
chunks). "Cold" is the first call (Inductor compiles then), "warm" the median of timed
rounds; each round runs the three variants one after another, so a load change on a shared
machine hits them alike and the ratios hold.

Example::

    xlstm-rl bench compile --out bench-compile.json
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from xlstm_rl.cores import make_core
from xlstm_rl.kernels import cpu as cpu_kernels

VARIANTS = ("c_kernels", "pytorch_eager", "inductor")


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _repeat(thunk: Callable[[], Any], n: int) -> float:
    """Seconds for ``n`` calls of ``thunk``."""
    start = time.perf_counter()
    for _ in range(n):
        thunk()
    return time.perf_counter() - start


def _workloads(hidden: int, heads: int, envs: int, batch: int, steps: int
               ) -> dict[str, Callable[[Callable[..., Any]], Callable[[], Any]]]:
    """Per workload, a builder: given how to run the core (a plain or compiled function of
    ``(core, x, state)``), a thunk that runs it once."""
    torch.manual_seed(0)
    core = make_core("mlstm", hidden, hidden_size=hidden, num_heads=heads)
    x_step, state_step = torch.randn(envs, hidden), core.initial_state(envs)
    x_seq, state_seq = torch.randn(batch, steps, hidden), core.initial_state(batch)

    def act(run: Callable[..., Any]) -> Callable[[], Any]:
        def once() -> Any:
            with torch.no_grad():
                return run(core, x_step, state_step)
        return once

    def update(run: Callable[..., Any]) -> Callable[[], Any]:
        def once() -> Any:
            core.zero_grad(set_to_none=True)
            y, _ = run(core, x_seq, state_seq)
            y.square().mean().backward()
        return once

    return {"acting_step": act, "update": update}


def _step(core: Any, x: torch.Tensor, state: Any) -> Any:
    return core.step(x, state)


def _forward(core: Any, x: torch.Tensor, state: Any) -> Any:
    return core(x, state)


def _variant(name: str, fn: Callable[..., Any], backend: str) -> Callable[..., Any]:
    """``fn`` as the variant runs it (the PyTorch variants inside ``disabled()``)."""
    if name == "c_kernels":
        return fn
    body = torch.compile(fn, backend=backend) if name == "inductor" else fn

    def pytorch(*args: Any) -> Any:
        with cpu_kernels.disabled():
            return body(*args)
    return pytorch


def bench_compile(out: str | Path | None = None, device: str = "cpu", rounds: int = 7,
                  calls: dict[str, int] | None = None, hidden: int = 128, heads: int = 4,
                  envs: int = 8, batch: int = 16, steps: int = 16,
                  backend: str = "inductor") -> dict[str, Any]:
    """Times the three variants on both workloads and writes the JSON report.

    Args:
        out: Report path (None: not written).
        device: Only ``"cpu"`` (the C kernels are CPU kernels).
        rounds: Timed rounds after the cold call.
        calls: Calls per round per workload (default: 200 steps, 5 updates).
        hidden, heads: The core's width and heads.
        envs: Batch of the acting step.
        batch, steps: Shape of the update's chunks.
        backend: The ``torch.compile`` backend of the third variant (tests use ``"eager"``).

    Returns:
        ``{"config", "seconds": {workload: {variant: {"cold", "warm"}}}, "ratios":
        {workload: {"inductor_over_c_kernels_warm", "pytorch_eager_over_c_kernels_warm",
        "inductor_over_c_kernels_cold"}}, "c_kernels": how they were built}``; warm times are
        per call.
    """
    if device != "cpu":
        raise ValueError(f"bench compile runs on the CPU only (got device {device!r})")
    calls = calls or {"acting_step": 200, "update": 5}
    workloads = _workloads(hidden, heads, envs, batch, steps)
    fns = {"acting_step": _step, "update": _forward}
    seconds: dict[str, dict[str, dict[str, float]]] = {}
    for workload, build in workloads.items():
        thunks = {v: build(_variant(v, fns[workload], backend)) for v in VARIANTS}
        cold = {v: _timed(thunks[v]) for v in VARIANTS}
        warm: dict[str, list[float]] = {v: [] for v in VARIANTS}
        n = calls[workload]
        for _ in range(rounds):
            for v in VARIANTS:
                warm[v].append(_repeat(thunks[v], n) / n)
        seconds[workload] = {v: {"cold": cold[v], "warm": statistics.median(warm[v])}
                             for v in VARIANTS}
    report = {"config": {"hidden": hidden, "heads": heads, "envs": envs, "batch": batch,
                         "steps": steps, "rounds": rounds, "calls": calls, "backend": backend,
                         "threads": torch.get_num_threads(), "torch": torch.__version__,
                         "machine": platform.processor() or platform.machine()},
              "seconds": seconds, "ratios": _ratios(seconds),
              "c_kernels": cpu_kernels.why_unavailable()}
    if out is not None:
        Path(out).write_text(json.dumps(report, indent=2))
    return report


def _ratios(seconds: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Time ratios over the C kernels (above 1: the C kernels are faster)."""
    ratios = {}
    for workload, times in seconds.items():
        base = times["c_kernels"]
        ratios[workload] = {
            "inductor_over_c_kernels_warm": times["inductor"]["warm"] / base["warm"],
            "pytorch_eager_over_c_kernels_warm": times["pytorch_eager"]["warm"] / base["warm"],
            "inductor_over_c_kernels_cold": times["inductor"]["cold"] / base["cold"]}
    return ratios
