"""Rollout collection from a Gymnasium 1.x vector env with SAME_STEP autoreset.

With same-step autoreset the observation returned for an env whose episode ended is already
the first observation of its next episode; the last observation of the ended episode is in
``infos["final_obs"]``. Per step ``t`` and env:

* ``reset[t]`` is True when the observation acted on at ``t`` starts an episode, so the core
  zeroes the state before processing it (``act(..., reset)``);
* ``final_value[t]``: where the episode was truncated (not terminated) after ``t``, the value
  of ``final_obs``, computed by stepping the core from the state that followed step ``t``
  (the state carried through that episode). Terminated episodes never bootstrap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector.utils import concatenate, create_empty_array
from tensordict import TensorDict
from torch import Tensor

from xlstm_rl.envs import episode_success
from xlstm_rl.networks import ActorCritic, obs_to_torch

from .buffer import RolloutBuffer
from .obs_norm import ObsNormalizer


@dataclass
class EpisodeStats:
    """Returns, lengths and success flags (NaN: not reported) of the episodes that ended."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Means over the ended episodes (NaN when none ended / none reported success)."""
        succ = [s for s in self.successes if not np.isnan(s)]
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        return {"episode/return": mean(self.returns), "episode/length": mean(self.lengths),
                "episode/success": mean(succ), "episode/count": float(len(self.returns))}


class RolloutCollector:
    """Steps a vector env with a recurrent policy and records rollouts.

    Holds what carries over between rollouts: the current observation (as the network sees
    it), the recurrent state, the reset flags and the running episode returns / lengths.

    Args:
        envs: vector env built with ``autoreset_mode="same_step"``.
        policy: the actor-critic.
        normalizer: optional observation normalizer (updated on every new observation).
        reward_scale: factor applied to stored rewards (episode statistics stay raw).
        device: torch device of the policy.
        generator: RNG for action sampling (the global torch RNG when None).
    """

    def __init__(self, envs: gym.vector.VectorEnv, policy: ActorCritic,
                 normalizer: ObsNormalizer | None = None, reward_scale: float = 1.0,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None
                 ) -> None:
        self.envs, self.policy, self.normalizer, self.generator = envs, policy, normalizer, generator
        self.reward_scale, self.device = float(reward_scale), torch.device(device)
        self.space = envs.single_observation_space
        self.num_envs = envs.num_envs
        self.obs: Tensor | TensorDict | None = None
        self.state = policy.initial_state(self.num_envs, self.device)
        self.reset_flags = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self.ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)

    def _prepare(self, raw: Any, update: bool) -> Tensor | TensorDict:
        obs = obs_to_torch(raw, self.space, self.device)
        return obs if self.normalizer is None else self.normalizer(obs, update=update)

    def reset(self, seed: int | None = None) -> None:
        """Resets all envs (seeded: reproducible) and the carried state."""
        raw, _ = self.envs.reset(seed=seed)
        self.obs = self._prepare(raw, update=True)
        self.state = self.policy.initial_state(self.num_envs, self.device)
        self.reset_flags = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0

    def _final_values(self, infos: dict[str, Any], truncated: np.ndarray,
                      terminated: np.ndarray, state: TensorDict) -> Tensor:
        """``[N]`` value of ``final_obs`` where truncated and not terminated, else 0."""
        out = torch.zeros(self.num_envs, device=self.device)
        idx = np.flatnonzero(truncated & ~terminated)
        if idx.size == 0:
            return out
        finals = [infos["final_obs"][i] for i in idx]
        batch = concatenate(self.space, finals, create_empty_array(self.space, n=len(idx)))
        rows = torch.as_tensor(idx, device=self.device)
        out[rows] = self.policy.value(self._prepare(batch, update=False), state[rows], None)
        return out

    def _track_episodes(self, reward: np.ndarray, done: np.ndarray, infos: dict[str, Any],
                        stats: EpisodeStats) -> None:
        self.ep_return += reward
        self.ep_length += 1
        if not done.any():
            return
        success = episode_success(infos, self.num_envs)
        for i in np.flatnonzero(done):
            stats.returns.append(float(self.ep_return[i]))
            stats.lengths.append(int(self.ep_length[i]))
            stats.successes.append(float(success[i]))
        self.ep_return[done], self.ep_length[done] = 0.0, 0

    @torch.no_grad()
    def step(self, stats: EpisodeStats) -> dict[str, Tensor | TensorDict]:
        """Acts once in every env; returns the step's record (tensors ``[N, ...]``)."""
        obs, reset = self.obs, self.reset_flags
        action, log_prob, value, new_state = self.policy.act(obs, self.state, reset,
                                                             generator=self.generator)
        raw, reward, terminated, truncated, infos = self.envs.step(self.policy.actor.to_env(action))
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        final_value = self._final_values(infos, truncated, terminated, new_state)
        self._track_episodes(np.asarray(reward, np.float64), terminated | truncated, infos, stats)
        as_t = lambda x, dt: torch.as_tensor(np.asarray(x), dtype=dt, device=self.device)  # noqa: E731
        record = {"obs": obs, "action": action, "log_prob": log_prob, "value": value,
                  "reward": as_t(reward, torch.float32) * self.reward_scale,
                  "terminated": as_t(terminated, torch.bool),
                  "truncated": as_t(truncated, torch.bool), "reset": reset,
                  "final_value": final_value}
        self.obs = self._prepare(raw, update=True)
        self.state, self.reset_flags = new_state, record["terminated"] | record["truncated"]
        return record

    @torch.no_grad()
    def collect(self, rollout_len: int, seq_len: int) -> tuple[RolloutBuffer, EpisodeStats]:
        """Collects ``rollout_len`` steps per env.

        Returns:
            The filled :class:`RolloutBuffer` (advantages not yet computed) and the statistics
            of the episodes that ended during the rollout.
        """
        if self.obs is None:
            raise RuntimeError("call reset() before collect()")
        stats, records, states = EpisodeStats(), [], []
        for t in range(rollout_len):
            if t % seq_len == 0:
                states.append(self.state)
            records.append(self.step(stats))
        data = TensorDict({k: torch.stack([r[k] for r in records]) for k in records[0]},
                          batch_size=[rollout_len, self.num_envs])
        last_value = self.policy.value(self.obs, self.state, self.reset_flags)
        return RolloutBuffer(data, torch.stack(states), last_value, seq_len), stats
