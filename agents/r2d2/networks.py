"""The R2D2 Q network: the shared torso (encoder + memory core) and a dueling Q head.

Action spaces: ``Discrete(n, start)``; a 1-D ``MultiDiscrete(nvec, start)`` is Q-learned over
the *flat product* of its components (``prod(nvec)`` joint actions, at most
:data:`MAX_JOINT_ACTIONS`), which keeps the max and the argmax of Q exact. Other spaces raise a
one-line ValueError that points to PPO.
"""
from __future__ import annotations

import math

from typing import cast

import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDict
from torch import Tensor, nn

from xlstm_rl.networks import Torso, layer_init
from xlstm_rl.schema import ModelConfig

MAX_JOINT_ACTIONS = 4096
"""Most joint actions a MultiDiscrete space may have (Q has one output per joint action)."""


def num_q_actions(space: spaces.Space) -> int:
    """Number of Q outputs for ``space``.

    Raises:
        ValueError: One line naming the space and pointing to PPO, for spaces R2D2 cannot act in.
    """
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete) and len(space.nvec.shape) == 1:
        joint = math.prod(int(n) for n in space.nvec)
        if joint <= MAX_JOINT_ACTIONS:
            return joint
        raise ValueError(f"r2d2 acts over the flat product of a MultiDiscrete space; {space} "
                         f"has {joint} joint actions (at most {MAX_JOINT_ACTIONS}): use algo ppo")
    raise ValueError(f"r2d2 needs a Discrete (or small 1-D MultiDiscrete) action space, got "
                     f"{space}: use algo ppo for this action space")


class DuelingHead(nn.Module):
    """``Q(s, a) = V(s) + A(s, a) - mean_a A(s, a)`` (Wang et al. 2016), two MLP streams.

    Args:
        in_size: Feature size ``F``; hidden: width of each stream; num_actions: ``A``.
    """

    def __init__(self, in_size: int, hidden: int, num_actions: int) -> None:
        super().__init__()
        self.value = nn.Sequential(layer_init(nn.Linear(in_size, hidden)), nn.ReLU(),
                                   layer_init(nn.Linear(hidden, 1), std=1.0))
        self.advantage = nn.Sequential(layer_init(nn.Linear(in_size, hidden)), nn.ReLU(),
                                       layer_init(nn.Linear(hidden, num_actions), std=0.01))

    def forward(self, features: Tensor) -> Tensor:
        """``[*lead, F]`` -> Q-values ``[*lead, A]``."""
        adv = self.advantage(features)
        return self.value(features) + adv - adv.mean(dim=-1, keepdim=True)


class R2D2Network(nn.Module):
    """Encoder -> memory core -> dueling Q head.

    Args:
        observation_space: Single-env observation space.
        action_space: Single-env action space (see module docstring).
        model: Encoder and core configuration.
        dueling_hidden: Width of the value and advantage streams.

    Attributes:
        torso, head: The parts; ``num_actions``: Q outputs.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space,
                 model: ModelConfig, dueling_hidden: int = 128) -> None:
        super().__init__()
        self.num_actions = num_q_actions(action_space)
        self.action_space = action_space
        self.torso = Torso(observation_space, model)
        self.head = DuelingHead(self.torso.output_size, dueling_hidden, self.num_actions)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None
                      ) -> TensorDict:
        """The core's zero state, TensorDict ``[batch_size]``."""
        return self.torso.initial_state(batch_size, device)

    def forward(self, obs: Tensor | TensorDict, state: TensorDict, reset: Tensor | None
                ) -> tuple[Tensor, TensorDict]:
        """Q-values of a batch of sequences (the core's chunkwise ``forward``).

        Args:
            obs: ``[B, T, ...]``; state: TensorDict ``[B]`` before step 0; reset: ``[B, T]``.

        Returns:
            ``(q [B, T, A], state after step T-1)``.
        """
        y, new = self.torso(obs, state, reset, step=False)
        return self.head(y), new

    def advance(self, obs: Tensor | TensorDict, state: TensorDict, reset: Tensor | None
                ) -> TensorDict:
        """The state after a sequence, as :meth:`forward` returns it, without Q-values (the
        burn-in: the core skips what its state does not read, and the head does not run)."""
        return self.torso.advance(obs, state, reset)

    def step(self, obs: Tensor | TensorDict, state: TensorDict, reset: Tensor | None
             ) -> tuple[Tensor, TensorDict]:
        """Q-values of one step: ``obs [B, ...]``, ``reset [B]`` -> ``(q [B, A], new state)``."""
        y, new = self.torso(obs, state, reset, step=True)
        return self.head(y), new

    def to_env(self, index: Tensor) -> np.ndarray:
        """Joint action indices ``[B]`` -> the numpy batch ``VectorEnv.step`` takes."""
        flat = index.detach().cpu().numpy().astype(np.int64)
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return flat + int(space.start)
        space = cast(spaces.MultiDiscrete, space)  # the only other kind __init__ accepts
        parts = np.stack(np.unravel_index(flat, tuple(int(n) for n in space.nvec)), axis=-1)
        return (parts + np.asarray(space.start, dtype=np.int64)).astype(space.dtype)

    def from_env(self, actions: np.ndarray) -> Tensor:
        """Inverse of :meth:`to_env`: env actions ``[B, ...]`` -> joint indices ``[B]`` int64."""
        space = self.action_space
        arr = np.asarray(actions, dtype=np.int64)
        if isinstance(space, spaces.Discrete):
            return torch.as_tensor(arr - int(space.start))
        space = cast(spaces.MultiDiscrete, space)
        parts = arr - np.asarray(space.start, dtype=np.int64)
        nvec = tuple(int(n) for n in space.nvec)
        return torch.as_tensor(np.ravel_multi_index(tuple(parts.T), nvec))

    @torch.no_grad()
    def act_env(self, obs: Tensor | TensorDict, state: TensorDict, reset: Tensor | None,
                deterministic: bool = True) -> tuple[np.ndarray, TensorDict]:
        """Acting for an :class:`xlstm_rl.policy.Policy`: greedy actions (``deterministic``)
        or epsilon-greedy with epsilon 0.01 (torch's global RNG), and the new state."""
        q, new = self.step(obs, state, reset)
        action = q.argmax(dim=-1)
        if not deterministic:
            explore = torch.rand(action.shape, device=q.device) < 0.01
            random = torch.randint(self.num_actions, action.shape, device=q.device)
            action = torch.where(explore, random, action)
        return self.to_env(action), new
