"""XLSTMModule (xlstm_rl.torchrl): sequence mode equals stepping, equals the core, LSTMModule's
conventions (keys, primer, recurrent-mode switch) hold for every core."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch.testing import assert_close

from xlstm_rl.torchrl import XLSTMModule

torchrl_modules = pytest.importorskip("torchrl.modules")
set_recurrent_mode = torchrl_modules.set_recurrent_mode

CORES = {"mlstm": {}, "slstm": {}, "xlstm": {"pattern": "ms"}, "lstm": {}, "gru": {}, "mlp": {}}
ROWS, STEPS, DIM = 3, 9, 5
# is_init [ROWS, STEPS]: row 0 starts an episode at t=0 and t=4, row 1 at t=6, row 2 runs on.
RESETS = torch.zeros(ROWS, STEPS, dtype=torch.bool)
RESETS[0, 0] = RESETS[0, 4] = RESETS[1, 6] = True


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    assert_close(actual, expected, atol=tol, rtol=tol)


def make_module(name: str, **kwargs) -> XLSTMModule:
    torch.manual_seed(0)
    return XLSTMModule(name, input_size=DIM, hidden_size=16, num_heads=4, chunk_size=4,
                       in_key="obs", out_key="features", **{**CORES[name], **kwargs})


def random_state(module: XLSTMModule, rows: int) -> TensorDict:
    """A reachable non-zero state: the core's state after 5 random steps from zero."""
    torch.manual_seed(1)
    with torch.no_grad():
        _, state = module.core(torch.randn(rows, 5, DIM))
    return state


def zero_rows(state: TensorDict, rows: torch.Tensor) -> TensorDict:
    """``state`` with the rows where ``rows [B]`` is True set to zero (as the primer does)."""
    return state.apply(lambda leaf: torch.where(
        rows.view(-1, *[1] * (leaf.dim() - 1)), torch.zeros((), dtype=leaf.dtype), leaf))


def stepped_rollout(module: XLSTMModule, x: torch.Tensor, start: TensorDict
                    ) -> TensorDict:
    """Steps the module T times as a collector does: the stored state is the previous next
    state, or the zero state where ``is_init`` (what the primer writes after a reset).

    Returns:
        A ``[ROWS, STEPS]`` tensordict with obs, is_init, the state keys and their next values.
    """
    state, steps = start, []
    for t in range(x.shape[1]):
        stored = zero_rows(state, RESETS[:, t])
        td = TensorDict({"obs": x[:, t], "is_init": RESETS[:, t, None],
                         module.state_key: stored}, batch_size=[x.shape[0]])
        module(td)
        state = td.get(("next", module.state_key), default=stored)
        steps.append(td)
    return torch.stack(steps, dim=1)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    return torch.randn(ROWS, STEPS, DIM, requires_grad=True), torch.randn(ROWS, STEPS, 16)


