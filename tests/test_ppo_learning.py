"""Learning checks of recurrent PPO: memory cores solve the T-maze, a memoryless one cannot,
and Box actions learn (Pendulum is ``slow``).

The T-maze runs stop as soon as a deterministic evaluation on one set of episodes succeeds;
the assertion then uses 100 *other* episodes (another seed), so stopping early does not bias
it. Every run is seeded, so a result repeats exactly on the same machine.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from xlstm_rl.agents.ppo import PPOConfig, PPOTrainer
from xlstm_rl.schema import EnvConfig, ModelConfig

pytestmark = pytest.mark.learning  # every test here checks that an agent learns

TMAZE_PPO = PPOConfig(rollout_len=32, seq_len=32, minibatches=4, epochs=4, lr=1e-3,
                      ent_coef=0.01)


def tmaze_trainer(core: str, seed: int = 0) -> PPOTrainer:
    return PPOTrainer(EnvConfig(num_envs=16, kwargs={"corridor_length": 10}),
                      ModelConfig(core=core, hidden_size=32, encoder_hidden=32), TMAZE_PPO,
                      seed=seed)


def stop_when_solved(trainer: PPOTrainer, every: int = 2):
    """Callback: every ``every`` iterations, stop once 50 deterministic episodes all but solve."""
    def callback(_metrics):
        if trainer.iteration % every == 0:
            return trainer.evaluate(50, seed=123)["success_rate"] < 0.95
        return True
    return callback


@pytest.mark.parametrize("core", ["mlstm", "lstm", "gru", "slstm"])
def test_memory_core_solves_tmaze_10(core):
    torch.set_num_threads(1)
    trainer = tmaze_trainer(core)
    trainer.train(40_000, callback=stop_when_solved(trainer))
    result = trainer.evaluate(100, deterministic=True, seed=999)
    trainer.close()
    assert result["success_rate"] >= 0.95, (core, trainer.global_step, result)


def test_memoryless_core_cannot_solve_tmaze_10():
    torch.set_num_threads(1)
    trainer = tmaze_trainer("mlp")
    trainer.train(12_288)  # more than the memory cores need
    result = trainer.evaluate(400, deterministic=True, seed=999)
    trainer.close()
    assert result["success_rate"] <= 0.6, result


class TargetEnv(gym.Env):
    """Box-action task: observe a target in [-1, 1], answer it; reward ``-(a - target)^2``.
    Episodes last 4 steps with a new target each step."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.target = 0, self.np_random.uniform(-1, 1, (1,)).astype(np.float32)
        return self.target.copy(), {}

    def step(self, action):
        reward = -float((np.asarray(action)[0] - self.target[0]) ** 2)
        self.t += 1
        self.target = self.np_random.uniform(-1, 1, (1,)).astype(np.float32)
        return self.target.copy(), reward, self.t == 4, False, {}


def test_box_actions_learn_target_task():
    torch.set_num_threads(1)
    if "xlstm_rl_test/Target-v0" not in gym.registry:
        gym.register("xlstm_rl_test/Target-v0", entry_point=TargetEnv)
    trainer = PPOTrainer(EnvConfig(id="xlstm_rl_test/Target-v0", num_envs=8),
                         ModelConfig(core="lstm", hidden_size=32, encoder_hidden=32),
                         PPOConfig(rollout_len=32, seq_len=8, lr=3e-3, ent_coef=0.0), seed=0)
    before = trainer.evaluate(100, seed=7)["mean_return"]
    trainer.train(8_192)
    after = trainer.evaluate(100, seed=7)["mean_return"]
    trainer.close()
    # per 4-step episode: always answering 0 scores -4/3 on average, a learned mean nears 0
    assert after > -0.2 and after > before + 0.5, (before, after)


@pytest.mark.slow
def test_pendulum_learns():
    """Pendulum-v1 (random policy: about -1200 per episode) above -400 within 200k steps."""
    torch.set_num_threads(1)
    trainer = PPOTrainer(EnvConfig(id="Pendulum-v1", num_envs=8),
                         ModelConfig(core="lstm", hidden_size=64, encoder_hidden=64,
                                     shared_core=False),
                         PPOConfig(rollout_len=256, seq_len=32, epochs=10, minibatches=8,
                                   lr=1e-3, gamma=0.9, ent_coef=0.0, normalize_obs=True,
                                   reward_scale=0.1), seed=0)
    trainer.train(200_000)
    result = trainer.evaluate(20, seed=999)
    trainer.close()
    assert result["mean_return"] > -400, result
