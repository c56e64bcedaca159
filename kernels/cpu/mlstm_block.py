"""The mLSTM block's no-grad step between its projections as one C call (``mlstm_block.h``).

``MLSTMBlock.step_nograd`` (``xlstm_rl/cores/mlstm_block.py``) runs layer norm and the
up-projection in PyTorch, this kernel for the conv, q/k/v, gates, cell, head norm, skip and output
gate, and the down-projection in PyTorch again: about five calls per block step instead of
about forty. Tests compare every core's no-grad step with its autograd step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .checks import (check_rank, check_reset, check_scalar, check_sizes, check_tensor,
                     check_heads, check_types, fail)
from .mlstm_cell import C_TYPES, MAX_EXP, typed_function
from .op_call import run_op

OP_STEP = "mlstm block step"
"""The kernel's name in error messages."""
WEIGHTS = ("conv_w", "conv_b", "qk_w", "v_w", "gate_w", "gate_b", "norm_w", "skip")
"""The parameters the block kernels read, in the order the operators take them."""


def _function(dtype: torch.dtype):  # noqa: ANN202
    return typed_function("xlstm_mlstm_block_step", dtype)


def check_block(op: str, up: Tensor, window: Tensor, weights: dict[str, Tensor],
                state: list[Tensor] | tuple[Tensor, ...], heads: int, sequence: bool
                ) -> dict[str, int]:
    """Checks what every block kernel relies on and returns its sizes.

    Args:
        op: The kernel's name, for the message.
        up: ``[B, 2 * inner]`` (a step) or ``[B, T, 2 * inner]`` (``sequence``).
        window: ``[B, K-1, inner]``.
        weights: The tensors named in :data:`WEIGHTS` (shapes as :func:`mlstm_block_step`).
        state: ``C [B,H,Dh,Dh], n [B,H,Dh], m [B,H]`` (or empty: not checked).
        heads: ``H``.
        sequence: Whether ``up`` has a time dim.

    Returns:
        ``{"B", "T", "H", "Dh", "K", "bs", "inner"}`` (``T`` is 1 for a step).

    Raises:
        ValueError: The first disagreement, in one line.
    """
    shape = check_rank(op, "up", up, 3 if sequence else 2,
                       "[B, T, 2 * inner]" if sequence else "[B, 2 * inner]")
    B, T, two_inner = shape if sequence else (shape[0], 1, shape[1])
    check_heads(op, heads)
    if two_inner % (2 * heads):
        fail(op, f"up's last dim must be 2 * inner with inner a multiple of heads={heads}, "
                 f"got {two_inner}")
    inner = two_inner // 2
    dtype = up.dtype
    if dtype not in C_TYPES:
        fail(op, f"up must be float32 or float64, got {dtype}")
    missing = [name for name in WEIGHTS if not isinstance(weights.get(name), Tensor)]
    if missing:
        fail(op, f"weights {', '.join(missing)} are missing")
    K = check_rank(op, "conv_w", weights["conv_w"], 2, "[K, inner]")[0]
    nb, bs = check_rank(op, "v_w", weights["v_w"], 3, "[nb, bs, bs]")[:2]
    H, Dh = heads, inner // heads
    check_sizes(op, B=B, T=T, inner=inner, K=K, bs=bs)
    if nb * bs != inner:
        fail(op, f"v_w's blocks ({nb} x {bs}) must cover inner={inner}")
    want = {"window": (window, (B, K - 1, inner)), "conv_w": (weights["conv_w"], (K, inner)),
            "conv_b": (weights["conv_b"], (inner,)), "qk_w": (weights["qk_w"], (nb, bs, 2 * bs)),
            "v_w": (weights["v_w"], (nb, bs, bs)),
            "gate_w": (weights["gate_w"], (2 * H, 3 * inner)),
            "gate_b": (weights["gate_b"], (2 * H,)), "norm_w": (weights["norm_w"], (inner,)),
            "skip": (weights["skip"], (inner,))}
    want.update(zip(("C", "n", "m"), zip(state, ((B, H, Dh, Dh), (B, H, Dh), (B, H)))))
    for name, (t, expected) in want.items():
        check_tensor(op, name, t, expected, dtype)
    return {"B": B, "T": T, "H": H, "Dh": Dh, "K": K, "bs": bs, "inner": inner}


