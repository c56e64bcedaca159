"""Unit tests of recurrent PPO: stored-state recomputation, bootstrapping, GAE, losses,
encoders / heads, configs, logging, determinism and exact resume."""
from __future__ import annotations

import math
from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from tensordict import TensorDict

from xlstm_rl.agents.ppo import PPOConfig, PPOTrainer
from xlstm_rl.agents.ppo.collect import RolloutCollector
from xlstm_rl.agents.ppo.loss import compute_gae, policy_loss, ppo_loss, value_loss
from xlstm_rl.logging import MetricLogger
from xlstm_rl.networks import ActorCritic, build_action_head, build_encoder, obs_to_torch
from xlstm_rl.schema import EnvConfig, ModelConfig, config_from_dict, config_to_dict

TINY: dict[str, Any] = dict(hidden_size=16, encoder_hidden=16, num_heads=2)


def tmaze_trainer(core: str = "mlstm", seed: int = 0, shared: bool = True, **ppo) -> PPOTrainer:
    ppo = {"rollout_len": 24, "seq_len": 8, "minibatches": 3, "epochs": 2, **ppo}
    return PPOTrainer(EnvConfig(num_envs=3, kwargs={"corridor_length": 4}),
                      ModelConfig(core=core, shared_core=shared, **TINY), PPOConfig(**ppo),
                      seed=seed)


# --- recomputation from stored chunk-start states -------------------------------------------

@pytest.mark.parametrize("core,shared", [("mlstm", True), ("mlstm", False), ("lstm", True),
                                         ("mlp", True)])
def test_recomputed_logprobs_and_values_match_acting(core, shared):
    trainer = tmaze_trainer(core, shared=shared)
    buffer, _ = trainer.collector.collect(24, 8)
    seqs, states = buffer.sequences(), buffer.chunk_states()
    assert seqs["reset"][:, 1:].any(), "want resets inside chunks"
    with torch.no_grad():
        log_prob, _, value, _ = trainer.policy.evaluate(seqs["obs"], states, seqs["reset"],
                                                        seqs["action"])
    torch.testing.assert_close(log_prob, seqs["log_prob"], atol=1e-5, rtol=0)
    torch.testing.assert_close(value, seqs["value"], atol=1e-5, rtol=0)
    stored = buffer.states.clone()
    buffer.refresh_states(trainer.policy)  # same network: refreshed states equal stored ones
    for key, tensor in stored.items(include_nested=True, leaves_only=True):
        torch.testing.assert_close(buffer.states[key], tensor, atol=1e-5, rtol=0)
    trainer.close()


# --- bootstrapping on a scripted env -----------------------------------------------------------

class ScriptedEnv(gym.Env):
    """obs = [steps taken in the episode], reward 1 per step, ends after ``length`` steps by
    termination or truncation."""

    observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, length: int, truncate: bool) -> None:
        self.length, self.truncate, self.t = length, truncate, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t == self.length
        obs = np.array([float(self.t)], np.float32)
        return obs, 1.0, end and not self.truncate, end and self.truncate, {}


class CountingPolicy:
    """Stub policy: the state counts steps since the last reset; value = 100 * count + obs,
    where count includes the step being processed. A bootstrap computed from a wrongly reset
    state shows up as a different hundreds digit."""

    class _Actor:
        @staticmethod
        def to_env(action):
            return action.numpy()

    actor = _Actor()

    def initial_state(self, batch_size, device=None):
        return TensorDict({"count": torch.zeros(batch_size)}, batch_size=[batch_size])

    def _advance(self, state, reset):
        count = state["count"] if reset is None else torch.where(reset, 0.0, state["count"])
        return count + 1

    def act(self, obs, state, reset, deterministic=False, generator=None, overwrite_state=False):
        count = self._advance(state, reset)
        zeros = torch.zeros(obs.shape[0])
        new = TensorDict({"count": count}, batch_size=state.batch_size)
        return zeros.long(), zeros, 100 * count + obs[:, 0], new

    def value(self, obs, state, reset=None):
        return 100 * self._advance(state, reset) + obs[:, 0]


