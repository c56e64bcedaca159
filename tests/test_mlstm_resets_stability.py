"""mLSTM reference kernels, part 2: resets, carried state, gradcheck and stability.

Resets equal running the segments alone, no gradient crosses them (exactly zero) and a
non-finite discarded state never leaks; a split sequence with the state carried equals the
whole; ``gradcheck`` in float64; finiteness under extreme gates at S = 8192. Helpers are shared
with part 1 through ``mlstm_cases.py``.
"""
from __future__ import annotations

import math

import pytest
import torch

from xlstm_rl.kernels import mlstm_recurrent, mlstm_step, mlstm_zero_state

import mlstm_cases as _cases  # tests/ is on sys.path under pytest

F32_TOL = _cases.F32_TOL
FORMS = _cases.FORMS
assert_close = _cases.assert_close
make_inputs = _cases.make_inputs
make_state = _cases.make_state
step_loop = _cases.step_loop
run_form = _cases.run_form
loss_of = _cases.loss_of
weights_like = _cases.weights_like

# ------------------------------------------------------------------------------------ resets

RESET_B, RESET_H, RESET_S, RESET_DK, RESET_DV = 3, 2, 48, 8, 6
# row 0: resets inside chunks of 8 and 16, two in a row; row 1: at t=0 and on chunk
# boundaries; row 2: none (its segment starts from the random initial state).
RESET_AT = {0: (5, 21, 22, 40), 1: (0, 16, 32), 2: ()}
ELSEWHERE = (10, 27, 44)     # very negative forget gates away from resets too


def reset_problem(f_value, dtype=torch.float32):
    inputs = make_inputs(RESET_B, RESET_H, RESET_S, RESET_DK, RESET_DV, seed=11)
    state = make_state(RESET_B, RESET_H, RESET_DK, RESET_DV, seed=12)
    reset = torch.zeros(RESET_B, RESET_S, dtype=torch.bool)
    for b, ts in RESET_AT.items():
        reset[b, list(ts)] = True
        if f_value is not None:
            for t in (*ts, *ELSEWHERE):
                if t > 0:
                    inputs[4][b, :, t - 1] = f_value    # right before the reset / elsewhere
    return [x.to(dtype) for x in inputs], tuple(s.to(dtype) for s in state), reset


def segments_reference(inputs, state, reset):
    """Every row cut at its resets; each segment run alone by the float64 step loop, the first
    from the row's initial state, the others from the zero state. Returns h and final state."""
    B, _, S, dk = inputs[0].shape
    dv = inputs[2].shape[-1]
    h = torch.empty(*inputs[2].shape, dtype=torch.float64)
    finals = []
    for b in range(B):
        starts = sorted({0, *reset[b].nonzero().flatten().tolist()})
        row_state = tuple(s[b:b + 1].double() for s in state)
        for a, e in zip(starts, [*starts[1:], S]):
            seg = [x[b:b + 1, :, a:e].double() for x in inputs]
            if reset[b, a]:
                row_state = mlstm_zero_state(1, inputs[0].shape[1], dk, dv, dtype=torch.float64)
            h_seg, row_state = mlstm_recurrent(*seg, state=row_state)
            h[b:b + 1, :, a:e] = h_seg
        finals.append(row_state)
    return h, tuple(torch.cat(parts) for parts in zip(*finals))


RESET_FORMS = [("chunkwise", 8), ("chunkwise", 16), ("chunkwise", 64), ("recurrent", None),
               ("step", None), ("parallel", None)]
F_VALUES = {"gates-normal": None, "f-30": -30.0, "f-1e3": -1e3}


def _reset_params():
    params = []
    for form, L in RESET_FORMS:
        for fid, fv in F_VALUES.items():
            marks = []
            params.append(pytest.param(form, L, fv, id=f"{form}{L or ''}-{fid}", marks=marks))
    return params


@pytest.mark.parametrize("form,chunk_size,f_value", _reset_params())
def test_reset_equals_running_segments_alone(form, chunk_size, f_value):
    inputs, state, reset = reset_problem(f_value)
    h, fin = run_form(form, *inputs, state=state, reset=reset, chunk_size=chunk_size or 64)
    want_h, want_state = segments_reference(inputs, state, reset)
    assert_close("h", h, want_h, F32_TOL)
    if fin is not None:
        for name, got, want in zip("Cnm", fin, want_state):
            assert_close(name, got, want, F32_TOL)


