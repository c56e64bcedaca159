"""The fused C mLSTM cell step (``mlstm_cell.h``, built from ``kernels.c``) on CPU tensors,
through ctypes; also the dtype plumbing every kernel of this folder shares.

Same map as :func:`xlstm_rl.kernels.reference.mlstm_step_reference` (tests compare outputs and
states, resets and carried states included, with the reference's tolerances); one pass over the
matrix memory instead of the PyTorch path's four (scale, rank-one update, read-out, norm), and
one call instead of about fifteen. Only for tensors that need no gradient: it has no backward.
"""
from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor

from ..reference.mlstm_recurrent import MLSTMState, max_exp_arg, mlstm_zero_state, state_dtype
from .build import function, uses_openmp, why_unavailable
from .checks import (check_rank, check_reset, check_scalar, check_sizes, check_tensor,
                     check_types, fail)
from .op_call import run_op

C_TYPES = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
"""The scalar types the C kernels are built for (``<name>_f32`` and ``<name>_f64``)."""
MAX_EXP = {dtype: max_exp_arg(dtype) for dtype in C_TYPES}
"""The clamp of the exponentials' arguments, per dtype (as the reference)."""


OP_CELL = "mlstm cell step"
"""The kernel's name in error messages."""

PARALLEL_MIN_ELEMENTS = 1 << 18
"""Below this many elements per ``[B, T, features]`` tensor a training kernel runs on one
thread when the library starts threads of its own (built without OpenMP): a second one would
share its core with torch's intra-op workers, which spin for a while after each op (measured in
the PPO update: 0.39 s with two threads, 0.33 s with one; the R2D2 learner batch, 8x larger
than this, gains from two). On torch's OpenMP threads two are faster than one from one
sequence of 16 steps up (a core's forward and backward: 3.6 against 3.8 ms; at PPO's 16 x 16,
6.5 against 7.9 ms), so there every call gets torch's thread count."""


def threads_for(elements: int) -> int:
    """Threads for a training kernel call over ``elements`` values per tensor."""
    if elements >= PARALLEL_MIN_ELEMENTS or uses_openmp():
        return torch.get_num_threads()
    return 1


