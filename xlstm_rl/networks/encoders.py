"""Observation encoders: one ``nn.Module`` per gymnasium space, mapping ``obs[*lead, ...]``
to features ``[*lead, output_size]``.

* ``Box`` with 3 dims (``H x W x C`` image): small CNN; ``uint8`` pixels are scaled to [0, 1].
* other ``Box`` and ``MultiBinary``: flattened, then an MLP (``encoder_layers`` tanh layers).
* ``Discrete`` / ``MultiDiscrete``: one-hot (concatenated over the components).
* ``Tuple`` / ``Dict``: every part encoded on its own, features concatenated. Their
  observations are (Tensor)dicts keyed by the Dict keys, or ``"0", "1", ...`` for a Tuple
  (see :func:`obs_to_torch`).
"""
from __future__ import annotations

from typing import Any, TypeAlias, cast

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from tensordict import TensorDict
from torch import Tensor, nn

from xlstm_rl.schema import ModelConfig

Obs: TypeAlias = Tensor | TensorDict


def unsupported(space: spaces.Space, what: str = "observation") -> ValueError:
    """The one-line error for a space the networks cannot handle."""
    return ValueError(f"unsupported {what} space {space}")


def is_image(space: spaces.Space) -> bool:
    """A 3-D ``Box`` is an ``H x W x C`` image."""
    return isinstance(space, spaces.Box) and len(space.shape) == 3


def owned_tensor(data: Any, dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
    """``data`` (a numpy array, usually from an env) copied into a fresh torch allocation.

    Never shares numpy's buffer (as ``torch.as_tensor`` / ``torch.from_numpy`` would): torch's
    CPU allocator aligns every allocation to 64 bytes, numpy's buffers only to 16, at addresses
    that depend on the heap's history. torch's CPU matmul runs on MKL's sgemm, whose low-order
    bits depend on the alignment of its inputs (its conditional numerical reproducibility
    needs 64 bytes on AVX-512), so a network fed numpy's buffers could give two identical runs
    -- or a resumed run and the one it continues -- different results.

    Args:
        data: Array (or anything ``torch.tensor`` takes).
        dtype: Result dtype (default: the array's).
        device: Result device.

    Returns:
        A tensor owning its memory.
    """
    return torch.tensor(data, dtype=dtype, device=device)


def obs_to_torch(obs: Any, space: spaces.Space, device: torch.device | str = "cpu") -> Obs:
    """Converts a batched numpy observation of ``space`` to a tensor (or TensorDict).

    Args:
        obs: batched observation ``[B, ...]`` as returned by a vector env (dict of arrays for
            ``Dict``, tuple of arrays for ``Tuple``).
        space: the single-env observation space.

    Returns:
        A tensor ``[B, ...]`` (float32 for Box, int64 for Discrete / MultiDiscrete, uint8 kept
        for images) in its own memory (see :func:`owned_tensor`), or a TensorDict with batch
        ``[B]`` for composite spaces.
    """
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        subspaces: list[tuple[str | int, spaces.Space]] = (
            list(space.spaces.items()) if isinstance(space, spaces.Dict)
            else list(enumerate(space.spaces)))
        parts = {str(k): obs_to_torch(obs[k], s, device) for k, s in subspaces}
        batch = next(iter(parts.values())).shape[:1] if parts else []
        return TensorDict(parts, batch_size=batch, device=device)
    arr = np.asarray(obs)
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return owned_tensor(arr.astype(np.int64, copy=False), device=device)
    if is_image(space) and space.dtype == np.uint8:
        return owned_tensor(arr, device=device)
    return owned_tensor(arr, torch.float32, device)


class MLPEncoder(nn.Module):
    """Flattens the trailing ``shape`` dims, then ``layers`` Linear+tanh layers."""

    def __init__(self, shape: tuple[int, ...], hidden: int, layers: int) -> None:
        super().__init__()
        self.ndim = len(shape)
        size = int(np.prod(shape)) if shape else 1
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [nn.Linear(size, hidden), nn.Tanh()]
            size = hidden
        self.net, self.output_size = nn.Sequential(*mods), size

    def forward(self, obs: Tensor) -> Tensor:
        """``obs [*lead, *shape]`` -> ``[*lead, output_size]``."""
        x = obs.float()
        x = x.flatten(-self.ndim) if self.ndim else x[..., None]
        return self.net(x)


class CNNEncoder(nn.Module):
    """Conv(3x3, stride 2) + ReLU stack over ``H x W x C`` images, then Linear + ReLU."""

    def __init__(self, shape: tuple[int, int, int], channels: tuple[int, ...], hidden: int,
                 scale: float) -> None:
        super().__init__()
        h, w, c = shape
        convs: list[nn.Module] = []
        for out in channels:
            convs += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.ReLU()]
            c, h, w = out, (h + 1) // 2, (w + 1) // 2
        self.convs, self.scale = nn.Sequential(*convs), scale
        self.fc = nn.Sequential(nn.Linear(c * h * w, hidden), nn.ReLU())
        self.output_size = hidden

    def forward(self, obs: Tensor) -> Tensor:
        """``obs [*lead, H, W, C]`` -> ``[*lead, output_size]``."""
        lead = obs.shape[:-3]
        x = obs.reshape(-1, *obs.shape[-3:]).float().mul(self.scale).permute(0, 3, 1, 2)
        y = self.fc(self.convs(x).flatten(1))
        return y.reshape(*lead, self.output_size)


