"""The compiled CPU kernels as PyTorch operators (namespace ``xlstm_rl``).

Each C entry point is an operator with a schema, a fake (shape-only) implementation and, for
the training kernels, its autograd formula, so ``torch.compile`` traces a network holding an
mLSTM core into one graph (each kernel one node) and ``torch.library.opcheck`` can test them.
The real implementations are the wrappers' ``*_impl`` functions, which check every shape,
dtype and device before C is called: calling an operator directly is as safe as calling the
wrapper. Registered on import of :mod:`xlstm_rl.kernels.cpu`.

Operators (``B`` rows, ``H`` heads, ``S``/``T`` steps; shapes in the wrappers' docstrings):

- ``mlstm_cell_step``: one cell step, no gradient (:func:`.mlstm_cell.mlstm_cell_step`).
- ``mlstm_block_step`` / ``mlstm_block_step_``: one block step, fresh or written into the
  state (:func:`.mlstm_block.mlstm_block_step`), no gradient.
- ``mlstm_block_pre``: the block's pre part over a sequence, no gradient.
- ``mlstm_sequence`` (+ ``mlstm_sequence_backward``): the cell over a sequence.
- ``mlstm_block_train`` (+ ``mlstm_block_train_backward``): the block over a sequence.
"""
from typing import Any

import torch
from torch import Tensor
from torch.library import custom_op, register_autograd

from .mlstm_block import WEIGHTS, block_step_impl, block_step_inplace_impl
from .mlstm_block_train import SAVED, block_backward, block_forward, block_pre_op_impl
from .mlstm_cell import cell_step_impl
from .mlstm_sequence import kept_shapes, sequence_backward, sequence_forward

_Seven = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_Fourteen = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                  Tensor, Tensor, Tensor, Tensor]
"""Fixed-length outputs: the autograd formula gets one gradient per output."""


def _one_device(op: str, *values: Any) -> None:
    """The fake kernels run for meta tensors too: inputs on several devices (a meta tensor
    among CPU ones sends the call here, not to C) are refused as the real kernels refuse
    them."""
    flat = [t for v in values for t in (v if isinstance(v, (list, tuple)) else (v,))]
    devices = {t.device for t in flat if isinstance(t, Tensor)}
    if len(devices) > 1:
        raise ValueError(f"xlstm_rl::{op}: inputs on several devices "
                         f"({', '.join(sorted(map(str, devices)))}); pass CPU tensors")


def _empty_like_none(t: Tensor | None, like: Tensor) -> Tensor:
    """``t``, or an empty tensor standing for an output not asked for (an operator cannot
    return None)."""
    return like.new_empty(0) if t is None else t


# ----------------------------------------------------------------------------- acting


