"""Fused mLSTM / sLSTM step kernels (acting path) and the sLSTM sequence loop.

Forward runs the fused Triton step. Backward (only built when an input requires grad) re-runs
the reference step under autograd on the saved inputs, so gradients are exactly the reference's
(Beck et al. 2024, arXiv:2405.04517): one step is cheap, and acting rarely needs them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..reference import (mlstm_step_reference, mlstm_zero_state, slstm_step_reference,
                         slstm_zero_state)
from ..reference.slstm import slstm_sequence_by_steps
from ..triton.mlstm_step import mlstm_step_kernel
from ..triton.slstm_step import slstm_step_kernel
from ._common import check_dtype, padded_dim, reset_int8


def _mlstm_step_launch(q, k, v, i, f, C, n, m, r8, eps, out=None):
    """Launch the fused mLSTM step; ``out`` = state tensors to write (in place) or None."""
    B, H, DK = q.shape
    DV = v.shape[-1]
    h = torch.empty(B, H, DV, device=q.device, dtype=q.dtype)
    Co, no, mo = out if out is not None else (torch.empty_like(C), torch.empty_like(n),
                                              torch.empty_like(m))
    DKP = padded_dim(DK)
    BV = max(16, min(padded_dim(DV), 4096 // DKP))
    mlstm_step_kernel[(B * H,)](
        q, k, v, i, f, r8, C, n, m, h, Co, no, mo, H, 1.0 / math.sqrt(DK), float(eps), DK=DK,
        DV=DV, DKP=DKP, BV=BV, NVB=padded_dim(DV) // BV, HAS_RESET=r8 is not None,
        num_warps=4)
    return h, (Co, no, mo)


class _MLSTMStepFn(torch.autograd.Function):
    """Fused forward; backward through :func:`mlstm_step_reference` under autograd."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C, n, m, r8, eps):  # noqa: D102
        ctx.save_for_backward(q, k, v, i, f, C, n, m, r8)
        ctx.eps = eps
        h, (Co, no, mo) = _mlstm_step_launch(q, k, v, i, f, C, n, m, r8, eps)
        return h, Co, no, mo

    @staticmethod
    def backward(ctx, *grads):  # noqa: D102
        *inputs, r8 = ctx.saved_tensors
        return (*_reference_vjp(
            lambda q, k, v, i, f, C, n, m: _flat(mlstm_step_reference(
                q, k, v, i, f, (C, n, m), reset=None if r8 is None else r8.bool(), eps=ctx.eps)),
            inputs, grads), None, None)


def _flat(out):
    h, state = out
    return (h, *state)


def _reference_vjp(fn, inputs, grads):
    """Gradients of ``fn(*inputs)`` (a tuple of tensors) against ``grads`` (None for no-grad)."""
    with torch.enable_grad():
        xs = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
        outs = fn(*xs)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        got = torch.autograd.grad([o for o, _ in pairs], xs, [g for _, g in pairs],
                                  allow_unused=True)
    return tuple(None if g is None else g.to(x.dtype) for g, x in zip(got, inputs))


