"""Recurrent (step-by-step) mLSTM: the definition every other form is tested against.

The mLSTM cell of Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"
(arXiv:2405.04517), Section 2.3, with the stabilizer state ``m`` of their Appendix A:

    f̂_t = logsigmoid(f_t)
    m_t  = max(f̂_t + m_{t-1}, i_t)
    f'_t = exp(f̂_t + m_{t-1} - m_t),   i'_t = exp(i_t - m_t)
    C_t  = f'_t C_{t-1} + i'_t k_t v_tᵀ,   n_t = f'_t n_{t-1} + i'_t k_t
    h_t  = (q̂_tᵀ C_t) / (max(|q̂_tᵀ n_t|, exp(-m_t)) + eps),   q̂_t = q_t / sqrt(Dk)

A reset at ``t`` re-initializes ``(C, n, m)`` to zeros before step ``t`` (``torch.where``, so
nothing from the discarded state, not even a NaN, reaches later steps or their gradients).
"""
from __future__ import annotations

import math
from typing import TypeVar, cast

import torch
from torch import Tensor

MLSTMState = tuple[Tensor, Tensor, Tensor]
_State = TypeVar("_State", bound=tuple[Tensor, ...])  # an mLSTM or sLSTM state tuple


def max_exp_arg(dtype: torch.dtype) -> float:
    """Largest ``x`` with a finite ``exp(x)`` in ``dtype`` (less a margin).

    The normalizer floor ``exp(-m)`` is clamped there: past it the forward already divides by
    inf (h = 0) but the backward would form ``0 * inf = NaN``.
    """
    return math.log(torch.finfo(dtype).max) - 1.0


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the recurrent state for inputs of ``dtype``: float32, or float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def mlstm_zero_state(batch: int, heads: int, dk: int, dv: int, *, device=None,
                     dtype: torch.dtype = torch.float32) -> MLSTMState:
    """The zero state ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])``."""
    return (torch.zeros(batch, heads, dk, dv, device=device, dtype=dtype),
            torch.zeros(batch, heads, dk, device=device, dtype=dtype),
            torch.zeros(batch, heads, device=device, dtype=dtype))


def clear_rows(state: _State, reset: Tensor | None) -> _State:
    """Zero every state tensor (batch-first, any rank) in the rows where ``reset[B]`` is True.

    ``torch.where``, not a multiply, so a NaN or inf in a discarded row cannot leak.
    """
    if reset is None:
        return state
    r = reset.to(device=state[0].device, dtype=torch.bool)
    cleared = tuple(torch.where(r.view(-1, *[1] * (s.dim() - 1)), torch.zeros_like(s), s)
                    for s in state)
    return cast(_State, cleared)  # same arity as ``state``


def mlstm_step_reference(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                         state: MLSTMState | None, *, reset: Tensor | None = None,
                         eps: float = 1e-6) -> tuple[Tensor, MLSTMState]:
    """One mLSTM step.

    Args:
        q, k: ``[B, H, Dk]`` query and key.
        v: ``[B, H, Dv]`` value.
        i, f: ``[B, H]`` input and forget gate pre-activations.
        state: ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])`` or None for the zero state.
        reset: optional ``[B]`` bool; True re-initializes that row's state before this step.
        eps: added to the normalizer.

    Returns:
        ``h [B, H, Dv]`` in the input dtype and the new state (float32, float64 for float64).
    """
    B, H, dk = q.shape
    in_dtype, sd = q.dtype, state_dtype(q.dtype)
    if state is None:
        state = mlstm_zero_state(B, H, dk, v.shape[-1], device=q.device, dtype=sd)
    C, n, m = clear_rows(state, reset)
    q, k, v, i, f = (x.to(sd) for x in (q, k, v, i, f))
    f_log = torch.nn.functional.logsigmoid(f)
    m_new = torch.maximum(f_log + m, i)
    f_act = torch.exp(f_log + m - m_new)                                    # [B, H]
    ik = torch.exp(i - m_new)[..., None] * k                                # i'_t k_t
    dv = v.shape[-1]
    C = torch.baddbmm((f_act[..., None, None] * C).view(B * H, dk, dv),
                      ik.view(B * H, dk, 1), v.reshape(B * H, 1, dv)).view(B, H, dk, dv)
    n = torch.addcmul(ik, f_act[..., None], n)
    q_scaled = (q * (1.0 / math.sqrt(dk))).view(B * H, 1, dk)
    num = torch.bmm(q_scaled, C.view(B * H, dk, dv)).view(B, H, dv)
    qn = torch.bmm(q_scaled, n.view(B * H, dk, 1)).view(B, H)
    den = torch.maximum(qn.abs(), torch.exp((-m_new).clamp_max(max_exp_arg(m_new.dtype)))) + eps
    h = num / den[..., None]
    return h.to(in_dtype), (C, n, m_new)


def mlstm_recurrent(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *,
                    state: MLSTMState | None = None, reset: Tensor | None = None,
                    eps: float = 1e-6) -> tuple[Tensor, MLSTMState]:
    """mLSTM over a sequence as a Python loop of :func:`mlstm_step_reference` (the definition).

    Args:
        q, k: ``[B, H, S, Dk]``; v: ``[B, H, S, Dv]``; i, f: ``[B, H, S]``.
        state: optional initial ``(C, n, m)``; zeros when None.
        reset: optional ``[B, S]`` bool, True where an episode starts.
        eps: normalizer epsilon.

    Returns:
        ``h [B, H, S, Dv]`` (input dtype) and the final state.
    """
    S = q.shape[2]
    if S == 0:
        raise ValueError("mlstm_recurrent needs a sequence of length >= 1, got S=0")
    hs = []
    for t in range(S):
        r = None if reset is None else reset[:, t]
        h, state = mlstm_step_reference(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t],
                                        f[:, :, t], state, reset=r, eps=eps)
        hs.append(h)
    assert state is not None  # S >= 1: the loop ran
    return torch.stack(hs, dim=2), state