GRAD_FORMS = [("chunkwise", 4), ("chunkwise", 8), ("chunkwise", 16), ("chunkwise", 64),
              ("recurrent", None), ("step", None)]
GRAD_FORM_IDS = [f"{f}{'' if L is None else L}" for f, L in GRAD_FORMS]


@pytest.mark.parametrize("f_value", list(F_VALUES.values()), ids=list(F_VALUES))
@pytest.mark.parametrize("form,chunk_size", GRAD_FORMS, ids=GRAD_FORM_IDS)
def test_no_gradient_crosses_a_reset(form, chunk_size, f_value):
    """The loss on every output and final state after a row's last reset has gradient exactly
    0.0 w.r.t. that row's inputs before the reset and w.r.t. its initial state."""
    inputs, state, reset = reset_problem(f_value)
    last = {b: max(ts) for b, ts in RESET_AT.items() if ts}
    xs = [x.clone().requires_grad_() for x in inputs]
    ss = [s.clone().requires_grad_() for s in state]
    h, fin = run_form(form, *xs, state=tuple(ss), reset=reset, chunk_size=chunk_size or 64)
    w, sw = weights_like(h, fin, seed=13)
    loss = 0.0
    for b, t in last.items():
        loss = loss + (h[b, :, t:].double() * w[b, :, t:]).sum()
        loss = loss + sum((s[b].double() * sws[b]).sum() for s, sws in zip(fin, sw))
    loss.backward()
    for b, t in last.items():
        for name, x in zip("qkvif", xs):
            before = x.grad[b, :, :t]
            assert torch.count_nonzero(before) == 0, (
                f"d{name} row {b} before its reset at {t}: max |grad| "
                f"{before.abs().max().item():.3e} (must be exactly 0)")
            assert torch.count_nonzero(x.grad[b, :, t:]) > 0     # the loss does reach inputs
        for name, s in zip(("C0", "n0", "m0"), ss):
            assert torch.count_nonzero(s.grad[b]) == 0, f"d{name} row {b} must be exactly 0"
    for x in xs:   # rows not in the loss get nothing either
        assert torch.count_nonzero(x.grad[2]) == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", ["C", "n", "m"])
@pytest.mark.parametrize("form", FORMS)
def test_nonfinite_state_of_a_row_reset_at_t0_does_not_leak(form, which, bad):
    B, H, S, dk, dv = 2, 2, 13, 4, 3
    inputs = make_inputs(B, H, S, dk, dv, seed=21, dtype=torch.float32)
    state = list(make_state(B, H, dk, dv, seed=22, dtype=torch.float32))
    reset = torch.zeros(B, S, dtype=torch.bool)
    reset[0, 0] = True
    reset[1, 6] = True
    poisoned = [s.clone() for s in state]
    poisoned["Cnm".index(which)][0].fill_(bad)          # row 0 resets at t=0: discarded

    def run(st):
        xs = [x.clone().requires_grad_() for x in inputs]
        ss = [s.clone().requires_grad_() for s in st]
        h, fin = run_form(form, *xs, state=tuple(ss), reset=reset, chunk_size=4)
        w, sw = weights_like(h, fin, seed=23)
        loss_of(h, fin, w, sw).backward()
        return h.detach(), fin, [x.grad for x in xs], [s.grad for s in ss]

    h, fin, gx, gs = run(poisoned)
    clean = [s.clone() for s in state]
    for s in clean:
        s[0] = 0.0
    h_ok, fin_ok, gx_ok, gs_ok = run(clean)
    assert torch.isfinite(h).all(), "non-finite discarded state reached the outputs"
    assert torch.equal(h, h_ok)
    if fin is not None:
        assert all(torch.isfinite(s).all() for s in fin)
        assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(fin, fin_ok))
    for name, g, g_ok in zip("qkvif", gx, gx_ok):
        assert torch.isfinite(g).all(), f"non-finite discarded state reached d{name}"
        assert torch.equal(g, g_ok), f"d{name} differs from the run with a clean state"
    for name, g in zip("Cnm", gs):
        assert torch.count_nonzero(g[0]) == 0, f"d{name}0 of the reset row must be exactly 0"
        assert torch.isfinite(g[1]).all()


