"""What the compiled kernels rely on, checked in Python before any pointer reaches C.

The C code reads and writes raw memory at offsets it computes from a few sizes (``B``, ``H``,
``Dk``, ``T``, ...) and strides. A tensor whose shape disagrees with those sizes (a state for
another batch, a window for another conv length) would make it read or write past an
allocation, so every entry point checks here, first, that each tensor it hands over is a CPU
tensor of the kernel's dtype with exactly the shape the sizes imply, and raises a one-line
``ValueError`` naming the tensor, what it got and what is allowed. Layout (dense rows, unit
last strides) is not checked here: the callers copy what is not laid out as C reads it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

MAX_SIZE = 1 << 40
"""Largest size (``B``, ``T``, a width) the kernels take. Their offsets are 64-bit; every size
is also a dimension of a tensor that exists in memory (zero-size tensors are declined before C),
so this bound only turns an absurd value into a clear error instead of an allocation failure."""


def fail(op: str, message: str) -> None:
    """Raises ``ValueError("<op>: <message>")``, one line."""
    raise ValueError(f"{op}: {message}")


def check_tensor(op: str, name: str, t: object, shape: Sequence[int],
                 dtype: torch.dtype | None = None) -> None:
    """``t`` must be a CPU tensor of exactly ``shape`` (and ``dtype`` when given).

    Args:
        op: The entry point, for the message (``"mlstm cell step"``).
        name: The argument's name, for the message.
        t: The value passed.
        shape: The shape the kernel's sizes imply.
        dtype: The dtype the kernel runs in (None: any).
    """
    if not isinstance(t, Tensor):
        fail(op, f"{name} must be a tensor, got {type(t).__name__}")
    assert isinstance(t, Tensor)  # for the type checker: fail() raised otherwise
    if not t.is_cpu:  # (is_cpu and Size == tuple: the cheapest forms, this runs every step)
        fail(op, f"{name} is on {t.device}; the compiled CPU kernels take CPU tensors only")
    if t.shape != tuple(shape):
        fail(op, f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        fail(op, f"{name} must be {dtype}, got {t.dtype}")


def check_types(op: str, tensors: Sequence[object], reset: object = None) -> None:
    """Every entry of ``tensors`` must be a tensor, and ``reset`` a tensor or None (the
    wrappers' first check, before they look at devices and dtypes)."""
    for t in tensors:
        if not isinstance(t, Tensor):
            fail(op, f"expected tensors, got a {type(t).__name__}")
    if reset is not None and not isinstance(reset, Tensor):
        fail(op, f"reset must be a bool tensor or None, got {type(reset).__name__}")


def check_heads(op: str, heads: object) -> int:
    """``heads`` must be a positive int (not a bool or a float)."""
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        fail(op, f"heads must be a positive int, got {heads!r}")
    return heads  # type: ignore[return-value]


def check_sizes(op: str, **sizes: int) -> None:
    """Every size must be a positive int no larger than :data:`MAX_SIZE` (empty tensors are
    not passed to C: the callers decline them)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIZE:
            fail(op, f"{name} must be a positive int (at most 2**40), got {value!r}")


def check_reset(op: str, reset: object, shape: Sequence[int]) -> Tensor | None:
    """``reset`` as a dense CPU bool tensor of ``shape``, or None.

    Accepts bool or integer tensors (nonzero is True); anything else is a one-line error.
    """
    if reset is None:
        return None
    if not isinstance(reset, Tensor):
        fail(op, f"reset must be a bool tensor or None, got {type(reset).__name__}")
    assert isinstance(reset, Tensor)
    if reset.dtype.is_floating_point or reset.dtype.is_complex:
        fail(op, f"reset must be a bool tensor, got {reset.dtype}")
    if tuple(reset.shape) != tuple(shape):
        fail(op, f"reset must have shape {list(shape)}, got {list(reset.shape)}")
    return reset.to(device="cpu", dtype=torch.bool).contiguous()


def check_scalar(op: str, name: str, value: object) -> float:
    """``value`` as a float (a Python or 0-dim number); NaN is allowed (it reaches only
    arithmetic, never an index)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(op, f"{name} must be a number, got {type(value).__name__}")
    return float(value)  # type: ignore[arg-type]


def check_rank(op: str, name: str, t: object, rank: int, layout: str) -> tuple[int, ...]:
    """``t``'s shape, after checking it is a tensor with ``rank`` dims (``layout`` names them
    for the message, e.g. ``"[B, H, Dk]"``)."""
    if not isinstance(t, Tensor):
        fail(op, f"{name} must be a tensor {layout}, got {type(t).__name__}")
    assert isinstance(t, Tensor)
    if t.dim() != rank:
        fail(op, f"{name} must be {layout}, got shape {list(t.shape)}")
    return tuple(t.shape)
