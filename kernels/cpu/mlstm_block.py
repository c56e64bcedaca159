"""The mLSTM block's no-grad step between its projections as one C call (``mlstm_block.h``).

``MLSTMBlock.step_nograd`` (``xlstm_rl/cores/mlstm_block.py``) runs layer norm and the
up-projection in PyTorch, this kernel for the conv, q/k/v, gates, cell, head norm, skip and output
gate, and the down-projection in PyTorch again: about five calls per block step instead of
about forty. Tests compare every core's no-grad step with its autograd step.
"""
from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from .mlstm_cell import MAX_EXP, typed_function


def _function(dtype: torch.dtype):  # noqa: ANN202
    return typed_function("xlstm_mlstm_block_step", dtype, lambda p, i64, s: (
        [i64] * 5 + [p, p, i64, p, p] + [p] * 9 + [p, s, p, s, s] + [p] * 5), ctypes.c_int)


def mlstm_block_step(up: Tensor, window: Tensor, reset: Tensor | None,
                     weights: dict[str, Tensor], state: list[Tensor], heads: int,
                     norm_eps: float, eps: float = 1e-6, overwrite: bool = False
                     ) -> tuple[Tensor, list[Tensor]] | None:
    """The block step from the up-projection output to the down-projection input.

    Args:
        up: ``[B, 2 * inner]`` up-projection output (``xm`` then ``z``), rows dense.
        window: ``[B, K-1, inner]`` carried conv inputs.
        reset: ``[B]`` bool or None; True starts that row from the zero state and window.
        weights: dense tensors ``conv_w [K, inner]``, ``conv_b [inner]``, ``qk_w [nb, bs, 2bs]``,
            ``v_w [nb, bs, bs]``, ``gate_w [2H, 3*inner]``, ``gate_b [2H]``, ``norm_w
            [inner]`` and ``skip [inner]``.
        state: ``[C [B,H,Dh,Dh], n [B,H,Dh], m [B,H]]``; written only when ``overwrite``.
        heads: ``H``.
        norm_eps: epsilon of the per-head norm.
        eps: the cell's normalizer epsilon.
        overwrite: Write the new state into ``state`` and ``window`` (dense ones; others are
            copied first) instead of fresh tensors; the caller must hold no other reference.

    Returns:
        ``out [B, inner]`` (the down-projection's input) and ``[C, n, m, window]`` (fresh, or
        the inputs when ``overwrite``), or
        None when the compiled kernel cannot take these tensors (caller: the PyTorch path).
    """
    dtype = up.dtype
    fn = _function(dtype)
    if fn is None or not all(t.is_cpu and t.dtype is dtype for t in (up, window, *state)) \
            or not all(w.is_cpu and w.dtype is dtype and w.is_contiguous()
                       for w in weights.values()):
        return None
    C, n, m = (t.contiguous() for t in state)
    B, inner = up.shape[0], up.shape[1] // 2
    K, bs = weights["conv_w"].shape[0], weights["v_w"].shape[1]
    if up.stride(1) != 1:
        up = up.contiguous()
    window = window.contiguous()
    if reset is not None:
        reset = reset.to(torch.bool).contiguous()
    out = torch.empty(B, inner, dtype=dtype)
    if overwrite:
        window_out, C_out, n_out, m_out = window, C, n, m
    else:
        window_out, C_out = torch.empty_like(window), torch.empty_like(C)
        n_out, m_out = torch.empty_like(n), torch.empty_like(m)
    w = weights
    status = fn(B, heads, inner // heads, K, bs, up.data_ptr(), up.data_ptr() + inner *
                up.element_size(), up.stride(0), window.data_ptr(),
                None if reset is None else reset.data_ptr(),
                w["conv_w"].data_ptr(), w["conv_b"].data_ptr(), w["qk_w"].data_ptr(),
                w["v_w"].data_ptr(), w["gate_w"].data_ptr(), w["gate_b"].data_ptr(),
                C.data_ptr(), n.data_ptr(), m.data_ptr(), w["norm_w"].data_ptr(),
                norm_eps, w["skip"].data_ptr(), eps, MAX_EXP[dtype],
                out.data_ptr(), window_out.data_ptr(), C_out.data_ptr(), n_out.data_ptr(),
                m_out.data_ptr())
    if status != 0:
        return None
    return out, [C_out, n_out, m_out, window_out]
