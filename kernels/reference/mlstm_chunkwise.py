"""Chunkwise-parallel mLSTM in pure PyTorch: the fast CPU training path.

The sequence is cut into chunks of ``L`` steps. Between chunks the state ``(C, n, m)`` is carried
by the recurrence; inside a chunk the outputs come from the parallel (attention-like) form of the
same map, Beck et al. 2024 (arXiv:2405.04517), Appendix A.3, with the decay matrix

    logD[t, s] = Σ_{j=s+1..t} f̂_j + i_s        (s <= t, same episode segment)

and the stabilizer ``m_t = max(carry_t, max_s logD[t, s])``, where ``carry_t`` is the log weight
of the state that entered the segment (``Σ f̂ + m_0`` for the chunk's carried state, ``Σ f̂ + 0``
for the zero state after a reset). This ``m_t`` is exactly the recurrent stabilizer, so the
chunkwise form equals the step loop up to float rounding, ``eps`` included.

Precision: ``Σ_{j=s+1..t} f̂_j`` is summed from ``s + 1`` on (a masked cumulative sum), never as a
difference of two long prefix sums, so a very negative forget gate elsewhere in the chunk cannot
cancel digits. Resets are masks, not large negative gates.

Gradients are plain autograd through these ops: exact, normalizer path and initial state included.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from .mlstm_recurrent import MLSTMState, clear_rows, max_exp_arg, mlstm_zero_state, state_dtype

_PAD_INPUT_GATE = -1e30  # a padded step adds nothing and leaves (C, n, m) unchanged


def _pad_time(x: Tensor, pad: int, value: float, dim: int = 2) -> Tensor:
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def _segments(reset: Tensor | None, B: int, nc: int, L: int, device
              ) -> tuple[Tensor | None, Tensor]:
    """Per step: start index of its segment inside the chunk, and whether it is still in the
    chunk's first segment (no reset between the chunk start and the step, inclusive).

    Returns ``start [B, 1, nc, L]`` (int64; None without resets) and ``first [B, 1, nc, L]``.
    """
    if reset is None:
        return None, torch.ones(1, 1, 1, L, dtype=torch.bool, device=device)
    r = reset.view(B, 1, nc, L)
    idx = torch.arange(L, device=device)
    start = torch.where(r, idx, 0).cummax(dim=-1).values
    first = ~(r.cummax(dim=-1).values)
    return start, first


def _decay_logits(f_log: Tensor, i: Tensor, start: Tensor | None) -> tuple[Tensor, Tensor]:
    """Intra-chunk log weights ``logD [B,H,nc,L,L]`` (-inf where masked) and the log decay of the
    segment's entering state ``seg_decay [B,H,nc,L] = Σ_{j=start..t} f̂_j``.

    ``start`` is the ``[B,1,nc,L]`` segment start of every step, or None without resets.
    """
    L = f_log.shape[-1]
    idx = torch.arange(L, device=f_log.device)
    after_s = idx[:, None] > idx[None, :]                                   # [L(j), L(s)]
    # E[t, s] = Σ_{s < j <= t} f̂_j, summed from s + 1 on.
    E = torch.where(after_s, f_log[..., :, None], 0.0).cumsum(dim=-2)
    causal = idx[None, :] <= idx[:, None]
    if start is None:
        return torch.where(causal, E + i[..., None, :], float("-inf")), f_log.cumsum(dim=-1)
    causal = causal & (idx[None, :] >= start[..., :, None])
    logD = torch.where(causal, E + i[..., None, :], float("-inf"))
    s_idx = start.expand(*f_log.shape[:-1], L)
    seg_decay = E.gather(-1, s_idx[..., None]).squeeze(-1) + f_log.gather(-1, s_idx)
    return logD, seg_decay


def _chunk_states(k: Tensor, v: Tensor, logD: Tensor, seg_decay: Tensor, first: Tensor,
                  state: MLSTMState) -> tuple[MLSTMState, MLSTMState]:
    """States entering every chunk, from the same parallel form one level up (no loop in time).

    Each chunk ``j`` contributes its local sum
    ``C_loc[j] = Σ_s exp(logD[L-1, s] - m_loc[j]) k_s v_sᵀ`` with log weight ``m_loc[j]``;
    between chunks ``j`` and ``c`` it decays by ``Σ_{j<l<=c} decay[l]`` and it is cut off by a
    reset in any chunk after ``j``. The zero state after a reset in chunk ``j`` has content 0 but
    log weight ``decay[j]`` (its ``m = 0``), which enters the stabilizer. Unrolling the chunk
    recurrence gives exactly these sums.

    Returns the states entering each chunk (``C [B,H,nc,Dk,Dv]``, ``n [B,H,nc,Dk]``, ``m [B,H,nc]``)
    and the final state.
    """
    B, H, nc, L, dk = k.shape
    last = logD[..., -1, :]                                                 # [B,H,nc,L]
    m_loc = last.amax(dim=-1)                                               # [B,H,nc]
    w = torch.exp(last - m_loc[..., None])[..., None] * k                   # [B,H,nc,L,Dk]
    C_loc = w.transpose(-1, -2) @ v                                         # [B,H,nc,Dk,Dv]
    n_loc = w.sum(dim=-2)
    keep = first[..., -1]                                                   # [B,1,nc]: no reset
    decay = seg_decay[..., -1]                                              # [B,H,nc]
    m_src = torch.where(keep, m_loc, torch.maximum(m_loc, decay))
    idx = torch.arange(nc, device=k.device)
    G = torch.where(idx[:, None] > idx[None, :], decay[..., :, None], 0.0).cumsum(dim=-2)
    cut = torch.where(keep, 0, idx).cummax(dim=-1).values                  # last reset chunk
    alive = (idx[None, :] <= idx[:, None]) & (idx[None, :] >= cut[..., :, None])
    from_init = keep.cummin(dim=-1).values                                  # [B,1,nc]
    C0, n0, m0 = state
    init_log = m0[..., None] + decay.cumsum(dim=-1)
    m_end = torch.maximum(torch.where(from_init, init_log, float("-inf")),
                          torch.where(alive, G + m_src[..., None, :], float("-inf")).amax(-1))
    W = torch.exp(torch.where(alive, G + m_loc[..., None, :] - m_end[..., None], float("-inf")))
    w_init = torch.exp(torch.where(from_init, init_log - m_end, float("-inf")))
    C_end = (W @ C_loc.reshape(B, H, nc, -1)).view(B, H, nc, dk, -1) + torch.where(
        from_init[..., None, None], w_init[..., None, None] * C0[:, :, None], 0.0)
    n_end = W @ n_loc + torch.where(from_init[..., None], w_init[..., None] * n0[:, :, None], 0.0)
    entering = (torch.cat([C0[:, :, None], C_end[:, :, :-1]], dim=2),
                torch.cat([n0[:, :, None], n_end[:, :, :-1]], dim=2),
                torch.cat([m0[:, :, None], m_end[:, :, :-1]], dim=2))
    return entering, (C_end[:, :, -1], n_end[:, :, -1], m_end[:, :, -1])


def _chunk_outputs(q: Tensor, k: Tensor, v: Tensor, logD: Tensor, seg_decay: Tensor,
                   first: Tensor, entering: MLSTMState, eps: float) -> Tensor:
    """Outputs ``h [B,H,nc,L,Dv]`` of every chunk in parallel, given the entering states."""
    C0, n0, m0 = entering
    carry = seg_decay + torch.where(first, m0[..., None], 0.0)              # [B,H,nc,L]
    m = torch.maximum(carry, logD.amax(dim=-1))
    scores = (q @ k.transpose(-1, -2)) * torch.exp(logD - m[..., None])     # [B,H,nc,L,L]
    w_in = torch.exp(carry - m)
    num_in = torch.where(first[..., None], w_in[..., None] * (q @ C0), 0.0)
    qn_in = torch.where(first, w_in * (q @ n0[..., None]).squeeze(-1), 0.0)
    num = scores @ v + num_in
    qn = scores.sum(dim=-1) + qn_in
    den = torch.maximum(qn.abs(), torch.exp((-m).clamp_max(max_exp_arg(m.dtype)))) + eps
    return num / den[..., None]


def mlstm_chunkwise_reference(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *,
                              state: MLSTMState | None = None, reset: Tensor | None = None,
                              chunk_size: int = 64, eps: float = 1e-6
                              ) -> tuple[Tensor, MLSTMState]:
    """mLSTM over a sequence, recurrent between chunks and parallel inside them.

    Args:
        q, k: ``[B, H, S, Dk]``; v: ``[B, H, S, Dv]``; i, f: ``[B, H, S]`` gate pre-activations.
        state: optional initial ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])``; zeros when None.
        reset: optional ``[B, S]`` bool, True where the state is re-initialized before the step.
        chunk_size: steps per chunk (any S works; the tail is padded with no-op steps).
        eps: normalizer epsilon.

    Returns:
        ``h [B, H, S, Dv]`` in the input dtype and the final state (float32; float64 for float64).
    """
    B, H, S, dk = q.shape
    dv = v.shape[-1]
    in_dtype, sd = q.dtype, state_dtype(q.dtype)
    if state is None:
        state = mlstm_zero_state(B, H, dk, dv, device=q.device, dtype=sd)
    elif reset is not None:  # a state discarded at t=0 must not reach even a 0 * NaN gradient
        state = clear_rows(state, reset[:, 0])
    L = min(chunk_size, S)
    nc = -(-S // L)
    pad = nc * L - S
    q = _pad_time(q.to(sd) * (1.0 / math.sqrt(dk)), pad, 0.0).view(B, H, nc, L, dk)
    k = _pad_time(k.to(sd), pad, 0.0).view(B, H, nc, L, dk)
    v = _pad_time(v.to(sd), pad, 0.0).view(B, H, nc, L, dv)
    i = _pad_time(i.to(sd), pad, _PAD_INPUT_GATE).view(B, H, nc, L)
    f_log = _pad_time(logsigmoid(f.to(sd)), pad, 0.0).view(B, H, nc, L)
    if reset is not None:
        reset = _pad_time(reset.to(device=q.device, dtype=torch.bool), pad, False, dim=1)
    start, first = _segments(reset, B, nc, L, q.device)
    logD, seg_decay = _decay_logits(f_log, i, start)
    C0, n0, m0 = state
    entering, final = _chunk_states(k, v, logD, seg_decay, first,
                                    (C0.to(sd), n0.to(sd), m0.to(sd)))
    h = _chunk_outputs(q, k, v, logD, seg_decay, first, entering, eps)
    return h.reshape(B, H, nc * L, dv)[:, :, :S].to(in_dtype), final