@pytest.fixture
def float64():
    """Gradients summed over every step are compared in float64 (float32 sums of B*T terms
    differ by more than 1e-5 in their last bits)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def stepped_and_sequence(name: str) -> tuple[XLSTMModule, TensorDict, TensorDict, list]:
    """Steps the module over the inputs, then runs sequence mode on the stored data.

    Returns:
        The module, the stepped and the sequence-mode tensordicts ``[ROWS, STEPS]``, and the
        differentiable inputs ``[x, *start-state leaves]``.
    """
    module = make_module(name).to(torch.get_default_dtype())
    x, _ = inputs()
    start = random_state(module, ROWS).apply(lambda leaf: leaf.requires_grad_())
    stepped = stepped_rollout(module, x, start)
    sequence = stepped.exclude("features", "next")  # stored states, as a collector stores them
    with set_recurrent_mode(True):
        module(sequence)
    return module, stepped, sequence, [x, *start.values(include_nested=True, leaves_only=True)]


@pytest.mark.parametrize("name", list(CORES))
def test_sequence_mode_equals_stepping_outputs_and_next_states(name: str) -> None:
    module, stepped, sequence, _ = stepped_and_sequence(name)
    close(sequence["features"], stepped["features"])
    for key in module.state_keys:
        final = sequence.get(("next", *key))
        close(final[:, -1], stepped.get(("next", *key))[:, -1])
        assert torch.count_nonzero(final[:, :-1]) == 0  # LSTMModule's layout: last step only
    assert not sequence["features"].isnan().any()


@pytest.mark.parametrize("name", list(CORES))
def test_sequence_mode_equals_stepping_gradients(name: str, float64: None) -> None:
    """Gradients of the same loss w.r.t. inputs, the stored start state and parameters."""
    module, stepped, sequence, inputs_ = stepped_and_sequence(name)
    weights = inputs()[1].to(torch.float64)
    wrt = [*inputs_, *module.parameters()]
    step_grads = torch.autograd.grad((stepped["features"] * weights).sum(), wrt,
                                     retain_graph=True, allow_unused=True)
    seq_grads = torch.autograd.grad((sequence["features"] * weights).sum(), wrt,
                                    allow_unused=True)
    for seq_grad, step_grad in zip(seq_grads, step_grads):
        assert (seq_grad is None) == (step_grad is None)
        if seq_grad is not None:
            close(seq_grad, step_grad)
    start_grads = [g for g in seq_grads[1:len(inputs_)] if g is not None]
    if name != "mlp":  # row 2 never resets: its start state shapes every output
        assert sum(float(g[2].abs().sum()) for g in start_grads) > 0
        assert sum(float(g[0].abs().sum()) for g in start_grads) == 0  # row 0: is_init at t=0


@pytest.mark.parametrize("name", ["mlstm", "xlstm", "gru"])
def test_sequence_mode_equals_the_core_called_directly(name: str) -> None:
    module = make_module(name)
    x, _ = inputs()
    start = random_state(module, ROWS)
    start = zero_rows(start, RESETS[:, 0])
    stored = start.unsqueeze(1).expand(ROWS, STEPS).clone()
    stored[RESETS] = module.core.initial_state(int(RESETS.sum()))  # what the primer stores
    sequence = TensorDict({"obs": x, "is_init": RESETS[..., None], module.state_key: stored},
                          batch_size=[ROWS, STEPS])
    with set_recurrent_mode(True):
        module(sequence)
    y, final = module.core(x, start, RESETS)
    close(sequence["features"], y)
    for key in module.state_layout:
        close(sequence.get(("next", module.state_key, *key))[:, -1], final.get(key))


@pytest.mark.parametrize("name", ["mlstm", "slstm", "lstm"])
def test_sequence_mode_restarts_from_stored_states_at_is_init(name: str) -> None:
    """GAE's ("next", ...) pass stores a non-zero state at is_init steps: the run restarts
    from it there (LSTMModule's recurrent-mode semantics), row by row."""
    module = make_module(name)
    x, _ = inputs()
    stored = random_state(module, ROWS * STEPS).reshape(ROWS, STEPS)
    sequence = TensorDict({"obs": x, "is_init": RESETS[..., None], module.state_key: stored},
                          batch_size=[ROWS, STEPS])
    with set_recurrent_mode(True):
        module(sequence)
    for row in range(ROWS):
        starts = [0, *[t for t in range(1, STEPS) if RESETS[row, t]], STEPS]
        for t0, t1 in zip(starts[:-1], starts[1:]):
            y, final = module.core(x[row:row + 1, t0:t1], stored[row:row + 1, t0])
            close(sequence["features"][row, t0:t1], y[0])
        for key in module.state_layout:
            got = sequence.get(("next", module.state_key, *key))[row, -1]
            close(got, final.get(key)[0])


def test_step_mode_takes_any_batch_shape_and_zeros_the_state_at_is_init() -> None:
    module = make_module("mlstm")
    torch.manual_seed(3)
    x = torch.randn(2, 3, DIM)
    state = random_state(module, 6)
    is_init = torch.tensor([[True, False, False], [False, True, False]])
    td = TensorDict({"obs": x, "is_init": is_init[..., None],
                     module.state_key: state.reshape(2, 3)}, batch_size=[2, 3])
    module(td)
    y, new = module.core.step(x.reshape(6, DIM), state, is_init.reshape(6))
    close(td["features"], y.reshape(2, 3, -1))
    for key in module.state_layout:
        want = new.get(key)
        close(td.get(("next", module.state_key, *key)),
                     want.reshape(2, 3, *want.shape[1:]))
    single = TensorDict({"obs": x[0, 0], "is_init": torch.ones(1, dtype=torch.bool)}, [])
    module(single)  # unbatched, no state keys yet: the zero state
    y0, _ = module.core.step(x[0, :1], module.core.initial_state(1))
    assert single["features"].shape == (16,)
    close(single["features"], y0[0])


@pytest.mark.parametrize("name", list(CORES))
def test_keys_and_primer_specs_match_the_core_state(name: str) -> None:
    module = make_module(name, state_key="rs")
    zero = module.core.initial_state(1)
    leaves = dict(zero.items(include_nested=True, leaves_only=True))
    leaf_keys = [(k,) if isinstance(k, str) else tuple(k) for k in leaves]
    assert module.in_keys == ["obs", *[("rs", *k) for k in leaf_keys], "is_init"]
    assert module.out_keys == ["features", *[("next", "rs", *k) for k in leaf_keys]]
    spec = module.make_tensordict_primer().primers
    spec_keys = sorted(spec.keys(include_nested=True, leaves_only=True), key=str)
    assert spec_keys == sorted([("rs", *k) for k in leaf_keys], key=str)
    for key, leaf in zip(leaf_keys, leaves.values()):
        assert tuple(spec[("rs",) + key].shape) == tuple(leaf.shape[1:])
        assert spec[("rs",) + key].dtype == leaf.dtype


def test_primer_in_an_env_carries_the_state_and_zeros_it_on_reset() -> None:
    envs = pytest.importorskip("torchrl.envs")
    import xlstm_rl.envs  # noqa: F401  (registers the T-maze)
    from tensordict.nn import TensorDictModule, TensorDictSequential
    from torchrl.modules.utils import get_primers_from_module

    module = XLSTMModule("mlstm", input_size=4, hidden_size=16, num_heads=4,
                         in_key="observation", out_key="features")
    env = envs.TransformedEnv(envs.GymEnv("xlstm_rl/TMaze-v0", corridor_length=2),
                              envs.InitTracker())
    env.append_transform(get_primers_from_module(TensorDictSequential(module)))
    envs.check_env_specs(env)
    reset = env.reset()
    for key, (shape, _) in module.state_layout.items():
        leaf = reset.get((module.state_key, *key))
        assert leaf.shape == shape and torch.count_nonzero(leaf) == 0
    turn_up = TensorDictModule(lambda f: torch.zeros(f.shape[:-1], dtype=torch.long),
                               in_keys=["features"], out_keys=["action"])
    rollout = env.rollout(7, TensorDictSequential(module, turn_up), break_when_any_done=False)
    starts = rollout["is_init"].squeeze(-1)
    assert starts.tolist() == [True, False, False, True, False, False, True]
    carried = rollout.get((module.state_key, "block0", "C"))
    assert torch.count_nonzero(carried[starts]) == 0 and torch.count_nonzero(carried[1]) > 0
    close(carried[1:3], rollout.get(("next", module.state_key, "block0", "C"))[0:2],
                 tol=0.0)


def test_recurrent_mode_switch_follows_lstm_module() -> None:
    module = make_module("gru", default_recurrent_mode=True)
    assert module.recurrent_mode
    with set_recurrent_mode(False):
        assert not module.recurrent_mode
    with set_recurrent_mode("recurrent"):
        assert make_module("gru").recurrent_mode
    assert not make_module("gru").recurrent_mode
    with pytest.raises(RuntimeError, match="set_recurrent_mode context manager"):
        module.set_recurrent_mode(True)
    with pytest.raises(KeyError, match="InitTracker"):
        make_module("gru")(TensorDict({"obs": torch.zeros(2, DIM)}, [2]))


def test_lstm_core_matches_torchrl_lstm_module_in_both_modes() -> None:
    """The one-line swap: same weights, same keys in and out, same outputs as LSTMModule."""
    torch.manual_seed(4)
    theirs = torchrl_modules.LSTMModule(input_size=DIM, hidden_size=16, in_key="obs",
                                        out_key="features")
    ours = XLSTMModule("lstm", input_size=DIM, hidden_size=16, in_key="obs", out_key="features")
    ours.core.rnn.load_state_dict(theirs.lstm.state_dict())
    x, _ = inputs()
    base = TensorDict({"obs": x.detach(), "is_init": RESETS[..., None]}, [ROWS, STEPS])
    with set_recurrent_mode(True):
        close(ours(base.clone())["features"], theirs(base.clone())["features"])
    step_ours = base[:, 0].clone()
    step_theirs = base[:, 0].clone()
    ours(step_ours)
    theirs(step_theirs)
    close(step_ours["features"], step_theirs["features"])
    close(step_ours.get(("next", "recurrent_state", "h")),
                 step_theirs.get(("next", "recurrent_state_h"))[:, 0])
