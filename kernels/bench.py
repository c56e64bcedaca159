"""Kernel benchmarks: Triton against the PyTorch paths, side by side in one process.

``bench_kernels("cuda", "bench_kernels.json")`` measures (median of interleaved repeats after
warm-up, :func:`.timing.time_side_by_side`):

- ``mlstm_chunkwise_vs_reference``: Triton chunkwise forward+backward against the reference
  chunkwise form, B=8, H=4, S=4096, Dk=Dv=64, bfloat16, chunk 64;
- ``mlstm_chunkwise_vs_sdpa``: the same Triton forward+backward against causal
  ``scaled_dot_product_attention`` (flash), head dim 128, S=8192, bfloat16;
- ``mlstm_step_1024_envs`` / ``slstm_step_1024_envs``: the fused step kernels against the
  reference steps for 1024 environments (acting, no autograd).

Every entry holds both times in milliseconds and ``speedup`` = other / Triton. Triton is
imported only when this runs (through the ``backend="triton"`` dispatch).
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import torch

from .dispatch import mlstm_chunkwise, mlstm_step, slstm_step
from .reference import mlstm_zero_state, slstm_zero_state
from .timing import time_side_by_side


def _pair(device: torch.device, fns: dict[str, Callable[[], object]], warmup: int,
          iters: int) -> list[float]:
    """Milliseconds per call of each candidate, timed interleaved (see :mod:`.timing`)."""
    t = time_side_by_side(fns, device, repeats=max(1, iters), warmup=warmup, budget_s=120.0)
    return [t[name] * 1e3 for name in fns]


def _mlstm_leaves(B: int, H: int, S: int, d: int, dtype: torch.dtype, device) -> list:
    g = torch.Generator(device="cpu").manual_seed(0)
    shapes = ((B, H, S, d), (B, H, S, d), (B, H, S, d), (B, H, S), (B, H, S))
    xs = [torch.randn(s, generator=g) for s in shapes]
    xs[4] = xs[4] + 3.0
    return [x.to(device=device, dtype=dtype if x.dim() == 4 else torch.float32).requires_grad_()
            for x in xs]


def _fwd_bwd(fn: Callable[..., torch.Tensor], leaves: list, grad: torch.Tensor) -> Callable:
    def step() -> None:
        for x in leaves:
            x.grad = None
        fn(*leaves).backward(grad)
    return step


def _chunkwise(backend: str) -> Callable[..., torch.Tensor]:
    return lambda q, k, v, i, f: mlstm_chunkwise(q, k, v, i, f, chunk_size=64,
                                                 backend=backend)[0]


def _entry(name_a: str, ms_a: float, name_b: str, ms_b: float, **extra) -> dict:
    return {f"{name_a}_ms": round(ms_a, 4), f"{name_b}_ms": round(ms_b, 4),
            "speedup": round(ms_b / ms_a, 3), **extra}


def bench_chunkwise_vs_reference(device, B=8, H=4, S=4096, d=64, warmup=3, iters=10) -> dict:
    """Triton vs reference chunkwise, forward+backward, bfloat16."""
    leaves = _mlstm_leaves(B, H, S, d, torch.bfloat16, device)
    grad = torch.randn(B, H, S, d, device=device).to(torch.bfloat16)
    with torch.no_grad():
        h_t = _chunkwise("triton")(*leaves).float()
        h_r = _chunkwise("reference")(*leaves).float()
    err = ((h_t - h_r).abs().max() / h_r.abs().max()).item()
    t_tri, t_ref = _pair(device, {"triton": _fwd_bwd(_chunkwise("triton"), leaves, grad),
                                  "reference": _fwd_bwd(_chunkwise("reference"), leaves, grad)},
                         warmup, iters)
    return _entry("triton", t_tri, "reference", t_ref, shape=[B, H, S, d], dtype="bfloat16",
                  chunk_size=64, h_rel_err_vs_reference=err)


def bench_chunkwise_vs_sdpa(device, B=1, H=8, S=8192, d=128, warmup=3, iters=10) -> dict:
    """Triton chunkwise vs causal SDPA, forward+backward, bfloat16."""
    leaves = _mlstm_leaves(B, H, S, d, torch.bfloat16, device)
    grad = torch.randn(B, H, S, d, device=device).to(torch.bfloat16)

    def sdpa(q, k, v, i, f):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    t_tri, t_sdpa = _pair(device, {"triton": _fwd_bwd(_chunkwise("triton"), leaves, grad),
                                   "sdpa": _fwd_bwd(sdpa, leaves, grad)}, warmup, iters)
    return _entry("triton", t_tri, "sdpa", t_sdpa, shape=[B, H, S, d], dtype="bfloat16",
                  chunk_size=64)


def bench_mlstm_step(device, B=1024, H=4, d=64, warmup=5, iters=50) -> dict:
    """Fused mLSTM step vs reference step (float32, no autograd)."""
    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (torch.randn(B, H, d, generator=g).to(device) for _ in range(3))
    i, f = (torch.randn(B, H, generator=g).to(device) for _ in range(2))
    C, n, m = mlstm_zero_state(B, H, d, d, device=device)
    state = (C.normal_(), n.normal_(), m.normal_())
    with torch.no_grad():
        t_tri, t_ref = _pair(device, {
            "triton": lambda: mlstm_step(q, k, v, i, f, state, backend="triton"),
            "reference": lambda: mlstm_step(q, k, v, i, f, state, backend="reference")},
            warmup, iters)
    return _entry("triton", t_tri, "reference", t_ref, envs=B, heads=H, head_dim=d)


def bench_slstm_step(device, B=1024, H=4, d=64, warmup=5, iters=50) -> dict:
    """Fused sLSTM step vs reference step (float32, no autograd)."""
    g = torch.Generator(device="cpu").manual_seed(2)
    wx = torch.randn(B, 4, H, d, generator=g).to(device)
    R = (torch.randn(4, H, d, d, generator=g) / d ** 0.5).to(device)
    bias = torch.randn(4, H, d, generator=g).to(device)
    state = slstm_zero_state(B, H, d, device=device)
    with torch.no_grad():
        t_tri, t_ref = _pair(device, {
            "triton": lambda: slstm_step(wx, R, bias, state, backend="triton"),
            "reference": lambda: slstm_step(wx, R, bias, state, backend="reference")},
            warmup, iters)
    return _entry("triton", t_tri, "reference", t_ref, envs=B, heads=H, head_dim=d)


def bench_kernels(device: str, out_path: str, *, small: bool = False) -> dict:
    """Run all kernel benchmarks on ``device`` and write them as JSON to ``out_path``.

    Args:
        device: ``"cuda"`` (or ``"cuda:N"``); ``"cpu"`` only with ``small=True`` under
            ``TRITON_INTERPRET=1`` (a smoke run of the plumbing, not a measurement).
        out_path: JSON file to write.
        small: tiny sizes and few repeats (for smoke tests).

    Returns:
        The dict written: environment info and one entry per benchmark.
    """
    dev = torch.device(device)
    if dev.type != "cuda" and not small:
        raise ValueError("bench kernels measures GPU kernels: pass a CUDA device")
    if small:
        sizes = dict(chunk=dict(B=1, H=1, S=40, d=16, warmup=0, iters=1),
                     sdpa=dict(B=1, H=1, S=40, d=16, warmup=0, iters=1),
                     step=dict(B=4, H=2, d=16, warmup=0, iters=1))
    else:
        sizes = dict(chunk={}, sdpa={}, step={})
    import triton  # noqa: PLC0415 - recorded in the results; the benchmarks need it anyway

    results = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               "torch": torch.__version__, "triton": triton.__version__, "small": small,
               "mlstm_chunkwise_vs_reference": bench_chunkwise_vs_reference(dev, **sizes["chunk"]),
               "mlstm_chunkwise_vs_sdpa": bench_chunkwise_vs_sdpa(dev, **sizes["sdpa"]),
               "mlstm_step_1024_envs": bench_mlstm_step(dev, **sizes["step"]),
               "slstm_step_1024_envs": bench_slstm_step(dev, **sizes["step"])}
    path = pathlib.Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return results
