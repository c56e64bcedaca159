"""The sLSTM block: post-up-projection residual block around the scalar-memory cell.

Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (arXiv:2405.04517), Section 2.4 and
Figure 10 (left): an sLSTM layer with block-diagonal (per-head) recurrent weights and a per-head
norm, followed by a gated MLP; both sub-layers are pre-norm residual.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from xlstm_rl.kernels import slstm_sequence, slstm_step

from .config import CoreConfig
from .layers import GatedFFN, MultiHeadNorm

STATE_KEYS = ("h", "c", "n", "m")


class SLSTMBlock(nn.Module):
    """Residual sLSTM block of width ``dim``. State keys ``h, c, n, m``, each ``[B, H, Dh]``."""

    def __init__(self, dim: int, cfg: CoreConfig) -> None:
        super().__init__()
        self.dim, self.heads, self.head_dim = dim, cfg.num_heads, dim // cfg.num_heads
        self.backend = cfg.backend
        self.norm = nn.LayerNorm(dim)
        self.w = nn.Linear(dim, 4 * dim, bias=False)
        self.r_weight = nn.Parameter(torch.empty(4, self.heads, self.head_dim, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(4, self.heads, self.head_dim))
        self.cell_norm = MultiHeadNorm(self.heads, self.head_dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = GatedFFN(dim, cfg.ffn_factor)
        nn.init.normal_(self.r_weight, std=self.head_dim ** -0.5 / 2)
        with torch.no_grad():
            lo, hi = cfg.forget_bias_range
            self.bias[2] = torch.linspace(lo, hi, dim).view(self.heads, self.head_dim)

    def initial_state(self, batch_size: int, device=None) -> TensorDict:
        """Zero state for ``batch_size`` rows."""
        shape = (batch_size, self.heads, self.head_dim)
        return TensorDict({key: torch.zeros(shape, device=device) for key in "hcnm"},
                          batch_size=[batch_size])

    def _wx(self, x: Tensor) -> Tensor:
        """``[..., dim]`` -> gate inputs ``[..., 4, H, Dh]``."""
        return self.w(self.norm(x)).unflatten(-1, (4, self.heads, self.head_dim))

    def _finish(self, x: Tensor, h: Tensor) -> Tensor:
        y = x + self.cell_norm(h)
        return y + self.ffn(self.ffn_norm(y))

    def forward(self, x: Tensor, state: TensorDict, reset: Tensor | None
                ) -> tuple[Tensor, TensorDict]:
        """``x [B, T, dim]`` -> ``[B, T, dim]``; ``reset [B, T]``."""
        h, new = slstm_sequence(self._wx(x), self.r_weight, self.bias,
                                state=tuple(state[key] for key in "hcnm"), reset=reset,
                                backend=self.backend)
        return self._finish(x, h), TensorDict(dict(zip("hcnm", new)), batch_size=state.batch_size)

    def advance(self, x: Tensor, state: TensorDict, reset: Tensor | None) -> TensorDict:
        """:meth:`forward`'s new state (the sLSTM's recurrence reads its outputs: no shortcut)."""
        return self(x, state, reset)[1]

    def step(self, x: Tensor, state: TensorDict, reset: Tensor | None
             ) -> tuple[Tensor, TensorDict]:
        """``x [B, dim]`` -> ``[B, dim]``; ``reset [B]``."""
        h, new = slstm_step(self._wx(x), self.r_weight, self.bias,
                            tuple(state[key] for key in "hcnm"), reset=reset,
                            backend=self.backend)
        return self._finish(x, h), TensorDict(dict(zip("hcnm", new)), batch_size=state.batch_size)

    def step_nograd(self, x: Tensor, state: list[Tensor], reset: Tensor | None,
                    overwrite: bool = False) -> tuple[Tensor, list[Tensor]]:
        """:meth:`step` without autograd, on the state's leaves ``[h, c, n, m]`` (each
        ``[B, H, Dh]``, never written: ``overwrite`` is accepted for the stack's sake and
        unused); ``reset [B]`` is only passed when some row resets."""
        hs, c, n, m = state
        h, new = slstm_step(self._wx(x), self.r_weight, self.bias, (hs, c, n, m), reset=reset,
                            backend=self.backend)
        return self._finish(x, h), list(new)
