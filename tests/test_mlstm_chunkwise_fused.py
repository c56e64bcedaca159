"""The fused chunkwise mLSTM (one autograd node, hand-written backward) against the autograd one.

``mlstm_chunkwise_fused`` must give the outputs, final states and gradients (q, k, v, i, f and the
initial state C0, n0, m0) of ``mlstm_chunkwise_reference`` (Beck et al. 2024, arXiv:2405.04517)
with a loss that touches ``h`` and the whole final state: float64 to 1e-10, float32 to 1e-5.

Relative error is ``max|a - b| / max|b|`` over a tensor, ``b`` the reference. One exception:
``dm0`` is a difference of terms of the size of ``dC0·C0`` that cancel once the initial state has
decayed away, so its error is measured against the largest initial-state gradient.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

from xlstm_rl.kernels import cpu as cpu_kernels
from xlstm_rl.kernels import mlstm_chunkwise
from xlstm_rl.kernels.reference.mlstm_chunkwise import mlstm_chunkwise_reference
from xlstm_rl.kernels.reference.mlstm_chunkwise_fused import mlstm_chunkwise_fused

F64_TOL = 1e-10
F32_TOL = 1e-5
NAMES = ("h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0")


def make_inputs(B, H, S, dk, dv, *, seed, dtype=torch.float64):
    """q, k, v, i ~ N(0, 1); f ~ N(1, 2²): a mix of remembering and forgetting."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(B, H, S, d, generator=g, dtype=torch.float64) for d in (dk, dk, dv)]
    x += [torch.randn(B, H, S, generator=g, dtype=torch.float64),
          1.0 + 2.0 * torch.randn(B, H, S, generator=g, dtype=torch.float64)]
    return [t.to(dtype) for t in x]


