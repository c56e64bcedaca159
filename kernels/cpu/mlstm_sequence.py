"""The mLSTM cell over a sequence in compiled C (``mlstm_sequence.h``), forward and backward.

The training path on CPU: one autograd node whose forward is the recurrent form (the
definition, :func:`xlstm_rl.kernels.reference.mlstm_recurrent`) and whose backward is its exact
gradient, torch's tie rules included, each in one call that spreads the (batch row, head) pairs
over ``torch.get_num_threads()`` threads. The forward keeps the state entering every 16th step;
the backward rebuilds the matrix memories 16 steps at a time from there. Against the PyTorch
chunkwise path this trades its ~100 small ops per direction (each with dispatch and allocation
overhead) for one pass over the matrix memory per step.

Only float32 and float64 CPU tensors (other dtypes, or no compiled library: ``None``, and the
caller takes the PyTorch path). The tests compare it with the autograd of the reference step
loop: outputs, final states and every gradient (initial state included), with resets.
"""
from __future__ import annotations

import ctypes
import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..reference.mlstm_recurrent import MLSTMState
from .mlstm_cell import C_TYPES, MAX_EXP, threads_for, typed_function

CHECKPOINT = 16
"""Steps between the states the forward keeps (``CKPT`` in kernels.c)."""


def _args_type(scalar: type) -> type:
    """The ctypes mirror of ``SEQ_ARGS`` (mlstm_sequence.h) for one scalar type."""
    p, i64, s = ctypes.c_void_p, ctypes.c_int64, scalar
    strides = i64 * 3
    return type(f"SeqArgs_{scalar.__name__}", (ctypes.Structure,), {"_fields_": [
        ("H", i64), ("S", i64), ("dk", i64), ("dv", i64),
        ("q", p), ("k", p), ("v", p), ("ig", p), ("fg", p),
        ("q_s", strides), ("k_s", strides), ("v_s", strides), ("g_s", strides),
        ("reset", p), ("C0", p), ("n0", p), ("m0", p),
        ("scale", s), ("eps", s), ("max_exp", s),
        ("h", p), ("C", p), ("n", p), ("m", p), ("ck_C", p), ("ck_n", p), ("m_all", p),
        ("dh", p), ("dh_s", strides), ("dC", p), ("dn", p), ("dm", p),
        ("dq", p), ("dkk", p), ("dvv", p), ("di", p), ("df", p),
        ("dC0", p), ("dn0", p), ("dm0", p)]})


_ARGS = {dtype: _args_type(scalar) for dtype, scalar in C_TYPES.items()}


