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
from xlstm_rl.kernels.cpu import mlstm_block_forward, mlstm_block_pre, mlstm_block_step
from xlstm_rl.kernels.dispatch import resolve_backend
from xlstm_rl.kernels.reference import mlstm_final_state
from xlstm_rl.kernels.reference.mlstm_step_fast import mlstm_cell_inplace

from .config import CoreConfig
from .fast_step import cached, children, clear, params, weight_bias
from .layers import BlockDiagonalLinear, CausalConv1d, MultiHeadNorm

STATE_KEYS = ("C", "n", "m", "conv")


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

    def _compiled_cpu(self, x: Tensor) -> bool:
        """Whether the compiled CPU kernels may run this block on ``x`` (they decline, with
        None, tensors they cannot take)."""
        return x.device.type == "cpu" and resolve_backend(self.backend, x.device) == "reference"

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
        """``x [B, T, dim]`` -> ``[B, T, dim]``; ``reset [B, T]``.

        On CPU (float32 / float64, compiled kernels available) everything between the two
        projections is one compiled autograd node (:mod:`xlstm_rl.kernels.cpu`); else the
        PyTorch ops below, which define it.
        """
        up = self.up(self.norm(x))
        if self._compiled_cpu(x):
            fused = mlstm_block_forward(up, state["conv"], reset, self._kernel_weights(),
                                        [state["C"], state["n"], state["m"]], self.heads,
                                        self.cell_norm.eps)
            if fused is not None:
                out, (C, n, m, window) = fused
                return x + self.down(out), TensorDict({"C": C, "n": n, "m": m, "conv": window},
                                                      batch_size=state.batch_size)
        xm, z = up.chunk(2, dim=-1)
        xc, window = self.conv(xm, state["conv"], reset)
        xc = F.silu(xc)
        q, k, v, i, f = self._qkv_gates(xc, xm)
        tr = lambda t: t.transpose(1, 2)  # noqa: E731  [B, T, H, ...] -> [B, H, T, ...]
        h, (C, n, m) = mlstm_chunkwise(tr(q), tr(k), tr(v), tr(i), tr(f),
                                       state=(state["C"], state["n"], state["m"]), reset=reset,
                                       chunk_size=self.chunk_size, backend=self.backend)
        y = self._output(tr(h), xc, z, x)
        return y, TensorDict({"C": C, "n": n, "m": m, "conv": window}, batch_size=state.batch_size)

    def advance(self, x: Tensor, state: TensorDict, reset: Tensor | None) -> TensorDict:
        """:meth:`forward`'s new state without its output (``x [B, T, dim]``, ``reset [B, T]``).

        The cell's state never reads its read-out, so the read-out, head norm, output gate and
        down-projection are skipped, and the state is one weighted sum per head
        (:func:`~xlstm_rl.kernels.reference.mlstm_final_state`). Without autograd on CPU the
        compiled pre part gives k, v and the gates.
        """
        up = self.up(self.norm(x))
        pre = mlstm_block_pre(up, state["conv"], reset, self._kernel_weights(),
                              self.heads) if self._compiled_cpu(x) else None
        if pre is not None:
            qkv, gates, window = pre
            inner, H = self.inner, self.heads
            k, v = self._heads(qkv[..., inner:2 * inner]), self._heads(qkv[..., 2 * inner:])
            i, f = gates[..., :H], gates[..., H:]
        else:
            xm = up[..., :self.inner]
            xc, window = self.conv(xm, state["conv"], reset)
            _, k, v, i, f = self._qkv_gates(F.silu(xc), xm)
        tr = lambda t: t.transpose(1, 2)  # noqa: E731  [B, T, H, ...] -> [B, H, T, ...]
        C, n, m = mlstm_final_state(tr(k), tr(v), tr(i), tr(f), reset=reset,
                                    state=(state["C"], state["n"], state["m"]))
        return TensorDict({"C": C, "n": n, "m": m, "conv": window}, batch_size=state.batch_size)

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

    def _step_weights(self) -> dict[str, Tensor]:
        """Weights laid out for :meth:`step_nograd` (cached until a parameter changes).

        ``qkv [bs, 3, nb, bs]``: the q, k, v block-diagonal maps by input position ``d`` in the
        block, so ``[q | k | v] = sum_d x[..., d] * qkv[d]`` for ``x = [xc, xc, xm]``;
        ``gates_w [3H, 3*inner]``, ``gates_b [3H]``: the gate projection with H zero rows
        appended (``i, f, 0`` per head, see ``mlstm_cell_inplace``).
        """
        qk, v = self.qk.weight, self.v.weight                                # [nb, bs, k*bs]
        gw, gb = self.gates.weight, self.gates.bias

        def build() -> dict[str, Tensor]:
            nb, bs = v.shape[0], v.shape[1]
            qkv = torch.cat([qk.view(nb, bs, 2, bs), v.view(nb, bs, 1, bs)], dim=2)
            taps = qkv.permute(1, 2, 0, 3).contiguous()                        # [bs, 3, nb, bs]
            return {"qkv": taps, "gates_w": torch.cat([gw, gw.new_zeros(self.heads, gw.shape[1])]),
                    "gates_b": torch.cat([gb, gb.new_zeros(self.heads)])}

        return cached(self, (qk, v, gw, gb), build)

    def step_nograd(self, x: Tensor, state: list[Tensor], reset: Tensor | None,
                    overwrite: bool = False) -> tuple[Tensor, list[Tensor]]:
        """:meth:`step` without autograd, on the state's leaves ``[C, n, m, conv]``.

        Args:
            x: ``[B, dim]``; state: ``C [B,H,Dh,Dh]``, ``n [B,H,Dh]``, ``m [B,H]``,
                ``conv [B,K-1,inner]``; reset: ``[B]`` bool or None, only passed when some row
                resets.
            overwrite: The compiled CPU kernel may write the new state into ``state``'s
                tensors (the caller hands them over); otherwise they are never written.

        Returns:
            ``y [B, dim]`` and the new leaves.
        """
        mods = children(self)  # the hot acting path: module tables, not Module.__getattr__
        norm, up_proj, down = mods["norm"], mods["up"], mods["down"]
        up = F.linear(F.layer_norm(x, (self.dim,), *weight_bias(norm), norm.eps),
                      *weight_bias(up_proj))
        fused = mlstm_block_step(up, state[3], reset, self._kernel_weights(), state[:3],
                                 self.heads, mods["cell_norm"].eps, overwrite=overwrite)
        if fused is not None:  # the compiled CPU kernel (xlstm_rl.kernels.cpu)
            out, new = fused
            return F.linear(out, *weight_bias(down)).add_(x), new
        if reset is not None:
            state = clear(state, reset)
        C, n, m, window = state
        B, H, Dh = x.shape[0], self.heads, self.head_dim
        w = self._step_weights()
        xm, z = up.chunk(2, 1)
        xc, window = self._conv_step(xm, window)
        qkv = self._qkv(xc, xm, w["qkv"])
        gates = F.linear(qkv.view(B, -1), w["gates_w"], w["gates_b"]).view(B, 3, H)
        i, f, _ = gates.unbind(1)
        torch.add(F.logsigmoid(f), m, out=f)
        q, k, v = qkv.view(B, 3, H, Dh).unbind(1)
        q = (q * (1.0 / math.sqrt(Dh))).reshape(B * H, 1, Dh)
        h, (C, n, m) = mlstm_cell_inplace(q, k, v, gates, (C, n, m))
        h = F.group_norm(h.view(B, -1), H, self.cell_norm.weight, None, self.cell_norm.eps)
        h = h.addcmul_(self.skip, xc).mul_(F.silu(z))
        return F.linear(h, *weight_bias(down)).add_(x), [C, n, m, window]

    def _kernel_weights(self) -> dict[str, Tensor]:
        """The parameters :func:`~xlstm_rl.kernels.cpu.mlstm_block_step` reads (through the
        modules' parameter tables: this runs every acting step)."""
        sub = children(self)
        conv, gates = params(sub["conv"]), params(sub["gates"])
        return {"conv_w": conv["weight"], "conv_b": conv["bias"],
                "qk_w": params(sub["qk"])["weight"], "v_w": params(sub["v"])["weight"],
                "gate_w": gates["weight"], "gate_b": gates["bias"],
                "norm_w": params(sub["cell_norm"])["weight"], "skip": params(self)["skip"]}

    @staticmethod
    def _qkv(xc: Tensor, xm: Tensor, taps: Tensor) -> Tensor:
        """Block-diagonal q, k (from ``xc``) and v (from ``xm``) ``[B, inner]`` as
        ``[B, 3, nb, bs]``: one multiply-add per position in the block (``bs`` of them)."""
        bs, _, nb, _ = taps.shape
        x = torch.stack([xc, xc, xm], 1).view(xc.shape[0], 3, nb, bs, 1).unbind(3)
        out = x[0] * taps[0]
        for d in range(1, bs):
            out.addcmul_(x[d], taps[d])
        return out

    def _conv_step(self, xm: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
        """Causal conv + SiLU of one step: ``xm [B, inner]``, ``window [B, K-1, inner]``."""
        conv = self.conv
        if conv.kernel == 1:
            return F.silu(xm * conv.weight[0] + conv.bias), window
        full = torch.cat([window, xm.unsqueeze(1)], 1)                      # [B, K, inner]
        xc = (full * conv.weight).sum(1).add_(conv.bias)
        return F.silu(xc, inplace=True), full[:, 1:]
