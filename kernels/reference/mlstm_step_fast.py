"""One mLSTM step without autograd: the acting path's cell, in few and in-place ops.

The map of :func:`~.mlstm_recurrent.mlstm_step_reference` (the definition; tests check the two
against each other, resets and carried states included): the same operations in the same order
(except ``C``'s rank-one update, an elementwise ``addcmul`` instead of a ``k = 1`` batched
matmul, which may round differently in the last bit), written into fresh buffers in place, and
the three per-head exponentials (``i'``, ``f'`` and the normalizer floor ``exp(-m)``) done as
one ``exp`` over a ``[B, 3, H]`` tensor. For the floor, ``-m`` is ``0 - m`` (exact) clamped at
``max_exp_arg``; the other two rows are ``<= 0`` and pass the clamp unchanged.

Only for tensors that need no gradient (``torch.no_grad`` / ``torch.inference_mode``): the
state passed in is never written, so states kept elsewhere (PPO's chunk-start states) stay
valid.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from .mlstm_recurrent import MLSTMState, clear_rows, max_exp_arg, mlstm_zero_state, state_dtype


def any_reset(reset: Tensor | None) -> bool:
    """True when ``reset [B]`` (bool or None) marks at least one row."""
    return reset is not None and bool(reset.any())


def mlstm_cell_inplace(q: Tensor, k: Tensor, v: Tensor, gates: Tensor, state: MLSTMState,
                       eps: float = 1e-6) -> tuple[Tensor, MLSTMState]:
    """The cell update from prepared inputs (state already cleared where rows reset).

    Args:
        q: ``[B*H, 1, Dk]`` query, already scaled by ``1 / sqrt(Dk)``.
        k: ``[B, H, Dk]`` key; v: ``[B, H, Dv]`` value (any strides).
        gates: ``[B, 3, H]`` fresh tensor (overwritten): row 0 the input gate ``i``, row 1
            ``logsigmoid(f) + m`` (the forget logit plus the old stabilizer), row 2 zeros.
        state: ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])``, not written.
        eps: added to the normalizer.

    Returns:
        ``h [B, H, Dv]`` and the new ``(C, n, m)`` (fresh tensors).
    """
    C, n, _ = state
    B, H, dk, dv = C.shape
    i, fm, _ = gates.unbind(1)
    m_new = torch.maximum(fm, i)                                             # [B, H]
    acts = gates.sub_(m_new.unsqueeze(1)).clamp_max_(max_exp_arg(gates.dtype)).exp_()
    i_act, f_act, floor = acts.unsqueeze(-1).unbind(1)                       # i', f', exp(-m)
    ik = k * i_act                                                           # i'_t k_t
    C_new = (C * f_act.unsqueeze(-1)).contiguous()                           # fresh, dense
    C_new.addcmul_(ik.unsqueeze(-1), v.unsqueeze(-2))
    n_new = torch.addcmul(ik, f_act, n)
    num = torch.bmm(q, C_new.view(B * H, dk, dv)).view(B, H, dv)
    qn = torch.bmm(q, n_new.reshape(B * H, dk, 1)).view(B, H, 1)
    den = torch.maximum(qn.abs_(), floor).add_(eps)
    return num.div_(den), (C_new, n_new, m_new)


def mlstm_step_nograd(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                      state: MLSTMState | None, *, reset: Tensor | None = None,
                      eps: float = 1e-6) -> tuple[Tensor, MLSTMState]:
    """:func:`~.mlstm_recurrent.mlstm_step_reference` for inputs that need no gradient.

    Args:
        q, k: ``[B, H, Dk]``; v: ``[B, H, Dv]``; i, f: ``[B, H]``.
        state: ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])`` or None (zeros); not written.
        reset: optional ``[B]`` bool; True re-initializes that row's state first.
        eps: added to the normalizer.

    Returns:
        ``h [B, H, Dv]`` in the input dtype and the new state (float32; float64 for float64).
    """
    B, H, dk = q.shape
    dv = v.shape[-1]
    in_dtype, sd = q.dtype, state_dtype(q.dtype)
    if state is None:
        state = mlstm_zero_state(B, H, dk, dv, device=q.device, dtype=sd)
    elif any_reset(reset):
        state = clear_rows(state, reset)
    if in_dtype != sd:
        q, k, v, i, f = (x.to(sd) for x in (q, k, v, i, f))
    gates = torch.empty(B, 3, H, device=q.device, dtype=sd)
    gates[:, 0] = i
    torch.add(logsigmoid(f), state[2], out=gates[:, 1])
    gates[:, 2] = 0.0
    q_scaled = (q * (1.0 / math.sqrt(dk))).reshape(B * H, 1, dk)
    h, new = mlstm_cell_inplace(q_scaled, k, v, gates, state, eps)
    return h.to(in_dtype), new
