"""Correctness of the pure-PyTorch mLSTM reference kernels (``xlstm_rl.kernels``).

The four forms are one map (DESIGN.md, "mLSTM math"):

- ``mlstm_recurrent``: the step loop, the definition;
- ``mlstm_step`` called S times by hand;
- ``mlstm_chunkwise``: recurrent between chunks, parallel inside them;
- ``mlstm_parallel``: the quadratic oracle (outputs only).

Checks: the float64 golden vectors of an independent implementation; the forms against the
float64 step loop in float32; resets (equal to running segments alone, gradients exactly zero
across them, non-finite discarded states never leak); carried state; ``gradcheck``; finiteness
under extreme gates.

Relative error everywhere is ``max|a - b| / max|b|`` over the whole tensor, ``b`` the reference.
"""
from __future__ import annotations

import functools
import math
import pathlib

import numpy as np
import pytest
import torch

from xlstm_rl.kernels import (mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, mlstm_step,
                              mlstm_zero_state)

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


# ------------------------------------------------------------------------ golden: step loop

def test_golden_file_is_what_the_readme_says():
    g = golden()
    assert g["q"].dtype == torch.float64 and g["q"].shape == (2, 2, 96, 16)
    assert g["v"].shape == (2, 2, 96, 24)
    assert g["reset"].dtype == torch.bool
    assert g["reset"].nonzero().tolist() == [[0, 35], [1, 70]]
    assert (g["f"][..., 30:40] == -8).all()


@pytest.mark.parametrize("form", ["recurrent", "step"])
def test_golden_outputs_and_final_state(form):
    g = golden()
    h, (C, n, m) = run_form(form, *golden_inputs())
    assert h.dtype == C.dtype == n.dtype == m.dtype == torch.float64
    for name, got in (("h", h), ("C", C), ("n", n), ("m", m)):
        assert_close(name, got, g[name], GOLDEN_LOOP_TOL)


@pytest.mark.parametrize("form", ["recurrent", "step"])
def test_golden_mid_state_and_continuation(form):
    g = golden()
    q, k, v, i, f = golden_inputs()
    _, (C, n, m) = run_form(form, q[:, :, :48], k[:, :, :48], v[:, :, :48], i[:, :, :48],
                            f[:, :, :48])
    for name, got in (("C_mid", C), ("n_mid", n), ("m_mid", m)):
        assert_close(name, got, g[name], GOLDEN_LOOP_TOL)
    mid = (g["C_mid"], g["n_mid"], g["m_mid"])
    h2, (C, n, m) = run_form(form, q[:, :, 48:], k[:, :, 48:], v[:, :, 48:], i[:, :, 48:],
                             f[:, :, 48:], state=mid)
    assert_close("h[48:]", h2, g["h"][:, :, 48:], GOLDEN_LOOP_TOL)
    for name, got in (("C", C), ("n", n), ("m", m)):
        assert_close(name, got, g[name], GOLDEN_LOOP_TOL)


@pytest.mark.parametrize("form", ["recurrent", "step"])
def test_golden_gradients(form):
    g = golden()
    inputs = golden_inputs(requires_grad=True)
    h, _ = run_form(form, *inputs)
    (h * g["w"]).sum().backward()
    for name, x in zip("qkvif", inputs):
        assert_close("d" + name, x.grad, g["d" + name], GOLDEN_LOOP_TOL)


@pytest.mark.parametrize("form", ["recurrent", "step"])
def test_golden_resets(form):
    g = golden()
    h, _ = run_form(form, *golden_inputs(), reset=g["reset"])
    assert_close("h_reset", h, g["h_reset"], GOLDEN_LOOP_TOL)


# --------------------------------------------------------------- golden: chunkwise, parallel

@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_golden_chunkwise(chunk_size):
    g = golden()
    inputs = golden_inputs(requires_grad=True)
    h, (C, n, m) = mlstm_chunkwise(*inputs, chunk_size=chunk_size, backend="reference")
    assert h.dtype == C.dtype == n.dtype == m.dtype == torch.float64
    for name, got in (("h", h), ("C", C), ("n", n), ("m", m)):
        assert_close(name, got, g[name], GOLDEN_FORM_TOL)
    (h * g["w"]).sum().backward()
    for name, x in zip("qkvif", inputs):
        assert_close("d" + name, x.grad, g["d" + name], GOLDEN_FORM_TOL)

    q, k, v, i, f = golden_inputs()
    h_reset, _ = mlstm_chunkwise(q, k, v, i, f, reset=g["reset"], chunk_size=chunk_size,
                                 backend="reference")
    assert_close("h_reset", h_reset, g["h_reset"], GOLDEN_FORM_TOL)

    _, mid = mlstm_chunkwise(q[:, :, :48], k[:, :, :48], v[:, :, :48], i[:, :, :48],
                             f[:, :, :48], chunk_size=chunk_size, backend="reference")
    for name, got in zip(("C_mid", "n_mid", "m_mid"), mid):
        assert_close(name, got, g[name], GOLDEN_FORM_TOL)
    h2, end = mlstm_chunkwise(q[:, :, 48:], k[:, :, 48:], v[:, :, 48:], i[:, :, 48:],
                              f[:, :, 48:], state=(g["C_mid"], g["n_mid"], g["m_mid"]),
                              chunk_size=chunk_size, backend="reference")
    assert_close("h[48:]", h2, g["h"][:, :, 48:], GOLDEN_FORM_TOL)
    for name, got in zip("Cnm", end):
        assert_close(name, got, g[name], GOLDEN_FORM_TOL)