def mlstm_step(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state, *,
               reset: Tensor | None = None, eps: float = 1e-6, inplace: bool = False
               ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One fused mLSTM step.

    Args:
        q, k: ``[B, H, Dk]``; v: ``[B, H, Dv]``; i, f: ``[B, H]`` (any Dk, Dv).
        state: ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])`` float32, or None for zeros.
        reset: optional ``[B]`` bool; True zeroes that row's state before the step.
        eps: normalizer epsilon.
        inplace: write the new state into ``state``'s tensors (contiguous float32, no autograd)
            and return them.

    Returns:
        ``h [B, H, Dv]`` in the input dtype and the new state (float32).
    """
    check_dtype(q, "q")
    B, H, DK = q.shape
    if state is None:
        state = mlstm_zero_state(B, H, DK, v.shape[-1], device=q.device)
        inplace = False
    r8 = reset_int8(reset, (B,), q.device)
    q, k, v, i, f = (x.contiguous() for x in (q, k, v, i, f))
    if inplace:
        C, n, m = state
        if any(s.dtype != torch.float32 or not s.is_contiguous() for s in state):
            raise ValueError("inplace=True needs contiguous float32 state tensors")
        if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, i, f, C, n, m)):
            raise ValueError("inplace=True cannot be used with autograd; use inplace=False")
        return _mlstm_step_launch(q, k, v, i, f, C, n, m, r8, eps, out=(C, n, m))
    C, n, m = (s.float().contiguous() for s in state)
    h, Co, no, mo = _MLSTMStepFn.apply(q, k, v, i, f, C, n, m, r8, eps)
    return h, (Co, no, mo)


def _slstm_launch(wx, R, bias, h, c, n, m, r8):
    B, _, H, DH = wx.shape
    BD = padded_dim(DH)
    BE = min(BD, 64)
    BB = 16 if B <= 16 else 32
    outs = [torch.empty(B, H, DH, device=wx.device, dtype=wx.dtype)]
    outs += [torch.empty(B, H, DH, device=wx.device, dtype=torch.float32) for _ in range(4)]
    slstm_step_kernel[(-(-B // BB), H, BD // BE)](
        wx, R, bias, r8, h, c, n, m, *outs, B, H, DH, BB=BB, BD=BD, BE=BE,
        HAS_RESET=r8 is not None, PS="ieee", num_warps=4)
    return outs


class _SLSTMStepFn(torch.autograd.Function):
    """Fused forward; backward through :func:`slstm_step_reference` under autograd."""

    @staticmethod
    def forward(ctx, wx, R, bias, h, c, n, m, r8):  # noqa: D102
        ctx.save_for_backward(wx, R, bias, h, c, n, m, r8)
        return tuple(_slstm_launch(wx, R, bias, h, c, n, m, r8))

    @staticmethod
    def backward(ctx, *grads):  # noqa: D102
        *inputs, r8 = ctx.saved_tensors
        return (*_reference_vjp(
            lambda wx, R, b, h, c, n, m: _flat(slstm_step_reference(
                wx, R, b, (h, c, n, m), reset=None if r8 is None else r8.bool())),
            inputs, grads), None)


def slstm_step(wx: Tensor, r_weight: Tensor, bias: Tensor, state, *,
               reset: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One fused sLSTM step.

    Args:
        wx: ``[B, 4, H, Dh]`` input contributions (gates z, i, f, o).
        r_weight: ``[4, H, Dh, Dh]`` block-diagonal recurrent weights; bias: ``[4, H, Dh]``.
        state: ``(h, c, n, m)`` each ``[B, H, Dh]`` float32, or None for zeros.
        reset: optional ``[B]`` bool.

    Returns:
        ``h [B, H, Dh]`` in the input dtype and the new state (float32).
    """
    check_dtype(wx, "wx")
    B, _, H, DH = wx.shape
    if state is None:
        state = slstm_zero_state(B, H, DH, device=wx.device)
    r8 = reset_int8(reset, (B,), wx.device)
    h, c, n, m = (s.float().contiguous() for s in state)
    ho, *new = _SLSTMStepFn.apply(wx.contiguous(), r_weight.contiguous(), bias.contiguous(),
                                  h, c, n, m, r8)
    return ho, tuple(new)


def slstm_sequence(wx: Tensor, r_weight: Tensor, bias: Tensor, *, state=None,
                   reset: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """sLSTM over a sequence: a Python loop of the fused step.

    Args:
        wx: ``[B, S, 4, H, Dh]``; r_weight: ``[4, H, Dh, Dh]``; bias: ``[4, H, Dh]``.
        state: optional initial ``(h, c, n, m)``; reset: optional ``[B, S]`` bool.

    Returns:
        ``h [B, S, H, Dh]`` and the final state.
    """
    return slstm_sequence_by_steps(slstm_step, wx, r_weight, bias, state=state, reset=reset)


__all__ = ["mlstm_step", "slstm_sequence", "slstm_step"]
