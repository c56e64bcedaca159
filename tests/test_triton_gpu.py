"""Triton kernels against the reference on a CUDA device, at real sizes (``-m gpu``).

The same comparisons as ``test_triton_kernels.py`` (outputs, final states, gradients of a
random linear loss on all of them: q, k, v, i, f, C0, n0, m0), with S up to 8192, head dims
64..256, bfloat16 inputs with float32 states, resets and carried initial states. The oracle is
the float64 chunkwise reference on the same (rounded) inputs. Skipped at collection without
CUDA (tests/conftest.py). Relative error is ``max|a - b| / max|b|``.

Tolerances: float32 inputs 1e-4 (tf32x3 dots); bfloat16 inputs 2e-2 (the kernels round the
decay-weighted scores and output gradients to bfloat16 for tensor-core matmuls, and h, dq, dk,
dv are bfloat16 themselves).
"""
from __future__ import annotations

import math

import pytest
import torch

from xlstm_rl.kernels import (mlstm_chunkwise, mlstm_step, resolve_backend, slstm_sequence,
                              slstm_step)
from xlstm_rl.kernels.reference import (mlstm_chunkwise_reference, mlstm_step_reference,
                                        slstm_sequence_reference, slstm_step_reference)

pytestmark = pytest.mark.gpu
NAMES = ("h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0")
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape and torch.isfinite(a).all()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _inputs(B, H, S, dk, dv, dtype, *, resets: bool, seed: int = 0
            ) -> tuple[list, torch.Tensor | None]:
    """Float64 inputs (q, k, v rounded to ``dtype``) on CUDA, initial state, optional resets."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)
    xs = [r(B, H, S, dk), r(B, H, S, dk), r(B, H, S, dv), r(B, H, S), r(B, H, S) * 2 + 2,
          r(B, H, dk, dv) * 0.1, r(B, H, dk) * 0.1, r(B, H)]
    xs[:3] = [x.to(dtype).double() for x in xs[:3]]
    reset = None
    if resets:
        reset = torch.rand(B, S, generator=g) < 2.0 / 1000
        reset[0, S // 2 + 5] = True
        reset = reset.cuda()
    return [x.cuda() for x in xs], reset


def _run(fn, xs, reset, dtype, **kw) -> list:
    leaves = [(x.to(dtype) if j < 3 else x.to(torch.float64 if dtype == torch.float64
                                               else torch.float32)).requires_grad_()
              for j, x in enumerate(xs)]
    h, (C, n, m) = fn(*leaves[:5], state=tuple(leaves[5:]), reset=reset, **kw)
    g = torch.Generator(device="cuda").manual_seed(7)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, device="cuda",
                                         dtype=torch.float64)).sum() for o in (h, C, n, m))
    return [h, C, n, m, *torch.autograd.grad(loss, leaves)]


CONFIGS = [  # B, H, S, Dk, Dv, chunk, dtype, resets
    (2, 2, 4096, 64, 64, 64, torch.bfloat16, False),
    (1, 2, 8192, 128, 128, 64, torch.bfloat16, True),
    (1, 2, 2048, 256, 256, 64, torch.bfloat16, True),
    (2, 2, 1000, 64, 64, 128, torch.bfloat16, True),
    (2, 2, 1500, 64, 128, 32, torch.float32, True),
]


@pytest.mark.parametrize("B,H,S,dk,dv,chunk,dtype,resets", CONFIGS,
                         ids=[f"S{c[2]}-dk{c[3]}-dv{c[4]}-L{c[5]}-{str(c[6])[6:]}"
                              f"{'-resets' if c[7] else ''}" for c in CONFIGS])
def test_chunkwise_matches_reference(B, H, S, dk, dv, chunk, dtype, resets) -> None:
    xs, reset = _inputs(B, H, S, dk, dv, dtype, resets=resets)
    got = _run(mlstm_chunkwise, xs, reset, dtype, chunk_size=chunk, backend="triton")
    assert got[0].dtype == dtype and all(s.dtype == torch.float32 for s in got[1:4])
    ref = _run(mlstm_chunkwise_reference, xs, reset, torch.float64, chunk_size=chunk)
    errs = {n: rel_err(a, b) for n, a, b in zip(NAMES, got, ref)}
    bad = {n: e for n, e in errs.items() if not e <= TOL[dtype]}
    assert not bad, f"relative errors over {TOL[dtype]:.0e}: {bad} (all: {errs})"


def test_auto_backend_is_triton_on_cuda() -> None:
    assert resolve_backend("auto", torch.device("cuda")) == "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlstm_step_1024_envs(dtype) -> None:
    B, H, d = 1024, 4, 64
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, d, generator=g).to(dtype).cuda() for _ in range(3))
    i, f = (torch.randn(B, H, generator=g).cuda() for _ in range(2))
    state = (torch.randn(B, H, d, d, generator=g).cuda(), torch.randn(B, H, d, generator=g).cuda(),
             torch.randn(B, H, generator=g).cuda())
    reset = torch.rand(B, generator=g).cuda() < 0.1
    with torch.no_grad():
        h, st = mlstm_step(q, k, v, i, f, state, reset=reset, backend="triton")
        hr, sr = mlstm_step_reference(q, k, v, i, f, state, reset=reset)
        from xlstm_rl.kernels.triton_ops import mlstm_step as fused
        own = tuple(s.clone() for s in state)
        hi, si = fused(q, k, v, i, f, own, reset=reset, inplace=True)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert h.dtype == dtype and rel_err(h, hr) <= tol
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(st, sr))
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(si, own)) and torch.equal(hi, h)


def test_slstm_step_and_sequence() -> None:
    B, S, H, d = 1024, 8, 4, 64
    g = torch.Generator().manual_seed(2)
    wx = torch.randn(B, S, 4, H, d, generator=g).cuda()
    R = (torch.randn(4, H, d, d, generator=g) / math.sqrt(d)).cuda()
    bias = torch.randn(4, H, d, generator=g).cuda()
    reset = (torch.rand(B, S, generator=g) < 0.1).cuda()
    with torch.no_grad():
        h, st = slstm_step(wx[:, 0], R, bias, None, reset=reset[:, 0], backend="triton")
        hr, sr = slstm_step_reference(wx[:, 0], R, bias, None, reset=reset[:, 0])
    assert rel_err(h, hr) <= 1e-4 and all(rel_err(a, b) <= 1e-4 for a, b in zip(st, sr))
    leaves = [x.clone().requires_grad_() for x in (wx[:64], R, bias)]
    ref_leaves = [x.clone().requires_grad_() for x in (wx[:64], R, bias)]
    h, _ = slstm_sequence(*leaves, reset=reset[:64], backend="triton")
    hr, _ = slstm_sequence_reference(*ref_leaves, reset=reset[:64])
    gt = torch.autograd.grad((h ** 2).sum(), leaves)
    gr = torch.autograd.grad((hr ** 2).sum(), ref_leaves)
    assert rel_err(h, hr) <= 1e-4
    assert all(rel_err(a, b) <= 1e-4 for a, b in zip(gt, gr))


def test_final_state_matches_reference_on_cuda() -> None:
    """R2D2's burn-in state (``mlstm_final_state``, plain torch ops) over a long sequence."""
    from xlstm_rl.kernels.reference import mlstm_final_state

    xs, reset = _inputs(2, 2, 1000, 64, 64, torch.float32, resets=True)
    _, want = mlstm_chunkwise_reference(*xs[:5], state=tuple(xs[5:]), reset=reset,
                                        chunk_size=64)
    got = mlstm_final_state(*(x.float() for x in xs[1:5]), state=tuple(x.float() for x in xs[5:]),
                            reset=reset)
    for name, a, b in zip("Cnm", got, want):
        assert rel_err(a, b) <= TOL[torch.float32], name