# ----------------------------------------------------------------------------- carried state

SPLIT_FORMS = [("chunkwise", 16), ("chunkwise", 7), ("recurrent", None), ("step", None)]


@pytest.mark.parametrize("split", [23, 32])
@pytest.mark.parametrize("with_resets", [False, True], ids=["no-reset", "resets"])
@pytest.mark.parametrize("form,chunk_size", SPLIT_FORMS,
                         ids=[f"{f}{'' if L is None else L}" for f, L in SPLIT_FORMS])
def test_carried_state_equals_whole_sequence(form, chunk_size, with_resets, split):
    B, H, S, dk, dv = 2, 2, 50, 8, 4
    inputs = make_inputs(B, H, S, dk, dv, seed=31, dtype=torch.float32)
    state = make_state(B, H, dk, dv, seed=32, dtype=torch.float32)
    reset = None
    if with_resets:
        reset = torch.zeros(B, S, dtype=torch.bool)
        reset[0, [9, 30, 45]] = True
        reset[1, [split]] = True             # a reset right at the split

    def run(pieces):
        xs = [x.clone().requires_grad_() for x in inputs]
        ss = [s.clone().requires_grad_() for s in state]
        st, hs = tuple(ss), []
        for a, e in pieces:
            h, st = run_form(form, *(x[:, :, a:e] for x in xs), state=st,
                             reset=None if reset is None else reset[:, a:e],
                             chunk_size=chunk_size or 64)
            hs.append(h)
        h = torch.cat(hs, dim=2)
        w, sw = weights_like(h, st, seed=33)
        loss_of(h, st, w, sw).backward()
        return h.detach(), [s.detach() for s in st], [x.grad for x in xs], [s.grad for s in ss]

    whole = run([(0, S)])
    halves = run([(0, split), (split, S)])
    for name, a, b in zip(("h", "state", "d_inputs", "d_state"), halves, whole):
        a, b = (a, b) if isinstance(a, list) else ([a], [b])
        for j, (x, y) in enumerate(zip(a, b)):
            assert_close(f"{name}[{j}]", x, y, F32_TOL)


# ---------------------------------------------------------------------------------- gradcheck

def _gradcheck(fn, tensors):
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("with_resets", [False, True], ids=["no-reset", "resets"])
@pytest.mark.parametrize("form,chunk_size", [("recurrent", None), ("chunkwise", 1),
                                             ("chunkwise", 3), ("chunkwise", 16),
                                             ("parallel", None)],
                         ids=["recurrent", "chunkwise1", "chunkwise3", "chunkwise16", "parallel"])
def test_gradcheck_sequence_forms(form, chunk_size, with_resets):
    B, H, S, dk, dv = 2, 1, 7, 3, 2
    inputs = make_inputs(B, H, S, dk, dv, seed=41)
    state = make_state(B, H, dk, dv, seed=42)
    reset = None
    if with_resets:
        reset = torch.zeros(B, S, dtype=torch.bool)
        reset[0, 1] = True        # inside the first chunk of 3
        reset[1, 0] = True        # the initial state of row 1 is discarded
        reset[1, 4] = True        # inside the second chunk of 3
    tensors = [x.requires_grad_() for x in (*inputs, *state)]

    def fn(q, k, v, i, f, C, n, m):
        h, fin = run_form(form, q, k, v, i, f, state=(C, n, m), reset=reset,
                          chunk_size=chunk_size or 64)
        return (h,) if fin is None else (h, *fin)

    _gradcheck(fn, tensors)


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "zero-state"])
@pytest.mark.parametrize("reset_row", [None, 0], ids=["no-reset", "reset-row0"])
def test_gradcheck_step(with_state, reset_row):
    B, H, dk, dv = 2, 2, 3, 2
    q, k, v, i, f = (x[:, :, 0] for x in make_inputs(B, H, 1, dk, dv, seed=43))
    reset = None
    if reset_row is not None:
        reset = torch.zeros(B, dtype=torch.bool)
        reset[reset_row] = True
    tensors = [x.requires_grad_() for x in (q, k, v, i, f)]
    if with_state:
        tensors += [s.requires_grad_() for s in make_state(B, H, dk, dv, seed=44)]

    def fn(q, k, v, i, f, *state):
        h, fin = mlstm_step(q, k, v, i, f, tuple(state) if state else None, reset=reset,
                            backend="reference")
        return (h, *fin)

    _gradcheck(fn, tensors)