def scripted_rollout(truncate: bool, rollout_len: int, gamma=0.5, gae_lambda=1.0):
    envs = gym.vector.SyncVectorEnv([lambda: ScriptedEnv(3, truncate)],
                                    autoreset_mode=AutoresetMode.SAME_STEP)
    collector = RolloutCollector(envs, cast(ActorCritic, CountingPolicy()))  # a stub network
    collector.reset(seed=0)
    buffer, stats = collector.collect(rollout_len, rollout_len)
    buffer.compute_advantages(gamma, gae_lambda)
    return buffer.data[:, 0], stats


def test_termination_never_bootstraps():
    data, stats = scripted_rollout(truncate=False, rollout_len=6)
    # returns with gamma 0.5, rewards 1, episodes of 3 steps ending by termination
    torch.testing.assert_close(data["return"], torch.tensor([1.75, 1.5, 1.0] * 2))
    assert data["final_value"].abs().sum() == 0
    assert stats.returns == [3.0, 3.0] and stats.lengths == [3, 3]


def test_truncation_bootstraps_from_final_obs_with_carried_state():
    data, _ = scripted_rollout(truncate=True, rollout_len=6)
    v_final = 100 * 4 + 3  # final obs 3 processed after 3 steps of the same episode
    torch.testing.assert_close(data["final_value"], torch.tensor([0.0, 0.0, v_final] * 2))
    r2 = 1 + 0.5 * v_final
    r1, r0 = 1 + 0.5 * r2, 1 + 0.5 * (1 + 0.5 * r2)
    torch.testing.assert_close(data["return"], torch.tensor([r0, r1, r2] * 2))


def test_same_step_autoreset_resets_core_and_bootstraps_rollout_end():
    data, _ = scripted_rollout(truncate=False, rollout_len=4)
    # the obs after the episode end is the new episode's first obs, flagged as a reset
    assert data["obs"][:, 0].tolist() == [0.0, 1.0, 2.0, 0.0]
    assert data["reset"].tolist() == [True, False, False, True]
    # the core restarted its count at t=3: value = 100 * 1 + 0
    assert data["value"].tolist() == [100.0, 201.0, 302.0, 100.0]
    last_value = 100 * 2 + 1  # obs 1 after one step of the new episode
    torch.testing.assert_close(data["return"],
                               torch.tensor([1.75, 1.5, 1.0, 1 + 0.5 * last_value]))


# --- GAE and loss terms against hand-computed values ---------------------------------------

def test_gae_hand_example():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]
    next_values = torch.tensor([2.0, 3.0, 4.0, 5.0])[:, None]
    rewards = torch.ones(4, 1)
    done = torch.tensor([False, True, False, True])[:, None]
    terminated = torch.tensor([False, False, False, True])[:, None]
    adv, ret = compute_gae(rewards, values, next_values, terminated, done, 0.9, 0.5)
    # t3 terminated: 1 - 4 = -3; t2: (1 + 3.6 - 3) + 0.45 * -3 = 0.25
    # t1 truncated (bootstraps, no propagation): 1 + 2.7 - 2 = 1.7; t0: 1.8 + 0.45 * 1.7
    expected = torch.tensor([1.8 + 0.45 * 1.7, 1.7, 0.25, -3.0])[:, None]
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_policy_loss_hand_values():
    log_ratio = torch.tensor([0.5, -0.5, 0.5, -0.5])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, kl, clip_frac = policy_loss(log_ratio, torch.zeros(4), adv, clip_coef=0.2)
    e, ie = math.exp(0.5), math.exp(-0.5)
    assert loss.item() == pytest.approx((-1.2 - ie + e + 0.8) / 4, abs=1e-6)
    assert kl.item() == pytest.approx(((e - 1 - 0.5) + (ie - 1 + 0.5)) / 2, abs=1e-6)
    assert clip_frac.item() == 1.0


