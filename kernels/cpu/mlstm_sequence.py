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

from ..reference.mlstm_recurrent import MLSTMState
from . import abi
from .checks import (check_rank, check_reset, check_scalar, check_sizes, check_tensor,
                     check_types, fail)
from .mlstm_cell import C_TYPES, MAX_EXP, threads_for, typed_function
from .op_call import constant_for_compile

CHECKPOINT = 16
"""Steps between the states the forward keeps (``CKPT`` in kernels.c)."""


_ARGS = {dtype: abi.structure("seq_args", scalar) for dtype, scalar in C_TYPES.items()}
"""The ctypes mirrors of ``SEQ_ARGS`` (mlstm_sequence.h), declared in :mod:`.abi`."""


def _function(direction: str, dtype: torch.dtype):  # noqa: ANN202
    return typed_function(f"xlstm_mlstm_seq_{direction}", dtype)


OP_SEQ = "mlstm sequence"
"""The kernels' name in error messages."""


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _lastdim_dense(t: Tensor) -> Tensor:
    """``t`` with a unit stride in its last dim (a copy only when it has none)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _strides(t: Tensor) -> tuple[int, int, int]:
    return (t.stride(0), t.stride(1), t.stride(2))


def check_sequence(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                   state: tuple[Tensor | None, ...] | None, reset: Tensor | None
                   ) -> tuple[dict[str, int], Tensor | None]:
    """Checks what the sequence kernels rely on: ``q, k [B,H,S,Dk]``, ``v [B,H,S,Dv]``,
    ``i, f [B,H,S]``, the state ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])`` (all three or none)
    and ``reset [B, S]``, one float dtype, CPU.

    Returns:
        The sizes ``{"B", "H", "S", "Dk", "Dv"}`` and the reset as a dense bool tensor.

    Raises:
        ValueError: The first disagreement, in one line.
    """
    B, H, S, dk = check_rank(OP_SEQ, "q", q, 4, "[B, H, S, Dk]")
    dv = check_rank(OP_SEQ, "v", v, 4, "[B, H, S, Dv]")[-1]
    check_sizes(OP_SEQ, B=B, H=H, S=S, Dk=dk, Dv=dv)
    dtype = q.dtype
    if dtype not in C_TYPES:
        fail(OP_SEQ, f"q must be float32 or float64, got {dtype}")
    want = [("q", q, (B, H, S, dk)), ("k", k, (B, H, S, dk)), ("v", v, (B, H, S, dv)),
            ("i", i, (B, H, S)), ("f", f, (B, H, S))]
    if state is not None and any(t is not None for t in state):
        want += list(zip(("C", "n", "m"), state,  # type: ignore[arg-type]
                         ((B, H, dk, dv), (B, H, dk), (B, H))))
    for name, t, shape in want:
        check_tensor(OP_SEQ, name, t, shape, dtype)
    return {"B": B, "H": H, "S": S, "Dk": dk, "Dv": dv}, check_reset(OP_SEQ, reset, (B, S))


def _prepared(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
              state: tuple[Tensor | None, ...] | None
              ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None]:
    """The inputs laid out as C reads them: q, k, v with a dense last dim, i and f of one
    layout, a dense state (None when absent)."""
    q, k, v = (_lastdim_dense(t) for t in (q, k, v))
    if i.stride() != f.stride():
        i, f = i.contiguous(), f.contiguous()
    dense = None
    if state is not None and all(t is not None for t in state):
        dense = tuple(t.contiguous() for t in state if t is not None)
    return (q, k, v, i, f), dense


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
    if fn is None:
        fail(OP_SEQ, "the compiled CPU kernels are unavailable")
    if fn(B, ctypes.byref(args), threads_for(B * args.H * args.S * args.dv)) != 0:
        raise MemoryError(f"the compiled mLSTM sequence {direction}ward could not allocate "
                          "its scratch memory")


def sequence_forward(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                     state: tuple[Tensor | None, ...] | None, reset: Tensor | None, eps: float,
                     keep: bool) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The C forward, after checking its inputs (shapes as :func:`mlstm_sequence_cpu`).

    Returns:
        ``(h [B,H,S,Dv], C, n, m)`` and, when ``keep``, what :func:`sequence_backward` needs
        besides the inputs: the states entering segments 1.. (``[B,H,nseg-1,Dk,Dv]``,
        ``[B,H,nseg-1,Dk]``; segment 0 enters from the initial state) and the stabilizers
        ``[B,H,S]`` (else ``()``).

    Raises:
        ValueError: What the kernel cannot take (one line), before C is called.
    """
    d, reset = check_sequence(q, k, v, i, f, state, reset)
    (q, k, v, i, f), dense = _prepared(q, k, v, i, f, state)
    B, H, S, dk, dv, dtype = d["B"], d["H"], d["S"], d["Dk"], d["Dv"], q.dtype
    args = _ARGS[dtype]()
    _fill_inputs(args, q, k, v, i, f, reset, dense, check_scalar(OP_SEQ, "eps", eps))
    outs = (q.new_empty(B, H, S, dv), q.new_empty(B, H, dk, dv), q.new_empty(B, H, dk),
            q.new_empty(B, H))
    args.h, args.C, args.n, args.m = (t.data_ptr() for t in outs)
    kept: tuple[Tensor, ...] = ()
    if keep:
        kept = tuple(q.new_empty(shape) for shape in kept_shapes(B, H, S, dk, dv))
        args.ck_C, args.ck_n, args.m_all = (t.data_ptr() for t in kept)
    _run("fwd", dtype, B, args)
    return outs, kept


