"""Chunkwise mLSTM in Triton: launches and the autograd Function (arXiv:2405.04517, App. A.3).

Forward: ``chunk_states_fwd_kernel`` (recurrence over chunks, states entering every chunk)
then ``chunk_out_fwd_kernel`` (all chunks in parallel). Backward: per-step scalars of the
normalizer in PyTorch, ``chunk_states_bwd_kernel`` (reverse recurrence of the state gradients and
of the stabilizer gradient ``ρ``), then ``chunk_grads_bwd_kernel`` (all chunks in parallel).
The math is in the kernel modules' docstrings (``xlstm_rl.kernels.triton``).

Store vs recompute: the chunk states ``(C, n, m)`` entering every chunk are **stored** by the
forward and reused by the backward. The forward must materialise them anyway (the parallel
output kernel reads them), so keeping them costs memory only, ``4 (Dk Dv + Dk + 1)`` bytes per
head per chunk (about ``Dk Dv / L`` floats per step: at ``Dk = Dv = 64, L = 64`` as much as one
float32 value vector), while recomputing would cost a second sequential launch in the backward.
Also stored: per step ``m_t``, ``q̂·n_t`` and the stabilizer's winner (3 floats), and, for
bfloat16/float16 inputs, the float32 output ``h`` (the normalizer gradient needs ``δh·h``
exactly). The intra-chunk decay matrices are **recomputed** in the backward (O(L²) per chunk,
cheap next to the matmuls, and never materialised in memory).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..reference.mlstm_recurrent import max_exp_arg, mlstm_zero_state
from ..triton.mlstm_chunk_bwd import chunk_grads_bwd_kernel, chunk_states_bwd_kernel
from ..triton.mlstm_chunk_fwd import chunk_out_fwd_kernel, chunk_states_fwd_kernel
from ._common import (check_chunk_size, check_dtype, check_head_dim, dot_config, next_pow2,
                      padded_dim, reset_int8)


@dataclass(frozen=True)
class _Cfg:
    B: int
    H: int
    S: int
    DK: int
    DV: int
    L: int
    NC: int
    DKP: int
    DVP: int
    BK: int
    BV: int
    BKI: int
    BVI: int
    DT: object
    PA: str
    PS: str
    scale: float
    eps: float
    has_reset: bool
    warps: int

    @property
    def inter_tiles(self) -> tuple[int, int]:
        """``(tiles, v-tiles)`` of the state grid of the recurrent kernels."""
        nvb = self.DVP // self.BVI
        return (self.DKP // self.BKI) * nvb, nvb


def _config(q: Tensor, v: Tensor, chunk_size: int, eps: float, has_reset: bool) -> _Cfg:
    B, H, S, DK = q.shape
    DV = v.shape[-1]
    L = min(chunk_size, max(16, next_pow2(S)))
    DKP, DVP = padded_dim(DK), padded_dim(DV)
    DT, PA, PS = dot_config(q.dtype, q.device)
    return _Cfg(B=B, H=H, S=S, DK=DK, DV=DV, L=L, NC=-(-S // L), DKP=DKP, DVP=DVP,
                BK=min(DKP, 64), BV=min(DVP, 64), BKI=min(DKP, 64), BVI=min(DVP, 32), DT=DT,
                PA=PA, PS=PS, scale=1.0 / math.sqrt(DK), eps=float(eps), has_reset=has_reset,
                warps=4 if L <= 32 else 8)


def _forward(cfg: _Cfg, q, k, v, i, fl, C0, n0, m0, reset, h_dtype):
    """Run both forward kernels; returns ``h``, the chunk states and the per-step stats."""
    B, H, NC, L = cfg.B, cfg.H, cfg.NC, cfg.L
    dev = q.device
    Cs = torch.empty(B, H, NC + 1, cfg.DK, cfg.DV, device=dev, dtype=torch.float32)
    ns = torch.empty(B, H, NC + 1, cfg.DK, device=dev, dtype=torch.float32)
    ms = torch.empty(B, H, NC + 1, device=dev, dtype=torch.float32)
    tiles, nvb = cfg.inter_tiles
    chunk_states_fwd_kernel[(B * H, tiles)](
        k, v, i, fl, reset, C0, n0, m0, Cs, ns, ms, cfg.S, NC, H, DK=cfg.DK, DV=cfg.DV, L=L,
        BK=cfg.BKI, BV=cfg.BVI, NVB=nvb, HAS_RESET=cfg.has_reset, PS=cfg.PS, num_warps=4)
    h = torch.empty(B, H, cfg.S, cfg.DV, device=dev, dtype=h_dtype)
    mt, qn, cw = (torch.empty(B, H, NC * L, device=dev, dtype=torch.float32) for _ in range(3))
    chunk_out_fwd_kernel[(NC, B * H)](
        q, k, v, i, fl, reset, Cs, ns, ms, h, mt, qn, cw, cfg.S, NC, H, cfg.scale, cfg.eps,
        DK=cfg.DK, DV=cfg.DV, L=L, BK=cfg.BK, BV=cfg.BV, DKP=cfg.DKP, DVP=cfg.DVP,
        HAS_RESET=cfg.has_reset, DT=cfg.DT, PA=cfg.PA, PS=cfg.PS, num_warps=cfg.warps)
    return h, (Cs, ns, ms), (mt, qn, cw)


def _normalizer_grads(cfg: _Cfg, dh: Tensor, h32: Tensor, mt: Tensor, qn: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-step ``den``, ``δqn`` and ``δm_out`` (``[B, H, NC*L]``, padding: 1, 0, 0).

    ``den = max(|qn|, exp(-m)) + eps``; the max's and ``|.|``'s subgradients follow torch
    (half to each side on a tie, ``sign(0) = 0``). ``δm_out`` is the gradient of ``m`` with the
    decay logits held fixed: ``-δden [exp branch] exp(-m) - δh·h - δqn qn``.
    """
    S = cfg.S
    m, qn_s = mt[..., :S], qn[..., :S]
    hh = (dh.float() * h32.float()).sum(-1)
    neg_m, limit = -m, max_exp_arg(torch.float32)
    unclamped = neg_m <= limit                           # the reference clamps exp's argument
    e = torch.exp(neg_m.clamp_max(limit))
    aq = qn_s.abs()
    den = torch.maximum(aq, e) + cfg.eps
    wq = torch.where(aq > e, 1.0, torch.where(aq == e, 0.5, 0.0))
    dden = -hh / den
    dqn = dden * wq * torch.sign(qn_s)
    dmo = -dden * (1.0 - wq) * torch.where(unclamped, e, 0.0) - hh - dqn * qn_s
    pad = cfg.NC * cfg.L - S

    def _pad(x: Tensor, value: float) -> Tensor:
        return torch.nn.functional.pad(x, (0, pad), value=value).contiguous()
    return _pad(den, 1.0), _pad(dqn, 0.0), _pad(dmo, 0.0)


