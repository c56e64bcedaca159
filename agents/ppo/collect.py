"""PPO rollout collection on the shared acting loop (:class:`~xlstm_rl.acting.EnvStepper`).

With same-step autoreset the observation returned for an env whose episode ended is already
the first observation of its next episode; the ended episode's last observation comes in
``final_obs``. Per step ``t`` and env:

* ``reset[t]`` is True when the observation acted on at ``t`` starts an episode, so the core
  zeroes the state before processing it (``act(..., reset)``);
* ``final_value[t]``: where the episode was truncated (not terminated) after ``t``, the value
  of ``final_obs``, computed by stepping the core from the state that followed step ``t``
  (the state carried through that episode). Terminated episodes never bootstrap.
"""
from __future__ import annotations

from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector.utils import concatenate, create_empty_array
from tensordict import TensorDict
from torch import Tensor

from xlstm_rl.acting import EnvStepper, EpisodeStats
from xlstm_rl.errors import StopRequested
from xlstm_rl.networks import ActorCritic, obs_to_torch
from xlstm_rl.networks.actor_critic import Sampler
from xlstm_rl.networks.encoders import owned_tensor
from xlstm_rl.obs_norm import ObsNormalizer
from xlstm_rl.trainer import StopCheck

from .buffer import RolloutBuffer

__all__ = ["EpisodeStats", "RolloutCollector"]


class RolloutCollector:
    """Steps a vector env with a recurrent policy and records rollouts.

    Holds what carries over between rollouts: the current observation (as the network sees
    it), the recurrent state, the reset flags and the running episode returns / lengths.

    Args:
        envs: Vector env built with ``autoreset_mode="same_step"``.
        policy: The actor-critic.
        normalizer: Optional observation normalizer (updated on every new observation, on the
            CPU side before the tensor is made).
        reward_scale: Factor applied to stored rewards (episode statistics stay raw).
        device: Torch device of the policy.
        generator: RNG for action sampling (the global torch RNG when None).
        env_id: Name of the env in error messages.
    """

    def __init__(self, envs: gym.vector.VectorEnv, policy: ActorCritic,
                 normalizer: ObsNormalizer | None = None, reward_scale: float = 1.0,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                 env_id: str = "env") -> None:
        self.envs, self.policy, self.normalizer = envs, policy, normalizer
        self.generator = generator
        self.sampler: Sampler | None = None  # data-parallel runs sample the global batch
        self.reward_scale, self.device = float(reward_scale), torch.device(device)
        self.stepper = EnvStepper(envs, env_id)
        self.space = envs.single_observation_space
        self.num_envs = envs.num_envs
        self.obs: Tensor | TensorDict | None = None
        self.state = policy.initial_state(self.num_envs, self.device)
        self.reset_flags = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)

    @property
    def ep_return(self) -> np.ndarray:
        """``[N]`` return of each env's current episode so far (raw rewards)."""
        return self.stepper.ep_return

    @property
    def ep_length(self) -> np.ndarray:
        """``[N]`` length of each env's current episode so far."""
        return self.stepper.ep_length

    def _prepare(self, raw: Any, update: bool) -> Tensor | TensorDict:
        if self.normalizer is not None:
            raw = self.normalizer.normalize(raw, update=update)
        return obs_to_torch(raw, self.space, self.device)

    def reset(self, seed: int | None = None) -> None:
        """Resets all envs (seeded: reproducible) and the carried state."""
        raw = self.stepper.reset(seed=seed)
        self.obs = self._prepare(raw, update=True)
        self.state = self.policy.initial_state(self.num_envs, self.device)
        self.reset_flags = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)

    def _final_values(self, final_obs: dict[int, Any], state: TensorDict) -> Tensor:
        """``[N]`` value of ``final_obs`` where truncated and not terminated, else 0."""
        out = torch.zeros(self.num_envs, device=self.device)
        if not final_obs:
            return out
        idx = sorted(final_obs)
        empty = create_empty_array(self.space, n=len(idx))  # None only for array-less spaces
        batch = concatenate(self.space, [final_obs[i] for i in idx],
                            cast("tuple[Any, ...] | dict[str, Any] | np.ndarray", empty))
        rows = torch.as_tensor(idx, device=self.device)
        out[rows] = self.policy.value(self._prepare(batch, update=False), state[rows], None)
        return out

    @torch.no_grad()
    def step(self, stats: EpisodeStats | None = None) -> dict[str, Tensor | TensorDict]:
        """Acts once in every env; returns the step's record (tensors ``[N, ...]``).

        Ended episodes are added to ``stats`` (or kept in the stepper when None).
        """
        obs, reset = self.obs, self.reset_flags
        extra: dict[str, Any] = {} if self.sampler is None else {"sampler": self.sampler}
        # The carried state is handed over (chunk starts keep a copy, see collect): the
        # cores may update it in place, halving the acting step's memory traffic.
        action, log_prob, value, new_state = self.policy.act(
            obs, self.state, reset, generator=self.generator, overwrite_state=True, **extra)
        result = self.stepper.step(self.policy.actor.to_env(action))
        final_value = self._final_values(result.final_obs, new_state)
        if stats is not None:
            ended = self.stepper.take_episode_stats()
            stats.returns += ended.returns
            stats.lengths += ended.lengths
            stats.successes += ended.successes

        def as_t(x: np.ndarray, dtype: torch.dtype) -> Tensor:
            return owned_tensor(x, dtype, self.device)

        record = {"obs": obs, "action": action, "log_prob": log_prob, "value": value,
                  "reward": as_t(result.reward, torch.float32) * self.reward_scale,
                  "terminated": as_t(result.terminated, torch.bool),
                  "truncated": as_t(result.truncated, torch.bool), "reset": reset,
                  "final_value": final_value}
        self.obs = self._prepare(self.stepper.obs, update=True)
        self.state, self.reset_flags = new_state, as_t(result.ended, torch.bool)
        return record

    @torch.no_grad()
    def collect(self, rollout_len: int, seq_len: int, should_stop: StopCheck | None = None
                ) -> tuple[RolloutBuffer, EpisodeStats]:
        """Collects ``rollout_len`` steps per env.

        Args:
            rollout_len: Steps per env.
            seq_len: Training chunk length (a state is stored at every chunk start).
            should_stop: Polled every step; True raises :class:`StopRequested`.

        Returns:
            The filled :class:`RolloutBuffer` (advantages not yet computed) and the statistics
            of the episodes that ended during the rollout.
        """
        if self.obs is None:
            raise RuntimeError("call reset() before collect()")
        stats, records, states = EpisodeStats(), [], []
        for t in range(rollout_len):
            if should_stop is not None and should_stop():
                raise StopRequested(f"collection stopped at step {t} of {rollout_len}")
            if t % seq_len == 0:  # a copy: the acting step may overwrite the carried state
                states.append(self.state.clone())
            records.append(self.step(stats))
        data = TensorDict({k: torch.stack([r[k] for r in records]) for k in records[0]},
                          batch_size=[rollout_len, self.num_envs])
        last_value = self.policy.value(self.obs, self.state, self.reset_flags)
        return RolloutBuffer(data, torch.stack(states), last_value, seq_len), stats