def test_gradcheck_step_sequence_from_zero_state():
    """Several steps from the zero state: the stabilizer changes branch along the way."""
    B, H, S, dk, dv = 1, 2, 5, 3, 2
    inputs = make_inputs(B, H, S, dk, dv, seed=45)
    inputs[3][..., 2] += 3.0                  # input gate dominates at t=2
    tensors = [x.requires_grad_() for x in inputs]
    _gradcheck(lambda *xs: step_loop(*xs)[0], tensors)


# ---------------------------------------------------------------------------------- stability

def _extreme_problem(B, H, S, dk, dv, dtype, seed):
    """Gates ~ U[-100, 100]; row 0 has no reset, the other rows reset with probability 1%."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, S, dk, generator=g) for _ in range(2))
    v = torch.randn(B, H, S, dv, generator=g)
    i, f = (200.0 * torch.rand(B, H, S, generator=g) - 100.0 for _ in range(2))
    reset = torch.rand(B, S, generator=g) < 0.01
    reset[0] = False
    state = make_state(B, H, dk, dv, seed=seed + 1, dtype=torch.float32)
    return [x.to(dtype) for x in (q, k, v, i, f)], state, reset


def _assert_all_finite(form, inputs, state, reset, chunk_size=64):
    xs = [x.clone().requires_grad_() for x in inputs]
    ss = [s.clone().requires_grad_() for s in state]
    h, fin = run_form(form, *xs, state=tuple(ss), reset=reset, chunk_size=chunk_size)
    assert h.dtype == inputs[0].dtype
    assert torch.isfinite(h).all(), "non-finite outputs"
    if fin is not None:
        for name, s in zip("Cnm", fin):
            assert s.dtype == torch.float32
            assert torch.isfinite(s).all(), f"non-finite final {name}"
    w, sw = weights_like(h, fin, seed=3)
    loss_of(h, fin, w, sw).backward()
    bad = [name for name, x in zip(("dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"),
                                   (*xs, *ss)) if not torch.isfinite(x.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("chunk_size", [16, 64, 256])
def test_extreme_gates_long_sequence_chunkwise(chunk_size, dtype):
    inputs, state, reset = _extreme_problem(2, 1, 8192, 16, 16, dtype, 51)
    _assert_all_finite("chunkwise", inputs, state, reset, chunk_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("form,S", [("recurrent", 512), ("parallel", 1024)])
def test_extreme_gates_step_loop_and_parallel(form, S, dtype):
    inputs, state, reset = _extreme_problem(2, 1, S, 8, 8, dtype, 52)
    _assert_all_finite(form, inputs, state, reset)


def _saturated_params():
    params = []
    for form, L in (("recurrent", None), ("step", None), ("chunkwise", 4), ("parallel", None)):
        for gate in (-100.0, 100.0):
            # all gates at -100: m_t = -100 for every t, and e^100 overflows float32
            marks = []
            params.append(pytest.param(form, L, gate, id=f"{form}{L or ''}-{gate:g}",
                                       marks=marks))
    return params


@pytest.mark.parametrize("form,chunk_size,gate", _saturated_params())
def test_saturated_gates_stay_finite(form, chunk_size, gate):
    """Every gate pre-activation at +100 or at -100, from the zero state."""
    inputs = make_inputs(2, 2, 9, 4, 3, seed=53, dtype=torch.float32)
    inputs[3].fill_(gate)
    inputs[4].fill_(gate)
    _assert_all_finite(form, inputs, mlstm_zero_state(2, 2, 4, 3), None, chunk_size or 64)
