"""R2D2 math and configuration units: value rescaling, n-step double-Q targets, priorities,
importance weights, Ape-X epsilons, config and action-space errors."""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from xlstm_rl.agents.r2d2.actor import ape_x_epsilons
from xlstm_rl.agents.r2d2.config import R2D2Config
from xlstm_rl.agents.r2d2.learning import (double_q_bootstrap, h, h_inv, n_step_targets,
                                           sequence_priority)
from xlstm_rl.agents.r2d2.networks import R2D2Network
from xlstm_rl.agents.r2d2.replay import SampleInsertRatio, SequenceReplay
from xlstm_rl.config import load_config
from xlstm_rl.schema import ModelConfig
from xlstm_rl.typed import ConfigError

BOX4 = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)


def test_value_rescaling_inverse_is_exact():
    x = torch.linspace(-1e4, 1e4, 200_001, dtype=torch.float64)
    assert torch.allclose(h(h_inv(x)), x, rtol=0, atol=1e-6)
    assert torch.allclose(h_inv(h(x)), x, rtol=0, atol=1e-6)
    assert float(h(torch.tensor(3.0, dtype=torch.float64))) == pytest.approx(1.0 + 3e-3)


def _targets(reward, terminated, valid, boot, gamma=0.5, n=3):
    as_t = lambda v, d: torch.tensor([v], dtype=d)  # noqa: E731
    return n_step_targets(as_t(reward, torch.float32), as_t(terminated, torch.bool),
                          as_t(valid, torch.bool), as_t(boot, torch.float64), gamma, n)[0]


def test_n_step_targets_termination_inside_the_n_steps():
    # transitions 0..3 valid, transition 3 terminal: no bootstrap once it is reached
    g = _targets([1, 2, 3, 4, 0], [0, 0, 0, 1, 0], [1, 1, 1, 1, 0], [10, 20, 30, 40, 50, 60])
    assert g[:4].tolist() == pytest.approx([1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 40,
                                            2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4, 4.0])


def test_n_step_targets_truncation_inside_the_n_steps():
    # the episode was truncated after transition 2: bootstrap from slot 3 (its final obs)
    g = _targets([1, 2, 3, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0], [10, 20, 30, 40, 50, 60])
    assert g[:3].tolist() == pytest.approx([1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 40,
                                            2 + 0.5 * 3 + 0.25 * 40, 3 + 0.5 * 40])


def test_n_step_targets_shorten_at_the_sequence_end():
    g = _targets([1, 1, 1, 1, 1], [0] * 5, [1] * 5, [0, 0, 0, 0, 0, 8])
    assert g.tolist() == pytest.approx([1.75, 1.75, 1.75 + 0.125 * 8, 1 + 0.5 + 0.25 * 8,
                                        1 + 0.5 * 8])


def test_double_q_takes_the_target_value_of_the_online_argmax():
    q_online = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, -1.0]])
    q_target = torch.tensor([[7.0, -2.0, 9.0], [4.0, 8.0, 6.0]])
    assert double_q_bootstrap(q_online, q_target).tolist() == [-2.0, 4.0]


