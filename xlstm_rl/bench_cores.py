"""``xlstm-rl bench cores``: core and reference-kernel timings, measured side by side.

Every comparison runs its candidates interleaved in one process
(:func:`xlstm_rl.kernels.timing.time_side_by_side`), so the ratios hold even on a shared, noisy
machine where absolute times drift.
"""
from __future__ import annotations

import functools
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from tensordict import TensorDict

from xlstm_rl.cores import CORE_NAMES, MemoryCore, XLSTMCore, make_core
from xlstm_rl.kernels import mlstm_chunkwise, mlstm_recurrent, mlstm_step, slstm_sequence
from xlstm_rl.kernels import cpu as cpu_kernels
from xlstm_rl.kernels.cpu.build import load_warning
from xlstm_rl.kernels.reference import mlstm_step_reference
from xlstm_rl.kernels.timing import time_side_by_side
from xlstm_rl.kernels.reference.mlstm_step_fast import mlstm_step_nograd


_CORE_OVERRIDES: dict[str, dict[str, str]] = {"xlstm": {"pattern": "ms"}}
"""The ``xlstm`` stack is timed as ``ms`` (its default ``m`` would repeat the mlstm core)."""


def _fwd_bwd(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        fn().sum().backward()
    return run


def _mlstm_inputs(B: int, H: int, S: int, D: int, device: torch.device):
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device).requires_grad_()  # noqa: E731
    return mk(B, H, S, D), mk(B, H, S, D), mk(B, H, S, D), mk(B, H, S), mk(B, H, S)


def bench_sequences(device: torch.device, S: int = 1024) -> dict:
    """fwd+bwd of mLSTM chunkwise vs its step loop vs nn.LSTM, and sLSTM vs nn.LSTM."""
    q, k, v, i, f = _mlstm_inputs(2, 2, S, 64, device)
    lstm = torch.nn.LSTM(128, 128, batch_first=True).to(device)
    x = torch.randn(2, S, 128, device=device, requires_grad=True)
    wx = torch.randn(2, S, 4, 4, 32, device=device, requires_grad=True)
    r_weight = (0.1 * torch.randn(4, 4, 32, 32, device=device)).requires_grad_()
    bias = torch.zeros(4, 4, 32, device=device, requires_grad=True)
    fns: dict[str, Callable[[], object]] = {
        "mlstm_chunkwise": _fwd_bwd(lambda: mlstm_chunkwise(q, k, v, i, f, chunk_size=64)[0]),
        "torch_lstm": _fwd_bwd(lambda: lstm(x)[0]),
        "slstm_sequence": _fwd_bwd(lambda: slstm_sequence(wx, r_weight, bias)[0]),
    }
    t = time_side_by_side(fns, device)
    loop = time_side_by_side({"mlstm_step_loop": _fwd_bwd(lambda: mlstm_recurrent(
        q, k, v, i, f)[0]), "mlstm_chunkwise": fns["mlstm_chunkwise"]}, device, repeats=3)
    return {
        "shape": {"B": 2, "H": 2, "S": S, "Dk": 64, "Dv": 64, "lstm_width": 128},
        "seconds": {**t, "mlstm_step_loop": loop["mlstm_step_loop"]},
        "ratios": {
            "chunkwise_speedup_over_step_loop": loop["mlstm_step_loop"] / loop["mlstm_chunkwise"],
            "chunkwise_time_over_torch_lstm": t["mlstm_chunkwise"] / t["torch_lstm"],
            "slstm_time_over_torch_lstm": t["slstm_sequence"] / t["torch_lstm"],
        },
    }


