"""Shared helpers of the mLSTM reference tests: inputs, the forms under one call, golden data.

Imported by the test files as ``mlstm_cases``: pytest puts ``tests/`` (not a package) on
``sys.path``.
"""
from __future__ import annotations

import functools
import pathlib

import numpy as np
import torch

from xlstm_rl.kernels import (mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, mlstm_step)

GOLDEN = pathlib.Path(__file__).parent / "data" / "mlstm_float64.npz"
CHUNK_SIZES = (16, 32, 64, 128, 256)
GOLDEN_LOOP_TOL = 1e-9    # the step loop is the golden file's own recurrence (README: ~1e-9)
GOLDEN_FORM_TOL = 1e-8    # chunkwise / parallel carry eps at another stabilizer (README: ~1e-8)
F32_TOL = 1e-5            # float32 forms against the float64 definition
FORMS = ("recurrent", "step", "chunkwise", "parallel")



# ----------------------------------------------------------------------------------- helpers

def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``, computed in float64 (``b`` is the reference)."""
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    scale = b.abs().max().item()
    assert scale > 0, "reference is all zeros: relative error undefined"
    return (a - b).abs().max().item() / scale


def assert_close(name: str, a: torch.Tensor, b: torch.Tensor, tol: float) -> float:
    err = rel_err(a, b)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"
    return err


def make_inputs(B, H, S, dk, dv, *, seed, dtype=torch.float64, f_bias=1.0):
    """q, k, v ~ N(0, 1); i ~ N(0, 1); f ~ N(f_bias, 2²): a mix of remembering and forgetting."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, S, dk, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, S, dk, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, S, dv, generator=g, dtype=torch.float64)
    i = torch.randn(B, H, S, generator=g, dtype=torch.float64)
    f = f_bias + 2.0 * torch.randn(B, H, S, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v, i, f)]


def make_state(B, H, dk, dv, *, seed, dtype=torch.float64):
    """A random state: C, n ~ N(0, 1), m ~ U[-2, 2]."""
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(B, H, dk, dv, generator=g, dtype=torch.float64)
    n = torch.randn(B, H, dk, generator=g, dtype=torch.float64)
    m = 4.0 * torch.rand(B, H, generator=g, dtype=torch.float64) - 2.0
    return tuple(x.to(dtype) for x in (C, n, m))


def step_loop(q, k, v, i, f, *, state=None, reset=None, eps=1e-6):
    """``mlstm_step`` called once per time step."""
    hs = []
    for t in range(q.shape[2]):
        h, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state,
                              reset=None if reset is None else reset[:, t], eps=eps,
                              backend="reference")
        hs.append(h)
    return torch.stack(hs, dim=2), state


def run_form(form, q, k, v, i, f, *, state=None, reset=None, chunk_size=64):
    """``(h, final_state)``; the parallel oracle has no final state (None)."""
    if form == "recurrent":
        return mlstm_recurrent(q, k, v, i, f, state=state, reset=reset)
    if form == "step":
        return step_loop(q, k, v, i, f, state=state, reset=reset)
    if form == "chunkwise":
        return mlstm_chunkwise(q, k, v, i, f, state=state, reset=reset, chunk_size=chunk_size,
                               backend="reference")
    if form == "parallel":
        return mlstm_parallel(q, k, v, i, f, state=state, reset=reset), None
    raise AssertionError(form)


def loss_of(h, state, w, state_weights=None):
    """A loss touching every output and (when given) every final state entry."""
    loss = (h.double() * w).sum()
    if state is not None and state_weights is not None:
        loss = loss + sum((s.double() * sw).sum() for s, sw in zip(state, state_weights))
    return loss


def weights_like(h, state, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h.shape, generator=g, dtype=torch.float64)
    sw = None if state is None else [torch.randn(s.shape, generator=g, dtype=torch.float64)
                                     for s in state]
    return w, sw


@functools.cache
def golden() -> dict[str, torch.Tensor]:
    with np.load(GOLDEN) as data:
        return {key: torch.from_numpy(data[key].copy()) for key in data.files}


def golden_inputs(requires_grad=False):
    g = golden()
    return [g[key].clone().requires_grad_(requires_grad) for key in "qkvif"]


