"""R2D2 actors: per-env epsilon-greedy acting with Ape-X epsilons, feeding the sequence cutter.

The N sub-envs of one vector env are the actors; env ``i`` explores with
``eps_i = eps_base ** (1 + alpha * i / (N - 1))`` (Horgan et al. 2018, Ape-X; R2D2 keeps it).
They act with the learner's current online network (one process: no parameter lag) through
the core's one-step ``step`` (the fused step kernel on CUDA, the reference on CPU).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from xlstm_rl.acting import EnvStepper, EpisodeStats
from xlstm_rl.cores.base import clear_rows
from xlstm_rl.networks import obs_to_torch
from xlstm_rl.networks.encoders import Obs, owned_tensor

from .config import R2D2Config
from .networks import R2D2Network
from .sequences import SequenceCutter, cast_state

STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def ape_x_epsilons(num_envs: int, eps_base: float = 0.4, alpha: float = 7.0) -> np.ndarray:
    """``eps_i = eps_base ** (1 + alpha * i / (N - 1))`` for ``i < N`` (``eps_base`` when N = 1)."""
    if num_envs == 1:
        return np.array([eps_base], dtype=np.float64)
    i = np.arange(num_envs, dtype=np.float64)
    return eps_base ** (1.0 + alpha * i / (num_envs - 1))


class Actor:
    """Steps a vector env epsilon-greedily and cuts the streams into replay sequences.

    Args:
        envs: Same-step-autoreset vector env.
        network: The Q network to act with.
        cfg: Hyper-parameters (epsilons, sequence geometry, state dtype).
        env_id: For error messages.
        device: Where the network lives.
        generator: CPU generator of the exploration draws.

    Attributes:
        stepper: The shared acting loop (observations, reset flags, recurrent state, books).
        cutter: The :class:`SequenceCutter`; epsilons: ``[N]``.
    """

    def __init__(self, envs: gym.vector.VectorEnv, network: R2D2Network, cfg: R2D2Config,
                 env_id: str, device: torch.device, generator: torch.Generator) -> None:
        self.network, self.device, self.generator = network, device, generator
        self.stepper = EnvStepper(envs, env_id)
        self.space = envs.single_observation_space
        n = self.stepper.num_envs
        self.epsilons = torch.as_tensor(ape_x_epsilons(n, cfg.eps_base, cfg.eps_alpha))
        self.cutter = SequenceCutter(n, cfg.burn_in, cfg.trace_len, cfg.period,
                                     STATE_DTYPES[cfg.state_dtype], cfg.staleness_episodes,
                                     cfg.staleness_max_len)

    def reset(self, seed: int | None) -> None:
        """Resets the envs (seeded) and zeroes the recurrent state."""
        self.stepper.reset(seed=seed)
        self.stepper.state = self.network.initial_state(self.stepper.num_envs, self.device)

    def _torch(self, obs: object) -> Obs:
        return obs_to_torch(obs, self.space, self.device)

    @torch.no_grad()
    def step(self) -> list[TensorDict]:
        """One epsilon-greedy vector step; returns the sequences it completed.

        Raises:
            EnvFault: The env returned a non-finite or misfit value.
        """
        st, n = self.stepper, self.stepper.num_envs
        obs = self._torch(st.obs)
        reset = owned_tensor(st.reset_flags, torch.bool)
        state = clear_rows(st.state, reset.to(self.device))
        self.cutter.observe(obs.cpu(), state.cpu(), reset)
        q, new_state = self.network.step(obs, state, reset.to(self.device))
        greedy = q.argmax(dim=-1).cpu()
        explore = torch.rand(n, generator=self.generator, dtype=torch.float64) < self.epsilons
        random = torch.randint(self.network.num_actions, (n,), generator=self.generator)
        action = torch.where(explore, random, greedy)
        result = st.step(self.network.to_env(action))
        st.state = new_state
        next_obs = self._torch(st.obs).cpu()
        final = {i: obs_to_torch(np.asarray(o)[None] if not isinstance(o, dict) else
                                 {k: np.asarray(v)[None] for k, v in o.items()},
                                 self.space, "cpu")[0]
                 for i, o in result.final_obs.items()}
        return self.cutter.step(obs.cpu(), action, owned_tensor(result.reward),
                                owned_tensor(result.terminated),
                                owned_tensor(result.truncated), next_obs, final)

    def take_episode_stats(self) -> EpisodeStats:
        """Episodes that ended since the last call."""
        return self.stepper.take_episode_stats()


def state_of_env(actor: Actor, i: int, dtype: torch.dtype = torch.float32) -> TensorDict:
    """The recurrent state env ``i`` carries now, as stored (test helper)."""
    return cast_state(actor.stepper.state[i].cpu(), dtype)
