"""Memory cores: forward == step, resets, carried state, TensorDict state, config errors."""
from __future__ import annotations

from typing import cast

import pytest
import torch
from tensordict import TensorDict

from xlstm_rl.cores import CORE_NAMES, make_core

B, T, D = 3, 29, 5
SMALL = dict(hidden_size=16, num_heads=2, chunk_size=8)
TOL = 1e-5


def _core(name: str, **extra):
    torch.manual_seed(0)
    cfg = dict(SMALL, pattern="msm") if name == "xlstm" else dict(SMALL)
    return make_core(name, D, **cfg, **extra)


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 0] = reset[0, 11] = reset[1, 6] = reset[2, 20] = reset[2, 21] = True
    return x, reset


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _assert_states_close(a: TensorDict, b: TensorDict, tol: float = TOL) -> None:
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):
        assert _max_rel(a[key], b[key]) <= tol, key


def _random_state(core, seed: int = 2) -> TensorDict:
    """A non-zero carried state (m kept moderate, n positive as it is in a real run)."""
    g = torch.Generator().manual_seed(seed)
    state = core.initial_state(B)
    return state.apply(lambda t: torch.rand(t.shape, generator=g) + 0.1)


@pytest.mark.parametrize("name", CORE_NAMES)
def test_forward_equals_steps_with_resets_and_carried_state(name: str) -> None:
    core = _core(name)
    x, reset = _inputs()
    state0 = _random_state(core)
    y, final = core(x, state0, reset)
    ys, state = [], state0
    for t in range(T):
        yt, state = core.step(x[:, t], state, reset[:, t])
        ys.append(yt)
    assert y.shape == (B, T, core.output_size)
    assert _max_rel(y, torch.stack(ys, dim=1)) <= TOL
    _assert_states_close(final, state)


@pytest.mark.parametrize("name", CORE_NAMES)
def test_split_sequence_with_carried_state_equals_whole(name: str) -> None:
    core = _core(name)
    x, reset = _inputs()
    y, final = core(x, None, reset)
    y1, mid = core(x[:, :13], None, reset[:, :13])
    y2, end = core(x[:, 13:], mid, reset[:, 13:])
    assert _max_rel(torch.cat([y1, y2], dim=1), y) <= TOL
    _assert_states_close(end, final)


@pytest.mark.parametrize("name", CORE_NAMES)
def test_nothing_crosses_a_reset(name: str) -> None:
    """Outputs after a reset do not depend on earlier inputs or the initial state; gradients
    across the reset are exactly zero (this covers the mLSTM's causal-conv window)."""
    core = _core(name)
    x, _ = _inputs()
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[:, 9] = True
    x = x.requires_grad_()
    state0 = _random_state(core).apply(lambda t: t.requires_grad_())
    y, _ = core(x, state0, reset)
    y[:, 9:].square().sum().backward()
    assert torch.count_nonzero(x.grad[:, :9]) == 0
    for key in state0.keys(True, True):
        assert state0[key].grad is None or torch.count_nonzero(state0[key].grad) == 0, key
    x2 = x.detach().clone()
    x2[:, :9] = 1e3 * torch.randn(B, 9, D)
    y2, _ = core(x2, state0.detach().apply(lambda t: t * 7.0), reset)
    assert torch.equal(y2[:, 9:], y[:, 9:].detach())


@pytest.mark.parametrize("name", ["mlstm", "slstm", "lstm", "gru"])
def test_nan_in_a_discarded_state_does_not_leak(name: str) -> None:
    core = _core(name)
    x, _ = _inputs()
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 0] = True
    state0 = core.initial_state(B)
    state0[0] = state0[0].apply(lambda t: torch.full_like(t, float("nan")))
    y, _ = core(x, state0, reset)
    ys, _ = core.step(x[:, 0], state0, reset[:, 0])
    assert torch.isfinite(y[0]).all() and torch.isfinite(ys[0]).all()


@pytest.mark.parametrize("name", CORE_NAMES)
def test_state_is_a_tensordict_that_indexes_stacks_and_moves(name: str) -> None:
    core = _core(name)
    x, reset = _inputs()
    _, state = core(x, None, reset)
    assert isinstance(state, TensorDict) and state.batch_size == torch.Size([B])
    sub = state[torch.tensor([2, 0])]
    assert sub.batch_size == torch.Size([2])
    for key in state.keys(True, True):
        assert torch.equal(sub[key][1], state[key][0])
    stacked = cast(TensorDict, torch.stack([state, state.clone()], dim=0))  # TensorDict's own
    assert stacked.batch_size == torch.Size([2, B])
    moved = state.to("cpu").to(torch.float64)
    assert all(moved[key].dtype == torch.float64 for key in moved.keys(True, True))
    y_sub, _ = core(x[[2, 0]], sub)
    y_full, _ = core(x, state)
    assert _max_rel(y_sub, y_full[[2, 0]]) <= TOL


@pytest.mark.gpu
@pytest.mark.parametrize("name", CORE_NAMES)
def test_core_runs_on_cuda_and_matches_cpu(name: str) -> None:
    core = _core(name)
    x, reset = _inputs()
    y_cpu, s_cpu = core(x, None, reset)
    core_gpu = core.to("cuda")
    y_gpu, s_gpu = core_gpu(x.cuda(), core_gpu.initial_state(B, "cuda"), reset.cuda())
    assert _max_rel(y_gpu.cpu(), y_cpu) <= 1e-4
    _assert_states_close(s_gpu.to("cpu"), s_cpu, tol=1e-4)


def test_forget_gates_start_long() -> None:
    core = _core("mlstm")
    fbias = core.blocks[0].gates.bias[SMALL["num_heads"]:]
    assert torch.allclose(fbias, torch.tensor([3.0, 6.0]))
    assert (torch.sigmoid(fbias) > 0.95).all()


def test_gradients_reach_every_parameter() -> None:
    core = _core("xlstm")
    x, reset = _inputs()
    y, _ = core(x, None, reset)
    y.square().mean().backward()
    for name, p in core.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_sise=8), "unknown core option 'hidden_sise'; did you mean 'hidden_size'"),
    (dict(hidden_size=10, num_heads=4), "num_heads \\(4\\) must divide hidden_size \\(10\\)"),
    (dict(pattern="mx"), "pattern must be a non-empty string of 'm' and 's'"),
])
def test_bad_core_options_give_one_line_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        make_core("xlstm", D, **kwargs)
    assert "\n" not in str(info.value)


def test_unknown_core_and_bad_input_shapes() -> None:
    with pytest.raises(ValueError, match="unknown core 'transformer'; expected one of mlstm"):
        make_core("transformer", D)
    core = _core("mlstm")
    with pytest.raises(ValueError, match=r"expects x of shape \[B, T, D\] with D=5"):
        core(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"reset must have shape \(2, 3\)"):
        core(torch.randn(2, 3, 5), None, torch.zeros(2, 4, dtype=torch.bool))
