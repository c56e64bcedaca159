"""Fused sLSTM time loop in pure PyTorch: forward without autograd, hand-written BPTT backward.

Same map as :func:`slstm_step_reference` (Beck et al. 2024, arXiv:2405.04517, Section 2.2 and
Appendix A.2), run as one ``torch.autograd.Function`` so that a sequence costs one graph node
instead of ~20 per step. The loop keeps the hidden state head-major (``[H, B, Dh]``) so that the
block-diagonal recurrent matmul of all four gates is one ``baddbmm`` per step.

The backward is the exact derivative of the reference step (the zero-state stabilizer start
included), with the tie rule of
``torch.maximum`` (half the gradient to each side when equal) and of ``clamp_min`` (gradient
passes where ``n >= floor``), so it matches autograd of the reference to rounding.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from .mlstm_recurrent import state_dtype
from .slstm import _N_FLOOR, SLSTMState, slstm_zero_state


def _max_grad(grad: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of ``maximum(a, b)`` w.r.t. ``a`` and ``b`` (ties split in half, as torch)."""
    wa = (a > b).to(grad.dtype) + 0.5 * (a == b).to(grad.dtype)
    return grad * wa, grad * (1.0 - wa)


class _SLSTMSequence(torch.autograd.Function):
    """Tensors are head-major inside: ``wxb [S, H, B, 4*Dh]`` (input part + bias), ``r [H, Dh,
    4*Dh]``, states ``[H, B, Dh]``, ``keep [S, 1, B, 1]`` (0.0 where the state is reset)."""

    @staticmethod
    def forward(ctx, wxb: Tensor, r: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor,
                keep: Tensor | None) -> tuple[Tensor, ...]:
        S, dh = wxb.shape[0], h0.shape[-1]
        hs, cs, ns, ms, pres, outs = [], [], [], [], [], []
        h, c, n, m = h0, c0, n0, m0
        for t in range(S):
            if keep is not None:
                h, c, n, m = (torch.where(keep[t] > 0, s, 0.0) for s in (h, c, n, m))
            hs.append(h)
            cs.append(c)
            ns.append(n)
            ms.append(m)
            pre = torch.baddbmm(wxb[t], h, r)
            pres.append(pre)
            z, i, f, o = pre.split(dh, dim=-1)
            f_log = logsigmoid(f)
            fresh = n == 0
            m_new = torch.where(fresh, i, torch.maximum(f_log + m, i))
            i_act = torch.exp(i - m_new)
            f_act = torch.exp(torch.where(fresh, float("-inf"), f_log + m - m_new))
            c = f_act * c + i_act * torch.tanh(z)
            n = f_act * n + i_act
            h = torch.sigmoid(o) * c / n.clamp_min(_N_FLOOR)
            m = m_new
            outs.append(h)
        out = torch.stack(outs)
        ctx.save_for_backward(torch.stack(pres), r, torch.stack(hs), torch.stack(cs),
                              torch.stack(ns), torch.stack(ms), keep)
        return out, c, n, m

    @staticmethod
    def backward(ctx, d_out: Tensor, dc: Tensor, dn: Tensor, dm: Tensor):
        pres, r, hs, cs, ns, ms, keep = ctx.saved_tensors
        S, dh = pres.shape[0], hs.shape[-1]
        d_pres, dh_next = torch.empty_like(pres), torch.zeros_like(hs[0])
        dc, dn, dm = (torch.zeros_like(hs[0]) if g is None else g for g in (dc, dn, dm))
        for t in range(S - 1, -1, -1):
            d_pres[t], dh_next, dc, dn, dm = _step_backward(
                pres[t], r, hs[t], cs[t], ns[t], ms[t], d_out[t] + dh_next, dc, dn, dm, dh)
            if keep is not None:
                dh_next, dc, dn, dm = (g * keep[t] for g in (dh_next, dc, dn, dm))
        d_r = torch.einsum("shbd,shbe->hde", hs, d_pres)
        return d_pres, d_r, dh_next, dc, dn, dm, None


