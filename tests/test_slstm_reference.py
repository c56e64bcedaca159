"""Correctness of the pure-PyTorch sLSTM reference kernels (``xlstm_rl.kernels``).

Three forms: ``slstm_sequence`` (public; on CPU the fused time loop with its hand-written
backward), ``slstm_step`` called once per step, and ``slstm_sequence_reference`` (the definition,
a loop of the step).

The sLSTM has no golden file, so the reference is checked against an independent float64
implementation of the *unstabilized* recurrence of docs/architecture.md ("sLSTM math"):

    C_t = sigmoid(f̃_t) C_{t-1} + exp(ĩ_t) tanh(z̃_t),   N_t = sigmoid(f̃_t) N_{t-1} + exp(ĩ_t)
    h_t = sigmoid(õ_t) C_t / N_t

which the stabilized state of the reference represents as ``C = c · exp(m)``, ``N = n · exp(m)``
(moderate gates only, so that float64 needs no stabilizer). Relative error is
``max|a - b| / max|b|`` over the whole tensor, ``b`` the reference value.
"""
from __future__ import annotations

import math

import pytest
import torch

from xlstm_rl.kernels import slstm_sequence, slstm_step, slstm_zero_state
from xlstm_rl.kernels.reference import slstm_sequence_reference

ORACLE_TOL = 1e-9     # float64 stabilized vs float64 unstabilized
F32_TOL = 1e-5        # float32 vs the float64 oracle
SAME_OPS_TOL = 1e-6   # float32 step loop vs float32 sequence


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    scale = b.abs().max().item()
    assert scale > 0
    return (a - b).abs().max().item() / scale


def assert_close(name: str, a: torch.Tensor, b: torch.Tensor, tol: float) -> float:
    err = rel_err(a, b)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"
    return err


