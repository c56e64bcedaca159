"""R2D2 checkpoints and isolation: exact resume through a safetensors file (replay included or
left out), the acting policy from a checkpoint, replay memory of the packaged configs, and
torchrl staying out of processes that do not build R2D2 replay."""
import subprocess
import sys

import pytest
import torch

from xlstm_rl.agents.r2d2.sequences import bytes_per_sequence
from xlstm_rl.checkpoint import load_checkpoint, save_checkpoint
from xlstm_rl.config import load_config, packaged_configs
from xlstm_rl.envs import make_env

SMALL = ["env.num_envs=4", "env.kwargs={corridor_length: 4}", "model.hidden_size=16",
         "model.encoder_hidden=16", "r2d2.trace_len=6", "r2d2.burn_in=2", "r2d2.period=3",
         "r2d2.min_replay=8", "r2d2.batch_size=4", "r2d2.samples_per_insert=2.0",
         "r2d2.collect_steps=6", "r2d2.replay_capacity=64", "r2d2.staleness_every=3",
         "r2d2.target_update_period=5", "r2d2.dueling_hidden=8"]


def _trainer(extra=()):
    from xlstm_rl.agents.r2d2.trainer import build_trainer

    config, _ = load_config("r2d2-mlstm-tmaze", [*SMALL, *extra])
    return build_trainer(config), config


def _metrics(trainer, iterations):
    out = []
    for _ in range(iterations):
        m = trainer.train_iteration()
        out.append({k: v for k, v in m.items() if not k.startswith("perf/")})
    return out


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == y[k] or (x[k] != x[k] and y[k] != y[k]), k


@pytest.mark.parametrize("extra", [(), ("r2d2.state_dtype=bfloat16",)])
def test_exact_resume_through_a_checkpoint_file(tmp_path, extra):
    first, config = _trainer(extra)
    try:
        _metrics(first, 4)
        assert first.learner.updates > 0 and len(first.replay) > 0
        path = save_checkpoint(tmp_path / "c.safetensors", first.state_dict(),
                               config=config.to_dict())
        expected = _metrics(first, 4)
    finally:
        first.close()
    assert any("r2d2/staleness_burn_in" in m for m in expected)
    second, _ = _trainer(extra)
    try:
        second.load_state_dict(load_checkpoint(path).state)
        _same(_metrics(second, 4), expected)
    finally:
        second.close()


def test_resume_without_replay_refills_it_first(tmp_path):
    with_replay, _ = _trainer()
    without, _ = _trainer(["r2d2.save_replay=false"])
    try:
        _metrics(with_replay, 4)
        _metrics(without, 4)
        big = save_checkpoint(tmp_path / "a.safetensors", with_replay.state_dict())
        small = save_checkpoint(tmp_path / "b.safetensors", without.state_dict())
        assert big.stat().st_size > small.stat().st_size + 20 * 4 * 7 * 16
        updates = without.learner.updates
        without.load_state_dict(load_checkpoint(small).state)
        assert len(without.replay) == 0 and without.learner.updates == updates
        without.train_iteration()  # counting restarts: min_replay new sequences first
        lim = without.limiter
        assert lim.inserted == len(without.replay) > 0
        assert lim.sampled == 4 * (without.learner.updates - updates)
        assert lim.sampled < 2.0 * (lim.inserted - 8 + 1) + 4
    finally:
        with_replay.close()
        without.close()


def test_acting_policy_from_a_checkpoint_acts_like_the_trainer(tmp_path):
    from xlstm_rl.agents.r2d2.policy import build_policy

    trainer, config = _trainer()
    try:
        _metrics(trainer, 3)
        state = load_checkpoint(save_checkpoint(tmp_path / "p.safetensors",
                                                trainer.state_dict())).state
        policy = build_policy(config, trainer.observation_space, trainer.action_space, state)
        live = trainer.acting_policy()
        obs = torch.rand(5, 4).numpy()
        reset = [True] * 5
        a1, s1 = policy.act(obs, None, reset)
        a2, s2 = live.act(obs, None, reset)
        assert (a1 == a2).all() and torch.equal(s1["block0"]["C"], s2["block0"]["C"])
        state["policy"]["head.value.0.weight"] = torch.zeros(3, 3)
        with pytest.raises(Exception, match="shape") as info:
            build_policy(config, trainer.observation_space, trainer.action_space, state)
        assert "\n" not in str(info.value)
    finally:
        trainer.close()


def test_packaged_replays_fit_in_two_gib():
    names = [n for n in packaged_configs() if n.startswith("r2d2-")]
    assert {"r2d2-mlstm-tmaze", "r2d2-mlp-tmaze", "r2d2-mlstm-recall",
            "r2d2-mlstm-cartpole"} <= set(names)
    for name in names:
        config, _ = load_config(name)
        env = make_env(config.env.id, **dict(config.env.kwargs))
        size = bytes_per_sequence(env.observation_space, env.action_space, config.model,
                                  config.r2d2)
        assert size["total"] * config.r2d2.replay_capacity < 2 * 2**30, name


def test_sequence_bytes_match_the_replay_storage_and_the_mlstm_state():
    import gymnasium as gym
    import numpy as np

    from xlstm_rl.agents.r2d2.config import R2D2Config
    from xlstm_rl.schema import ModelConfig

    space, act = gym.spaces.Box(0, 1, (4,), np.float32), gym.spaces.Discrete(2)
    wide = ModelConfig(core="mlstm", hidden_size=128, num_heads=4)
    C = bytes_per_sequence(space, act, wide, R2D2Config())["state"]
    assert C >= 4 * 64 * 64 * 4  # the matrix memory alone is 64 KiB
    half = bytes_per_sequence(space, act, wide, R2D2Config(state_dtype="bfloat16"))["state"]
    assert half * 2 == C
    lstm = bytes_per_sequence(space, act, ModelConfig(core="lstm", hidden_size=128),
                              R2D2Config())["state"]
    assert lstm == 2 * 128 * 4
    trainer, config = _trainer()
    try:
        _metrics(trainer, 3)
        stored = trainer.replay.buffer.storage._storage[0]
        used = sum(t.numel() * t.element_size() for t in stored.values(True, True))
        expect = bytes_per_sequence(trainer.observation_space, trainer.action_space,
                                    config.model, config.r2d2)["total"]
        assert used == expect
    finally:
        trainer.close()


def test_torchrl_is_imported_only_by_r2d2_replay():
    code = (
        "import sys\n"
        "import xlstm_rl.agents.r2d2\n"
        "from xlstm_rl.agents.r2d2 import networks, sequences, learning, policy\n"
        "assert 'torchrl' not in sys.modules, 'r2d2 package'\n"
        "from xlstm_rl.config import load_config\n"
        "from xlstm_rl.algorithms import get_algorithm\n"
        "cfg, _ = load_config('ppo-mlstm-tmaze', ['env.num_envs=2'])\n"
        "get_algorithm('ppo').build_trainer(cfg).close()\n"
        "assert 'torchrl' not in sys.modules, 'ppo trainer'\n"
        "import xlstm_rl.agents.r2d2.replay\n"
        "assert 'torchrl' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