@custom_op("xlstm_rl::mlstm_cell_step", mutates_args=())
def mlstm_cell_step_op(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, C: Tensor,
                       n: Tensor, m: Tensor, reset: Tensor | None, eps: float
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return cell_step_impl(q, k, v, i, f, C, n, m, reset, eps)


@mlstm_cell_step_op.register_fake
def _(q, k, v, i, f, C, n, m, reset, eps):  # noqa: ANN001, ANN202
    _one_device(mlstm_cell_step_op._name, *locals().values())
    return (C.new_empty(*q.shape[:2], v.shape[-1]), C.new_empty(C.shape), n.new_empty(n.shape),
            m.new_empty(m.shape))


@custom_op("xlstm_rl::mlstm_block_step", mutates_args=())
def mlstm_block_step_op(up: Tensor, window: Tensor, reset: Tensor | None, conv_w: Tensor,
                        conv_b: Tensor, qk_w: Tensor, v_w: Tensor, gate_w: Tensor,
                        gate_b: Tensor, norm_w: Tensor, skip: Tensor, C: Tensor, n: Tensor,
                        m: Tensor, heads: int, norm_eps: float, eps: float
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return block_step_impl(up, window, reset, conv_w, conv_b, qk_w, v_w,  # type: ignore[return-value]
                           gate_w, gate_b,
                           norm_w, skip, C, n, m, heads, norm_eps, eps)


@mlstm_block_step_op.register_fake
def _(up, window, reset, *args):  # noqa: ANN001, ANN202
    _one_device(mlstm_block_step_op._name, *locals().values())
    C, n, m = args[8:11]
    return (up.new_empty(up.shape[0], up.shape[1] // 2), C.new_empty(C.shape),
            n.new_empty(n.shape), m.new_empty(m.shape), window.new_empty(window.shape))


@custom_op("xlstm_rl::mlstm_block_step_", mutates_args=("C", "n", "m", "window"))
def mlstm_block_step_inplace_op(up: Tensor, window: Tensor, reset: Tensor | None,
                                conv_w: Tensor, conv_b: Tensor, qk_w: Tensor, v_w: Tensor,
                                gate_w: Tensor, gate_b: Tensor, norm_w: Tensor, skip: Tensor,
                                C: Tensor, n: Tensor, m: Tensor, heads: int, norm_eps: float,
                                eps: float) -> Tensor:
    return block_step_inplace_impl(up, window, reset, conv_w, conv_b, qk_w, v_w, gate_w,
                                   gate_b, norm_w, skip, C, n, m, heads, norm_eps, eps)


@mlstm_block_step_inplace_op.register_fake
def _(up, *args):  # noqa: ANN001, ANN202
    _one_device(mlstm_block_step_inplace_op._name, *locals().values())
    return up.new_empty(up.shape[0], up.shape[1] // 2)


@custom_op("xlstm_rl::mlstm_block_pre", mutates_args=())
def mlstm_block_pre_op(up: Tensor, window: Tensor, reset: Tensor | None, conv_w: Tensor,
                       conv_b: Tensor, qk_w: Tensor, v_w: Tensor, gate_w: Tensor,
                       gate_b: Tensor, norm_w: Tensor, skip: Tensor, heads: int
                       ) -> tuple[Tensor, Tensor, Tensor]:
    return block_pre_op_impl(up, window, reset, conv_w, conv_b, qk_w, v_w, gate_w, gate_b,
                             norm_w, skip, heads)


@mlstm_block_pre_op.register_fake
def _(up, window, reset, *args):  # noqa: ANN001, ANN202
    _one_device(mlstm_block_pre_op._name, *locals().values())
    B, T, two_inner = up.shape
    heads = args[-1]
    return (up.new_empty(B, T, 3 * (two_inner // 2)), up.new_empty(B, T, 2 * heads),
            window.new_empty(window.shape))


# ----------------------------------------------------------------------------- cell sequence


@custom_op("xlstm_rl::mlstm_sequence", mutates_args=())
def mlstm_sequence_op(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                      C0: Tensor | None, n0: Tensor | None, m0: Tensor | None,
                      reset: Tensor | None, eps: float, keep: bool) -> _Seven:
    """``(h, C, n, m, ck_C, ck_n, m_all)`` (the last three empty unless ``keep``)."""
    outs, kept = sequence_forward(q, k, v, i, f, (C0, n0, m0), reset, eps, keep)
    return (*outs, *(kept or tuple(q.new_empty(0) for _ in range(3))))  # type: ignore[return-value]


@mlstm_sequence_op.register_fake
def _(q, k, v, i, f, C0, n0, m0, reset, eps, keep):  # noqa: ANN001, ANN202
    _one_device(mlstm_sequence_op._name, *locals().values())
    B, H, S, dk = q.shape
    dv = v.shape[-1]
    kept = kept_shapes(B, H, S, dk, dv) if keep else ((0,),) * 3
    return (q.new_empty(B, H, S, dv), q.new_empty(B, H, dk, dv), q.new_empty(B, H, dk),
            q.new_empty(B, H), *(q.new_empty(shape) for shape in kept))


@custom_op("xlstm_rl::mlstm_sequence_backward", mutates_args=())
def mlstm_sequence_backward_op(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
                               C0: Tensor | None, n0: Tensor | None, m0: Tensor | None,
                               reset: Tensor | None, eps: float, h: Tensor, ck_C: Tensor,
                               ck_n: Tensor, m_all: Tensor, dh: Tensor | None,
                               dC: Tensor | None, dn: Tensor | None, dm: Tensor | None,
                               state_grads: bool) -> list[Tensor]:
    """``[dq, dk, dv, di, df, dC0, dn0, dm0]`` (the last three empty unless
    ``state_grads``)."""
    state = None if C0 is None else (C0, n0, m0)
    grads, initial = sequence_backward((q, k, v, i, f), state, reset, eps,  # type: ignore[arg-type]
                                       h, (ck_C, ck_n, m_all), (dh, dC, dn, dm), state_grads)
    return [*grads, *(_empty_like_none(t, q) for t in initial)]


@mlstm_sequence_backward_op.register_fake
def _(q, k, v, i, f, C0, n0, m0, reset, eps, h, ck_C, ck_n, m_all, dh, dC, dn, dm,  # noqa: ANN001
      state_grads):  # noqa: ANN001, ANN202
    _one_device(mlstm_sequence_backward_op._name, *locals().values())
    initial = [t.new_empty(t.shape) if state_grads and t is not None else q.new_empty(0)
               for t in (C0, n0, m0)]
    return [q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            i.new_empty(i.shape), f.new_empty(f.shape), *initial]


def _sequence_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    q, k, v, i, f, C0, n0, m0, reset, eps, keep = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, reset, output[0], *output[4:])
    ctx.eps, ctx.keep = eps, keep


def _sequence_backward(ctx: Any, dh: Tensor | None, dC: Tensor | None, dn: Tensor | None,
                       dm: Tensor | None, *_: Tensor | None) -> tuple[Tensor | None, ...]:
    if not ctx.keep:
        raise RuntimeError("xlstm_rl::mlstm_sequence was called with keep=False, so it kept "
                           "nothing to differentiate; call it with keep=True")
    q, k, v, i, f, C0, n0, m0, reset, h, ck_C, ck_n, m_all = ctx.saved_tensors
    state_grads = C0 is not None and any(ctx.needs_input_grad[5:8])
    grads = torch.ops.xlstm_rl.mlstm_sequence_backward(
        q, k, v, i, f, C0, n0, m0, reset, ctx.eps, h, ck_C, ck_n, m_all, dh, dC, dn, dm,
        state_grads)
    wanted = _wanted(grads, ctx.needs_input_grad[:8], (q, k, v, i, f, C0, n0, m0))
    return (*wanted, None, None, None)


def _wanted(grads: list[Tensor], needs: tuple[bool, ...], inputs: tuple[Tensor | None, ...]
            ) -> list[Tensor | None]:
    """Each gradient where its input wants one (None for absent inputs)."""
    return [g if need and t is not None else None for g, need, t in zip(grads, needs, inputs)]


register_autograd("xlstm_rl::mlstm_sequence", _sequence_backward, setup_context=_sequence_setup)


# ----------------------------------------------------------------------------- block training


@custom_op("xlstm_rl::mlstm_block_train", mutates_args=())
def mlstm_block_train_op(up: Tensor, window: Tensor, C0: Tensor, n0: Tensor, m0: Tensor,
                         reset: Tensor | None, conv_w: Tensor, conv_b: Tensor, qk_w: Tensor,
                         v_w: Tensor, gate_w: Tensor, gate_b: Tensor, norm_w: Tensor,
                         skip: Tensor, heads: int, norm_eps: float, eps: float, keep: bool
                         ) -> _Fourteen:
    """``(out, window_out, C, n, m, *SAVED)`` (the kept cell states empty unless ``keep``)."""
    weights = dict(zip(WEIGHTS, (conv_w, conv_b, qk_w, v_w, gate_w, gate_b, norm_w, skip)))
    outs, saved = block_forward(up, window, reset, weights, (C0, n0, m0), heads, norm_eps, eps,
                                keep)
    kept = saved["kept"] or tuple(up.new_empty(0) for _ in range(3))
    return (*outs, saved["xc_pre"], saved["qkv"], saved["gates"],  # type: ignore[return-value]
            saved["h"], *saved["taps"], *kept)


@mlstm_block_train_op.register_fake
def _(up, window, C0, n0, m0, reset, conv_w, conv_b, qk_w, v_w, *rest):  # noqa: ANN001, ANN202
    _one_device(mlstm_block_train_op._name, *locals().values())
    heads, keep = rest[4], rest[7]
    B, T, two_inner = up.shape
    inner, bs = two_inner // 2, v_w.shape[1]
    Dh = inner // heads
    kept = kept_shapes(B, heads, T, Dh, Dh) if keep else ((0,),) * 3
    shapes = [(B, T, inner), tuple(window.shape), tuple(C0.shape), tuple(n0.shape),
              tuple(m0.shape), (B, T, inner), (B, T, 3 * inner), (B, T, 2 * heads),
              (B, heads, T, Dh), (3, bs, inner), (3, bs, inner), *kept]
    return tuple(up.new_empty(shape) for shape in shapes)


@custom_op("xlstm_rl::mlstm_block_train_backward", mutates_args=())
def mlstm_block_train_backward_op(
        up: Tensor, window: Tensor, C0: Tensor, n0: Tensor, m0: Tensor, reset: Tensor | None,
        weights: list[Tensor], saved: list[Tensor], grads: list[Tensor | None], heads: int,
        norm_eps: float, eps: float, want_window: bool, state_grads: bool) -> list[Tensor]:
    """``[dup, dwindow, dC0, dn0, dm0, *dweights]`` (unwanted ones empty). ``weights`` in
    :data:`WEIGHTS` order, ``saved`` in :data:`SAVED` order, ``grads``: ``dout, dwindow_out,
    dC, dn, dm``."""
    named_grads = dict(zip(("dout", "dwindow_out", "dC", "dn", "dm"), grads))
    out = block_backward(up, window, (C0, n0, m0), reset, dict(zip(WEIGHTS, weights)),
                         dict(zip(SAVED, saved)), named_grads, heads, norm_eps, eps,
                         (want_window, state_grads))
    return [_empty_like_none(t, up) for t in out]


@mlstm_block_train_backward_op.register_fake
def _(up, window, C0, n0, m0, reset, weights, saved, grads, heads, norm_eps, eps,  # noqa: ANN001
      want_window, state_grads):  # noqa: ANN001, ANN202
    _one_device(mlstm_block_train_backward_op._name, *locals().values())
    optional = [window if want_window else None, *((C0, n0, m0) if state_grads else (None,) * 3)]
    return [up.new_empty(up.shape), *(up.new_empty(0) if t is None else t.new_empty(t.shape)
                                      for t in optional),
            *(w.new_empty(w.shape) for w in weights)]


def _block_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    up, window, C0, n0, m0, reset, *rest = inputs
    weights, (heads, norm_eps, eps, keep) = rest[:len(WEIGHTS)], rest[len(WEIGHTS):]
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(up, window, C0, n0, m0, reset, *weights, *output[5:])
    ctx.heads, ctx.norm_eps, ctx.eps, ctx.keep = heads, norm_eps, eps, keep


def _block_backward(ctx: Any, dout: Tensor | None, dwindow_out: Tensor | None,
                    dC: Tensor | None, dn: Tensor | None, dm: Tensor | None,
                    *_: Tensor | None) -> tuple[Tensor | None, ...]:
    if not ctx.keep:
        raise RuntimeError("xlstm_rl::mlstm_block_train was called with keep=False, so it "
                           "kept nothing to differentiate; call it with keep=True")
    up, window, C0, n0, m0, reset, *rest = ctx.saved_tensors
    weights, saved = rest[:len(WEIGHTS)], rest[len(WEIGHTS):]
    needs = ctx.needs_input_grad
    grads = torch.ops.xlstm_rl.mlstm_block_train_backward(
        up, window, C0, n0, m0, reset, weights, saved, [dout, dwindow_out, dC, dn, dm],
        ctx.heads, ctx.norm_eps, ctx.eps, needs[1], any(needs[2:5]))
    dup, dwindow, dC0, dn0, dm0, *dweights = grads
    firsts = _wanted([dup, dwindow, dC0, dn0, dm0], needs[:5], (up, window, C0, n0, m0))
    return (*firsts, None, *_wanted(dweights, needs[6:6 + len(WEIGHTS)], tuple(weights)),
            None, None, None, None)


register_autograd("xlstm_rl::mlstm_block_train", _block_backward, setup_context=_block_setup)
