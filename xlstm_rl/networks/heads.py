"""Action heads (Discrete, MultiDiscrete, Box) and the value head.

Every action head maps features ``[*lead, F]`` to a distribution and offers ``log_prob``,
``entropy`` (summed over action components, shape ``[*lead]``), ``sample`` / ``mode`` and
``to_env`` (network action -> what ``env.step`` takes). Network actions are "internal":
Discrete values are shifted to start at 0, Box actions are the *unclipped* Gaussian samples
(their log-prob is the one used by PPO); ``to_env`` adds the start back or clips to the bounds.
"""
from __future__ import annotations

import math
from typing import Generic, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Normal

from .encoders import unsupported


def layer_init(layer: nn.Linear, std: float = math.sqrt(2.0), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain ``std`` and constant bias (CleanRL's PPO initialization)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def _categorical(dist: Categorical, generator: torch.Generator | None) -> Tensor:
    """A sample of ``dist`` (batch ``[*lead]``) drawn with ``generator``."""
    probs = dist.probs.reshape(-1, dist.probs.shape[-1])
    return torch.multinomial(probs, 1, generator=generator).reshape(dist.probs.shape[:-1])


D = TypeVar("D", bound=Distribution)


class ActionHead(nn.Module, Generic[D]):
    """Base class; subclasses define ``forward(features) -> D`` (a Distribution) and the rest."""

    action_shape: tuple[int, ...]
    action_dtype: torch.dtype

    def log_prob(self, dist: D, action: Tensor) -> Tensor:
        """Log-probability ``[*lead]`` of internal actions ``[*lead, *action_shape]``."""
        raise NotImplementedError

    def entropy(self, dist: D) -> Tensor:
        """Entropy ``[*lead]``."""
        raise NotImplementedError

    def sample(self, dist: D, deterministic: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        """An internal action ``[*lead, *action_shape]``: the mode if ``deterministic``, else a
        sample drawn with ``generator`` (the global RNG when None)."""
        raise NotImplementedError

    def to_env(self, action: Tensor) -> np.ndarray:
        """Internal actions ``[B, *action_shape]`` -> numpy batch for ``VectorEnv.step``."""
        raise NotImplementedError


class CategoricalHead(ActionHead[Categorical]):
    """``Discrete(n, start)``: a categorical over ``n`` logits; actions int64 ``[*lead]``."""

    def __init__(self, in_size: int, space: spaces.Discrete) -> None:
        super().__init__()
        self.start = int(space.start)
        self.logits = layer_init(nn.Linear(in_size, int(space.n)), std=0.01)
        self.action_shape, self.action_dtype = (), torch.long

    def forward(self, features: Tensor) -> Categorical:
        return Categorical(logits=self.logits(features), validate_args=False)

    def log_prob(self, dist: Categorical, action: Tensor) -> Tensor:
        return dist.log_prob(action)

    def entropy(self, dist: Categorical) -> Tensor:
        return dist.entropy()

    def sample(self, dist: Categorical, deterministic: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        return dist.probs.argmax(-1) if deterministic else _categorical(dist, generator)

    def to_env(self, action: Tensor) -> np.ndarray:
        return action.detach().cpu().numpy() + self.start


class MultiCategoricalHead(ActionHead["_MultiCategorical"]):
    """1-D ``MultiDiscrete(nvec, start)``: independent categoricals; actions ``[*lead, K]``."""

    start: Tensor

    def __init__(self, in_size: int, space: spaces.MultiDiscrete) -> None:
        super().__init__()
        if len(space.shape) != 1:
            raise unsupported(space, "action")
        self.nvec = [int(n) for n in space.nvec]
        self.register_buffer("start", torch.as_tensor(space.start, dtype=torch.long),
                             persistent=False)
        self.logits = layer_init(nn.Linear(in_size, sum(self.nvec)), std=0.01)
        self.action_shape, self.action_dtype = (len(self.nvec),), torch.long

    def forward(self, features: Tensor) -> _MultiCategorical:
        logits = self.logits(features).split(self.nvec, dim=-1)
        return _MultiCategorical([Categorical(logits=lg, validate_args=False) for lg in logits])

    def log_prob(self, dist: _MultiCategorical, action: Tensor) -> Tensor:
        return sum(d.log_prob(action[..., j]) for j, d in enumerate(dist.parts))

    def entropy(self, dist: _MultiCategorical) -> Tensor:
        return sum(d.entropy() for d in dist.parts)

    def sample(self, dist: _MultiCategorical, deterministic: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        if deterministic:
            return torch.stack([d.probs.argmax(-1) for d in dist.parts], dim=-1)
        return torch.stack([_categorical(d, generator) for d in dist.parts], dim=-1)

    def to_env(self, action: Tensor) -> np.ndarray:
        return (action + self.start).detach().cpu().numpy()


class _MultiCategorical(Distribution):
    """A plain container of independent categoricals (log-prob / entropy done by the head)."""

    def __init__(self, parts: list[Categorical]) -> None:
        self.parts = parts
        super().__init__(parts[0].batch_shape, validate_args=False)


class GaussianHead(ActionHead[Normal]):
    """``Box``: diagonal Gaussian, mean from the features, state-independent log-std.

    Actions are sampled unclipped (their log-prob is exact); ``to_env`` clips to the bounds.
    """

    def __init__(self, in_size: int, space: spaces.Box, init_log_std: float = 0.0) -> None:
        super().__init__()
        self.action_shape, self.action_dtype = tuple(space.shape), torch.float32
        size = int(np.prod(space.shape))
        self.mean = layer_init(nn.Linear(in_size, size), std=0.01)
        self.log_std = nn.Parameter(torch.full((size,), float(init_log_std)))
        self.low = np.asarray(space.low, dtype=np.float32)
        self.high = np.asarray(space.high, dtype=np.float32)

    def forward(self, features: Tensor) -> Normal:
        mean = self.mean(features)
        return Normal(mean, self.log_std.exp().expand_as(mean), validate_args=False)

    def log_prob(self, dist: Normal, action: Tensor) -> Tensor:
        flat = action.reshape(*action.shape[:action.dim() - len(self.action_shape)], -1)
        return dist.log_prob(flat).sum(-1)

    def entropy(self, dist: Normal) -> Tensor:
        return dist.entropy().sum(-1)

    def sample(self, dist: Normal, deterministic: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(dist.mean.shape, generator=generator, device=dist.mean.device)
        flat = dist.mean if deterministic else dist.mean + dist.stddev * noise
        return flat.reshape(*flat.shape[:-1], *self.action_shape)

    def to_env(self, action: Tensor) -> np.ndarray:
        return np.clip(action.detach().cpu().numpy(), self.low, self.high)


def build_action_head(space: spaces.Space, in_size: int, init_log_std: float = 0.0
                      ) -> ActionHead:
    """Action head for ``space``.

    Raises:
        ValueError: for an unsupported action space (one line naming it).
    """
    if isinstance(space, spaces.Discrete):
        return CategoricalHead(in_size, space)
    if isinstance(space, spaces.MultiDiscrete):
        return MultiCategoricalHead(in_size, space)
    if isinstance(space, spaces.Box):
        return GaussianHead(in_size, space, init_log_std)
    raise unsupported(space, "action")


class ValueHead(nn.Module):
    """Linear value head: features ``[*lead, F]`` -> ``[*lead]``."""

    def __init__(self, in_size: int) -> None:
        super().__init__()
        self.linear = layer_init(nn.Linear(in_size, 1), std=1.0)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features).squeeze(-1)