def make_state(B, H, dk, dv, *, seed, dtype=torch.float64):
    """C, n ~ N(0, 1), m ~ U[-2, 2]."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, dk, dv, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(B, H, dk, generator=g, dtype=torch.float64).to(dtype),
            (4.0 * torch.rand(B, H, generator=g, dtype=torch.float64) - 2.0).to(dtype))


def resets(B, S, L, kind):
    """Reset patterns: mid-chunk, at chunk boundaries, at t=0, consecutive, or all of them."""
    r = torch.zeros(B, S, dtype=torch.bool)
    at = {"mid": [L // 2 + 1, 2 * L + L // 2], "boundary": [L, 2 * L, 3 * L], "t0": [0],
          "consecutive": [L + 1, L + 2, L + 3, 2 * L - 1, 2 * L]}
    for b in range(B):
        kinds = list(at) if kind == "mixed" else [kind]
        for t in at[kinds[b % len(kinds)]] if kind == "mixed" else at[kind]:
            if t < S:
                r[b, t] = True
    if kind == "mixed" and B > 1:
        r[-1] = False                                        # one row runs without resets
    return r


def run(fn, inputs, state=None, reset=None, chunk_size=16, *, loss_rows=None, seed=99):
    """Outputs and all gradients (``NAMES``) of ``fn`` for a loss touching h and the final state.

    ``loss_rows``: optional ``[B, S]`` bool, the steps whose ``h`` enter the loss (then the final
    state is left out of it).
    """
    xs = [x.clone().requires_grad_() for x in inputs]
    ss = None if state is None else [s.clone().requires_grad_() for s in state]
    h, fin = fn(*xs, state=None if ss is None else tuple(ss), reset=reset, chunk_size=chunk_size)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
    if loss_rows is not None:
        loss = (h * w * loss_rows[:, None, :, None]).sum()
    else:
        loss = (h * w).sum() + sum((s * torch.randn(s.shape, generator=g, dtype=torch.float64)
                                    .to(s.dtype)).sum() for s in fin)
    loss.backward()
    grads = [x.grad for x in xs] + ([None] * 3 if ss is None else [s.grad for s in ss])
    return dict(zip(NAMES, [h.detach(), *(s.detach() for s in fin), *grads]))


def assert_match(got: dict, want: dict, tol: float) -> None:
    for name in NAMES:
        a, b = got[name], want[name]
        if b is None:
            assert a is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        a, b = a.double(), b.double()
        assert torch.isfinite(a).all() and torch.isfinite(b).all(), name
        scale = b.abs().max().item()
        if name == "dm0":
            scale = max(scale, want["dC0"].abs().max().item(), want["dn0"].abs().max().item())
        err = (a - b).abs().max().item()
        assert err <= tol * scale, f"{name}: error {err:.3e} vs scale {scale:.3e} (tol {tol:.0e})"


def compare(inputs, state, reset, chunk_size, tol, **kw):
    got = run(mlstm_chunkwise_fused, inputs, state, reset, chunk_size, **kw)
    want = run(mlstm_chunkwise_reference, inputs, state, reset, chunk_size, **kw)
    assert_match(got, want, tol)
    return got


# ------------------------------------------------------------------------- against the reference

SHAPES = {37: (1, 2, 4, 3), 100: (3, 2, 5, 7), 257: (2, 1, 8, 6)}          # S: (B, H, Dk, Dv)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
@pytest.mark.parametrize("reset", [None, "mixed"], ids=["no-reset", "resets"])
@pytest.mark.parametrize("chunk_size", [1, 3, 16, 64, 256])
@pytest.mark.parametrize("S", sorted(SHAPES))
def test_float64_matches_reference(S, chunk_size, reset, with_state):
    B, H, dk, dv = SHAPES[S]
    inputs = make_inputs(B, H, S, dk, dv, seed=S + chunk_size)
    state = make_state(B, H, dk, dv, seed=5) if with_state else None
    r = None if reset is None else resets(B, S, min(chunk_size, S), reset)
    compare(inputs, state, r, chunk_size, F64_TOL)


@pytest.mark.parametrize("kind", ["mid", "boundary", "t0", "consecutive"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_each_reset_kind(kind, dtype):
    inputs = make_inputs(2, 2, 70, 5, 4, seed=11, dtype=dtype)
    compare(inputs, make_state(2, 2, 5, 4, seed=12, dtype=dtype), resets(2, 70, 16, kind), 16,
            F64_TOL if dtype == torch.float64 else F32_TOL)


@pytest.mark.parametrize("reset", [None, "mixed"], ids=["no-reset", "resets"])
@pytest.mark.parametrize("chunk_size", [1, 16, 64])
def test_float32_matches_reference(chunk_size, reset):
    inputs = make_inputs(2, 3, 150, 16, 8, seed=3, dtype=torch.float32)
    r = None if reset is None else resets(2, 150, chunk_size, reset)
    compare(inputs, make_state(2, 3, 16, 8, seed=4, dtype=torch.float32), r, chunk_size, F32_TOL)


# ------------------------------------------------------------------------------ extreme gates

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_very_negative_forget_gates_near_resets(dtype):
    inputs = make_inputs(2, 2, 100, 6, 5, seed=21, dtype=dtype)
    inputs[4][:, :, [15, 31, 32, 47, 60]] = -1e3
    r = torch.zeros(2, 100, dtype=torch.bool)
    r[:, [16, 32, 33, 48]] = True
    r[1, 61] = True
    compare(inputs, make_state(2, 2, 6, 5, seed=22, dtype=dtype), r, 16,
            F64_TOL if dtype == torch.float64 else F32_TOL)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_saturated_gates(dtype, with_state):
    """i = f = -100 for a stretch: the stabilizer ties with the carry at the zero state."""
    inputs = make_inputs(2, 2, 100, 6, 5, seed=23, dtype=dtype)
    inputs[3][..., 20:60] = -100.0
    inputs[4][..., 20:60] = -100.0
    r = torch.zeros(2, 100, dtype=torch.bool)
    r[0, 20] = True
    state = make_state(2, 2, 6, 5, seed=24, dtype=dtype) if with_state else None
    compare(inputs, state, r, 16, F64_TOL if dtype == torch.float64 else F32_TOL)


def test_exact_ties_follow_torch():
    """i = 1, f = 50, m0 = 1: f̂ vanishes next to 1, so every entry of every row of logD, every
    chunk in the chunk-level max and the initial state tie; amax and maximum split as torch."""
    inputs = make_inputs(2, 2, 60, 4, 3, seed=25)
    inputs[3].fill_(1.0)
    inputs[4].fill_(50.0)
    C0, n0, _ = make_state(2, 2, 4, 3, seed=26)
    compare(inputs, (C0, n0, torch.ones(2, 2, dtype=torch.float64)), None, 16, F64_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_extreme_gates_long_sequence_is_finite(dtype):
    """Gates ~ U[-100, 100] over S = 2048, 1% resets: everything finite (float32: the reference's
    values)."""
    g = torch.Generator().manual_seed(27)
    B, H, S, d = 2, 1, 2048, 16
    inputs = [torch.randn(B, H, S, d, generator=g) for _ in range(3)]
    inputs += [200.0 * torch.rand(B, H, S, generator=g) - 100.0 for _ in range(2)]
    r = torch.rand(B, S, generator=g) < 0.01
    r[0] = False
    state = make_state(B, H, d, d, seed=28, dtype=torch.float32)
    inputs = [x.to(dtype) for x in inputs]
    got = run(mlstm_chunkwise_fused, inputs, state, r, 64)
    assert all(torch.isfinite(x).all() for x in got.values()), "non-finite values"
    if dtype == torch.float32:
        assert_match(got, run(mlstm_chunkwise_reference, inputs, state, r, 64), F32_TOL)


# ----------------------------------------------------------------------------------- resets

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", [0, 1, 2], ids=["C", "n", "m"])
def test_nonfinite_state_discarded_at_t0_does_not_leak(which, bad):
    inputs = make_inputs(2, 2, 40, 4, 3, seed=31, dtype=torch.float32)
    state = make_state(2, 2, 4, 3, seed=32, dtype=torch.float32)
    r = torch.zeros(2, 40, dtype=torch.bool)
    r[0, 0] = True
    r[1, 21] = True
    poisoned = [s.clone() for s in state]
    poisoned[which][0] = bad
    clean = [s.clone() for s in state]
    for s in clean:
        s[0] = 0.0
    got, want = (run(mlstm_chunkwise_fused, inputs, st, r, 16) for st in (poisoned, clean))
    for name in NAMES:
        assert torch.isfinite(got[name]).all(), name
        if name in ("dC0", "dn0", "dm0"):
            assert torch.count_nonzero(got[name][0]) == 0, f"{name} of the reset row must be 0"
        assert torch.equal(got[name], want[name]), f"{name} differs from the clean run"


@pytest.mark.parametrize("at", [5, 16, 23], ids=["mid-chunk", "boundary", "later-chunk"])
def test_no_gradient_crosses_a_reset(at):
    """Loss after the reset: nothing before it (nor the initial state) gets a gradient; loss
    before it: nothing from the reset on does. Exactly zero, not rounding noise."""
    inputs = make_inputs(1, 2, 40, 4, 3, seed=33, dtype=torch.float32)
    inputs[4][..., at - 1] = -1e3                        # a cancellation trap next to the reset
    state = make_state(1, 2, 4, 3, seed=34, dtype=torch.float32)
    r = torch.zeros(1, 40, dtype=torch.bool)
    r[0, at] = True
    t = torch.arange(40)[None]
    after = run(mlstm_chunkwise_fused, inputs, state, r, 8, loss_rows=t >= at)
    before = run(mlstm_chunkwise_fused, inputs, state, r, 8, loss_rows=t < at)
    for name in ("dq", "dk", "dv", "di", "df"):
        assert torch.count_nonzero(after[name][:, :, :at]) == 0, f"{name} before the reset"
        assert torch.count_nonzero(before[name][:, :, at:]) == 0, f"{name} after the reset"
        assert torch.count_nonzero(after[name][:, :, at:]) > 0
    for name in ("dC0", "dn0", "dm0"):
        assert torch.count_nonzero(after[name]) == 0, f"{name} with a loss after the reset"


@pytest.mark.parametrize("S,chunk_size", [(16, 16), (37, 8)], ids=["one-chunk", "chunks"])
@pytest.mark.parametrize("state_grad", [False, True], ids=["constant-state", "state-grad"])
def test_final_state_left_out_of_the_loss(S, chunk_size, state_grad):
    """PPO's case: the loss uses h only (the final-state gradients are skipped, not zero-filled)
    and the stored initial state is a constant; the gradients still equal the reference's."""
    B, H, dk, dv = 3, 2, 5, 4
    inputs = make_inputs(B, H, S, dk, dv, seed=61)
    state = make_state(B, H, dk, dv, seed=62)
    reset = resets(B, S, chunk_size, "mixed")
    rows = torch.ones(B, S, dtype=torch.bool)
    got, want = [], []
    for fn, out in ((mlstm_chunkwise_fused, got), (mlstm_chunkwise_reference, want)):
        xs = [x.clone().requires_grad_() for x in inputs]
        st = tuple(x.clone().requires_grad_(state_grad) for x in state)
        h, _ = fn(*xs, state=st, reset=reset, chunk_size=chunk_size)
        (h * torch.cos(torch.arange(h.numel(), dtype=h.dtype)).view(h.shape)
         * rows[:, None, :, None]).sum().backward()
        out.extend([x.grad for x in xs] + [x.grad for x in st])
    for name, a, b in zip(("dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"), got, want):
        if not state_grad and name in ("dC0", "dn0", "dm0"):
            assert a is None and b is None
            continue
        assert (a - b).abs().max() <= F64_TOL * max(b.abs().max(), 1.0), name