def _function(direction: str, dtype: torch.dtype):  # noqa: ANN202
    return typed_function(f"xlstm_mlstm_seq_{direction}", dtype,
                          lambda p, i64, s: [i64, p, ctypes.c_int], ctypes.c_int)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _lastdim_dense(t: Tensor) -> Tensor:
    """``t`` with a unit stride in its last dim (a copy only when it has none)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _strides(t: Tensor) -> tuple[int, int, int]:
    return (t.stride(0), t.stride(1), t.stride(2))


def _fill_inputs(args: Any, q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                 reset: Tensor | None, state: tuple[Tensor, ...] | None, eps: float) -> None:
    B, H, S, dk = q.shape
    args.H, args.S, args.dk, args.dv = H, S, dk, v.shape[-1]
    args.q, args.k, args.v, args.ig, args.fg = (t.data_ptr() for t in (q, k, v, i, f))
    args.q_s, args.k_s, args.v_s, args.g_s = (_strides(t) for t in (q, k, v, i))
    args.reset = _ptr(reset)
    args.C0, args.n0, args.m0 = (None, None, None) if state is None else map(_ptr, state)
    args.scale, args.eps, args.max_exp = 1.0 / math.sqrt(dk), eps, MAX_EXP[q.dtype]


def _run(direction: str, dtype: torch.dtype, B: int, args: Any) -> None:
    fn = _function(direction, dtype)
    if fn is None or fn(B, ctypes.byref(args), threads_for(B * args.H * args.S * args.dv)) != 0:
        raise MemoryError(f"the compiled mLSTM sequence {direction}ward could not allocate "
                          "its scratch memory")


def sequence_forward(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                     state: tuple[Tensor, ...] | None, reset: Tensor | None, eps: float,
                     keep: bool) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The C forward on prepared inputs (one dtype; q, k, v with a dense last dim; i and f of
    one layout; state and reset contiguous).

    Returns:
        ``(h [B,H,S,Dv], C, n, m)`` and, when ``keep``, what :func:`sequence_backward` needs
        besides the inputs: the states entering segments 1.. (``[B,H,nseg-1,Dk,Dv]``,
        ``[B,H,nseg-1,Dk]``; segment 0 enters from the initial state) and the stabilizers
        ``[B,H,S]`` (else ``()``).
    """
    B, H, S, dk = q.shape
    dv, dtype = v.shape[-1], q.dtype
    args = _ARGS[dtype]()
    _fill_inputs(args, q, k, v, i, f, reset, state, eps)
    outs = (q.new_empty(B, H, S, dv), q.new_empty(B, H, dk, dv), q.new_empty(B, H, dk),
            q.new_empty(B, H))
    args.h, args.C, args.n, args.m = (t.data_ptr() for t in outs)
    kept: tuple[Tensor, ...] = ()
    if keep:
        entries = -(-S // CHECKPOINT) - 1
        kept = (q.new_empty(B, H, entries, dk, dv), q.new_empty(B, H, entries, dk),
                q.new_empty(B, H, S))
        args.ck_C, args.ck_n, args.m_all = (t.data_ptr() for t in kept)
    _run("fwd", dtype, B, args)
    return outs, kept


def sequence_backward(inputs: tuple[Tensor, ...], state: tuple[Tensor, ...] | None,
                      reset: Tensor | None, eps: float, h: Tensor, kept: tuple[Tensor, ...],
                      grads_out: tuple[Tensor | None, ...], state_grads: bool
                      ) -> tuple[list[Tensor], list[Tensor | None]]:
    """The C backward of :func:`sequence_forward`.

    Args:
        inputs: ``(q, k, v, i, f)`` as given to the forward; state, reset, eps: likewise.
        h, kept: The forward's output ``h`` and its kept tensors.
        grads_out: Gradients of ``(h, C, n, m)``, each None for zeros.
        state_grads: Also compute the initial state's gradients (needs ``state``).

    Returns:
        ``[dq, dk, dv, di, df]`` (dense ``[B,H,S,...]``) and ``[dC0, dn0, dm0]`` (Nones unless
        ``state_grads``).
    """
    q, k, v, i, f = inputs
    B, H, S, dk = q.shape
    dtype = q.dtype
    args = _ARGS[dtype]()
    _fill_inputs(args, q, k, v, i, f, reset, state, eps)
    args.h, args.ck_C, args.ck_n, args.m_all = (t.data_ptr() for t in (h, *kept))
    dh, dC, dn, dm = grads_out
    if dh is not None:
        dh = _lastdim_dense(dh.to(dtype))
        args.dh, args.dh_s = dh.data_ptr(), _strides(dh)
    if dC is not None or dn is not None:
        dC = q.new_zeros(B, H, dk, v.shape[-1]) if dC is None else dC.to(dtype).contiguous()
        dn = q.new_zeros(B, H, dk) if dn is None else dn.to(dtype).contiguous()
        args.dC, args.dn = dC.data_ptr(), dn.data_ptr()
    if dm is not None:
        dm = dm.to(dtype).contiguous()
        args.dm = dm.data_ptr()
    grads = [q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(v.shape),
             q.new_empty(B, H, S), q.new_empty(B, H, S)]
    args.dq, args.dkk, args.dvv, args.di, args.df = (g.data_ptr() for g in grads)
    initial: list[Tensor | None] = [None, None, None]
    if state_grads and state is not None:
        initial = [q.new_empty(t.shape) for t in state]
        args.dC0, args.dn0, args.dm0 = (_ptr(g) for g in initial)
    _run("bwd", dtype, B, args)
    return grads, initial


class _MLSTMSequence(torch.autograd.Function):
    """Inputs prepared by :func:`mlstm_sequence_cpu` (one dtype, last dims dense)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,  # noqa: ANN001
                C0: Tensor | None, n0: Tensor | None, m0: Tensor | None,
                reset: Tensor | None, eps: float) -> tuple[Tensor, ...]:
        state = None if C0 is None else (C0, n0, m0)
        outs, kept = sequence_forward(q, k, v, i, f, state, reset, eps,  # type: ignore[arg-type]
                                      keep=True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, reset, outs[0], *kept)
        ctx.eps = eps
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads_out: Tensor | None) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        q, k, v, i, f, C0, n0, m0, reset, h, *kept = ctx.saved_tensors
        state = None if C0 is None else (C0, n0, m0)
        grads, initial = sequence_backward((q, k, v, i, f), state, reset, ctx.eps, h,
                                           tuple(kept), grads_out,
                                           any(ctx.needs_input_grad[5:8]))
        wanted = [g if need else None for g, need in zip(grads + initial,
                                                         ctx.needs_input_grad[:8])]
        return (*wanted, None, None)


def available(dtype: torch.dtype) -> bool:
    """True when the compiled sequence kernels can run ``dtype`` tensors."""
    return _function("fwd", dtype) is not None and _function("bwd", dtype) is not None


def mlstm_sequence_cpu(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *,
                       state: MLSTMState | None = None, reset: Tensor | None = None,
                       eps: float = 1e-6) -> tuple[Tensor, MLSTMState] | None:
    """The mLSTM cell over a sequence in the compiled kernels, or None when they cannot run it.

    Args:
        q, k: ``[B, H, S, Dk]``; v: ``[B, H, S, Dv]``; i, f: ``[B, H, S]``: CPU float32 or
            float64 tensors, all of one dtype, any strides (a copy is made only where q, k or
            v has a strided last dim, or i and f differ in layout).
        state: optional ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])`` of that dtype.
        reset: optional ``[B, S]`` bool, True where the state starts over before that step.
        eps: added to the normalizer.

    Returns:
        ``h [B, H, S, Dv]`` and the final ``(C, n, m)``, differentiable in every input and in
        the initial state; None (a dtype or device the kernels lack, mixed dtypes, or no
        compiled library): use the PyTorch path.
    """
    dtype = q.dtype
    tensors = (q, k, v, i, f, *(state or ()))
    if (dtype not in C_TYPES or not all(t.is_cpu and t.dtype is dtype for t in tensors)
            or not available(dtype)):
        return None
    q, k, v = (_lastdim_dense(t) for t in (q, k, v))
    if i.stride() != f.stride():
        i, f = i.contiguous(), f.contiguous()
    dense = None if state is None else tuple(t.contiguous() for t in state)
    if reset is not None:
        reset = reset.to(device="cpu", dtype=torch.bool).contiguous()
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        C0, n0, m0 = (None, None, None) if dense is None else dense
        h, C, n, m = _MLSTMSequence.apply(q, k, v, i, f, C0, n0, m0, reset, eps)
    else:
        (h, C, n, m), _ = sequence_forward(q, k, v, i, f, dense, reset, eps, keep=False)
    return h, (C, n, m)
