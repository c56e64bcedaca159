"""sLSTM reference: scalar memory with exponential gating and a stabilizer.

Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (arXiv:2405.04517), Section 2.2 and
Appendix A.2. Per head, with block-diagonal recurrent weights, pre-activations
``z̃, ĩ, f̃, õ = W x_t + R h_{t-1} + b`` (gate order z, i, f, o):

    m_t = max(logsigmoid(f̃_t) + m_{t-1}, ĩ_t)
    i'  = exp(ĩ_t - m_t),   f' = exp(logsigmoid(f̃_t) + m_{t-1} - m_t)
    c_t = f' c_{t-1} + i' tanh(z̃_t),   n_t = f' n_{t-1} + i'
    h_t = sigmoid(õ_t) · c_t / n_t

While nothing has been written (``n_{t-1} = 0``, the zero state) the stabilizer starts at the
input gate, ``m_t = ĩ_t``: with ``c_{t-1} = n_{t-1} = 0`` every stabilizer gives the same exact
``h``, and this one keeps ``i' = 1`` from underflowing (``m = 0`` would give ``i' = exp(ĩ)``,
which is 0 in float for ``ĩ < -104``, and ``h = 0/0``). ``|c_t| <= n_t`` holds after that, and
``n`` is still floored at a tiny constant for states a user hands in.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from .mlstm_recurrent import clear_rows, state_dtype

SLSTMState = tuple[Tensor, Tensor, Tensor, Tensor]
_N_FLOOR = 1e-30


def slstm_zero_state(batch: int, heads: int, head_dim: int, *, device=None,
                     dtype: torch.dtype = torch.float32) -> SLSTMState:
    """The zero state ``(h, c, n, m)``, each ``[B, H, Dh]``."""
    def zeros() -> Tensor:
        return torch.zeros(batch, heads, head_dim, device=device, dtype=dtype)
    return zeros(), zeros(), zeros(), zeros()


def slstm_step_reference(wx: Tensor, r_weight: Tensor, bias: Tensor, state: SLSTMState | None,
                         *, reset: Tensor | None = None) -> tuple[Tensor, SLSTMState]:
    """One sLSTM step.

    Args:
        wx: ``[B, 4, H, Dh]`` input contribution ``W x_t`` to the z, i, f, o pre-activations.
        r_weight: ``[4, H, Dh, Dh]`` block-diagonal recurrent weights (``R[g, h, d_in, d_out]``).
        bias: ``[4, H, Dh]``.
        state: ``(h, c, n, m)``, each ``[B, H, Dh]``, or None for the zero state.
        reset: optional ``[B]`` bool; True re-initializes that row's state before the step.

    Returns:
        ``h [B, H, Dh]`` (input dtype) and the new state (float32; float64 for float64).
    """
    in_dtype, sd = wx.dtype, state_dtype(wx.dtype)
    if state is None:
        state = slstm_zero_state(wx.shape[0], wx.shape[2], wx.shape[3], device=wx.device, dtype=sd)
    h, c, n, m = clear_rows(state, reset)
    pre = wx.to(sd) + torch.einsum("bhd,ghde->bghe", h, r_weight.to(sd)) + bias.to(sd)
    z, i, f, o = pre.unbind(dim=1)
    f_log = logsigmoid(f)
    fresh = n == 0
    m_new = torch.where(fresh, i, torch.maximum(f_log + m, i))
    i_act = torch.exp(i - m_new)
    f_act = torch.exp(torch.where(fresh, float("-inf"), f_log + m - m_new))  # 0 on a zero state
    c = f_act * c + i_act * torch.tanh(z)
    n = f_act * n + i_act
    h = torch.sigmoid(o) * c / n.clamp_min(_N_FLOOR)
    return h.to(in_dtype), (h, c, n, m_new)


def slstm_sequence_by_steps(step, wx: Tensor, r_weight: Tensor, bias: Tensor, *,
                            state: SLSTMState | None = None, reset: Tensor | None = None
                            ) -> tuple[Tensor, SLSTMState]:
    """sLSTM over a sequence as a loop of ``step`` (any function with the step's signature).

    Args:
        step: ``step(wx_t, r_weight, bias, state, reset=...) -> (h_t, state)``.
        wx: ``[B, S, 4, H, Dh]`` input contributions for every step.
        r_weight: ``[4, H, Dh, Dh]``; bias: ``[4, H, Dh]``.
        state: optional initial ``(h, c, n, m)``.
        reset: optional ``[B, S]`` bool.

    Returns:
        ``h [B, S, H, Dh]`` and the final state.
    """
    if wx.shape[1] == 0:
        raise ValueError("slstm_sequence needs a sequence of length >= 1, got S=0")
    hs = []
    for t in range(wx.shape[1]):
        h, state = step(wx[:, t], r_weight, bias, state,
                        reset=None if reset is None else reset[:, t])
        hs.append(h)
    assert state is not None  # S >= 1: the loop ran
    return torch.stack(hs, dim=1), state


def slstm_sequence_reference(wx: Tensor, r_weight: Tensor, bias: Tensor, *,
                             state: SLSTMState | None = None, reset: Tensor | None = None
                             ) -> tuple[Tensor, SLSTMState]:
    """sLSTM over a sequence: the definition, a loop of :func:`slstm_step_reference`.

    Shapes as :func:`slstm_sequence_by_steps`.
    """
    return slstm_sequence_by_steps(slstm_step_reference, wx, r_weight, bias, state=state,
                                   reset=reset)
