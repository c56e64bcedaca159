"""The fused sLSTM time loop (hand-written backward) against the step-by-step definition."""
from __future__ import annotations

import pytest
import torch

from xlstm_rl.kernels.reference import slstm_sequence_fused, slstm_sequence_reference

B, S, H, D = 3, 19, 2, 4


def _problem(dtype: torch.dtype, seed: int = 0, gate_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    wx = rnd(B, S, 4, H, D) * gate_scale
    state = (rnd(B, H, D), rnd(B, H, D), torch.rand(B, H, D, generator=g, dtype=dtype) + 0.5,
             rnd(B, H, D))
    reset = torch.zeros(B, S, dtype=torch.bool)
    reset[0, 7] = reset[1, 0] = reset[2, 12] = reset[2, 13] = True
    return wx, 0.5 * rnd(4, H, D, D), rnd(4, H, D), state, reset


def _run(fn, wx, r, b, state, reset):
    """Outputs, final state and the gradients of a loss touching all of them."""
    leaves = [t.clone().requires_grad_() for t in (wx, r, b, *state)]
    h, final = fn(leaves[0], leaves[1], leaves[2], state=tuple(leaves[3:]), reset=reset)
    weights = torch.cos(torch.arange(h.numel(), dtype=h.dtype)).view_as(h)
    loss = (h * weights).sum() + sum((k + 1.0) * s.sum() for k, s in enumerate(final))
    loss.backward()
    return [h, *final, *(t.grad for t in leaves)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("with_reset", [False, True])
def test_fused_equals_step_loop_outputs_states_and_all_gradients(dtype, tol, with_reset):
    wx, r, b, state, reset = _problem(dtype)
    reset = reset if with_reset else None
    got = _run(slstm_sequence_fused, wx, r, b, state, reset)
    want = _run(slstm_sequence_reference, wx, r, b, state, reset)
    names = ["h", "h_T", "c_T", "n_T", "m_T", "d_wx", "d_r", "d_bias", "d_h0", "d_c0", "d_n0",
             "d_m0"]
    for name, x, y in zip(names, got, want):
        assert _rel(x, y) <= tol, name


def test_fused_gradcheck_float64_with_resets():
    wx, r, b, state, reset = _problem(torch.float64)
    wx, state = wx[:2, :4], tuple(s[:2] for s in state)
    leaves = [t.clone() for t in (wx, r, b, *state)]
    leaves = [t.requires_grad_() for t in leaves]

    def fn(*args):
        h, final = slstm_sequence_fused(args[0], args[1], args[2], state=args[3:],
                                        reset=reset[:2, :4])
        return (h, *final)

    assert torch.autograd.gradcheck(fn, leaves)


def test_fused_large_gates_stay_finite_and_match():
    wx, r, b, state, reset = _problem(torch.float32, seed=3, gate_scale=60.0)
    got = _run(slstm_sequence_fused, wx, r, b, state, reset)
    want = _run(slstm_sequence_reference, wx, r, b, state, reset)
    assert all(torch.isfinite(x).all() for x in got)
    assert _rel(got[0], want[0]) <= 1e-5