def test_sequence_priority_mixes_max_and_mean_over_valid_steps():
    td = torch.tensor([[1.0, 2.0, 3.0, 100.0], [0.5, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    p = sequence_priority(td, mask, eta=0.9)
    assert p.tolist() == pytest.approx([0.9 * 3 + 0.1 * 2, 0.5])


def test_importance_weights_and_sampling_follow_the_priorities():
    replay = SequenceReplay(8, priority_exponent=0.9, importance_exponent=0.6, seed=0)
    from tensordict import TensorDict

    replay.add(TensorDict({"x": torch.arange(4.0)}, batch_size=[4]))
    priorities = torch.tensor([1.0, 2.0, 4.0, 8.0])
    replay.update_priorities(torch.arange(4), priorities)
    batch, index, weights = replay.sample(20_000)
    assert torch.equal(batch["x"].long(), index)
    raw = priorities[index] ** (-0.9 * 0.6)
    assert torch.allclose(weights, raw / raw.max(), rtol=1e-5)
    assert float(weights.max()) == 1.0
    freq = torch.bincount(index, minlength=4).double() / index.numel()
    expect = priorities.double() ** 0.9 / (priorities.double() ** 0.9).sum()
    assert torch.allclose(freq, expect, atol=0.015)
    assert replay.max_priority == 8.0


def test_new_sequences_get_the_largest_priority_seen():
    from tensordict import TensorDict

    replay = SequenceReplay(8, seed=0)
    replay.add(TensorDict({"x": torch.zeros(2)}, batch_size=[2]))
    replay.update_priorities(torch.tensor([0, 1]), torch.tensor([3.0, 0.5]))
    replay.add(TensorDict({"x": torch.ones(1)}, batch_size=[1]))
    assert replay.buffer.storage._storage["priority"][:3].tolist() == [3.0, 0.5, 3.0]


def test_sample_insert_ratio_waits_for_data_and_keeps_the_ratio():
    limiter = SampleInsertRatio(samples_per_insert=4.0, min_size=10, tolerance=8)
    batch, history = 8, []
    for _ in range(200):
        limiter.inserted += 3
        assert limiter.can_insert()
        while limiter.can_sample():
            limiter.sampled += batch
        history.append(limiter.ratio())
        if limiter.inserted < 10:
            assert limiter.sampled == 0  # the learner waits for min_size sequences
    assert limiter.spi * (limiter.inserted - 10) <= limiter.sampled
    assert limiter.sampled <= limiter.spi * (limiter.inserted - 10 + 1) + batch
    assert abs(history[-1] - 4.0) < 0.05


def test_ape_x_epsilons():
    eps = ape_x_epsilons(4, 0.4, 7.0)
    expect = [0.4 ** (1 + 7 * i / 3) for i in range(4)]
    assert eps.tolist() == pytest.approx(expect, rel=1e-12)
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4 ** 8)
    assert ape_x_epsilons(1, 0.4, 7.0).tolist() == [0.4]


@pytest.mark.parametrize("kwargs, words", [
    ({"period": 81}, "period (81) must not exceed trace_len (80)"),
    ({"lr": float("nan")}, "lr must be"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"state_dtype": "float16"}, "state_dtype must be one of float32, bfloat16"),
    ({"min_replay": 20_000}, "min_replay (20000) must not exceed"),
    ({"gamma": 1.5}, "gamma must be"),
])
def test_config_errors_are_one_line(kwargs, words):
    with pytest.raises(ValueError) as info:
        R2D2Config(**kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_config_override_error_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_config("r2d2-mlstm-tmaze", ["r2d2.trace_len=-3"])
    message = str(info.value)
    assert "trace_len" in message and "\n" not in message


@pytest.mark.parametrize("space", [gym.spaces.Box(-1, 1, (2,)),
                                   gym.spaces.MultiDiscrete([100, 100])])
def test_unsupported_action_space_is_one_line_pointing_to_ppo(space):
    with pytest.raises(ValueError) as info:
        R2D2Network(BOX4, space, ModelConfig(core="mlp", hidden_size=8, encoder_hidden=8))
    message = str(info.value)
    assert "ppo" in message and type(space).__name__ in message and "\n" not in message


def test_multidiscrete_is_a_flat_product_that_round_trips():
    space = gym.spaces.MultiDiscrete([3, 2], start=[1, -1])
    net = R2D2Network(BOX4, space, ModelConfig(core="mlp", hidden_size=8, encoder_hidden=8), 8)
    assert net.num_actions == 6
    index = torch.arange(6)
    actions = net.to_env(index)
    assert all(space.contains(a) for a in actions)
    assert torch.equal(net.from_env(actions), index)
    assert math.prod(space.nvec) == len({tuple(a) for a in actions})


def test_bench_r2d2_times_every_core_side_by_side(tmp_path):
    import json

    from xlstm_rl.agents.r2d2.bench import bench_r2d2

    out = bench_r2d2(tmp_path / "bench.json", cores=("mlp", "lstm", "mlstm"), hidden_size=8,
                     batch_size=4, burn_in=3, trace_len=5, num_envs=2, actor_steps=3,
                     repeats=1)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["results"].keys() == {"mlp", "lstm", "mlstm"}
    assert all(r["learner_update_s"] > 0 and r["actor_sps"] > 0
               for r in saved["results"].values())
    assert 0 < out["ratios"]["mlstm_over_lstm_learner_time"] < math.inf
    assert 0 < out["ratios"]["mlstm_over_mlp_actor_sps"] < math.inf
    assert saved["config"]["cpu_kernels"]  # how the compiled kernels were built, or why not