def make_problem(B, S, H, D, *, seed, dtype=torch.float64):
    """wx [B,S,4,H,D] (gate order z, i, f, o; f biased to remember), R [4,H,D,D], bias [4,H,D]."""
    g = torch.Generator().manual_seed(seed)
    wx = torch.randn(B, S, 4, H, D, generator=g, dtype=torch.float64)
    wx[:, :, 2] += 1.0
    r_weight = torch.randn(4, H, D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    bias = 0.5 * torch.randn(4, H, D, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (wx, r_weight, bias)]


def make_state(B, H, D, *, seed, dtype=torch.float64):
    """A valid state: n > 0, |c| <= n, |h| < 1, m in [-2, 2]."""
    g = torch.Generator().manual_seed(seed)
    h = 2.0 * torch.rand(B, H, D, generator=g, dtype=torch.float64) - 1.0
    n = 0.5 + torch.rand(B, H, D, generator=g, dtype=torch.float64)
    c = n * (2.0 * torch.rand(B, H, D, generator=g, dtype=torch.float64) - 1.0)
    m = 4.0 * torch.rand(B, H, D, generator=g, dtype=torch.float64) - 2.0
    return tuple(x.to(dtype) for x in (h, c, n, m))


def oracle(wx, r_weight, bias, state=None, reset=None):
    """Unstabilized float64 sLSTM. Returns h [B,S,H,D] and the final (h, C, N) (not (c, n, m))."""
    wx, r_weight, bias = (x.double() for x in (wx, r_weight, bias))
    B, S, _, H, D = wx.shape
    if state is None:
        h = C = N = torch.zeros(B, H, D, dtype=torch.float64)
    else:
        h, c, n, m = (s.double() for s in state)
        C, N = c * torch.exp(m), n * torch.exp(m)
    hs = []
    for t in range(S):
        if reset is not None:
            keep = (~reset[:, t]).double()[:, None, None]
            h, C, N = h * keep, C * keep, N * keep
        # R[g, head, d_in, d_out]: per head, h_{t-1} (row vector) times R
        rec = (h[:, None, :, None, :] @ r_weight[None]).squeeze(-2)          # [B,4,H,D]
        z, i, f, o = (wx[:, t] + rec + bias).unbind(dim=1)
        C = torch.sigmoid(f) * C + torch.exp(i) * torch.tanh(z)
        N = torch.sigmoid(f) * N + torch.exp(i)
        h = torch.sigmoid(o) * C / N
        hs.append(h)
    return torch.stack(hs, dim=1), (h, C, N)


def unstabilize(state):
    h, c, n, m = (s.double() for s in state)
    return h, c * torch.exp(m), n * torch.exp(m)


def step_loop(wx, r_weight, bias, *, state=None, reset=None):
    hs = []
    for t in range(wx.shape[1]):
        h, state = slstm_step(wx[:, t], r_weight, bias, state,
                              reset=None if reset is None else reset[:, t], backend="reference")
        hs.append(h)
    return torch.stack(hs, dim=1), state


def run_form(form, wx, r_weight, bias, *, state=None, reset=None):
    if form == "sequence":
        return slstm_sequence(wx, r_weight, bias, state=state, reset=reset, backend="reference")
    if form == "definition":
        return slstm_sequence_reference(wx, r_weight, bias, state=state, reset=reset)
    assert form == "step"
    return step_loop(wx, r_weight, bias, state=state, reset=reset)


FORMS = ("sequence", "step", "definition")


# ------------------------------------------------------------------------------ vs the oracle

@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
@pytest.mark.parametrize("form", FORMS)
def test_float64_matches_unstabilized_oracle(form, with_state):
    B, S, H, D = 2, 40, 2, 4
    wx, r_weight, bias = make_problem(B, S, H, D, seed=1)
    state = make_state(B, H, D, seed=2) if with_state else None
    h, fin = run_form(form, wx, r_weight, bias, state=state)
    assert h.dtype == torch.float64 and h.shape == (B, S, H, D)
    want_h, want_fin = oracle(wx, r_weight, bias, state)
    assert_close("h", h, want_h, ORACLE_TOL)
    for name, got, want in zip(("h_T", "C_T", "N_T"), unstabilize(fin), want_fin):
        assert_close(name, got, want, ORACLE_TOL)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
@pytest.mark.parametrize("form", FORMS)
def test_float32_matches_oracle(form, with_state):
    B, S, H, D = 3, 64, 2, 8
    wx, r_weight, bias = make_problem(B, S, H, D, seed=3, dtype=torch.float32)
    state = make_state(B, H, D, seed=4, dtype=torch.float32) if with_state else None
    h, fin = run_form(form, wx, r_weight, bias, state=state)
    assert h.dtype == torch.float32 and all(s.dtype == torch.float32 for s in fin)
    want_h, want_fin = oracle(wx, r_weight, bias, state)
    assert_close("h", h, want_h, F32_TOL)
    for name, got, want in zip(("h_T", "C_T", "N_T"), unstabilize(fin), want_fin):
        assert_close(name, got, want, F32_TOL)


@pytest.mark.parametrize("with_resets", [False, True], ids=["no-reset", "resets"])
def test_step_by_step_equals_sequence(with_resets):
    B, S, H, D = 3, 33, 2, 4
    wx, r_weight, bias = make_problem(B, S, H, D, seed=5, dtype=torch.float32)
    state = make_state(B, H, D, seed=6, dtype=torch.float32)
    reset = None
    if with_resets:
        reset = torch.zeros(B, S, dtype=torch.bool)
        reset[0, [0, 9]] = True
        reset[1, 20] = True
    h_seq, fin_seq = run_form("sequence", wx, r_weight, bias, state=state, reset=reset)
    for form in ("step", "definition"):
        h, fin = run_form(form, wx, r_weight, bias, state=state, reset=reset)
        assert_close(f"{form} h", h, h_seq, SAME_OPS_TOL)
        for name, a, b in zip("hcnm", fin, fin_seq):
            assert_close(f"{form} {name}", a, b, SAME_OPS_TOL)


# ------------------------------------------------------------------------------------ resets

RESET_AT = {0: (0, 7, 8, 19), 1: (12,), 2: ()}


def _reset_problem(f_value, dtype=torch.float32):
    B, S, H, D = 3, 28, 2, 4
    wx, r_weight, bias = make_problem(B, S, H, D, seed=7)
    state = make_state(B, H, D, seed=8)
    reset = torch.zeros(B, S, dtype=torch.bool)
    for b, ts in RESET_AT.items():
        reset[b, list(ts)] = True
        if f_value is not None:
            for t in (*ts, 4, 15):
                if t > 0:
                    wx[b, t - 1, 2] = f_value       # forget gate right before a reset / elsewhere
    return ([x.to(dtype) for x in (wx, r_weight, bias)], tuple(s.to(dtype) for s in state),
            reset)


@pytest.mark.parametrize("f_value", [None, -30.0, -1e3], ids=["gates-normal", "f-30", "f-1e3"])
@pytest.mark.parametrize("form", FORMS)
def test_reset_equals_running_segments_alone(form, f_value):
    (wx, r_weight, bias), state, reset = _reset_problem(f_value)
    h, fin = run_form(form, wx, r_weight, bias, state=state, reset=reset)
    S = wx.shape[1]
    for b in range(wx.shape[0]):
        starts = sorted({0, *reset[b].nonzero().flatten().tolist()})
        row_state = tuple(s[b:b + 1].double() for s in state)
        for a, e in zip(starts, [*starts[1:], S]):
            if reset[b, a]:
                row_state = slstm_zero_state(1, wx.shape[3], wx.shape[4], dtype=torch.float64)
            want, row_state = slstm_sequence(wx[b:b + 1, a:e].double(), r_weight.double(),
                                             bias.double(), state=row_state,
                                             backend="reference")
            assert_close(f"h row {b} [{a}:{e}]", h[b:b + 1, a:e], want, F32_TOL)
        for name, got, want in zip("hcnm", fin, row_state):
            assert_close(f"final {name} row {b}", got[b:b + 1], want, F32_TOL)


@pytest.mark.parametrize("f_value", [None, -1e3], ids=["gates-normal", "f-1e3"])
@pytest.mark.parametrize("form", FORMS)
def test_no_gradient_crosses_a_reset(form, f_value):
    (wx, r_weight, bias), state, reset = _reset_problem(f_value)
    wx = wx.requires_grad_()
    ss = [s.clone().requires_grad_() for s in state]
    h, fin = run_form(form, wx, r_weight, bias, state=tuple(ss), reset=reset)
    loss = 0.0
    for b, ts in RESET_AT.items():
        if ts:
            t = max(ts)
            loss = loss + h[b, t:].sum() + sum(s[b].sum() for s in fin)
    loss.backward()
    for b, ts in RESET_AT.items():
        if ts:
            t = max(ts)
            assert torch.count_nonzero(wx.grad[b, :t]) == 0, f"gradient crosses reset {b},{t}"
            assert torch.count_nonzero(wx.grad[b, t:]) > 0
            for name, s in zip("hcnm", ss):
                assert torch.count_nonzero(s.grad[b]) == 0, f"d{name}0 row {b} must be 0"
    assert torch.count_nonzero(wx.grad[2]) == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("form", FORMS)
def test_nonfinite_state_of_a_row_reset_at_t0_does_not_leak(form, bad):
    (wx, r_weight, bias), state, reset = _reset_problem(None)   # row 0 resets at t=0
    poisoned = [s.clone() for s in state]
    for s in poisoned:
        s[0] = bad

    def run(st):
        xs = [x.clone().requires_grad_() for x in (wx, r_weight, bias)]
        ss = [s.clone().requires_grad_() for s in st]
        h, fin = run_form(form, *xs, state=tuple(ss), reset=reset)
        (h.sum() + sum(s.sum() for s in fin)).backward()
        return h.detach(), [s.detach() for s in fin], [x.grad for x in xs], [s.grad for s in ss]

    h, fin, gx, gs = run(poisoned)
    h_ok, fin_ok, gx_ok, _ = run([torch.where(torch.isfinite(s), s, 0.0) for s in poisoned])
    assert torch.isfinite(h).all() and torch.equal(h, h_ok)
    assert all(torch.equal(a, b) for a, b in zip(fin, fin_ok))
    for name, g, g_ok in zip(("dwx", "dR", "dbias"), gx, gx_ok):
        assert torch.isfinite(g).all(), f"non-finite discarded state reached {name}"
        assert torch.equal(g, g_ok)
    for g in gs:
        assert torch.count_nonzero(g[0]) == 0 and torch.isfinite(g[1:]).all()


# ------------------------------------------------------------------------------- zero state

@pytest.mark.parametrize("i_first", [-1e3, -100.0, -70.0, -30.0, 0.0, 30.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("form", FORMS)
def test_first_step_from_zero_state_is_exact(form, dtype, i_first):
    """From the zero state, c_0 / n_0 = tanh(z_0) whatever the input gate (both scale by i')."""
    B, S, H, D = 2, 3, 2, 3
    wx, r_weight, bias = make_problem(B, S, H, D, seed=9, dtype=dtype)
    bias = torch.zeros_like(bias)
    wx[:, 0, 1] = i_first
    h, _ = run_form(form, wx, r_weight, bias)
    z, o = wx[:, 0, 0].double(), wx[:, 0, 3].double()
    assert_close("h_0", h[:, 0], torch.sigmoid(o) * torch.tanh(z), F32_TOL)


@pytest.mark.parametrize("i_first", [-1e3, -100.0, -30.0])
@pytest.mark.parametrize("form", FORMS)
def test_zero_state_never_divides_by_zero(form, i_first):
    """A tiny (or underflowing) input gate at the first step, also after a reset: finite h,
    state and gradients."""
    B, S, H, D = 2, 6, 2, 3
    wx, r_weight, bias = make_problem(B, S, H, D, seed=10, dtype=torch.float32)
    wx[:, 0, 1] = i_first
    wx[:, 3, 1] = i_first
    reset = torch.zeros(B, S, dtype=torch.bool)
    reset[1, 3] = True
    xs = [x.requires_grad_() for x in (wx, r_weight, bias)]
    h, fin = run_form(form, *xs, reset=reset)
    assert torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in fin)
    (h.sum() + sum(s.sum() for s in fin)).backward()
    for name, x in zip(("dwx", "dR", "dbias"), xs):
        assert torch.isfinite(x.grad).all(), f"non-finite {name}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("form", ["sequence", "definition"])
def test_extreme_gates_stay_finite(form, dtype):
    B, S, H, D = 2, 256, 2, 4
    g = torch.Generator().manual_seed(11)
    wx = (200.0 * torch.rand(B, S, 4, H, D, generator=g) - 100.0).to(dtype).requires_grad_()
    r_weight = torch.randn(4, H, D, D, generator=g).to(dtype).requires_grad_()
    bias = torch.zeros(4, H, D).to(dtype).requires_grad_()
    reset = torch.rand(B, S, generator=g) < 0.02
    state = [s.requires_grad_() for s in make_state(B, H, D, seed=12, dtype=torch.float32)]
    h, fin = run_form(form, wx, r_weight, bias, state=tuple(state), reset=reset)
    assert h.dtype == dtype and all(s.dtype == torch.float32 for s in fin)
    assert torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in fin)
    (h.float().sum() + sum(s.sum() for s in fin)).backward()
    for x in (wx, r_weight, bias, *state):
        assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- carried state

@pytest.mark.parametrize("with_resets", [False, True], ids=["no-reset", "resets"])
@pytest.mark.parametrize("split", [1, 13])
@pytest.mark.parametrize("form", ["sequence", "definition"])
def test_carried_state_equals_whole_sequence(form, split, with_resets):
    B, S, H, D = 2, 30, 2, 4
    wx, r_weight, bias = make_problem(B, S, H, D, seed=13, dtype=torch.float32)
    state = make_state(B, H, D, seed=14, dtype=torch.float32)
    reset = None
    if with_resets:
        reset = torch.zeros(B, S, dtype=torch.bool)
        reset[0, [5, 22]] = True
        reset[1, split] = True

    def run(pieces):
        xs = [x.clone().requires_grad_() for x in (wx, r_weight, bias)]
        ss = [s.clone().requires_grad_() for s in state]
        st, hs = tuple(ss), []
        for a, e in pieces:
            h, st = run_form(form, xs[0][:, a:e], xs[1], xs[2], state=st,
                             reset=None if reset is None else reset[:, a:e])
            hs.append(h)
        h = torch.cat(hs, dim=1)
        g = torch.Generator().manual_seed(15)
        (h * torch.randn(h.shape, generator=g)).sum().backward()
        return [h.detach(), *(s.detach() for s in st), *(x.grad for x in xs),
                *(s.grad for s in ss)]

    for j, (a, b) in enumerate(zip(run([(0, split), (split, S)]), run([(0, S)]))):
        assert_close(f"output {j}", a, b, SAME_OPS_TOL)


# ---------------------------------------------------------------------------------- gradcheck

def _gradcheck(fn, tensors):
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "zero-state"])
@pytest.mark.parametrize("reset_row", [None, 1], ids=["no-reset", "reset-row1"])
def test_gradcheck_step(with_state, reset_row):
    B, H, D = 2, 2, 3
    wx, r_weight, bias = make_problem(B, 1, H, D, seed=16)
    reset = None
    if reset_row is not None:
        reset = torch.zeros(B, dtype=torch.bool)
        reset[reset_row] = True
    tensors = [x.requires_grad_() for x in (wx[:, 0], r_weight, bias)]
    if with_state:
        tensors += [s.requires_grad_() for s in make_state(B, H, D, seed=17)]

    def fn(wx, r_weight, bias, *state):
        h, fin = slstm_step(wx, r_weight, bias, tuple(state) if state else None, reset=reset,
                            backend="reference")
        return (h, *fin)

    _gradcheck(fn, tensors)


@pytest.mark.parametrize("with_resets", [False, True], ids=["no-reset", "resets"])
@pytest.mark.parametrize("form", ["sequence", "definition"])
def test_gradcheck_sequence(form, with_resets):
    B, S, H, D = 2, 6, 1, 3
    wx, r_weight, bias = make_problem(B, S, H, D, seed=18)
    reset = None
    if with_resets:
        reset = torch.zeros(B, S, dtype=torch.bool)
        reset[0, 0] = True
        reset[1, 3] = True
    tensors = [x.requires_grad_() for x in (wx, r_weight, bias, *make_state(B, H, D, seed=19))]

    def fn(wx, r_weight, bias, *state):
        h, fin = run_form(form, wx, r_weight, bias, state=tuple(state), reset=reset)
        return (h, *fin)

    _gradcheck(fn, tensors)
