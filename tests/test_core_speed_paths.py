"""The no-grad acting paths equal the reference step: the ``mlstm_step`` kernel's
``mlstm_step_nograd`` against ``mlstm_step_reference``, and every xLSTM core's ``step`` under
``torch.no_grad`` / ``torch.inference_mode`` against the same core's autograd ``step`` (outputs
and states, resets and carried states included, batch sizes 1, 16 and odd)."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from xlstm_rl.cores import MemoryCore, make_core
from xlstm_rl.kernels import mlstm_step
from xlstm_rl.kernels.reference import mlstm_step_reference
from xlstm_rl.kernels.reference.mlstm_step_fast import mlstm_step_nograd

TOL = 1e-5
BATCHES = (1, 16, 7)
D = 5


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _kernel_inputs(B: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    H, dk, dv = 2, 8, 6
    rnd = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    state = (torch.randn(B, H, dk, dv, generator=g, dtype=sd),
             torch.rand(B, H, dk, generator=g, dtype=sd), torch.randn(B, H, generator=g, dtype=sd))
    return (rnd(B, H, dk), rnd(B, H, dk), rnd(B, H, dv), 3 * rnd(B, H), 3 * rnd(B, H)), state


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_mlstm_step_nograd_equals_reference(B: int, dtype: torch.dtype) -> None:
    """Zero state, carried state, carried state with resets (a NaN in a reset row must not
    leak) and an all-False reset; the dispatcher takes the no-grad path under no_grad."""
    (q, k, v, i, f), state = _kernel_inputs(B, dtype)
    reset = torch.zeros(B, dtype=torch.bool)
    reset[0] = True
    poisoned = (state[0].clone(), state[1], state[2])
    poisoned[0][0] = float("nan")
    cases = [(None, None), (state, None), (poisoned, reset), (state, torch.zeros_like(reset))]
    for st, r in cases:
        h_ref, s_ref = mlstm_step_reference(q, k, v, i, f, st, reset=r)
        for fast in (mlstm_step_nograd, mlstm_step):
            with torch.no_grad():
                h, s = fast(q, k, v, i, f, st, reset=r)
            assert h.dtype == h_ref.dtype and torch.isfinite(h).all()
            assert _max_rel(h.float(), h_ref.float()) <= TOL
            for a, b in zip(s, s_ref):
                assert a.dtype == b.dtype and a.shape == b.shape
                assert _max_rel(a, b) <= TOL


def test_mlstm_step_nograd_leaves_the_state_alone() -> None:
    (q, k, v, i, f), state = _kernel_inputs(4, torch.float32)
    before = tuple(t.clone() for t in state)
    with torch.no_grad():
        mlstm_step_nograd(q, k, v, i, f, state, reset=torch.tensor([True, False, True, False]))
    assert all(torch.equal(a, b) for a, b in zip(state, before))


def test_mlstm_step_with_grad_still_differentiates() -> None:
    (q, k, v, i, f), state = _kernel_inputs(3, torch.float32)
    q = q.requires_grad_()
    h, _ = mlstm_step(q, k, v, i, f, state)
    h.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def _core(name: str) -> MemoryCore:
    torch.manual_seed(0)
    pattern = {"mlstm": "m", "slstm": "s", "xlstm": "msm"}[name]
    return make_core(name, D, hidden_size=16, num_heads=2, chunk_size=8, pattern=pattern)


def _carried_state(core: MemoryCore, B: int, seed: int = 2) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return core.initial_state(B).apply(lambda t: torch.rand(t.shape, generator=g) + 0.1)


def _assert_states_close(a: TensorDict, b: TensorDict) -> None:
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        assert _max_rel(a[key], b[key]) <= TOL, key


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("name", ["mlstm", "slstm", "xlstm"])
def test_core_step_nograd_equals_reference_step(name: str, B: int, mode: str) -> None:
    """20 steps from a carried state, resets in some rows at some steps (and in every row at
    one), the state passed from step to step: outputs and states as the autograd step."""
    core = _core(name)
    g = torch.Generator().manual_seed(B)
    ref = fast = _carried_state(core, B)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    for t in range(20):
        x = torch.randn(B, D, generator=g)
        reset = None if t % 4 == 0 else torch.rand(B, generator=g) < 0.3
        if t == 7:
            reset = torch.ones(B, dtype=torch.bool)
        y_ref, ref = core.step(x, ref, reset)
        with context():
            y, fast = core.step(x, fast, reset)
        assert isinstance(fast, TensorDict) and fast.batch_size == torch.Size([B])
        assert _max_rel(y, y_ref.detach()) <= TOL, t
        _assert_states_close(fast, ref.detach())


@pytest.mark.parametrize("name", ["mlstm", "slstm", "xlstm"])
def test_core_step_nograd_from_none_and_nan_in_a_reset_row(name: str) -> None:
    core = _core(name)
    x = torch.randn(3, D)
    y_ref, s_ref = core.step(x, None)
    with torch.no_grad():
        y, s = core.step(x, None)
    assert _max_rel(y, y_ref.detach()) <= TOL
    _assert_states_close(s, s_ref.detach())
    state = _carried_state(core, 3)
    state[0] = state[0].apply(lambda t: torch.full_like(t, float("nan")))
    with torch.no_grad():
        y, s = core.step(x, state, torch.tensor([True, False, False]))
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(s[key]).all() for key in s.keys(True, True))


def test_core_step_nograd_sees_weight_updates() -> None:
    """The step's cached weight layout follows in-place parameter updates (an optimizer)."""
    core = _core("xlstm")
    x, state = torch.randn(4, D), _carried_state(core, 4)
    with torch.no_grad():
        core.step(x, state)                                    # fills the cache
        for p in core.parameters():
            p.add_(0.01 * torch.randn_like(p))
        y, s = core.step(x, state)
    y_ref, s_ref = core.step(x, state)
    assert _max_rel(y, y_ref.detach()) <= TOL
    _assert_states_close(s, s_ref.detach())
    assert "_fast_cache" not in core.state_dict()
