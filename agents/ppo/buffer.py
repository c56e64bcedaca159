"""Rollout storage for recurrent PPO: time-major steps plus chunk-start recurrent states.

Layout (``T = rollout_len``, ``N = num_envs``, ``L = seq_len``, ``C = T / L``):

* ``data``: TensorDict ``[T, N]`` with ``obs`` (as the network saw it), ``action``,
  ``log_prob``, ``value``, ``reward``, ``terminated``, ``truncated``, ``reset`` (an episode
  starts at this step), ``final_value`` (value of the final observation of an episode
  truncated after this step, else 0) and, after :meth:`compute_advantages`, ``advantage`` and
  ``return``.
* ``states``: TensorDict ``[C, N]``, the recurrent state of each env before the first step
  of every chunk (before that step's reset is applied, as the cores expect).

Minibatches are whole chunks, batch-first: ``[B, L, ...]`` with start states ``[B]``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import torch
from tensordict import TensorDict
from torch import Tensor

from .loss import compute_gae

if TYPE_CHECKING:
    from xlstm_rl.networks import ActorCritic


class RolloutBuffer:
    """One rollout of ``num_envs`` envs, cut into ``seq_len`` chunks for training.

    Args:
        data: TensorDict ``[T, N]`` (see module docstring).
        states: TensorDict ``[C, N]`` of chunk-start states.
        last_value: ``[N]`` value of the observation after the last step (bootstrap).
        seq_len: chunk length ``L`` (divides ``T``).
    """

    def __init__(self, data: TensorDict, states: TensorDict, last_value: Tensor,
                 seq_len: int) -> None:
        T, N = data.batch_size
        if T % seq_len:
            raise ValueError(f"seq_len ({seq_len}) must divide the rollout length ({T})")
        if tuple(states.batch_size) != (T // seq_len, N):
            raise ValueError(f"states must have batch {(T // seq_len, N)}, got "
                             f"{tuple(states.batch_size)}")
        self.data, self.states, self.last_value, self.seq_len = data, states, last_value, seq_len

    @property
    def num_chunks(self) -> int:
        """Total number of chunks ``C * N``."""
        return self.states.batch_size.numel()

    def next_values(self) -> Tensor:
        """``[T, N]`` value of the observation following each step within its episode."""
        values, truncated = self.data["value"], self.data["truncated"]
        following = torch.cat([values[1:], self.last_value[None]], dim=0)
        return torch.where(truncated, self.data["final_value"], following)

    def compute_advantages(self, gamma: float, gae_lambda: float) -> None:
        """Adds ``advantage`` and ``return`` ``[T, N]`` to ``data`` (GAE; bootstraps on
        truncation from ``final_value``, never on termination)."""
        d = self.data
        done = d["terminated"] | d["truncated"]
        adv, ret = compute_gae(d["reward"], d["value"], self.next_values(), d["terminated"], done,
                               gamma, gae_lambda)
        d["advantage"], d["return"] = adv, ret

    def sequences(self) -> TensorDict:
        """All chunks batch-first: TensorDict ``[N * C, L]`` ordered env-major."""
        T, N = self.data.batch_size
        C, L = T // self.seq_len, self.seq_len
        return self.data.reshape(C, L, N).permute(2, 0, 1).contiguous().reshape(N * C, L)

    def chunk_states(self) -> TensorDict:
        """Chunk-start states ``[N * C]`` in the order of :meth:`sequences`."""
        return self.states.permute(1, 0).contiguous().reshape(-1)

    def minibatches(self, num_minibatches: int, generator: torch.Generator | None = None
                    ) -> Iterator[tuple[TensorDict, TensorDict]]:
        """Shuffled minibatches of whole chunks.

        Yields:
            ``(batch [B, L], start_states [B])`` with ``B ~ N * C / num_minibatches``.
        """
        if num_minibatches > self.num_chunks:
            raise ValueError(f"minibatches ({num_minibatches}) exceed the number of chunks "
                             f"({self.num_chunks}); lower minibatches or seq_len")
        seqs, states = self.sequences(), self.chunk_states()
        perm = torch.randperm(self.num_chunks, generator=generator).to(seqs.device)
        for idx in perm.tensor_split(num_minibatches):
            yield seqs[idx], states[idx]

    @torch.no_grad()
    def refresh_states(self, policy: torch.nn.Module) -> None:
        """Recomputes the chunk-start states with the current ``policy`` from the stored state
        at the start of the rollout (``policy.chunk_start_states``)."""
        full = self.data.permute(1, 0).contiguous()                      # [N, T]
        start = self.states[0]                                           # [N]
        new = cast("ActorCritic", policy).chunk_start_states(full["obs"], start, full["reset"],
                                                             self.seq_len)
        self.states = new.permute(1, 0).contiguous()                     # [C, N]
