"""The mLSTM block: pre-up-projection residual block around the matrix-memory cell.

Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (arXiv:2405.04517), Section 2.4 and
Figure 10 (right): up-projection into a cell branch and an output-gate branch; a causal
depthwise convolution + SiLU feeds queries and keys; values come from the un-convolved branch
(q, k, v by block-diagonal projections);
input and forget gates read the concatenated q, k, v; the cell output gets a per-head norm and a
learnable skip from the conv branch, is gated by SiLU of the second branch, and projected down.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

from xlstm_rl.kernels import mlstm_chunkwise, mlstm_step

from .config import CoreConfig
from .layers import BlockDiagonalLinear, CausalConv1d, MultiHeadNorm


class MLSTMBlock(nn.Module):
    """Residual pre-norm mLSTM block: ``x + block(LayerNorm(x))``, width ``dim`` in and out.

    State keys: ``C [B,H,Dh,Dh]``, ``n [B,H,Dh]``, ``m [B,H]``, ``conv [B,K-1,inner]``.
    """

    def __init__(self, dim: int, cfg: CoreConfig) -> None:
        super().__init__()
        inner = int(round(cfg.proj_factor * dim / cfg.num_heads)) * cfg.num_heads
        self.dim, self.inner, self.heads = dim, inner, cfg.num_heads
        self.head_dim = inner // cfg.num_heads
        self.chunk_size, self.backend = cfg.chunk_size, cfg.backend
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * inner)
        self.conv = CausalConv1d(inner, cfg.conv_kernel)
        self.qk = BlockDiagonalLinear(inner, cfg.qkv_block_size, outputs=2)
        self.v = BlockDiagonalLinear(inner, cfg.qkv_block_size)
        self.gates = nn.Linear(3 * inner, 2 * cfg.num_heads)
        self.cell_norm = MultiHeadNorm(cfg.num_heads, self.head_dim)
        self.skip = nn.Parameter(torch.ones(inner))
        self.down = nn.Linear(inner, dim)
        self._init_gates(cfg.forget_bias_range)

    def _init_gates(self, forget_range: tuple[float, float]) -> None:
        """Gates start input-independent: i ~ N(0, 0.1), forget biases spread over a range
        (long memory at initialization, as in the paper's appendix)."""
        nn.init.zeros_(self.gates.weight)
        with torch.no_grad():
            self.gates.bias[: self.heads].normal_(0.0, 0.1)
            self.gates.bias[self.heads:] = torch.linspace(*forget_range, self.heads)
        nn.init.normal_(self.down.weight, std=0.02 / math.sqrt(2))

    def initial_state(self, batch_size: int, device=None) -> TensorDict:
        """Zero state for ``batch_size`` rows."""
        H, D = self.heads, self.head_dim
        z = lambda *s: torch.zeros(batch_size, *s, device=device)  # noqa: E731
        return TensorDict({"C": z(H, D, D), "n": z(H, D), "m": z(H),
                           "conv": z(*self.conv.window_shape())}, batch_size=[batch_size])

    def _heads(self, x: Tensor) -> Tensor:
        """``[..., inner]`` -> ``[..., H, Dh]``."""
        return x.unflatten(-1, (self.heads, self.head_dim))

    def _qkv_gates(self, xc: Tensor, xm: Tensor) -> tuple[Tensor, ...]:
        q, k = self.qk(xc)
        (v,) = self.v(xm)
        i, f = self.gates(torch.cat([q, k, v], dim=-1)).chunk(2, dim=-1)
        return self._heads(q), self._heads(k), self._heads(v), i, f

    def _output(self, h: Tensor, xc: Tensor, z: Tensor, x: Tensor) -> Tensor:
        h = self.cell_norm(h) + self.skip * xc
        return x + self.down(h * F.silu(z))

    def forward(self, x: Tensor, state: TensorDict, reset: Tensor | None
                ) -> tuple[Tensor, TensorDict]:
        """``x [B, T, dim]`` -> ``[B, T, dim]``; ``reset [B, T]``."""
        xm, z = self.up(self.norm(x)).chunk(2, dim=-1)
        xc, window = self.conv(xm, state["conv"], reset)
        xc = F.silu(xc)
        q, k, v, i, f = self._qkv_gates(xc, xm)
        tr = lambda t: t.transpose(1, 2)  # noqa: E731  [B, T, H, ...] -> [B, H, T, ...]
        h, (C, n, m) = mlstm_chunkwise(tr(q), tr(k), tr(v), tr(i), tr(f),
                                       state=(state["C"], state["n"], state["m"]), reset=reset,
                                       chunk_size=self.chunk_size, backend=self.backend)
        y = self._output(tr(h), xc, z, x)
        return y, TensorDict({"C": C, "n": n, "m": m, "conv": window}, batch_size=state.batch_size)

    def step(self, x: Tensor, state: TensorDict, reset: Tensor | None
             ) -> tuple[Tensor, TensorDict]:
        """``x [B, dim]`` -> ``[B, dim]``; ``reset [B]``."""
        xm, z = self.up(self.norm(x)).chunk(2, dim=-1)
        xc, window = self.conv.step(xm, state["conv"], reset)
        xc = F.silu(xc)
        q, k, v, i, f = self._qkv_gates(xc, xm)
        h, (C, n, m) = mlstm_step(q, k, v, i, f, (state["C"], state["n"], state["m"]),
                                  reset=reset, backend=self.backend)
        y = self._output(h, xc, z, x)
        return y, TensorDict({"C": C, "n": n, "m": m, "conv": window}, batch_size=state.batch_size)