def test_value_loss_and_total_hand_values():
    v, old, ret = torch.tensor([1.0, 3.0]), torch.zeros(2), torch.full((2,), 2.0)
    assert value_loss(v, old, ret, 0.5, clip=False).item() == pytest.approx(0.5)
    assert value_loss(v, old, ret, 0.5, clip=True).item() == pytest.approx(0.5 * 2.25)
    total, stats = ppo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), v, old, ret,
                            torch.full((2,), 0.7), clip_coef=0.5, clip_value_loss=False,
                            vf_coef=0.5, ent_coef=0.1)
    assert total.item() == pytest.approx(-1.0 + 0.5 * 0.5 - 0.1 * 0.7)
    assert stats["loss/entropy"].item() == pytest.approx(0.7)


# --- encoders and heads ----------------------------------------------------------------------

OBS_SPACES = {
    "box": spaces.Box(-1, 1, (3,)),
    "image": spaces.Box(0, 255, (12, 10, 3), np.uint8),
    "discrete": spaces.Discrete(4, start=2),
    "multidiscrete": spaces.MultiDiscrete([3, 2]),
    "multibinary": spaces.MultiBinary(5),
    "dict": spaces.Dict({"pos": spaces.Box(-1, 1, (2,)), "id": spaces.Discrete(3)}),
    "tuple": spaces.Tuple((spaces.Discrete(2), spaces.Box(-1, 1, (4,)))),
}


@pytest.mark.parametrize("name", list(OBS_SPACES))
def test_encoder_shapes(name):
    space = OBS_SPACES[name]
    encoder = build_encoder(space, ModelConfig(**TINY))
    batch = gym.vector.utils.batch_space(space, 6)
    batch.seed(0)
    obs = obs_to_torch(batch.sample(), space)
    obs = obs.reshape(2, 3) if isinstance(obs, TensorDict) else obs.reshape(2, 3, *obs.shape[1:])
    assert encoder(obs).shape == (2, 3, encoder.output_size)


def test_discrete_encoder_is_one_hot_with_start():
    encoder = build_encoder(spaces.Discrete(4, start=2), ModelConfig(**TINY))
    out = encoder(torch.tensor([2, 5]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1]]))


def test_heads():
    feats = torch.randn(5, 8)
    discrete = build_action_head(spaces.Discrete(3, start=1), 8)
    dist = discrete(feats)
    a = discrete.sample(dist)
    assert a.shape == (5,) and discrete.log_prob(dist, a).shape == (5,)
    assert set(discrete.to_env(a).tolist()) <= {1, 2, 3}
    multi = build_action_head(spaces.MultiDiscrete([3, 4]), 8)
    dist = multi(feats)
    a = multi.sample(dist)
    assert a.shape == (5, 2) and multi.entropy(dist).shape == (5,)
    box = build_action_head(spaces.Box(-0.5, 0.5, (2,)), 8, init_log_std=1.0)
    dist = box(feats)
    a = box.sample(dist)
    env_a = box.to_env(a)
    assert a.abs().max() > 0.5 and np.abs(env_a).max() <= 0.5  # sampled unclipped, env clipped
    expected = torch.distributions.Normal(dist.mean, dist.stddev).log_prob(a).sum(-1)
    torch.testing.assert_close(box.log_prob(dist, a), expected)


def test_unsupported_spaces_raise_one_line():
    cfg = ModelConfig(**TINY)
    with pytest.raises(ValueError, match=r"unsupported observation space Text") as err:
        build_encoder(spaces.Text(5), cfg)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"unsupported action space MultiBinary"):
        ActorCritic(spaces.Box(-1, 1, (2,)), spaces.MultiBinary(3), cfg)


# --- configs and logging --------------------------------------------------------------------

def test_configs_validate_and_round_trip_yaml():
    with pytest.raises(ValueError, match="must divide"):
        PPOConfig(rollout_len=100, seq_len=16)
    for cfg in (EnvConfig(kwargs={"corridor_length": 7}, wrappers=("a.b.C",)),
                ModelConfig(core="lstm", forget_bias_range=(1.0, 2.0)), PPOConfig(target_kl=0.02)):
        text = yaml.safe_dump(config_to_dict(cfg))
        assert config_from_dict(type(cfg), yaml.safe_load(text)) == cfg
    with pytest.raises(ValueError, match="did you mean 'seq_len'"):
        config_from_dict(PPOConfig, {"seq_lenn": 8})