def kept_shapes(B: int, H: int, S: int, dk: int, dv: int) -> tuple[tuple[int, ...], ...]:
    """Shapes of what the forward keeps for the backward (see :func:`sequence_forward`)."""
    entries = -(-S // CHECKPOINT) - 1
    return (B, H, entries, dk, dv), (B, H, entries, dk), (B, H, S)


def _check_backward(d: dict[str, int], h: Tensor, kept: tuple[Tensor, ...],
                    grads_out: tuple[Tensor | None, ...], dtype: torch.dtype) -> None:
    """The forward's saved tensors and the output gradients must have the forward's shapes."""
    B, H, S, dk, dv = d["B"], d["H"], d["S"], d["Dk"], d["Dv"]
    if len(kept) != 3 or len(grads_out) != 4:
        fail(OP_SEQ, "the backward needs the forward's 3 kept tensors and 4 output gradients")
    want = [("h", h, (B, H, S, dv)), *zip(("ck_C", "ck_n", "m_all"), kept,
                                          kept_shapes(B, H, S, dk, dv))]
    for name, t, shape in want:
        check_tensor(OP_SEQ, name, t, shape, dtype)
    for name, g, shape in zip(("dh", "dC", "dn", "dm"), grads_out,
                              ((B, H, S, dv), (B, H, dk, dv), (B, H, dk), (B, H))):
        if g is not None:
            check_tensor(OP_SEQ, name, g, shape)
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
    d, reset = check_sequence(q, k, v, i, f, state, reset)
    (q, k, v, i, f), dense = _prepared(q, k, v, i, f, state)
    B, H, S, dk, dtype = d["B"], d["H"], d["S"], d["Dk"], q.dtype
    _check_backward(d, h, kept, grads_out, dtype)
    if state_grads and dense is None:
        fail(OP_SEQ, "the initial state's gradients need the initial state")
    h, kept = h.contiguous(), tuple(t.contiguous() for t in kept)
    args = _ARGS[dtype]()
    _fill_inputs(args, q, k, v, i, f, reset, dense, check_scalar(OP_SEQ, "eps", eps))
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
    if state_grads and dense is not None:
        initial = [q.new_empty(t.shape) for t in dense]
        args.dC0, args.dn0, args.dm0 = (_ptr(g) for g in initial)
    _run("bwd", dtype, B, args)
    return grads, initial


@constant_for_compile
def available(dtype: torch.dtype) -> bool:
    """True when the compiled sequence kernels can run ``dtype`` tensors. (a constant
    to ``torch.compile``, which then does not trace the library's loader)."""
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
        the initial state; None (a dtype or device the kernels lack, mixed dtypes, an empty
        tensor, or no compiled library): use the PyTorch path.

    Raises:
        ValueError: Shapes that disagree with each other, or a bad reset (one line).
    """
    tensors = (q, k, v, i, f, *(state or ()))
    check_types(OP_SEQ, tensors, reset)
    dtype = q.dtype
    if (dtype not in C_TYPES or any(t.numel() == 0 for t in tensors)
            or not all(t.is_cpu and t.dtype is dtype for t in tensors)
            or not available(dtype)):
        return None
    C0, n0, m0 = (None, None, None) if state is None else state
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    h, C, n, m, *_ = torch.ops.xlstm_rl.mlstm_sequence(q, k, v, i, f, C0, n0, m0, reset,
                                                       float(eps), keep)
    return h, (C, n, m)

