"""What the cores do with inputs a user gets wrong: one-line errors, never a crash (the
compiled CPU kernels would read or write rows that do not exist), and resets given as numpy
arrays, as a vector env returns them."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from xlstm_rl.cores import make_core

CORES = ["mlstm", "slstm", "xlstm", "lstm", "gru"]


def _core(name: str):  # noqa: ANN202
    torch.manual_seed(0)
    return make_core(name, 5, hidden_size=16, num_heads=2)


@pytest.mark.parametrize("name", CORES)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "nograd"])
def test_a_state_for_another_batch_is_refused_in_one_line(name: str, grad: bool) -> None:
    core = _core(name)
    with torch.set_grad_enabled(grad):
        for call in (lambda: core(torch.randn(7, 2, 5), core.initial_state(2)),
                     lambda: core.step(torch.randn(4, 5), core.initial_state(3)),
                     lambda: core.step(torch.randn(2, 5), core.initial_state(3)),
                     lambda: core.advance(torch.randn(2, 3, 5), core.initial_state(3))):
            with pytest.raises(ValueError, match=r"the state has batch size \[\d\] but x has") as e:
                call()
            assert "\n" not in str(e.value)


def test_the_reported_crashes_are_one_line_errors_now() -> None:
    """The calls of the report, each in a fresh interpreter: exit 0 and the error printed."""
    calls = ["core(torch.randn(7, 2, 5), core.initial_state(2))",
             "torch.no_grad().__enter__(); core.step(torch.randn(4, 5), core.initial_state(3))",
             "core.step(torch.randn(2, 5), core.initial_state(3))"]
    for call in calls:
        code = ("import torch; from xlstm_rl.cores import make_core\n"
                "core = make_core('mlstm', 5, hidden_size=32, num_heads=4)\n"
                f"try:\n    {call}\nexcept ValueError as exc:\n    print('refused:', exc)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith("refused: XLSTMCore: the state has batch size")


@pytest.mark.parametrize("name", CORES)
def test_numpy_and_list_resets_equal_tensor_resets(name: str) -> None:
    core = _core(name)
    x, state = torch.randn(3, 4, 5), core.initial_state(3)
    flags = np.zeros((3, 4), dtype=bool)
    flags[1, 2] = flags[0, 0] = True
    want = core(x, state, torch.from_numpy(flags))[0]
    assert torch.equal(core(x, state, flags)[0], want)
    assert torch.equal(core(x, state, flags.tolist())[0], want)
    assert torch.equal(core(x, state, flags.astype(np.int64))[0], want)
    with torch.no_grad():
        step = core.step(x[:, 0], state, torch.from_numpy(flags[:, 2]))[0]
        assert torch.equal(core.step(x[:, 0], state, flags[:, 2])[0], step)


@pytest.mark.parametrize("reset, message", [
    (np.ones((3, 4), dtype=np.float32), "reset must hold bools"),
    (np.ones((4, 3), dtype=bool), r"reset must have shape \(3, 4\)"),
    (["a", "b", "c"], "reset must be an array of bools"),
])
def test_bad_resets_are_refused_in_one_line(reset: object, message: str) -> None:
    core = _core("mlstm")
    with pytest.raises(ValueError, match=message):
        core(torch.randn(3, 4, 5), core.initial_state(3), reset)


def test_policy_act_with_a_state_for_other_envs_is_refused() -> None:
    from xlstm_rl.agents.ppo.config import PPOConfig
    from xlstm_rl.agents.ppo.trainer import PPOTrainer
    from xlstm_rl.schema import EnvConfig, ModelConfig

    trainer = PPOTrainer(EnvConfig(num_envs=2, kwargs={"corridor_length": 3}),
                         ModelConfig(core="mlstm", hidden_size=16, encoder_hidden=16),
                         PPOConfig(rollout_len=8, seq_len=8, minibatches=1))
    policy = trainer.acting_policy()
    obs = np.zeros((16, *policy.observation_space.shape), dtype=np.float32)
    with pytest.raises(ValueError, match=r"the state has batch size \[8\] but x has 16 rows"):
        policy.act(obs, policy.initial_state(8))
    actions, state = policy.act(obs, policy.initial_state(16), reset=np.ones(16, dtype=bool))
    assert actions.shape[0] == 16 and state.batch_size == torch.Size([16])
    trainer.close()
