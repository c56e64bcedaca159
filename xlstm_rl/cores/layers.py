"""Building blocks shared by the xLSTM blocks: causal conv with a carried window, head norm, FFN."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def segment_start(reset: Tensor | None, T: int, never: int, device) -> Tensor:
    """Position of the latest reset at or before each step, ``never`` where there was none.

    Args:
        reset: ``[B, T]`` bool or None.

    Returns:
        ``[B, T]`` (``[1, T]`` when ``reset`` is None) int64.
    """
    t = torch.arange(T, device=device)
    if reset is None:
        return torch.full((1, T), never, dtype=torch.long, device=device)
    return torch.where(reset, t, never).cummax(dim=-1).values


class CausalConv1d(nn.Module):
    """Depthwise causal convolution whose last ``kernel - 1`` inputs are carried in the state.

    Output ``t`` sees inputs ``t - kernel + 1 .. t`` of its own episode only: taps that reach
    back across a reset (or into the carried window after a reset) read zeros.
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.channels, self.kernel = channels, kernel
        self.weight = nn.Parameter(torch.empty(kernel, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.uniform_(self.weight, -kernel ** -0.5, kernel ** -0.5)

    def window_shape(self) -> tuple[int, int]:
        """Shape of the carried window per batch row: ``(kernel - 1, channels)``."""
        return (self.kernel - 1, self.channels)

    def forward(self, x: Tensor, window: Tensor, reset: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        """Convolve a sequence.

        Args:
            x: ``[B, T, C]``; window: ``[B, K-1, C]`` inputs before ``x[:, 0]``;
            reset: ``[B, T]`` bool or None.

        Returns:
            ``y [B, T, C]`` and the new window ``[B, K-1, C]`` (zeros before the last reset).
        """
        K, (B, T, C) = self.kernel, x.shape
        if K == 1:
            return x * self.weight[0] + self.bias, window
        full = torch.cat([window.to(x.dtype), x], dim=1)                    # [B, K-1+T, C]
        start = segment_start(reset, T, -K, x.device)                       # [B|1, T]
        t = torch.arange(T, device=x.device)
        y = self.bias.expand(B, T, C)
        for d in range(K):                                                  # tap reaching d back
            tap = full[:, K - 1 - d: K - 1 - d + T]
            if reset is not None:
                tap = torch.where((t - d >= start)[..., None], tap, 0.0)
            y = y + tap * self.weight[K - 1 - d]
        pos = torch.arange(T - K + 1, T, device=x.device)                   # window positions
        new_window = full[:, T:]
        if reset is not None:
            new_window = torch.where((pos >= start[:, -1:])[..., None], new_window, 0.0)
        return y, new_window

    def step(self, x: Tensor, window: Tensor, reset: Tensor | None) -> tuple[Tensor, Tensor]:
        """One step: ``x [B, C]``, ``window [B, K-1, C]``, ``reset [B]`` -> ``y [B, C]``."""
        if self.kernel == 1:
            return x * self.weight[0] + self.bias, window
        if reset is not None:
            window = torch.where(reset[:, None, None], 0.0, window)
        full = torch.cat([window.to(x.dtype), x[:, None]], dim=1)           # [B, K, C]
        y = torch.einsum("bkc,kc->bc", full, self.weight) + self.bias
        return y, full[:, 1:]


class BlockDiagonalLinear(nn.Module):
    """Linear map with a block-diagonal weight: ``x[..., j*bs:(j+1)*bs] @ W_j`` per block.

    The mLSTM's headwise q/k/v projections (Beck et al. 2024, Section 2.4: "block-diagonal
    projection matrices"); ``outputs`` maps stacked side by side share one batched matmul.
    ``block_size = 0`` falls back to one dense block.
    """

    def __init__(self, width: int, block_size: int, outputs: int = 1) -> None:
        super().__init__()
        bs = block_size or width
        if width % bs:
            raise ValueError(f"qkv_block_size ({bs}) must divide the mLSTM inner width ({width})")
        self.width, self.block_size, self.outputs = width, bs, outputs
        self.weight = nn.Parameter(torch.empty(width // bs, bs, outputs * bs))
        nn.init.normal_(self.weight, std=bs ** -0.5)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``x [..., width]`` -> ``outputs`` tensors ``[..., width]``."""
        nb, bs = self.weight.shape[0], self.block_size
        xb = x.reshape(-1, nb, bs).transpose(0, 1)                          # [nb, N, bs]
        y = torch.bmm(xb, self.weight).transpose(0, 1)                      # [N, nb, outs*bs]
        y = y.reshape(*x.shape[:-1], nb, self.outputs, bs)
        return tuple(y[..., j, :].flatten(-2) for j in range(self.outputs))


class MultiHeadNorm(nn.Module):
    """Layer norm applied per head (group norm over each head's features), with a gain."""

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))

    def forward(self, h: Tensor) -> Tensor:
        """``h [..., H, Dh]`` -> normalized ``[..., H * Dh]``."""
        h = F.layer_norm(h, (self.head_dim,), eps=self.eps)
        return h.flatten(-2) * self.weight


class GatedFFN(nn.Module):
    """Gated-GELU feed-forward layer (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, dim: int, factor: float) -> None:
        super().__init__()
        inner = max(8, int(round(dim * factor / 8)) * 8)
        self.up = nn.Linear(dim, 2 * inner)
        self.down = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., dim]`` -> ``[..., dim]``."""
        gate, value = self.up(x).chunk(2, dim=-1)
        return self.down(F.gelu(gate) * value)