def typed_function(name: str, dtype: torch.dtype):  # noqa: ANN201
    """The C function ``name`` for ``dtype`` (None: no library, or a dtype without a build),
    with the ctypes signature declared in :mod:`.abi` (checked against the library's own).

    Args:
        name: The function's name without its ``_f32`` / ``_f64`` suffix.
        dtype: torch.float32 or torch.float64.
    """
    if dtype not in C_TYPES:
        return None
    return function(f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")


def _function(dtype: torch.dtype):  # noqa: ANN202
    return typed_function("xlstm_mlstm_cell_step", dtype)


def available(dtype: torch.dtype = torch.float32) -> bool:
    """True when the compiled kernel can run ``dtype`` (float32 / float64) tensors."""
    return _function(dtype) is not None


def _rows(t: Tensor) -> Tensor:
    """``t [B, H, D]`` with (h, d) dense (any batch stride), copying only when needed."""
    if t.stride(-1) == 1 and t.stride(-2) == t.shape[-1]:
        return t
    return t.contiguous()


def mlstm_cell_step(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                    state: MLSTMState | None, reset: Tensor | None = None, eps: float = 1e-6
                    ) -> tuple[Tensor, MLSTMState] | None:
    """One mLSTM step in the compiled kernel, or None when it cannot take these tensors.

    Args:
        q, k: ``[B, H, Dk]``; v: ``[B, H, Dv]`` (any strides); i, f: ``[B, H]`` gate
            pre-activations. CPU tensors needing no gradient; other float dtypes are computed
            in the state's dtype, as the reference.
        state: ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])`` or None (zeros); never written.
        reset: optional ``[B]`` bool; True starts that row from the zero state.
        eps: added to the normalizer.

    Returns:
        ``h [B, H, Dv]`` in the input dtype and the new ``(C, n, m)`` (fresh tensors), or None
        (no compiled kernel, a non-CPU tensor, a state that is not float32 / float64, an empty
        batch): the caller then takes the PyTorch path.

    Raises:
        ValueError: A shape, dtype or reset the kernel cannot take (one line).
    """
    tensors = (q, k, v, i, f, *(state or ()))
    check_types(OP_CELL, tensors, reset)
    if not all(t.is_cpu and t.is_floating_point() for t in tensors):
        return None
    dtype = state_dtype(q.dtype)
    if (_function(dtype) is None or any(t.numel() == 0 for t in tensors)
            or (state is not None and any(t.dtype != dtype for t in state))):
        return None
    if state is None:
        B, H, dk = check_rank(OP_CELL, "q", q, 3, "[B, H, Dk]")
        state = mlstm_zero_state(B, H, dk, v.shape[-1], dtype=dtype)
    in_dtype = q.dtype
    q, k, v, i, f = (t.to(dtype) for t in (q, k, v, i, f))
    h, C, n, m = run_op(cell_step_impl, "mlstm_cell_step", q, k, v, i, f, *state, reset,
                        float(eps))
    return h.to(in_dtype), (C, n, m)


def cell_step_impl(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, C: Tensor,
                   n: Tensor, m: Tensor, reset: Tensor | None, eps: float
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The C call of :func:`mlstm_cell_step` (also the ``xlstm_rl::mlstm_cell_step`` operator):
    checks every size, dtype and device the kernel relies on, lays the inputs out as it reads
    them, and returns fresh ``(h, C, n, m)``.

    Raises:
        ValueError: Anything the kernel cannot take, before C is called (one line).
    """
    B, H, dk = check_rank(OP_CELL, "q", q, 3, "[B, H, Dk]")
    dv = check_rank(OP_CELL, "v", v, 3, "[B, H, Dv]")[-1]
    check_sizes(OP_CELL, B=B, H=H, Dk=dk, Dv=dv)
    dtype = C.dtype if isinstance(C, Tensor) else None
    if dtype not in C_TYPES:
        fail(OP_CELL, f"the state must be float32 or float64, got {dtype}")
    for name, t, shape in (("q", q, (B, H, dk)), ("k", k, (B, H, dk)), ("v", v, (B, H, dv)),
                           ("i", i, (B, H)), ("f", f, (B, H)), ("C", C, (B, H, dk, dv)),
                           ("n", n, (B, H, dk)), ("m", m, (B, H))):
        check_tensor(OP_CELL, name, t, shape, dtype)
    reset = check_reset(OP_CELL, reset, (B,))
    eps = check_scalar(OP_CELL, "eps", eps)
    fn = _function(dtype)
    if fn is None:
        raise RuntimeError(f"{OP_CELL}: the compiled CPU kernels are unavailable "
                           f"({why_unavailable()})")
    q, k, v = _rows(q), _rows(k), _rows(v)
    if i.stride(-1) != 1 or f.stride(-1) != 1 or i.stride(0) != f.stride(0):
        i, f = i.contiguous(), f.contiguous()
    C, n, m = C.contiguous(), n.contiguous(), m.contiguous()
    h = torch.empty(B, H, dv, dtype=dtype)
    C_out, n_out, m_out = torch.empty_like(C), torch.empty_like(n), torch.empty_like(m)
    fn(B, H, dk, dv, q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0),
       v.data_ptr(), v.stride(0), i.data_ptr(), f.data_ptr(), i.stride(0),
       C.data_ptr(), n.data_ptr(), m.data_ptr(), None if reset is None else reset.data_ptr(),
       1.0 / math.sqrt(dk), eps, MAX_EXP[dtype],
       h.data_ptr(), C_out.data_ptr(), n_out.data_ptr(), m_out.data_ptr())
    return h, C_out, n_out, m_out