def _without_cpu_kernels(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` on the PyTorch path (the compiled CPU kernels switched off for the call)."""
    def run() -> object:
        with cpu_kernels.disabled():
            return fn()
    return run


def _carried_step(core: MemoryCore, x: torch.Tensor, state: TensorDict
                  ) -> Callable[[], object]:
    """``core.step`` as the acting loop runs it: the state it returned is handed back with
    ``overwrite_state=True`` (the in-place update of the compiled CPU kernel)."""
    carried = [state.clone()]

    def run() -> object:
        y, carried[0] = core.step(x, carried[0], None, overwrite_state=True)
        return y
    return run


def bench_steps(device: torch.device, envs: int = 16, width: int = 128) -> dict:
    """Acting latency for ``envs`` environments: the mLSTM step kernel vs nn.LSTMCell, and the
    ``step`` of every core at the same width (no autograd, as when acting). The autograd-capable
    paths (``mlstm_step_reference``, the xLSTM cores' ``step_reference``) and the no-grad
    PyTorch paths without the compiled CPU kernels (``*_torch``) and the steps that update a
    handed-over state in place (``*_overwrite``, as PPO's collector acts) are timed alongside,
    so each path's gain is measured in the same run."""
    q, k, v, i, f = (t.detach()[:, :, 0] for t in _mlstm_inputs(envs, 2, 1, 64, device))
    state = (torch.zeros(envs, 2, 64, 64, device=device), torch.zeros(envs, 2, 64, device=device),
             torch.zeros(envs, 2, device=device))
    cell = torch.nn.LSTMCell(width, width).to(device)
    x = torch.randn(envs, width, device=device)
    hc = (torch.zeros(envs, width, device=device), torch.zeros(envs, width, device=device))
    fns: dict[str, Callable[[], object]] = {
        "mlstm_step": lambda: mlstm_step(q, k, v, i, f, state),
        "mlstm_step_reference": lambda: mlstm_step_reference(q, k, v, i, f, state),
        "mlstm_step_torch": lambda: mlstm_step_nograd(q, k, v, i, f, state),
        "torch_lstm_cell": lambda: cell(x, hc)}
    cores = {name: make_core(name, width, hidden_size=width, **_CORE_OVERRIDES.get(name, {}))
             .to(device) for name in CORE_NAMES}
    states = {name: c.initial_state(envs, device) for name, c in cores.items()}
    for name, core in cores.items():
        fns[f"core_{name}"] = functools.partial(core.step, x, states[name])
        if isinstance(core, XLSTMCore):  # the autograd-capable step, as before the no-grad path
            fns[f"core_{name}_reference"] = functools.partial(core.step_reference, x, states[name])
            fns[f"core_{name}_torch"] = _without_cpu_kernels(fns[f"core_{name}"])
            fns[f"core_{name}_overwrite"] = _carried_step(core, x, states[name])
    with torch.no_grad():
        t = time_side_by_side(fns, device, repeats=50, warmup=5)
    return {
        "envs": envs, "width": width, "core_overrides": _CORE_OVERRIDES, "seconds": t,
        "ratios": {
            "mlstm_step_over_lstm_cell": t["mlstm_step"] / t["torch_lstm_cell"],
            "mlstm_step_reference_over_lstm_cell": t["mlstm_step_reference"] / t["torch_lstm_cell"],
            "mlstm_step_torch_over_lstm_cell": t["mlstm_step_torch"] / t["torch_lstm_cell"],
            **{f"core_{n}_reference_step_over_lstm_core": t[f"core_{n}_reference"] / t["core_lstm"]
               for n in ("mlstm", "slstm", "xlstm")},
            **{f"core_{n}_torch_step_over_lstm_core": t[f"core_{n}_torch"] / t["core_lstm"]
               for n in ("mlstm", "slstm", "xlstm")},
            **{f"core_{n}_overwrite_step_over_lstm_core":
               t[f"core_{n}_overwrite"] / t["core_lstm"] for n in ("mlstm", "slstm", "xlstm")},
            **{f"core_{n}_step_over_lstm_core": t[f"core_{n}"] / t["core_lstm"]
               for n in CORE_NAMES},
        },
    }


def bench_cores(out_path: str | Path, device: str = "cpu") -> dict:
    """Run every core benchmark and write the JSON report to ``out_path``."""
    dev = torch.device(device)
    report = {
        "device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpu_kernels": cpu_kernels.why_unavailable(),
        "cpu_kernels_warning": load_warning(),  # a fallback or dropped flags, else None
        "sequences_fwd_bwd": bench_sequences(dev),
        "steps": bench_steps(dev),
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(report, indent=2))
    return report