def _backward(cfg: _Cfg, saved, dh, dCN, dnN, dmN):
    """Gradients ``dq, dk, dv, di, df̂, dC0, dn0, dm0`` (float32)."""
    q, k, v, i, fl, reset, Cs, ns, ms, mt, qn, cw, h32 = saved
    B, H, NC, L, dev = cfg.B, cfg.H, cfg.NC, cfg.L, q.device
    den, dqn, dmo = _normalizer_grads(cfg, dh, h32, mt, qn)
    rhoN = (dmN - (Cs[:, :, NC] * dCN).sum((-1, -2)) - (ns[:, :, NC] * dnN).sum(-1)).contiguous()
    dCs = torch.empty_like(Cs)
    dns = torch.empty_like(ns)
    rho = torch.empty_like(ms)
    tiles, nvb = cfg.inter_tiles
    chunk_states_bwd_kernel[(B * H, tiles)](
        q, dh, fl, reset, ms, mt, cw, den, dqn, dmo, dCN, dnN, rhoN, dCs, dns, rho, cfg.S, NC, H,
        cfg.scale, DK=cfg.DK, DV=cfg.DV, L=L, BK=cfg.BKI, BV=cfg.BVI, NVB=nvb,
        HAS_RESET=cfg.has_reset, PS=cfg.PS, num_warps=4)
    dq = torch.empty(q.shape, device=dev, dtype=torch.float32)
    dk = torch.empty(k.shape, device=dev, dtype=torch.float32)
    dv = torch.empty(v.shape, device=dev, dtype=torch.float32)
    di = torch.empty(i.shape, device=dev, dtype=torch.float32)
    dfl = torch.empty(i.shape, device=dev, dtype=torch.float32)
    dM = torch.empty(B, H, NC, device=dev, dtype=torch.float32)
    chunk_grads_bwd_kernel[(NC, B * H)](
        q, k, v, i, fl, reset, dh, Cs, ns, ms, dCs, dns, rho, den, dqn, dmo, dq, dk, dv, di, dfl,
        dM, cfg.S, NC, H, cfg.scale, DK=cfg.DK, DV=cfg.DV, L=L, BK=cfg.BK, BV=cfg.BV,
        DKP=cfg.DKP, DVP=cfg.DVP, HAS_RESET=cfg.has_reset, DT=cfg.DT, PA=cfg.PA, PS=cfg.PS,
        num_warps=cfg.warps)
    return dq, dk, dv, di, dfl, dCs[:, :, 0], dns[:, :, 0], dM[:, :, 0]