def _step_backward(pre: Tensor, r: Tensor, h_prev: Tensor, c_prev: Tensor, n_prev: Tensor,
                   m_prev: Tensor, dh: Tensor, dc: Tensor, dn: Tensor, dm: Tensor, dh_size: int
                   ) -> tuple[Tensor, ...]:
    """Backward of one step: returns d_pre and the gradients w.r.t. the previous state."""
    z, i, f, o = pre.split(dh_size, dim=-1)
    f_log = logsigmoid(f)
    a = f_log + m_prev
    fresh = n_prev == 0                                                     # m = i from zero state
    m = torch.where(fresh, i, torch.maximum(a, i))
    f_act = torch.exp(torch.where(fresh, float("-inf"), a - m))
    i_act, tz, so = torch.exp(i - m), torch.tanh(z), torch.sigmoid(o)
    c = f_act * c_prev + i_act * tz
    n = f_act * n_prev + i_act
    n_safe = n.clamp_min(_N_FLOOR)
    do = dh * c / n_safe * so * (1.0 - so)
    dc = dc + dh * so / n_safe
    h_over_n = dh * so * ((c / n_safe) / n_safe)                            # torch's div order
    dn = dn - torch.where(n >= _N_FLOOR, h_over_n, 0.0)
    d_f_act = dc * c_prev + dn * n_prev
    d_i_act = dc * tz + dn
    dz = dc * i_act * (1.0 - tz.square())
    gi, gf = d_i_act * i_act, d_f_act * f_act
    dm = dm - gi - gf
    da, di = _max_grad(dm, a, i)
    da, di = torch.where(fresh, 0.0, da), torch.where(fresh, dm, di)
    da = da + gf
    di = di + gi
    df = da * torch.sigmoid(-f)
    d_pre = torch.cat([dz, di, df, do], dim=-1)
    dh_prev = torch.bmm(d_pre, r.transpose(1, 2))
    return d_pre, dh_prev, dc * f_act, dn * f_act, da


def slstm_sequence_fused(wx: Tensor, r_weight: Tensor, bias: Tensor, *,
                         state: SLSTMState | None = None, reset: Tensor | None = None
                         ) -> tuple[Tensor, SLSTMState]:
    """sLSTM over a sequence in one fused autograd node; same arguments as the reference.

    Args:
        wx: ``[B, S, 4, H, Dh]``; r_weight: ``[4, H, Dh, Dh]``; bias: ``[4, H, Dh]``.
        state: optional ``(h, c, n, m)``, each ``[B, H, Dh]``.
        reset: optional ``[B, S]`` bool.

    Returns:
        ``h [B, S, H, Dh]`` (input dtype) and the final state.
    """
    B, S, _, H, dh = wx.shape
    sd = state_dtype(wx.dtype)
    if state is None:
        state = slstm_zero_state(B, H, dh, device=wx.device, dtype=sd)
    wxb = (wx.to(sd) + bias.to(sd)).permute(1, 3, 0, 2, 4).reshape(S, H, B, 4 * dh)
    r = r_weight.to(sd).permute(1, 2, 0, 3).reshape(H, dh, 4 * dh)
    keep = None
    if reset is not None:
        keep = (~reset.to(device=wx.device, dtype=torch.bool)).to(sd).T[:, None, :, None]
    h0, c0, n0, m0 = (s.to(sd).transpose(0, 1) for s in state)
    out, c, n, m = _SLSTMSequence.apply(wxb, r, h0, c0, n0, m0, keep)
    h_seq = out.permute(2, 0, 1, 3)                                         # [B, S, H, Dh]
    final = (h_seq[:, -1],) + tuple(s.transpose(0, 1) for s in (c, n, m))
    return h_seq.to(wx.dtype), final
