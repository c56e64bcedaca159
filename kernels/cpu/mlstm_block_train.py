"""The mLSTM block's training path between its projections in compiled C, forward and backward.

``MLSTMBlock.forward`` (``xlstm_rl/cores/mlstm_block.py``) runs layer norm and the
up-projection in PyTorch, this one autograd node for the causal conv, q/k/v maps, gates, the
cell over the sequence, head norm, skip and output gate, and the down-projection in PyTorch
again: three C calls each way (``mlstm_block_train.h`` around ``mlstm_sequence.h``) instead of
about forty PyTorch ops and their autograd nodes, each of which reads and writes a ``[B, T,
inner]`` tensor. Tests compare outputs, new state and every gradient (input, parameters,
initial state) with the PyTorch definition's autograd.
"""
from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import Tensor

from . import abi
from .checks import (check_reset, check_scalar, check_tensor, fail)
from .mlstm_block import WEIGHTS, block_arguments, check_block
from .mlstm_cell import C_TYPES, threads_for, typed_function
from .mlstm_sequence import available as sequence_available
from .mlstm_sequence import kept_shapes, sequence_backward, sequence_forward
from .op_call import constant_for_compile, run_op

OP_TRAIN = "mlstm block (training)"
"""The kernels' name in error messages."""


_ARGS = {dtype: abi.structure("bt_args", scalar) for dtype, scalar in C_TYPES.items()}
"""The ctypes mirrors of ``BT_ARGS`` (mlstm_block_train.h), declared in :mod:`.abi`."""


def _function(part: str, dtype: torch.dtype):  # noqa: ANN202
    return typed_function(f"xlstm_mlstm_block_{part}", dtype)


def _call(part: str, dtype: torch.dtype, B: int, args: Any, *extra: int) -> None:
    fn = _function(part, dtype)
    threads = threads_for(B * args.T * args.H * args.Dh)
    if fn is None:
        fail(OP_TRAIN, "the compiled CPU kernels are unavailable")
    if fn(B, ctypes.byref(args), threads, *extra) != 0:
        raise MemoryError(f"the compiled mLSTM block ({part}) could not allocate its scratch")


def _grad_sizes(weights: dict[str, Tensor]) -> dict[str, int]:
    """Sizes of the weight gradients in the kernels' gradient vector (post part first; the
    q/k/v maps as their taps, see :func:`_taps`)."""
    order = ("norm_w", "skip", "conv_w", "conv_b", "taps", "gate_w", "gate_b")
    taps = weights["qk_w"].numel() + weights["v_w"].numel()
    return {name: taps if name == "taps" else weights[name].numel() for name in order}


def _maps(weights: dict[str, Tensor]) -> Tensor:
    """The q, k, v block-diagonal weights stacked: ``[3, nb, bs (in), bs (out)]``."""
    qk, v = weights["qk_w"], weights["v_w"]
    bs = v.shape[1]
    return torch.stack([qk[..., :bs], qk[..., bs:], v])


