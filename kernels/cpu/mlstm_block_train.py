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
from torch.autograd.function import once_differentiable

from .mlstm_cell import C_TYPES, threads_for, typed_function
from .mlstm_sequence import available as sequence_available
from .mlstm_sequence import sequence_backward, sequence_forward

WEIGHTS = ("conv_w", "conv_b", "qk_w", "v_w", "gate_w", "gate_b", "norm_w", "skip")
"""The parameters the kernel reads, in the order the autograd node takes them."""


def _args_type(scalar: type) -> type:
    """The ctypes mirror of ``BT_ARGS`` (mlstm_block_train.h) for one scalar type."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fields: list[tuple[str, Any]] = [(name, i64) for name in ("T", "H", "Dh", "K", "bs")]
    fields += [(name, p) for name in ("up", "window", "reset", "conv_w", "conv_b", "taps",
                                      "taps_t", "gate_w", "gate_b", "norm_w", "skip")]
    fields += [("norm_eps", scalar)]
    fields += [(name, p) for name in (
        "xc_pre", "qkv", "gates", "window_out", "h", "out", "dout", "dwindow_out", "dh", "dxc",
        "dq", "dk", "dv", "di", "df", "dup", "dwindow")]
    return type(f"BlockArgs_{scalar.__name__}", (ctypes.Structure,), {"_fields_": fields})


_ARGS = {dtype: _args_type(scalar) for dtype, scalar in C_TYPES.items()}


def _function(part: str, dtype: torch.dtype):  # noqa: ANN202
    grads = part.startswith("bwd")
    return typed_function(f"xlstm_mlstm_block_{part}", dtype, lambda p, i64, s: (
        [i64, p, ctypes.c_int] + ([p] if grads else [])), ctypes.c_int)


def _call(part: str, dtype: torch.dtype, B: int, args: Any, *extra: int) -> None:
    fn = _function(part, dtype)
    threads = threads_for(B * args.T * args.H * args.Dh)
    if fn is None or fn(B, ctypes.byref(args), threads, *extra) != 0:
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
    return (W.permute(0, 2, 1, 3).reshape(three, bs, nb * bs).contiguous(),
            W.permute(0, 3, 1, 2).reshape(three, bs, nb * bs).contiguous())


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


def _forward(up: Tensor, window: Tensor, reset: Tensor | None, weights: dict[str, Tensor],
             state: tuple[Tensor, ...], heads: int, norm_eps: float, eps: float, keep: bool
             ) -> tuple[tuple[Tensor, ...], dict[str, Any]]:
    """Pre part, cell, post part. Returns ``(out, window_out, C, n, m)`` and (when ``keep``)
    what the backward needs."""
    B, T, _ = up.shape
    args, saved = _pre(up, window, reset, weights, heads, norm_eps)
    cell = _cell_inputs(saved["qkv"], saved["gates"], heads)
    (h, C, n, m), saved["kept"] = sequence_forward(*cell, state, reset, eps, keep)
    out = up.new_empty(B, T, saved["xc_pre"].shape[-1])
    args.h, args.out = h.data_ptr(), out.data_ptr()
    _call("fwd_post", up.dtype, B, args)
    saved["h"] = h
    return (out, saved.pop("window_out"), C, n, m), saved


def _pre(up: Tensor, window: Tensor, reset: Tensor | None, weights: dict[str, Tensor],
         heads: int, norm_eps: float) -> tuple[Any, dict[str, Any]]:
    """The pre part's C call: its argument struct (ready for the post part) and its outputs
    ``xc_pre``, ``qkv``, ``gates``, ``window_out`` and the ``taps`` it read."""
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


def _gate_grads(di: Tensor, df: Tensor, qkv: Tensor, g_w: Tensor, g_b: Tensor) -> None:
    """The gate projection's weight and bias gradients, written into ``g_w [2H, 3 inner]`` and
    ``g_b [2H]``: one matrix product over every row and step (``di, df [B, H, T]``, ``qkv
    [B, T, 3 inner]``), which the C per-step loop did as 2H rank-one updates per step."""
    B, H, T = di.shape
    dgates = torch.cat([di, df], dim=1).transpose(0, 1).reshape(2 * H, B * T)
    torch.mm(dgates, qkv.view(B * T, -1), out=g_w)
    torch.sum(dgates, dim=1, out=g_b)


class _BlockTrain(torch.autograd.Function):
    """Inputs prepared by :func:`mlstm_block_forward` (one dtype, all dense)."""

    @staticmethod
    def forward(ctx, up: Tensor, window: Tensor, C0: Tensor, n0: Tensor,  # noqa: ANN001
                m0: Tensor, reset: Tensor | None, heads: int, norm_eps: float, eps: float,
                *weights: Tensor) -> tuple[Tensor, ...]:
        named = dict(zip(WEIGHTS, weights))
        outs, saved = _forward(up, window, reset, named, (C0, n0, m0), heads, norm_eps, eps,
                               keep=True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(up, window, C0, n0, m0, reset, *weights, saved["xc_pre"],
                              saved["qkv"], saved["gates"], saved["h"], *saved["taps"],
                              *saved["kept"])
        ctx.heads, ctx.norm_eps, ctx.eps = heads, norm_eps, eps
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor | None, dwindow_out: Tensor | None,  # noqa: ANN001
                 *cell_grads: Tensor | None) -> tuple[Tensor | None, ...]:
        up, window, C0, n0, m0, reset, *rest = ctx.saved_tensors
        weights = dict(zip(WEIGHTS, rest[:len(WEIGHTS)]))
        xc_pre, qkv, gates, h, taps, taps_t, *kept = rest[len(WEIGHTS):]
        B, T, two_inner = up.shape
        inner, H, dtype = two_inner // 2, ctx.heads, up.dtype
        args = _base_args(up, window, reset, weights, H, ctx.norm_eps)
        args.taps, args.taps_t = taps.data_ptr(), taps_t.data_ptr()
        args.xc_pre, args.qkv, args.gates, args.h = (t.data_ptr() for t in (xc_pre, qkv, gates, h))
        dout = up.new_zeros(B, T, inner) if dout is None else dout.to(dtype).contiguous()
        dup, dh, dxc = up.new_empty(up.shape), up.new_empty(h.shape), up.new_empty(B, T, inner)
        sizes = _grad_sizes(weights)
        flat = up.new_zeros(sum(sizes.values()))
        args.dout, args.dup, args.dh, args.dxc = (t.data_ptr() for t in (dout, dup, dh, dxc))
        _call("bwd_post", dtype, B, args, flat.data_ptr())
        (dq, dk, dv, di, df), initial = sequence_backward(
            _cell_inputs(qkv, gates, H), (C0, n0, m0), reset, ctx.eps, h, tuple(kept),
            (dh, *cell_grads), any(ctx.needs_input_grad[2:5]))
        args.dq, args.dk, args.dv, args.di, args.df = (t.data_ptr() for t in (dq, dk, dv, di, df))
        if dwindow_out is not None:
            dwindow_out = dwindow_out.to(dtype).contiguous()
            args.dwindow_out = dwindow_out.data_ptr()
        dwindow = up.new_empty(window.shape) if ctx.needs_input_grad[1] else None
        args.dwindow = None if dwindow is None else dwindow.data_ptr()
        offset = 2 * inner * flat.element_size()  # the post part's norm_w and skip come first
        _call("bwd_pre", dtype, B, args, flat.data_ptr() + offset)
        parts = dict(zip(sizes, flat.split(list(sizes.values()))))
        _gate_grads(di, df, qkv, parts["gate_w"].view(weights["gate_w"].shape), parts["gate_b"])
        parts["qk_w"], parts["v_w"] = _untap(parts["taps"], weights)
        dweights = [parts[name].view(weights[name].shape) for name in WEIGHTS]
        return (dup, dwindow, *initial, None, None, None, None, *dweights)


def available(dtype: torch.dtype) -> bool:
    """True when the compiled block kernels can run ``dtype`` tensors."""
    return sequence_available(dtype) and all(
        _function(part, dtype) is not None
        for part in ("fwd_pre", "fwd_post", "bwd_post", "bwd_pre"))


def _runnable(tensors: tuple[Tensor, ...], weights: dict[str, Tensor]) -> bool:
    """True when the kernels can take these tensors: CPU, one dtype they are built for, dense
    weights, a loaded library."""
    dtype = tensors[0].dtype
    return (dtype in C_TYPES and all(t.is_cpu and t.dtype is dtype for t in tensors)
            and all(w.is_contiguous() for w in weights.values()) and available(dtype))


def _dense(up: Tensor, window: Tensor, reset: Tensor | None
           ) -> tuple[Tensor, Tensor, Tensor | None]:
    return (up.contiguous(), window.contiguous(),
            None if reset is None else reset.to(torch.bool).contiguous())


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
    """
    tensors = (up, window, *weights.values())
    if (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
            or not _runnable(tensors, weights)):
        return None
    up, window, reset = _dense(up, window, reset)
    _, outs = _pre(up, window, reset, weights, heads, 0.0)
    return outs["qkv"], outs["gates"], outs["window_out"]


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
            ``skip [inner]`` (dense).
        state: ``[C [B,H,Dh,Dh], n [B,H,Dh], m [B,H]]``.
        heads: ``H``; norm_eps: the head norm's epsilon; eps: the cell's normalizer epsilon.

    Returns:
        ``out [B, T, inner]`` and the new ``[C, n, m, window]``, or None (a dtype or device the
        kernels lack, mixed dtypes, non-dense weights, no compiled library): the caller takes
        the PyTorch path.
    """
    tensors = (up, window, *state, *weights.values())
    if not _runnable(tensors, weights):
        return None
    up, window, reset = _dense(up, window, reset)
    C0, n0, m0 = (t.contiguous() for t in state)
    ordered = [weights[name] for name in WEIGHTS]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        out, window_out, C, n, m = _BlockTrain.apply(up, window, C0, n0, m0, reset, heads,
                                                     norm_eps, eps, *ordered)
    else:
        (out, window_out, C, n, m), _ = _forward(up, window, reset, weights, (C0, n0, m0),
                                                 heads, norm_eps, eps, keep=False)
    return out, [C, n, m, window_out]
