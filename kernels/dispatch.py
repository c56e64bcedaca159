"""The functional kernel API: one signature per op, backend chosen per call.

``backend="auto"`` runs the Triton kernels for CUDA tensors when Triton imports and the pure
PyTorch reference otherwise; ``"reference"`` and ``"triton"`` force one. Triton is imported only
when a Triton kernel is actually run, so this module imports on machines without it. CPU tensors
run Triton kernels only under ``TRITON_INTERPRET=1`` (the interpreter, for tests).
"""
from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch
from torch import Tensor

from .reference import (MLSTMState, SLSTMState, mlstm_chunkwise_fused,
                        mlstm_chunkwise_reference, mlstm_step_reference, slstm_sequence_fused,
                        slstm_sequence_reference, slstm_step_reference)
from .reference import mlstm_recurrent as _mlstm_recurrent_reference
from .reference.mlstm_step_fast import mlstm_step_nograd
from .cpu import mlstm_cell_step, mlstm_sequence_cpu

BACKENDS = ("auto", "reference", "triton")
COMPILED_MAX_STEPS = 256
"""Longest sequence ``mlstm_chunkwise`` gives the compiled CPU kernel (the recurrent form):
measured fwd+bwd, heads of 64, it takes 0.6x the chunkwise PyTorch kernel's time at 16 x 16
and 2 x 256 (batch x steps) and about 1.0x at 64 x 121, but 2.3x at 2 x 1024, where the
chunkwise form's matrix products win. (The mLSTM block's compiled path always takes it: the
rest of the block gains more than that.)"""


@functools.cache
def triton_available() -> bool:
    """True when ``import triton`` succeeds."""
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - any failure to import means "not available"
        return False
    return True


