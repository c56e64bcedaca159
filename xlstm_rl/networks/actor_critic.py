"""Recurrent actor-critic: encoder -> memory core -> policy and value heads.

With ``shared_core=True`` one encoder and core feed both heads; otherwise the value has its
own encoder and core. The recurrent state is a TensorDict ``[B]`` with the policy core's state
under ``"policy"`` and, for separate cores, the value core's state under ``"value"``.
Acting runs the cores' ``step``; training runs their ``forward`` over sequence chunks; both
give the same numbers (the cores guarantee it), which is what PPO with stored states needs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from gymnasium import spaces
from tensordict import TensorDict
from torch import Tensor, nn

from xlstm_rl.cores import make_core
from xlstm_rl.schema import ModelConfig

from .encoders import Obs, build_encoder
from .heads import ValueHead, build_action_head

Sampler = Callable[[nn.Module, Any, bool, "torch.Generator | None"], Tensor]
"""``(actor_head, distribution, deterministic, generator) -> actions``."""


class Torso(nn.Module):
    """Observation encoder followed by a memory core: the trunk of policy, value and Q networks.

    Args:
        observation_space: Single-env observation space (see :func:`build_encoder`).
        cfg: Model configuration (encoder options and the core's :class:`CoreConfig` fields).

    Attributes:
        encoder, core: The parts; ``output_size``: feature size of the core's output.
    """

    def __init__(self, observation_space: spaces.Space, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = build_encoder(observation_space, cfg)
        self.core = make_core(cfg.core, self.encoder.output_size, cfg)
        self.output_size = self.core.output_size

    def initial_state(self, batch_size: int, device: torch.device | str | None = None
                      ) -> TensorDict:
        """The core's zero state, TensorDict ``[batch_size]``."""
        return self.core.initial_state(batch_size, device)

    def forward(self, obs: Obs, state: TensorDict, reset: Tensor | None, step: bool,
                overwrite_state: bool = False) -> tuple[Tensor, TensorDict]:
        """Features of observations given the state before them.

        Args:
            obs: ``[B, ...]`` when ``step`` (one step, the core's ``step``), else ``[B, T, ...]``
                (a sequence, the core's chunkwise ``forward``).
            state: TensorDict ``[B]``; reset: ``[B]`` / ``[B, T]`` bool (True: zero the state
                before this observation) or None.
            step: One step or a sequence.
            overwrite_state: One step may write the new state into ``state``'s tensors (see
                ``MemoryCore.step``).

        Returns:
            ``(features [B, (T,) output_size], new state)``.
        """
        x = self.encoder(obs)
        if step:
            return self.core.step(x, state, reset, overwrite_state=overwrite_state)
        return self.core(x, state, reset)

    def advance(self, obs: Obs, state: TensorDict, reset: Tensor | None) -> TensorDict:
        """The state after a sequence ``obs [B, T, ...]`` (the core's ``advance``: no
        features)."""
        return self.core.advance(self.encoder(obs), state, reset)


class ActorCritic(nn.Module):
    """Recurrent policy and value networks for one observation / action space pair.

    Args:
        observation_space: single-env observation space.
        action_space: single-env action space (Discrete, MultiDiscrete or Box).
        cfg: model configuration.

    Raises:
        ValueError: unsupported observation or action space (one line naming it).
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space,
                 cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.torso = Torso(observation_space, cfg)
        self.value_torso = None if cfg.shared_core else Torso(observation_space, cfg)
        self.actor = build_action_head(action_space, self.torso.output_size, cfg.init_log_std)
        self.critic = ValueHead(self.torso.output_size)

    @property
    def action_shape(self) -> tuple[int, ...]:
        """Shape of one internal action (``()`` for Discrete)."""
        return self.actor.action_shape

    def initial_state(self, batch_size: int, device: torch.device | str | None = None
                      ) -> TensorDict:
        """Zero recurrent state, a TensorDict with batch ``[batch_size]``."""
        parts = {"policy": self.torso.core.initial_state(batch_size, device)}
        if self.value_torso is not None:
            parts["value"] = self.value_torso.core.initial_state(batch_size, device)
        return TensorDict(parts, batch_size=[batch_size], device=device)

    def _run(self, obs: Obs, state: TensorDict, reset: Tensor | None, step: bool,
             overwrite_state: bool = False) -> tuple[Tensor, Tensor, TensorDict]:
        y, s = self.torso(obs, state["policy"], reset, step, overwrite_state)
        new = {"policy": s}
        yv = y
        if self.value_torso is not None:
            yv, new["value"] = self.value_torso(obs, state["value"], reset, step,
                                                overwrite_state)
        return y, yv, TensorDict(new, batch_size=state.batch_size)

    def act(self, obs: Obs, state: TensorDict, reset: Tensor | None,
            deterministic: bool = False, generator: torch.Generator | None = None,
            sampler: Sampler | None = None, overwrite_state: bool = False
            ) -> tuple[Tensor, Tensor, Tensor, TensorDict]:
        """One acting step.

        Args:
            obs: ``[B, ...]``; state: TensorDict ``[B]``; reset: ``[B]`` bool (True: the
                episode starts at this observation, the state is zeroed first).
            deterministic: take the distribution's mode instead of a sample.
            generator: RNG for sampling (the global torch RNG when None).
            sampler: Draws the actions instead of ``actor.sample`` (called as
                ``sampler(actor, dist, deterministic, generator)``; data-parallel PPO samples
                the batch of every rank with it).
            overwrite_state: The caller hands ``state`` over: the cores may write the new
                state into its tensors (see ``MemoryCore.step``).

        Returns:
            ``action [B, *action_shape]`` (internal, see ``ActionHead.to_env``),
            ``log_prob [B]``, ``value [B]`` and the new state.
        """
        y, yv, new = self._run(obs, state, reset, step=True, overwrite_state=overwrite_state)
        dist = self.actor(y)
        if sampler is None:
            action = self.actor.sample(dist, deterministic, generator)
        else:
            action = sampler(self.actor, dist, deterministic, generator)
        return action, self.actor.log_prob(dist, action), self.critic(yv), new

    @torch.no_grad()
    def act_env(self, obs: Obs, state: TensorDict, reset: Tensor | None,
                deterministic: bool = True) -> tuple[object, TensorDict]:
        """Acting for a :class:`xlstm_rl.policy.Policy`: env actions (numpy batch) and state."""
        action, _, _, new = self.act(obs, state, reset, deterministic=deterministic)
        return self.actor.to_env(action), new

    def evaluate(self, obs: Obs, state: TensorDict, reset: Tensor | None, actions: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, TensorDict]:
        """Re-evaluates a batch of sequences (training path, the cores' ``forward``).

        Args:
            obs: ``[B, T, ...]``; state: start state ``[B]``; reset: ``[B, T]`` bool;
            actions: ``[B, T, *action_shape]``.

        Returns:
            ``log_prob [B, T]``, ``entropy [B, T]``, ``value [B, T]`` and the final state.
        """
        y, yv, final = self._run(obs, state, reset, step=False)
        dist = self.actor(y)
        return self.actor.log_prob(dist, actions), self.actor.entropy(dist), self.critic(yv), final

    def value(self, obs: Obs, state: TensorDict, reset: Tensor | None = None) -> Tensor:
        """Value of one observation per row given the state before it: ``[B, ...]`` -> ``[B]``.

        For bootstrapping: pass the state that followed the previous step of the same episode.
        """
        if self.value_torso is None:
            y, _ = self.torso(obs, state["policy"], reset, step=True)
        else:
            y, _ = self.value_torso(obs, state["value"], reset, step=True)
        return self.critic(y)

    @torch.no_grad()
    def chunk_start_states(self, obs: Obs, state: TensorDict, reset: Tensor, seq_len: int
                           ) -> TensorDict:
        """Recurrent states at the start of every ``seq_len`` chunk of a sequence.

        Args:
            obs: ``[B, T, ...]`` with ``T`` a multiple of ``seq_len``; state: state before
                step 0; reset: ``[B, T]``.

        Returns:
            TensorDict ``[B, T // seq_len]`` (chunk 0 holds ``state`` itself).
        """
        T = reset.shape[1]
        starts = [state]
        for t0 in range(0, T - seq_len, seq_len):
            chunk, chunk_reset = obs[:, t0:t0 + seq_len], reset[:, t0:t0 + seq_len]
            new = {"policy": self.torso.advance(chunk, state["policy"], chunk_reset)}
            if self.value_torso is not None:
                new["value"] = self.value_torso.advance(chunk, state["value"], chunk_reset)
            state = TensorDict(new, batch_size=state.batch_size)
            starts.append(state)
        return torch.stack(starts, dim=1)
