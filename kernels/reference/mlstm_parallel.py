"""Quadratic (fully parallel) mLSTM over the whole sequence: a test oracle, O(S²) memory.

Same map as the recurrent definition (Beck et al. 2024, arXiv:2405.04517, Appendix A.3), written
independently of the chunkwise code: one ``S × S`` decay matrix (a masked cumulative sum of
``logsigmoid(f)`` from ``s + 1`` on), a segment mask for resets, and the entering state's term.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from .mlstm_recurrent import MLSTMState, clear_rows, max_exp_arg, mlstm_zero_state, state_dtype


def mlstm_parallel(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *,
                   state: MLSTMState | None = None, reset: Tensor | None = None,
                   eps: float = 1e-6) -> Tensor:
    """Outputs ``h [B, H, S, Dv]`` of the mLSTM (no final state: it is an oracle for ``h``).

    Args:
        q, k: ``[B, H, S, Dk]``; v: ``[B, H, S, Dv]``; i, f: ``[B, H, S]``.
        state: optional initial ``(C, n, m)``.
        reset: optional ``[B, S]`` bool.
        eps: normalizer epsilon.
    """
    B, H, S, dk = q.shape
    in_dtype, sd = q.dtype, state_dtype(q.dtype)
    if state is None:
        state = mlstm_zero_state(B, H, dk, v.shape[-1], device=q.device, dtype=sd)
    if reset is not None:
        state = clear_rows(state, reset[:, 0])
    C0, n0, m0 = state
    q, k, v, i = (x.to(sd) for x in (q, k, v, i))
    t = torch.arange(S, device=q.device)
    if reset is None:
        reset = torch.zeros(B, S, dtype=torch.bool, device=q.device)
    seg = reset.cumsum(dim=-1)[:, None]                                     # [B,1,S]
    start = torch.where(reset, t, 0).cummax(dim=-1).values[:, None]         # [B,1,S]
    same = (seg[..., :, None] == seg[..., None, :]) & (t[None, :] <= t[:, None])
    fl = logsigmoid(f.to(sd))
    E = torch.where(t[:, None] > t[None, :], fl[..., :, None], 0.0).cumsum(dim=-2)
    logD = torch.where(same, E + i[..., None, :], float("-inf"))
    s_idx = start.expand(B, H, S)
    in_first = seg == 0
    carry = (E.gather(-1, s_idx[..., None]).squeeze(-1) + fl.gather(-1, s_idx)
             + torch.where(in_first, m0[..., None], 0.0))
    m = torch.maximum(carry, logD.amax(dim=-1))
    q = q / math.sqrt(dk)
    scores = (q @ k.transpose(-1, -2)) * torch.exp(logD - m[..., None])
    w_in = torch.where(in_first, torch.exp(carry - m), 0.0)
    num = scores @ v + w_in[..., None] * (q @ C0)
    qn = scores.sum(-1) + w_in * (q @ n0[..., None]).squeeze(-1)
    floor = torch.exp((-m).clamp_max(max_exp_arg(m.dtype)))
    h = num / (torch.maximum(qn.abs(), floor) + eps)[..., None]
    return h.to(in_dtype)