def test_metric_logger(tmp_path):
    logger = MetricLogger(tmp_path / "run")
    logger.log({"loss/value": 0.5, "episode/success": float("nan")}, step=10)
    logger.close()
    assert logger.history == [{"step": 10, "loss/value": 0.5}]
    assert list((tmp_path / "run").glob("events.out.tfevents*"))


# --- determinism and exact resume -----------------------------------------------------------

def _comparable(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}


def _plain_values_only(tree):
    for value in tree.values():
        if isinstance(value, dict):
            _plain_values_only(value)
        else:
            assert isinstance(value, (torch.Tensor, int, float, str)), type(value)


def safetensors_round_trip(tree, path):
    """Saves a trainer state dict with safetensors (python ints / floats as 0-d int64 / float64
    tensors, strings as metadata; empty dicts vanish) and loads it back, as a checkpoint would
    (through :func:`~xlstm_rl.checkpoint.load_tensors`: safetensors alone hands out tensors off
    64-byte boundaries, where MKL's matmul rounds differently)."""
    from safetensors.torch import save_file

    from xlstm_rl.checkpoint import load_tensors

    tensors, meta = {}, {}

    def flatten(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                flatten(value, name + "/")
            elif isinstance(value, str):
                meta[name] = value
            elif isinstance(value, float):  # float64: a float32 learning rate is not exact
                tensors[name] = torch.tensor(value, dtype=torch.float64)
            else:
                tensors[name] = torch.as_tensor(value).contiguous()

    flatten(tree, "")
    save_file(tensors, str(path), metadata=meta)
    out: dict = {}
    for name, value in [*load_tensors(path).items(), *meta.items()]:
        *parents, leaf = name.split("/")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def test_same_seed_same_metrics_and_exact_resume(tmp_path):
    options = dict(normalize_obs=True, refresh_states=True, target_kl=0.5)
    first, second = tmaze_trainer(seed=3, **options), tmaze_trainer(seed=3, **options)
    for _ in range(2):  # interleaved: the trainers must not share RNG state
        assert _comparable(first.train_iteration()) == _comparable(second.train_iteration())
    saved = first.state_dict()
    _plain_values_only(saved)
    expected = _comparable(first.train_iteration())
    resumed = tmaze_trainer(seed=3, **options)
    resumed.load_state_dict(safetensors_round_trip(saved, tmp_path / "state.safetensors"))
    assert _comparable(resumed.train_iteration()) == expected
    for trainer in (first, second, resumed):
        trainer.close()


def test_async_equals_sync():
    def run(vectorization):
        trainer = PPOTrainer(EnvConfig(num_envs=2, vectorization=vectorization,
                                       kwargs={"corridor_length": 3}),
                             ModelConfig(core="lstm", **TINY),
                             PPOConfig(rollout_len=16, seq_len=8, minibatches=2, epochs=1,
                                       refresh_states=True))
        out = _comparable(trainer.train_iteration())
        trainer.close()
        return out

    assert run("async") == run("sync")


def test_kl_early_stop_and_separate_cores():
    trainer = tmaze_trainer("gru", shared=False, target_kl=0.0, epochs=3)
    metrics = trainer.train_iteration()
    trainer.close()
    assert metrics["ppo/epochs"] == 1.0 and math.isfinite(metrics["loss/value"])


def test_bench_ppo_writes_json(tmp_path):
    from xlstm_rl.agents.ppo.bench import bench_ppo

    out = bench_ppo(tmp_path / "bench.json", cores=("mlp", "lstm"), env_id="xlstm_rl/TMaze-v0",
                    num_envs=2, rollout_len=16, seq_len=8, epochs=1, minibatches=1,
                    hidden_size=8, iterations=1, warmup=0)
    saved = yaml.safe_load((tmp_path / "bench.json").read_text())
    assert saved["results"].keys() == {"mlp", "lstm"} and out["relative_to_mlp"]["mlp"] == 1.0
    assert all(r["sps"] > 0 for r in saved["results"].values())
    assert saved["config"]["cpu_kernels"]  # how the compiled kernels were built, or why not
