"""mLSTM reference kernels, part 1: golden vectors and the equivalence of all forms.

The four forms are one map (docs/architecture.md, "mLSTM math"): ``mlstm_recurrent`` (the step
loop, the definition), ``mlstm_step`` called S times, ``mlstm_chunkwise`` and ``mlstm_parallel``
(the quadratic oracle). Checks: the float64 golden vectors of an independent implementation, and
the forms against the float64 step loop in float32 (outputs, final states, gradients). Relative
error is ``max|a - b| / max|b|`` over the whole tensor, ``b`` the reference. Part 2 (resets,
carried state, gradcheck, stability) is ``test_mlstm_resets_stability.py``.
"""
from __future__ import annotations

import functools

import pytest
import torch

from xlstm_rl.kernels import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent

import mlstm_cases as _cases  # tests/ is on sys.path under pytest

CHUNK_SIZES = _cases.CHUNK_SIZES
GOLDEN_LOOP_TOL = _cases.GOLDEN_LOOP_TOL
GOLDEN_FORM_TOL = _cases.GOLDEN_FORM_TOL
F32_TOL = _cases.F32_TOL
assert_close = _cases.assert_close
make_inputs = _cases.make_inputs
make_state = _cases.make_state
run_form = _cases.run_form
loss_of = _cases.loss_of
weights_like = _cases.weights_like
golden = _cases.golden
golden_inputs = _cases.golden_inputs

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