# ------------------------------------------------------------------------ gradcheck and dtypes

@pytest.mark.parametrize("reset", [False, True], ids=["no-reset", "reset"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
def test_gradcheck(reset, with_state):
    B, H, S, dk, dv = 2, 1, 7, 2, 3
    tensors = [x.requires_grad_() for x in make_inputs(B, H, S, dk, dv, seed=41)]
    if with_state:
        tensors += [s.requires_grad_() for s in make_state(B, H, dk, dv, seed=42)]
    r = None
    if reset:
        r = torch.zeros(B, S, dtype=torch.bool)
        r[0, 2] = r[1, 3] = r[1, 4] = True

    def fn(q, k, v, i, f, *state):
        h, fin = mlstm_chunkwise_fused(q, k, v, i, f, state=tuple(state) if state else None,
                                       reset=r, chunk_size=3)
        return (h, *fin)

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_bfloat16_inputs_float32_states_finite_grads():
    inputs = make_inputs(2, 2, 50, 8, 8, seed=43, dtype=torch.bfloat16)
    state = make_state(2, 2, 8, 8, seed=44, dtype=torch.float32)
    r = resets(2, 50, 16, "mixed")
    got = run(mlstm_chunkwise_fused, inputs, state, r, 16)
    want = run(mlstm_chunkwise_reference, inputs, state, r, 16)
    assert got["h"].dtype == torch.bfloat16
    assert all(got[x].dtype == torch.float32 for x in ("C", "n", "m", "dC0", "dn0", "dm0"))
    assert all(got[x].dtype == torch.bfloat16 for x in ("dq", "dk", "dv", "di", "df"))
    assert all(torch.isfinite(x).all() for x in got.values())
    for name in NAMES:                        # bfloat16 tensors: one bfloat16 ulp apart at most
        tol = 1e-2 if got[name].dtype == torch.bfloat16 else F32_TOL
        scale = want[name].double().abs().max().item()
        assert (got[name].double() - want[name].double()).abs().max().item() <= tol * scale, name


def test_no_grad_forward_and_double_backward():
    """No-grad forward gives the same values; a retained graph gives the same gradients twice."""
    inputs = make_inputs(2, 2, 45, 4, 4, seed=45)
    state = make_state(2, 2, 4, 4, seed=46)
    r = resets(2, 45, 16, "mixed")
    with torch.no_grad():
        h, fin = mlstm_chunkwise_fused(*inputs, state=state, reset=r, chunk_size=16)
    xs = [x.clone().requires_grad_() for x in inputs]
    h2, fin2 = mlstm_chunkwise_fused(*xs, state=state, reset=r, chunk_size=16)
    assert torch.equal(h, h2.detach()) and all(torch.equal(a, b) for a, b in zip(fin, fin2))
    loss = (h2 ** 2).sum() + sum(s.sum() for s in fin2)
    first = torch.autograd.grad(loss, xs, retain_graph=True)
    second = torch.autograd.grad(loss, xs)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_reference_backend_dispatches_to_fused():
    """Without the compiled CPU kernels (``tests/test_cpu_sequence_kernel.py`` covers the
    dispatch to them), the reference backend runs this kernel."""
    inputs = [x.requires_grad_() for x in make_inputs(1, 1, 12, 2, 2, seed=47)]
    with cpu_kernels.disabled():
        h, (c, _, _) = mlstm_chunkwise(*inputs, chunk_size=4, backend="reference")
    assert all("ChunkwiseFused" in type(x.grad_fn).__name__ for x in (h, c))


@pytest.mark.parametrize("S,chunk_size", [(81, 64), (121, 64), (37, 16)])
def test_dispatch_evens_out_chunks_with_the_same_results(S, chunk_size):
    """The reference backend runs S = 81 at chunk size 64 as two chunks of 41: outputs, final
    state and every gradient equal the reference at chunk size 64 (64 + 17 padded)."""
    B, H, dk, dv = 2, 2, 4, 3
    inputs = make_inputs(B, H, S, dk, dv, seed=71)
    state = make_state(B, H, dk, dv, seed=72)
    dispatched = functools.partial(mlstm_chunkwise, backend="reference")
    with cpu_kernels.disabled():  # else the compiled CPU kernel runs (no chunks at all)
        got = run(dispatched, inputs, state, resets(B, S, 7, "mixed"), chunk_size)
    want = run(mlstm_chunkwise_reference, inputs, state, resets(B, S, 7, "mixed"), chunk_size)
    assert_match(got, want, F64_TOL)


def test_second_derivatives_are_refused():
    """The backward is hand-written: differentiating it again must fail loudly, not be wrong."""
    inputs = [x.requires_grad_() for x in make_inputs(1, 1, 8, 2, 2, seed=48)]
    h, _ = mlstm_chunkwise_fused(*inputs, chunk_size=4)
    (dq,) = torch.autograd.grad(h.sum(), inputs[:1], create_graph=True)
    with pytest.raises(RuntimeError):
        dq.sum().backward()