def block_arguments(op: str, up: Tensor, window: Tensor, reset: object,
                    weights: dict[str, Tensor], state: list[Tensor] | tuple[Tensor, ...],
                    heads: object) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """The wrappers' first checks (tensors are tensors, heads a positive int): the weights in
    :data:`WEIGHTS` order and every tensor the call passes (``up, window, *state, *weights``).

    Raises:
        ValueError: A non-tensor, a missing weight, a bad reset type or heads (one line).
    """
    ordered = [weights.get(name) for name in WEIGHTS]
    tensors = (up, window, *state, *ordered)
    check_types(op, tensors, reset)
    check_heads(op, heads)
    return ordered, tensors  # type: ignore[return-value]


def mlstm_block_step(up: Tensor, window: Tensor, reset: Tensor | None,
                     weights: dict[str, Tensor], state: list[Tensor], heads: int,
                     norm_eps: float, eps: float = 1e-6, overwrite: bool = False
                     ) -> tuple[Tensor, list[Tensor]] | None:
    """The block step from the up-projection output to the down-projection input.

    Args:
        up: ``[B, 2 * inner]`` up-projection output (``xm`` then ``z``).
        window: ``[B, K-1, inner]`` carried conv inputs.
        reset: ``[B]`` bool or None; True starts that row from the zero state and window.
        weights: ``conv_w [K, inner]``, ``conv_b [inner]``, ``qk_w [nb, bs, 2bs]``, ``v_w
            [nb, bs, bs]``, ``gate_w [2H, 3*inner]``, ``gate_b [2H]``, ``norm_w [inner]`` and
            ``skip [inner]``.
        state: ``[C [B,H,Dh,Dh], n [B,H,Dh], m [B,H]]``; written only when ``overwrite``.
        heads: ``H``.
        norm_eps: epsilon of the per-head norm.
        eps: the cell's normalizer epsilon.
        overwrite: Write the new state into ``state`` and ``window`` when they are dense
            (else into fresh tensors); the caller must hold no other reference.

    Returns:
        ``out [B, inner]`` (the down-projection's input) and ``[C, n, m, window]`` (fresh, or
        the inputs when overwritten), or None when the compiled kernel cannot take these
        tensors (another device or dtype, an empty batch, no library): the PyTorch path.

    Raises:
        ValueError: Shapes that disagree with each other, or a bad reset (one line).
    """
    ordered, tensors = block_arguments(OP_STEP, up, window, reset, weights, state, heads)
    dtype = up.dtype
    if (_function(dtype) is None or any(t.numel() == 0 for t in (up, *state))
            or not all(t.is_cpu and t.dtype is dtype for t in tensors)):
        return None
    args = (up, window, reset, *ordered, *state, heads, float(norm_eps), float(eps))
    leaves = (*state, window)
    if overwrite and all(t.is_contiguous() for t in leaves):
        out = run_op(block_step_inplace_impl, "mlstm_block_step_", *args)
        return out, [*state, window]
    out, *new = run_op(block_step_impl, "mlstm_block_step", *args)
    return out, new


