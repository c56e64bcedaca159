"""A sequence's final state without its outputs (R2D2's burn-in).

* ``mlstm_final_state`` (the closed form of the recurrence, docs/architecture.md "Cores")
  against the final state of ``mlstm_recurrent`` (the definition) and its autograd: float64
  1e-10, float32 1e-5; resets at t = 0, mid-sequence and on the last step, a NaN in a reset
  row's carried state, no state, one step and none.
* Every core's ``advance`` equals the state its ``forward`` returns, without autograd (the
  compiled pre part on CPU) and with it (gradients to the parameters included).
* The R2D2 network's ``advance`` is the state of its ``forward``.
"""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from xlstm_rl.agents.r2d2.config import R2D2Config
from xlstm_rl.agents.r2d2.networks import R2D2Network
from xlstm_rl.cores import CORE_NAMES, make_core
from xlstm_rl.kernels.reference import mlstm_final_state, mlstm_recurrent
from xlstm_rl.schema import ModelConfig

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape and torch.isfinite(a).all() and torch.isfinite(b).all()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _cell_inputs(dtype: torch.dtype, T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, H, dk, dv = 5, 3, 8, 6
    q, k = (torch.randn(B, H, T, dk, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, T, dv, generator=g, dtype=dtype)
    i = 3 * torch.randn(B, H, T, generator=g, dtype=dtype)
    f = 3 * torch.randn(B, H, T, generator=g, dtype=dtype) + 2
    state = (torch.randn(B, H, dk, dv, generator=g, dtype=dtype),
             torch.rand(B, H, dk, generator=g, dtype=dtype),
             torch.randn(B, H, generator=g, dtype=dtype))
    return (q, k, v, i, f), state


def _resets(T: int) -> torch.Tensor:
    reset = torch.zeros(5, T, dtype=torch.bool)
    reset[1, 0] = reset[2, T // 2] = reset[3, 2 % T] = reset[3, T - 1] = True
    return reset


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [1, 7, 40])
@pytest.mark.parametrize("with_resets", [False, True])
def test_final_state_equals_the_recurrence(dtype: torch.dtype, T: int, with_resets: bool) -> None:
    (q, k, v, i, f), state = _cell_inputs(dtype, T)
    reset = _resets(T) if with_resets else None
    if with_resets:  # a NaN in a row that resets must not reach its final state
        state[0][1, 0, 0, 0] = float("nan")
    _, want = mlstm_recurrent(q, k, v, i, f, state=state, reset=reset)
    got = mlstm_final_state(k, v, i, f, state=state, reset=reset)
    for name, a, b in zip("Cnm", got, want):
        assert a.dtype == b.dtype
        assert _rel(a, b) <= TOL[dtype], name


def test_final_state_from_no_state_and_of_no_steps() -> None:
    (q, k, v, i, f), state = _cell_inputs(torch.float64, 9)
    _, want = mlstm_recurrent(q, k, v, i, f)
    for a, b in zip(mlstm_final_state(k, v, i, f), want):
        assert _rel(a, b) <= 1e-10
    empty = mlstm_final_state(k[:, :, :0], v[:, :, :0], i[:, :, :0], f[:, :, :0], state=state)
    assert all(a is b for a, b in zip(empty, state))


def test_final_state_gradients_equal_the_recurrences() -> None:
    (q, k, v, i, f), state = _cell_inputs(torch.float64, 11, seed=3)
    reset = _resets(11)
    leaves = [t.requires_grad_() for t in (k, v, i, f, *state)]
    g = torch.Generator().manual_seed(4)
    weights = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in state]

    def grads(final):  # noqa: ANN001, ANN202
        loss = sum((w * s).sum() for w, s in zip(weights, final))
        return torch.autograd.grad(loss, leaves)

    want = grads(mlstm_recurrent(q, k, v, i, f, state=state, reset=reset)[1])
    got = grads(mlstm_final_state(k, v, i, f, state=state, reset=reset))
    for name, a, b in zip(("k", "v", "i", "f", "C0", "n0", "m0"), got, want):
        assert _rel(a, b) <= 1e-10, name


def _core(name: str):
    torch.manual_seed(0)
    extra = {"pattern": "msm"} if name == "xlstm" else {}
    return make_core(name, 12, hidden_size=16, num_heads=2, **extra)


def _sequence(B: int = 5, T: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[1, 0] = reset[2, 11] = reset[4, T - 1] = True
    return torch.randn(B, T, 12, generator=g), reset


def _assert_states(a: TensorDict, b: TensorDict) -> None:
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in b.keys(True, True):
        assert _rel(a[key], b[key]) <= 1e-5, key


@pytest.mark.parametrize("name", CORE_NAMES)
def test_advance_is_forwards_state(name: str) -> None:
    core = _core(name)
    x, reset = _sequence()
    with torch.no_grad():
        state = core(torch.randn(5, 6, 12), None, None)[1]  # a carried state
        _assert_states(core.advance(x, state, reset), core(x, state, reset)[1])
        _assert_states(core.advance(x, state, None), core(x, state, None)[1])


@pytest.mark.parametrize("name", ["mlstm", "xlstm"])
def test_advance_with_autograd_gives_forwards_gradients(name: str) -> None:
    core = _core(name)
    x, reset = _sequence()
    params = [p for p in core.parameters() if p.requires_grad]

    def grads(state: TensorDict):  # noqa: ANN202
        loss = sum(t.square().sum() for t in state.values(True, True))
        return torch.autograd.grad(loss, params, allow_unused=True)

    got, want = grads(core.advance(x, None, reset)), grads(core(x, None, reset)[1])
    for p, a, b in zip(params, got, want):
        if b is None or not b.abs().max() > 0:  # the skipped output path: no gradient either way
            assert a is None or not a.abs().max() > 0
        else:
            assert _rel(a, b) <= 1e-5, tuple(p.shape)


def test_r2d2_network_advance_is_its_forwards_state() -> None:
    import gymnasium as gym

    torch.manual_seed(0)
    obs_space = gym.spaces.Box(-1.0, 1.0, (4,))
    net = R2D2Network(obs_space, gym.spaces.Discrete(3),
                      ModelConfig(core="mlstm", hidden_size=16, encoder_hidden=16),
                      R2D2Config().dueling_hidden)
    obs, reset = torch.randn(5, 17, 4), torch.zeros(5, 17, dtype=torch.bool)
    reset[2, 8] = True
    with torch.no_grad():
        state = net(obs, net.initial_state(5), reset)[1]
        _assert_states(net.advance(obs, state, reset), net(obs, state, reset)[1])