class _ChunkwiseFn(torch.autograd.Function):
    """``(q, k, v, i, f̂, C0, n0, m0) -> (h, C_N, n_N, m_N)`` with exact gradients."""

    @staticmethod
    def forward(ctx, q, k, v, i, fl, C0, n0, m0, reset, chunk_size, eps):  # noqa: D102
        cfg = _config(q, v, chunk_size, eps, reset is not None)
        train = any(ctx.needs_input_grad[:8])
        h_dtype = torch.float32 if train else q.dtype
        h, (Cs, ns, ms), (mt, qn, cw) = _forward(cfg, q, k, v, i, fl, C0, n0, m0, reset, h_dtype)
        NC = cfg.NC
        final = (Cs[:, :, NC].clone(), ns[:, :, NC].clone(), ms[:, :, NC].clone())
        if train:
            ctx.cfg = cfg
            ctx.in_dtypes = (q.dtype, k.dtype, v.dtype)
            ctx.save_for_backward(q, k, v, i, fl, reset, Cs, ns, ms, mt, qn, cw, h)
        return (h.to(q.dtype), *final)

    @staticmethod
    def backward(ctx, dh, dCN, dnN, dmN):  # noqa: D102
        dh = dh.contiguous()
        grads = _backward(ctx.cfg, ctx.saved_tensors, dh, dCN.float().contiguous(),
                          dnN.float().contiguous(), dmN.float().contiguous())
        dq, dk, dv, di, dfl, dC0, dn0, dm0 = grads
        dq, dk, dv = (g.to(dt) for g, dt in zip((dq, dk, dv), ctx.in_dtypes))
        return dq, dk, dv, di, dfl, dC0, dn0, dm0, None, None, None


def _check(q: Tensor, k: Tensor, v: Tensor, chunk_size: int) -> None:
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        check_dtype(x, name)
    check_head_dim(q.shape[-1], "Dk")
    check_head_dim(v.shape[-1], "Dv")
    check_chunk_size(chunk_size)


def mlstm_chunkwise(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *, state=None,
                    reset: Tensor | None = None, chunk_size: int = 64, eps: float = 1e-6
                    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Chunkwise-parallel mLSTM (Triton), same contract as the reference.

    Args:
        q, k: ``[B, H, S, Dk]``; v: ``[B, H, S, Dv]`` (float32, bfloat16 or float16; Dk, Dv
            in 1..256, padded internally to a power of two >= 16).
        i, f: ``[B, H, S]`` gate pre-activations.
        state: optional ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])``; zeros when None.
        reset: optional ``[B, S]`` bool, True where the state is zeroed before the step.
        chunk_size: 16, 32, 64 or 128 (any S: the tail chunk is masked).
        eps: normalizer epsilon.

    Returns:
        ``h [B, H, S, Dv]`` in the input dtype and the final state (float32).
    """
    _check(q, k, v, chunk_size)
    B, H, S, DK = q.shape
    DV = v.shape[-1]
    if state is None:
        state = mlstm_zero_state(B, H, DK, DV, device=q.device, dtype=torch.float32)
    C0, n0, m0 = (s.float().contiguous() for s in state)
    fl = torch.nn.functional.logsigmoid(f.float()).contiguous()
    r8 = reset_int8(reset, (B, S), q.device)
    h, C, n, m = _ChunkwiseFn.apply(q.contiguous(), k.contiguous(), v.contiguous(),
                                    i.float().contiguous(), fl, C0, n0, m0, r8, chunk_size, eps)
    return h, (C, n, m)
