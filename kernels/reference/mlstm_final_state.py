"""The mLSTM state after a sequence, without its outputs: one weighted sum per head.

The recurrence of :mod:`.mlstm_recurrent` (Beck et al. 2024, arXiv:2405.04517, Section 2.3 and
Appendix A) unrolls in closed form. With ``f̂_s = logsigmoid(f_s)``, ``F_t = sum_{s > t} f̂_s``
(the log decay from after step ``t`` to the end), starting from ``(C_0, n_0, m_0)`` at step
``t_0`` (0, or the last step with a reset, which starts from zeros and ``m = 0``):

    a_t = i_t + F_t                    (t >= t_0; the log weight of step t's k_t v_tᵀ)
    a_0 = m_0 + F_{t_0 - 1}            (the log weight of the entering state)
    m_T = max(a_0, max_t a_t)
    C_T = exp(a_0 - m_T) C_0 + sum_t exp(a_t - m_T) k_t v_tᵀ,   n_T likewise with k_t

which is the recurrence's ``m`` (each ``m_t`` is the running maximum of the same terms) and its
stabilized ``C`` and ``n``, equal up to rounding. The read-out ``h`` never feeds the state, so
a caller that needs only the state (R2D2's burn-in) skips it, and the sum over steps is one
matrix product per head instead of a rank-one update per step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .mlstm_recurrent import MLSTMState, state_dtype


def _start(reset: Tensor | None, B: int, T: int, device: torch.device
           ) -> tuple[Tensor, Tensor | None]:
    """Per row, the first step whose input reaches the final state (the last reset, else 0),
    ``[B]``, and whether the row resets at all (None: no row does)."""
    if reset is None or not bool(reset.any()):
        return torch.zeros(B, dtype=torch.long, device=device), None
    steps = torch.arange(T, device=device).expand(B, T)
    last = torch.where(reset.to(device=device, dtype=torch.bool), steps, -1).amax(dim=1)
    return last.clamp_min(0), last >= 0


def mlstm_final_state(k: Tensor, v: Tensor, i: Tensor, f: Tensor, *,
                      state: MLSTMState | None = None, reset: Tensor | None = None
                      ) -> MLSTMState:
    """The state :func:`~.mlstm_recurrent.mlstm_recurrent` ends in, differentiable.

    Args:
        k: ``[B, H, T, Dk]`` keys; v: ``[B, H, T, Dv]`` values (queries do not reach the state).
        i, f: ``[B, H, T]`` input and forget gate pre-activations.
        state: ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])`` before step 0, or None for zeros.
        reset: ``[B, T]`` bool or None; True zeroes the row's state before that step.

    Returns:
        ``(C, n, m)`` after step ``T - 1`` (float32, float64 for float64 inputs); the entering
        state itself when ``T`` is 0.
    """
    B, H, T, dk = k.shape
    sd = state_dtype(k.dtype)
    if state is None:
        z = k.new_zeros((), dtype=sd)
        state = (z.expand(B, H, dk, v.shape[-1]), z.expand(B, H, dk), z.expand(B, H))
    if T == 0:
        return state
    k, v = (x.to(sd).contiguous() for x in (k, v))  # [B*H] matrices for one batched product
    i, f = i.to(sd), f.to(sd)
    C0, n0, m0 = (s.to(sd) for s in state)
    start, resets = _start(reset, B, T, k.device)
    f_log = torch.nn.functional.logsigmoid(f)
    decay_from = f_log.flip(-1).cumsum(-1).flip(-1)         # [B, H, T]: sum over s >= t
    after = torch.cat([decay_from[..., 1:], decay_from.new_zeros(B, H, 1)], dim=-1)
    a = i + after                                                       # [B, H, T]
    if resets is not None:
        before = torch.arange(T, device=k.device) < start[:, None]      # [B, T]
        a = a.masked_fill(before[:, None], float("-inf"))
        m0 = m0.masked_fill(resets[:, None], 0.0)
    a0 = m0 + decay_from.gather(-1, start.view(B, 1, 1).expand(B, H, 1)).squeeze(-1)
    m = torch.maximum(a0, a.amax(dim=-1))
    w = torch.exp(a - m[..., None])                                     # 0 before the start
    carry = torch.exp(a0 - m)
    C = C0 * carry[..., None, None]
    n = n0 * carry[..., None]
    if resets is not None:  # the state before a reset never reaches the end (a NaN neither)
        C = C.masked_fill_(resets[:, None, None, None], 0.0)
        n = n.masked_fill_(resets[:, None, None], 0.0)
    wk = k * w[..., None]                                               # [B, H, T, Dk]
    dv = v.shape[-1]
    C.view(B * H, dk, dv).baddbmm_(wk.view(B * H, T, dk).transpose(1, 2), v.view(B * H, T, dv))
    return C, n.add_(wk.sum(dim=2)), m