def test_golden_parallel():
    g = golden()
    inputs = golden_inputs(requires_grad=True)
    h = mlstm_parallel(*inputs)
    assert h.dtype == torch.float64
    assert_close("h", h, g["h"], GOLDEN_FORM_TOL)
    (h * g["w"]).sum().backward()
    for name, x in zip("qkvif", inputs):
        assert_close("d" + name, x.grad, g["d" + name], GOLDEN_FORM_TOL)
    q, k, v, i, f = golden_inputs()
    assert_close("h_reset", mlstm_parallel(q, k, v, i, f, reset=g["reset"]), g["h_reset"],
                 GOLDEN_FORM_TOL)
    h2 = mlstm_parallel(q[:, :, 48:], k[:, :, 48:], v[:, :, 48:], i[:, :, 48:], f[:, :, 48:],
                        state=(g["C_mid"], g["n_mid"], g["m_mid"]))
    assert_close("h[48:]", h2, g["h"][:, :, 48:], GOLDEN_FORM_TOL)


# ---------------------------------------------------- float32 forms vs the float64 definition

# (B, H, S, Dk, Dv, random initial state): S not divisible by the chunk sizes, Dk != Dv.
CASES = [
    (1, 1, 37, 8, 8, False),
    (2, 3, 37, 16, 8, True),
    (2, 2, 100, 8, 12, False),
    (1, 3, 100, 12, 4, True),
    (3, 1, 257, 4, 16, True),
    (2, 2, 257, 16, 8, False),
]
CASE_IDS = [f"B{c[0]}H{c[1]}S{c[2]}k{c[3]}v{c[4]}{'-state' if c[5] else ''}" for c in CASES]


@functools.cache
def float32_problem(case):
    """float32 inputs (and state), and the float64 step loop on exactly those values.

    Returns ``(inputs32, state32, w, sw, ref)`` where ``ref`` holds the float64 outputs, final
    state and the gradients of ``loss_of`` w.r.t. inputs and initial state.
    """
    B, H, S, dk, dv, with_state = case
    seed = 1000 + 10 * CASES.index(case)
    inputs = [x.float() for x in make_inputs(B, H, S, dk, dv, seed=seed)]
    state = make_state(B, H, dk, dv, seed=seed + 1, dtype=torch.float32) if with_state else None
    x64 = [x.double().requires_grad_() for x in inputs]
    s64 = None if state is None else [s.double().requires_grad_() for s in state]
    h, fin = mlstm_recurrent(*x64, state=None if s64 is None else tuple(s64))
    w, sw = weights_like(h, fin, seed + 2)
    loss_of(h, fin, w, sw).backward()
    ref = {"h": h.detach(), "state": [s.detach() for s in fin],
           "grads": [x.grad for x in x64],
           "state_grads": None if s64 is None else [s.grad for s in s64]}
    return inputs, state, w, sw, ref


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_chunkwise_float32_matches_definition(case, chunk_size):
    inputs, state, _, _, ref = float32_problem(case)
    h, fin = mlstm_chunkwise(*inputs, state=state, chunk_size=chunk_size, backend="reference")
    assert h.dtype == torch.float32 and all(s.dtype == torch.float32 for s in fin)
    assert_close("h", h, ref["h"], F32_TOL)
    for name, got, want in zip("Cnm", fin, ref["state"]):
        assert_close(name, got, want, F32_TOL)


def _other_form_params():
    params = []
    for case, cid in zip(CASES, CASE_IDS):
        for form in ("recurrent", "step", "parallel"):
            # |logsigmoid(f)| sums to ~130 over 257 steps here: 2.6e-5 with the prefix sums
            marks = []
            params.append(pytest.param(case, form, id=f"{cid}-{form}", marks=marks))
    return params


@pytest.mark.parametrize("case,form", _other_form_params())
def test_other_forms_float32_match_definition(case, form):
    inputs, state, _, _, ref = float32_problem(case)
    h, fin = run_form(form, *inputs, state=state)
    assert h.dtype == torch.float32
    assert_close("h", h, ref["h"], F32_TOL)
    if fin is not None:
        for name, got, want in zip("Cnm", fin, ref["state"]):
            assert_close(name, got, want, F32_TOL)


@pytest.mark.parametrize("form,chunk_size", [("chunkwise", 16), ("chunkwise", 64),
                                             ("chunkwise", 256), ("recurrent", None)],
                         ids=["chunkwise16", "chunkwise64", "chunkwise256", "recurrent"])
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[4]],
                         ids=[CASE_IDS[1], CASE_IDS[2], CASE_IDS[4]])
def test_float32_gradients_match_definition(case, form, chunk_size):
    """Gradients (inputs and initial state) of a loss on h and the final state, in float32.
    1e-5 holds for gradients too (observed <= 1e-6), no looser gradient tolerance needed."""
    inputs, state, w, sw, ref = float32_problem(case)
    xs = [x.clone().requires_grad_() for x in inputs]
    ss = None if state is None else [s.clone().requires_grad_() for s in state]
    h, fin = run_form(form, *xs, state=None if ss is None else tuple(ss),
                      chunk_size=chunk_size or 64)
    loss_of(h, fin, w, sw).backward()
    for name, x, want in zip("qkvif", xs, ref["grads"]):
        assert x.grad.dtype == torch.float32
        assert_close("d" + name, x.grad, want, F32_TOL)
    if ss is not None:
        for name, s, want in zip(("dC0", "dn0", "dm0"), ss, ref["state_grads"]):
            assert_close(name, s.grad, want, F32_TOL)


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