def _taps(weights: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The maps by tap (``mlstm_block_train.h``): ``taps [3, bs, inner]`` with ``taps[m, d,
    j*bs + o] = W_m[j, d, o]``, and ``taps_t`` with ``taps_t[m, o, j*bs + d] = W_m[j, d, o]``."""
    W = _maps(weights)
    three, nb, bs, _ = W.shape
    # Dense copies, never views of W (operator outputs may not alias each other).
    dense = torch.contiguous_format
    return (W.permute(0, 2, 1, 3).reshape(three, bs, nb * bs).clone(memory_format=dense),
            W.permute(0, 3, 1, 2).reshape(three, bs, nb * bs).clone(memory_format=dense))


def _untap(grad: Tensor, weights: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The taps' gradient ``[3 * bs * inner]`` as the gradients of ``qk_w`` and ``v_w``."""
    nb, bs = weights["v_w"].shape[:2]
    W = grad.view(3, bs, nb, bs).permute(0, 2, 1, 3)                 # [3, nb, bs (in), bs (out)]
    return torch.cat([W[0], W[1]], dim=-1), W[2].contiguous()


def _base_args(up: Tensor, window: Tensor, reset: Tensor | None, weights: dict[str, Tensor],
               heads: int, norm_eps: float) -> Any:
    B, T, two_inner = up.shape
    inner = two_inner // 2
    args = _ARGS[up.dtype]()
    args.T, args.H, args.Dh = T, heads, inner // heads
    args.K, args.bs = weights["conv_w"].shape[0], weights["v_w"].shape[1]
    args.up, args.window = up.data_ptr(), window.data_ptr()
    args.reset = None if reset is None else reset.data_ptr()
    for name in WEIGHTS:
        if name not in ("qk_w", "v_w"):
            setattr(args, name, weights[name].data_ptr())
    args.norm_eps = norm_eps
    return args


def _set_taps(args: Any, weights: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Builds the taps into ``args``; returns them (they must outlive the C calls)."""
    taps, taps_t = _taps(weights)
    args.taps, args.taps_t = taps.data_ptr(), taps_t.data_ptr()
    return taps, taps_t


def _cell_inputs(qkv: Tensor, gates: Tensor, heads: int
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """q, k, v ``[B, H, T, Dh]`` and i, f ``[B, H, T]`` as views of the pre part's outputs."""
    B, T, three_inner = qkv.shape
    inner = three_inner // 3
    q, k, v = (qkv[..., j * inner:(j + 1) * inner].view(B, T, heads, -1).transpose(1, 2)
               for j in range(3))
    return q, k, v, gates[..., :heads].transpose(1, 2), gates[..., heads:].transpose(1, 2)


def _checked(up: Tensor, window: Tensor, reset: Tensor | None, weights: dict[str, Tensor],
             state: tuple[Tensor, ...], heads: int, norm_eps: float
             ) -> tuple[dict[str, int], Tensor, Tensor, Tensor | None, dict[str, Tensor], float]:
    """Checks the block's inputs (:func:`~.mlstm_block.check_block`) and lays them out densely:
    sizes, ``up``, ``window``, ``reset``, the weights and ``norm_eps``."""
    d = check_block(OP_TRAIN, up, window, weights, state, heads, sequence=True)
    reset = check_reset(OP_TRAIN, reset, (d["B"], d["T"]))
    dense = {name: weights[name].contiguous() for name in WEIGHTS}
    return (d, up.contiguous(), window.contiguous(), reset, dense,
            check_scalar(OP_TRAIN, "norm_eps", norm_eps))


def block_forward(up: Tensor, window: Tensor, reset: Tensor | None, weights: dict[str, Tensor],
                  state: tuple[Tensor, ...], heads: int, norm_eps: float, eps: float,
                  keep: bool) -> tuple[tuple[Tensor, ...], dict[str, Any]]:
    """Pre part, cell, post part, after checking every input. Returns ``(out, window_out, C,
    n, m)`` and (when ``keep``) what the backward needs."""
    d, up, window, reset, weights, norm_eps = _checked(up, window, reset, weights, state, heads,
                                                       norm_eps)
    args, saved = _pre(up, window, reset, weights, heads, norm_eps)
    cell = _cell_inputs(saved["qkv"], saved["gates"], heads)
    (h, C, n, m), saved["kept"] = sequence_forward(*cell, state, reset, eps, keep)
    out = up.new_empty(d["B"], d["T"], d["inner"])
    args.h, args.out = h.data_ptr(), out.data_ptr()
    _call("fwd_post", up.dtype, d["B"], args)
    saved["h"] = h
    return (out, saved.pop("window_out"), C, n, m), saved


def _pre(up: Tensor, window: Tensor, reset: Tensor | None, weights: dict[str, Tensor],
         heads: int, norm_eps: float) -> tuple[Any, dict[str, Any]]:
    """The pre part's C call on checked, dense inputs: its argument struct (ready for the post
    part) and its outputs ``xc_pre``, ``qkv``, ``gates``, ``window_out`` and the ``taps``."""
    B, T, two_inner = up.shape
    inner = two_inner // 2
    args = _base_args(up, window, reset, weights, heads, norm_eps)
    outs: dict[str, Any] = {
        "taps": _set_taps(args, weights), "xc_pre": up.new_empty(B, T, inner),
        "qkv": up.new_empty(B, T, 3 * inner), "gates": up.new_empty(B, T, 2 * heads),
        "window_out": up.new_empty(window.shape)}
    for name in ("xc_pre", "qkv", "gates", "window_out"):
        setattr(args, name, outs[name].data_ptr())
    _call("fwd_pre", up.dtype, B, args)
    return args, outs


def block_pre(up: Tensor, window: Tensor, reset: Tensor | None, weights: dict[str, Tensor],
              heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The pre part alone after checking its inputs: ``qkv``, ``gates``, ``window_out``."""
    _, up, window, reset, weights, _ = _checked(up, window, reset, weights, (), heads, 0.0)
    _, outs = _pre(up, window, reset, weights, heads, 0.0)
    return outs["qkv"], outs["gates"], outs["window_out"]


def _gate_grads(di: Tensor, df: Tensor, qkv: Tensor, g_w: Tensor, g_b: Tensor) -> None:
    """The gate projection's weight and bias gradients, written into ``g_w [2H, 3 inner]`` and
    ``g_b [2H]``: one matrix product over every row and step (``di, df [B, H, T]``, ``qkv
    [B, T, 3 inner]``), which the C per-step loop did as 2H rank-one updates per step."""
    B, H, T = di.shape
    dgates = torch.cat([di, df], dim=1).transpose(0, 1).reshape(2 * H, B * T)
    torch.mm(dgates, qkv.view(B * T, -1), out=g_w)
    torch.sum(dgates, dim=1, out=g_b)


SAVED = ("xc_pre", "qkv", "gates", "h", "taps", "taps_t", "ck_C", "ck_n", "m_all")
"""What the forward keeps for the backward, in the operators' order."""


def _check_saved(d: dict[str, int], saved: dict[str, Tensor],
                 grads: dict[str, Tensor | None], dtype: torch.dtype) -> None:
    """The forward's kept tensors and the output gradients must have the forward's shapes."""
    B, T, H, Dh, K, bs, inner = (d[key] for key in ("B", "T", "H", "Dh", "K", "bs", "inner"))
    shapes = dict(zip(SAVED, ((B, T, inner), (B, T, 3 * inner), (B, T, 2 * H), (B, H, T, Dh),
                              (3, bs, inner), (3, bs, inner), *kept_shapes(B, H, T, Dh, Dh))))
    for name, shape in shapes.items():
        check_tensor(OP_TRAIN, name, saved[name], shape, dtype)
    want = {"dout": (B, T, inner), "dwindow_out": (B, K - 1, inner), "dC": (B, H, Dh, Dh),
            "dn": (B, H, Dh), "dm": (B, H)}
    for name, grad in grads.items():
        if grad is not None:
            check_tensor(OP_TRAIN, name, grad, want[name])


def block_backward(up: Tensor, window: Tensor, state: tuple[Tensor, ...], reset: Tensor | None,
                   weights: dict[str, Tensor], saved: dict[str, Tensor],
                   grads: dict[str, Tensor | None], heads: int, norm_eps: float, eps: float,
                   want: tuple[bool, bool]) -> tuple[Tensor | None, ...]:
    """The block's backward after checking everything it reads.

    Args:
        up, window, state, reset, weights, heads, norm_eps, eps: As given to the forward.
        saved: The forward's kept tensors by the names in :data:`SAVED`.
        grads: ``dout``, ``dwindow_out``, ``dC``, ``dn``, ``dm`` (each None for zeros).
        want: Whether the window's and the initial state's gradients are wanted.

    Returns:
        ``(dup, dwindow, dC0, dn0, dm0, *dweights)``, None where not wanted.
    """
    d, up, window, reset, weights, norm_eps = _checked(up, window, reset, weights, state, heads,
                                                       norm_eps)
    dtype, B, T, inner = up.dtype, d["B"], d["T"], d["inner"]
    _check_saved(d, saved, grads, dtype)
    saved = {name: t.contiguous() for name, t in saved.items()}
    args = _base_args(up, window, reset, weights, heads, norm_eps)
    for name in ("taps", "taps_t", "xc_pre", "qkv", "gates", "h"):
        setattr(args, name, saved[name].data_ptr())
    dout = grads["dout"]
    dout = up.new_zeros(B, T, inner) if dout is None else dout.to(dtype).contiguous()
    dup, dh, dxc = up.new_empty(up.shape), up.new_empty(B, heads, T, d["Dh"]), \
        up.new_empty(B, T, inner)
    sizes = _grad_sizes(weights)
    flat = up.new_zeros(sum(sizes.values()))
    args.dout, args.dup, args.dh, args.dxc = (t.data_ptr() for t in (dout, dup, dh, dxc))
    _call("bwd_post", dtype, B, args, flat.data_ptr())
    (dq, dk, dv, di, df), initial = sequence_backward(
        _cell_inputs(saved["qkv"], saved["gates"], heads), state, reset, eps, saved["h"],
        (saved["ck_C"], saved["ck_n"], saved["m_all"]),
        (dh, grads["dC"], grads["dn"], grads["dm"]), want[1])
    args.dq, args.dk, args.dv, args.di, args.df = (t.data_ptr() for t in (dq, dk, dv, di, df))
    dwindow_out = grads["dwindow_out"]
    if dwindow_out is not None:
        dwindow_out = dwindow_out.to(dtype).contiguous()
        args.dwindow_out = dwindow_out.data_ptr()
    dwindow = up.new_empty(window.shape) if want[0] else None
    args.dwindow = None if dwindow is None else dwindow.data_ptr()
    offset = 2 * inner * flat.element_size()  # the post part's norm_w and skip come first
    _call("bwd_pre", dtype, B, args, flat.data_ptr() + offset)
    parts = dict(zip(sizes, flat.split(list(sizes.values()))))
    _gate_grads(di, df, saved["qkv"], parts["gate_w"].view(weights["gate_w"].shape),
                parts["gate_b"])
    parts["qk_w"], parts["v_w"] = _untap(parts["taps"], weights)
    # Separate tensors, not views of one buffer: an operator's outputs may not alias.
    dweights = [parts[name].view(weights[name].shape).clone() for name in WEIGHTS]
    return (dup, dwindow, *initial, *dweights)


@constant_for_compile
def available(dtype: torch.dtype) -> bool:
    """True when the compiled block kernels can run ``dtype`` tensors. (a constant
    to ``torch.compile``, which then does not trace the library's loader)."""
    return sequence_available(dtype) and all(
        _function(part, dtype) is not None
        for part in ("fwd_pre", "fwd_post", "bwd_post", "bwd_pre"))



def _runnable(tensors: tuple[Any, ...]) -> bool:
    """True when the kernels can take these tensors: non-empty CPU tensors of one dtype they
    are built for, and a loaded library (shapes are checked by the kernels' wrappers)."""
    dtype = tensors[0].dtype
    return (dtype in C_TYPES and tensors[0].numel() > 0
            and all(isinstance(t, Tensor) and t.is_cpu and t.dtype is dtype for t in tensors)
            and available(dtype))


def mlstm_block_pre(up: Tensor, window: Tensor, reset: Tensor | None,
                    weights: dict[str, Tensor], heads: int
                    ) -> tuple[Tensor, Tensor, Tensor] | None:
    """The block's pre part alone (conv, SiLU, q/k/v maps, gates): what the cell's state needs
    (``MLSTMBlock.advance``). It has no backward.

    Args:
        up, window, reset, weights, heads: as :func:`mlstm_block_forward`.

    Returns:
        ``qkv [B, T, 3 * inner]`` (q, k, v), ``gates [B, T, 2H]`` (i, f) and the new conv
        window, or None when the kernels cannot take these tensors or a gradient is wanted.

    Raises:
        ValueError: Shapes that disagree with each other, or a bad reset (one line).
    """
    ordered, tensors = block_arguments(OP_TRAIN, up, window, reset, weights, (), heads)
    if (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
            or not _runnable(tensors)):
        return None
    return run_op(block_pre_op_impl, "mlstm_block_pre", up, window, reset, *ordered, heads)


def block_pre_op_impl(up: Tensor, window: Tensor, reset: Tensor | None, *args: Any
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """``xlstm_rl::mlstm_block_pre``: the weights in :data:`WEIGHTS` order, then ``heads``."""
    return block_pre(up, window, reset, dict(zip(WEIGHTS, args[:-1])), args[-1])


def mlstm_block_forward(up: Tensor, window: Tensor, reset: Tensor | None,
                        weights: dict[str, Tensor], state: list[Tensor], heads: int,
                        norm_eps: float, eps: float = 1e-6
                        ) -> tuple[Tensor, list[Tensor]] | None:
    """The mLSTM block over a sequence from the up-projection output to the down-projection
    input, differentiable in everything, or None when the compiled kernels cannot run it.

    Args:
        up: ``[B, T, 2 * inner]`` up-projection output (``xm`` then ``z``).
        window: ``[B, K-1, inner]`` carried conv inputs.
        reset: ``[B, T]`` bool or None; True starts the state and the conv over at that step.
        weights: ``conv_w [K, inner]``, ``conv_b [inner]``, ``qk_w [nb, bs, 2bs]``, ``v_w
            [nb, bs, bs]``, ``gate_w [2H, 3*inner]``, ``gate_b [2H]``, ``norm_w [inner]``,
            ``skip [inner]``.
        state: ``[C [B,H,Dh,Dh], n [B,H,Dh], m [B,H]]``.
        heads: ``H``; norm_eps: the head norm's epsilon; eps: the cell's normalizer epsilon.

    Returns:
        ``out [B, T, inner]`` and the new ``[C, n, m, window]``, or None (a dtype or device the
        kernels lack, mixed dtypes, an empty batch, no compiled library): the caller takes
        the PyTorch path.

    Raises:
        ValueError: Shapes that disagree with each other, or a bad reset (one line).
    """
    ordered, tensors = block_arguments(OP_TRAIN, up, window, reset, weights, state, heads)
    if len(state) != 3 or not _runnable(tensors):
        return None
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    out, window_out, C, n, m, *_ = torch.ops.xlstm_rl.mlstm_block_train(
        up, window, *state, reset, *ordered, heads, float(norm_eps), float(eps), keep)
    return out, [C, n, m, window_out]