def block_step_impl(up: Tensor, window: Tensor, reset: Tensor | None, conv_w: Tensor,
                    conv_b: Tensor, qk_w: Tensor, v_w: Tensor, gate_w: Tensor, gate_b: Tensor,
                    norm_w: Tensor, skip: Tensor, C: Tensor, n: Tensor, m: Tensor, heads: int,
                    norm_eps: float, eps: float) -> tuple[Tensor, ...]:
    """The ``xlstm_rl::mlstm_block_step`` operator: fresh ``(out, C, n, m, window)``."""
    outs = (torch.empty_like(C, memory_format=torch.contiguous_format),
            torch.empty_like(n, memory_format=torch.contiguous_format),
            torch.empty_like(m, memory_format=torch.contiguous_format),
            torch.empty_like(window, memory_format=torch.contiguous_format))
    out = _block_step_call(up, window, reset, (conv_w, conv_b, qk_w, v_w, gate_w, gate_b,
                                               norm_w, skip), (C, n, m), heads, norm_eps, eps,
                           outs)
    return (out, *outs)


def block_step_inplace_impl(up: Tensor, window: Tensor, reset: Tensor | None, conv_w: Tensor,
                            conv_b: Tensor, qk_w: Tensor, v_w: Tensor, gate_w: Tensor,
                            gate_b: Tensor, norm_w: Tensor, skip: Tensor, C: Tensor, n: Tensor,
                            m: Tensor, heads: int, norm_eps: float, eps: float) -> Tensor:
    """The ``xlstm_rl::mlstm_block_step_`` operator: writes the new state into ``C, n, m,
    window`` (dense tensors) and returns ``out``."""
    for name, t in (("C", C), ("n", n), ("m", m), ("window", window)):
        if isinstance(t, Tensor) and not t.is_contiguous():
            fail(OP_STEP, f"{name} must be contiguous to be written in place")
    return _block_step_call(up, window, reset, (conv_w, conv_b, qk_w, v_w, gate_w, gate_b,
                                                norm_w, skip), (C, n, m), heads, norm_eps, eps,
                            (C, n, m, window))


def _block_step_call(up: Tensor, window: Tensor, reset: Tensor | None,
                     ordered: tuple[Tensor, ...], state: tuple[Tensor, ...], heads: int,
                     norm_eps: float, eps: float, outs: tuple[Tensor, ...]) -> Tensor:
    """Checks, lays out and calls the C step; writes the new state into ``outs`` (dense,
    shaped as ``(C, n, m, window)``) and returns ``out [B, inner]``."""
    w = dict(zip(WEIGHTS, ordered))
    d = check_block(OP_STEP, up, window, w, state, heads, sequence=False)
    reset = check_reset(OP_STEP, reset, (d["B"],))
    norm_eps, eps = check_scalar(OP_STEP, "norm_eps", norm_eps), check_scalar(OP_STEP, "eps", eps)
    dtype = up.dtype
    fn = _function(dtype)
    if fn is None:
        fail(OP_STEP, "the compiled CPU kernels are unavailable")
    w = {name: t.contiguous() for name, t in w.items()}
    C, n, m = (t.contiguous() for t in state)
    up = up if up.stride(1) == 1 else up.contiguous()
    window = window.contiguous()
    B, inner = d["B"], d["inner"]
    out = torch.empty(B, inner, dtype=dtype)
    status = fn(B, heads, d["Dh"], d["K"], d["bs"], up.data_ptr(),
                up.data_ptr() + inner * up.element_size(), up.stride(0), window.data_ptr(),
                None if reset is None else reset.data_ptr(),
                w["conv_w"].data_ptr(), w["conv_b"].data_ptr(), w["qk_w"].data_ptr(),
                w["v_w"].data_ptr(), w["gate_w"].data_ptr(), w["gate_b"].data_ptr(),
                C.data_ptr(), n.data_ptr(), m.data_ptr(), w["norm_w"].data_ptr(),
                norm_eps, w["skip"].data_ptr(), eps, MAX_EXP[dtype],
                out.data_ptr(), *(t.data_ptr() for t in (outs[3], *outs[:3])))
    if status != 0:
        raise MemoryError(f"{OP_STEP}: the compiled kernel could not allocate its scratch")
    return out