class OneHotEncoder(nn.Module):
    """One-hot of every component of a Discrete or MultiDiscrete observation, concatenated.

    Args:
        nvec: number of values of each component (``[n]`` for Discrete).
        start: smallest value of each component.
        ndim: trailing dims of one observation (0 for Discrete, ``len(nvec.shape)`` else).
    """

    start: Tensor

    def __init__(self, nvec: np.ndarray, start: np.ndarray, ndim: int) -> None:
        super().__init__()
        self.ndim, self.nvec = ndim, [int(n) for n in np.ravel(nvec)]
        self.register_buffer("start", torch.as_tensor(np.ravel(start), dtype=torch.long),
                             persistent=False)
        self.output_size = int(sum(self.nvec))

    def forward(self, obs: Tensor) -> Tensor:
        """``obs [*lead, *shape]`` (integers) -> ``[*lead, sum(nvec)]`` float."""
        x = obs.long()[..., None] if self.ndim == 0 else obs.long().flatten(-self.ndim)
        x = x - self.start
        parts = [F.one_hot(x[..., j], n) for j, n in enumerate(self.nvec)]
        return torch.cat(parts, dim=-1).float()


class CompositeEncoder(nn.Module):
    """Encodes every part of a Dict / Tuple observation and concatenates the features."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.keys = list(parts)
        self.parts = nn.ModuleDict(parts)
        self.output_size = sum(cast(int, m.output_size) for m in parts.values())

    def forward(self, obs: TensorDict) -> Tensor:
        """``obs`` TensorDict with batch ``[*lead]`` -> ``[*lead, output_size]``."""
        return torch.cat([self.parts[k](obs[k]) for k in self.keys], dim=-1)


def build_encoder(space: spaces.Space, cfg: ModelConfig) -> nn.Module:
    """Encoder for one observation space (see the module docstring).

    Raises:
        ValueError: for an unsupported space (one line naming it).
    """
    if isinstance(space, spaces.Dict):
        return CompositeEncoder({str(k): build_encoder(s, cfg) for k, s in space.spaces.items()})
    if isinstance(space, spaces.Tuple):
        return CompositeEncoder({str(j): build_encoder(s, cfg) for j, s in enumerate(space)})
    if is_image(space):
        scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0
        shape = cast(tuple[int, int, int], space.shape)  # is_image: a 3-D Box
        return CNNEncoder(shape, tuple(cfg.cnn_channels), cfg.encoder_hidden, scale)
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return MLPEncoder(tuple(space.shape), cfg.encoder_hidden, cfg.encoder_layers)
    if isinstance(space, spaces.Discrete):
        return OneHotEncoder(np.array([space.n]), np.array([space.start]), ndim=0)
    if isinstance(space, spaces.MultiDiscrete):
        return OneHotEncoder(space.nvec, space.start, ndim=len(space.shape))
    raise unsupported(space)