def _triton_ops() -> ModuleType:
    return importlib.import_module("xlstm_rl.kernels.triton_ops")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` to ``"reference"`` or ``"triton"`` for tensors on ``device``.

    Raises:
        ValueError: unknown backend, or ``"triton"`` for a CPU tensor without TRITON_INTERPRET=1.
        RuntimeError: ``"triton"`` requested but Triton does not import.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return backend
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "reference"
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not interpret:
        raise ValueError(f"backend='triton' needs CUDA tensors (got {device.type}); set "
                         "TRITON_INTERPRET=1 to run the Triton interpreter on CPU tensors")
    if not triton_available():
        raise RuntimeError("backend='triton' requested but triton does not import; install "
                           "triton or use backend='reference'")
    return "triton"


def _check_state(state, want: dict[str, tuple[int, ...]], op: str) -> None:
    """``state`` must be None or a tuple of tensors with exactly the shapes in ``want``."""
    if state is None:
        return
    names = ", ".join(want)
    if not isinstance(state, (tuple, list)) or len(state) != len(want):
        raise ValueError(f"{op} state must be a tuple ({names}), got {type(state).__name__}"
                         + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""))
    for (name, shape), x in zip(want.items(), state):
        if not isinstance(x, Tensor) or tuple(x.shape) != shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{op} state {name} must have shape {shape}, got {got}")


def _check_mlstm(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, reset: Tensor | None,
                 step: bool, state=None) -> None:
    nd = 3 if step else 4
    where = "[B, H, Dk]" if step else "[B, H, S, Dk]"
    if q.dim() != nd or k.shape != q.shape:
        raise ValueError(f"q and k must both be {where}; got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != nd or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"v must match q except in its last dim; got v {tuple(v.shape)}, "
                         f"q {tuple(q.shape)}")
    if i.shape != q.shape[:-1] or f.shape != q.shape[:-1]:
        raise ValueError(f"i and f must be {tuple(q.shape[:-1])}; got {tuple(i.shape)} and "
                         f"{tuple(f.shape)}")
    want_reset = (q.shape[0],) if step else (q.shape[0], q.shape[2])
    if reset is not None and tuple(reset.shape) != want_reset:
        raise ValueError(f"reset must be {want_reset} (bool); got {tuple(reset.shape)}")
    if not step and q.shape[2] == 0:
        raise ValueError("the sequence is empty (S=0); pass at least one step")
    B, H, dk, dv = q.shape[0], q.shape[1], q.shape[-1], v.shape[-1]
    _check_state(state, {"C": (B, H, dk, dv), "n": (B, H, dk), "m": (B, H)}, "mLSTM")


def mlstm_chunkwise(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *,
                    state: MLSTMState | None = None, reset: Tensor | None = None,
                    chunk_size: int = 64, eps: float = 1e-6, backend: str = "auto"
                    ) -> tuple[Tensor, MLSTMState]:
    """Chunkwise-parallel mLSTM (training path). Shapes as :func:`mlstm_recurrent`.

    The reference backend runs, for CPU float32/float64 sequences of at most
    ``COMPILED_MAX_STEPS`` steps, the compiled recurrent kernel (``xlstm_rl.kernels.cpu``, one
    autograd node) where it is available; else ``mlstm_chunkwise_fused`` (one autograd node,
    hand-written exact backward), checked against the plain-autograd
    ``mlstm_chunkwise_reference``, which stays the readable definition of the chunkwise form.
    The latter evens the chunks out: as many chunks as ``chunk_size`` needs, each ``ceil(S /
    chunks)`` long (S = 81 at 64: two chunks of 41, not 64 + 17 padded to 128; the outputs are
    the same, up to rounding, for any chunking, and for the recurrent form).

    Args:
        chunk_size: at most this many steps per chunk, >= 1 (16..256 are the tuned sizes; any
            S is padded).
        backend: ``"auto" | "reference" | "triton"``.
    """
    _check_mlstm(q, k, v, i, f, reset, step=False, state=state)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if resolve_backend(backend, q.device) == "triton":
        return _triton_ops().mlstm_chunkwise(q, k, v, i, f, state=state, reset=reset,
                                             chunk_size=chunk_size, eps=eps)
    S = q.shape[2]  # >= 1 (checked above)
    if q.device.type == "cpu" and S <= COMPILED_MAX_STEPS:
        compiled = mlstm_sequence_cpu(q, k, v, i, f, state=state, reset=reset, eps=eps)
        if compiled is not None:
            return compiled
    chunks = -(-S // chunk_size)
    if torch.compiler.is_compiling():  # the fused node's hand-written backward writes into
        # views (out=), which Inductor cannot lower; the plain-autograd form it can fuse itself
        return mlstm_chunkwise_reference(q, k, v, i, f, state=state, reset=reset,
                                         chunk_size=-(-S // chunks), eps=eps)
    return mlstm_chunkwise_fused(q, k, v, i, f, state=state, reset=reset,
                                 chunk_size=-(-S // chunks), eps=eps)


def mlstm_recurrent(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *,
                    state: MLSTMState | None = None, reset: Tensor | None = None,
                    eps: float = 1e-6) -> tuple[Tensor, MLSTMState]:
    """mLSTM as a step loop (the definition; slow, for tests and tiny S).

    Args:
        q, k: ``[B, H, S, Dk]``; v: ``[B, H, S, Dv]``; i, f: ``[B, H, S]``.
        state: optional ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])``.
        reset: optional ``[B, S]`` bool.

    Returns:
        ``h [B, H, S, Dv]`` and the final state (float32 whatever the input dtype).
    """
    _check_mlstm(q, k, v, i, f, reset, step=False, state=state)
    return _mlstm_recurrent_reference(q, k, v, i, f, state=state, reset=reset, eps=eps)


def needs_grad(*tensors: Tensor | None) -> bool:
    """True when autograd is on and one of ``tensors`` requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def mlstm_step(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
               state: MLSTMState | None, *, reset: Tensor | None = None, eps: float = 1e-6,
               backend: str = "auto") -> tuple[Tensor, MLSTMState]:
    """One mLSTM step (acting path): q, k ``[B,H,Dk]``, v ``[B,H,Dv]``, i, f ``[B,H]``.

    The reference backend runs, when no input needs a gradient, the compiled CPU kernel
    (:mod:`xlstm_rl.kernels.cpu`, one call) on CPU tensors where it is available, else
    ``mlstm_step_nograd`` (fewer and in-place ops); with gradients ``mlstm_step_reference``.
    """
    _check_mlstm(q, k, v, i, f, reset, step=True, state=state)
    if resolve_backend(backend, q.device) == "triton":
        return _triton_ops().mlstm_step(q, k, v, i, f, state, reset=reset, eps=eps)
    if needs_grad(q, k, v, i, f, *(state or ())):
        return mlstm_step_reference(q, k, v, i, f, state, reset=reset, eps=eps)
    if q.device.type == "cpu":
        fused = mlstm_cell_step(q, k, v, i, f, state, reset=reset, eps=eps)
        if fused is not None:
            return fused
    return mlstm_step_nograd(q, k, v, i, f, state, reset=reset, eps=eps)


def _check_slstm(wx: Tensor, r_weight: Tensor, bias: Tensor, reset: Tensor | None,
                 step: bool, state=None) -> None:
    lead = 1 if step else 2
    if wx.dim() != lead + 3 or wx.shape[lead] != 4:
        want = "[B, 4, H, Dh]" if step else "[B, S, 4, H, Dh]"
        raise ValueError(f"wx must be {want} (gates z, i, f, o); got {tuple(wx.shape)}")
    H, dh = wx.shape[-2:]
    if tuple(r_weight.shape) != (4, H, dh, dh) or tuple(bias.shape) != (4, H, dh):
        raise ValueError(f"r_weight must be (4, {H}, {dh}, {dh}) and bias (4, {H}, {dh}); got "
                         f"{tuple(r_weight.shape)} and {tuple(bias.shape)}")
    want_reset = tuple(wx.shape[:lead])
    if reset is not None and tuple(reset.shape) != want_reset:
        raise ValueError(f"reset must be {want_reset} (bool); got {tuple(reset.shape)}")
    if not step and wx.shape[1] == 0:
        raise ValueError("the sequence is empty (S=0); pass at least one step")
    _check_state(state, {key: (wx.shape[0], H, dh) for key in "hcnm"}, "sLSTM")


def slstm_sequence(wx: Tensor, r_weight: Tensor, bias: Tensor, *,
                   state: SLSTMState | None = None, reset: Tensor | None = None,
                   backend: str = "auto") -> tuple[Tensor, SLSTMState]:
    """sLSTM over a sequence: wx ``[B, S, 4, H, Dh]`` -> h ``[B, S, H, Dh]``, final state.

    The reference backend runs the fused time loop (one autograd node, hand-written backward),
    checked against the step-by-step definition ``slstm_sequence_reference``.
    """
    _check_slstm(wx, r_weight, bias, reset, step=False, state=state)
    if resolve_backend(backend, wx.device) == "triton":
        return _triton_ops().slstm_sequence(wx, r_weight, bias, state=state, reset=reset)
    if torch.compiler.is_compiling():  # as in mlstm_chunkwise: what Inductor can lower
        return slstm_sequence_reference(wx, r_weight, bias, state=state, reset=reset)
    return slstm_sequence_fused(wx, r_weight, bias, state=state, reset=reset)


def slstm_step(wx: Tensor, r_weight: Tensor, bias: Tensor, state: SLSTMState | None, *,
               reset: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, SLSTMState]:
    """One sLSTM step: wx ``[B, 4, H, Dh]`` -> h ``[B, H, Dh]``, new ``(h, c, n, m)``."""
    _check_slstm(wx, r_weight, bias, reset, step=True, state=state)
    if resolve_backend(backend, wx.device) == "triton":
        return _triton_ops().slstm_step(wx, r_weight, bias, state, reset=reset)
    return slstm_step_reference(wx, r_weight, bias, state, reset=reset)
