"""The functional kernel API of ``xlstm_rl.kernels``: argument checks, backends, dtypes.

Contract (docs/architecture.md, "Functional kernel API"): bad shapes and bad backends are
``ValueError``s with a one-line message naming the problem; ``backend="auto"`` on CPU tensors
runs the reference; ``"triton"`` on CPU tensors needs ``TRITON_INTERPRET=1``; states are
float32 for low-precision inputs while ``h`` keeps the input dtype; an empty sequence is an error.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from xlstm_rl.kernels import (mlstm_chunkwise, mlstm_recurrent, mlstm_step, resolve_backend,
                              slstm_sequence, slstm_step)

dispatch = importlib.import_module("xlstm_rl.kernels.dispatch")

B, H, S, DK, DV, DH = 2, 3, 5, 4, 6, 3


def mlstm_args(b=B, h=H, s=S, dk=DK, dv=DV, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"q": torch.randn(b, h, s, dk, generator=g).to(dtype),
            "k": torch.randn(b, h, s, dk, generator=g).to(dtype),
            "v": torch.randn(b, h, s, dv, generator=g).to(dtype),
            "i": torch.randn(b, h, s, generator=g).to(dtype),
            "f": torch.randn(b, h, s, generator=g).to(dtype)}


def mlstm_step_args(dtype=torch.float32, seed=0):
    return {name: x[:, :, 0] for name, x in mlstm_args(dtype=dtype, seed=seed).items()}


def slstm_args(b=B, s=S, h=H, dh=DH, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"wx": torch.randn(b, s, 4, h, dh, generator=g).to(dtype),
            "r_weight": (0.3 * torch.randn(4, h, dh, dh, generator=g)).to(dtype),
            "bias": torch.randn(4, h, dh, generator=g).to(dtype)}


def call(op, args, **kw):
    """Run one public op on a dict of its tensor arguments."""
    if op == "mlstm_chunkwise":
        return mlstm_chunkwise(*(args[n] for n in "qkvif"), **kw)
    if op == "mlstm_recurrent":
        return mlstm_recurrent(*(args[n] for n in "qkvif"), **kw)
    if op == "mlstm_step":
        return mlstm_step(*(args[n] for n in "qkvif"), kw.pop("state", None), **kw)
    if op == "slstm_sequence":
        return slstm_sequence(args["wx"], args["r_weight"], args["bias"], **kw)
    if op == "slstm_step":
        return slstm_step(args["wx"], args["r_weight"], args["bias"], kw.pop("state", None), **kw)
    raise AssertionError(op)


def default_args(op, dtype=torch.float32):
    if op == "mlstm_step":
        return mlstm_step_args(dtype)
    if op.startswith("mlstm"):
        return mlstm_args(dtype=dtype)
    args = slstm_args(dtype=dtype)
    if op == "slstm_step":
        args["wx"] = args["wx"][:, 0]
    return args


OPS = ("mlstm_chunkwise", "mlstm_recurrent", "mlstm_step", "slstm_sequence", "slstm_step")
BACKEND_OPS = ("mlstm_chunkwise", "mlstm_step", "slstm_sequence", "slstm_step")


def assert_one_line_value_error(excinfo, *words):
    msg = str(excinfo.value)
    assert excinfo.type is ValueError
    assert msg and "\n" not in msg, f"message must be one line: {msg!r}"
    for word in words:
        assert word in msg, f"message {msg!r} does not name {word!r}"


# --------------------------------------------------------------------------------- bad shapes

def _with(args, **changes):
    out = dict(args)
    out.update(changes)
    return out


_M = mlstm_args()
_MS = mlstm_step_args()
_S = slstm_args()
_SS = _with(_S, wx=_S["wx"][:, 0])

# (op, args, extra kwargs, words the message must contain)
BAD_SHAPES = {
    "q-3d": ("mlstm_chunkwise", _with(_M, q=_M["q"][0], k=_M["k"][0]), {}, ["q", "k"]),
    "k-dk": ("mlstm_chunkwise", _with(_M, k=_M["k"][..., :-1]), {}, ["q", "k"]),
    "k-batch": ("mlstm_recurrent", _with(_M, k=_M["k"][:1]), {}, ["q", "k"]),
    "v-seq": ("mlstm_chunkwise", _with(_M, v=_M["v"][:, :, :-1]), {}, ["v"]),
    "v-batch": ("mlstm_recurrent", _with(_M, v=_M["v"][:1]), {}, ["v"]),
    "v-3d": ("mlstm_chunkwise", _with(_M, v=_M["v"][0]), {}, ["v"]),
    "i-missing-S": ("mlstm_chunkwise", _with(_M, i=_M["i"][:, :, 0]), {}, ["i"]),
    "f-long": ("mlstm_recurrent", _with(_M, f=torch.zeros(B, H, S + 1)), {}, ["f"]),
    "i-trailing-1": ("mlstm_chunkwise", _with(_M, i=_M["i"][..., None]), {}, ["i"]),
    "reset-1d": ("mlstm_chunkwise", _M, {"reset": torch.zeros(B, dtype=torch.bool)}, ["reset"]),
    "reset-SB": ("mlstm_recurrent", _M, {"reset": torch.zeros(S, B, dtype=torch.bool)},
                 ["reset"]),
    "reset-long": ("mlstm_chunkwise", _M, {"reset": torch.zeros(B, S + 1, dtype=torch.bool)},
                   ["reset"]),
    "step-q-4d": ("mlstm_step", _M, {}, ["q", "k"]),
    "step-v": ("mlstm_step", _with(_MS, v=_MS["v"][:1]), {}, ["v"]),
    "step-i": ("mlstm_step", _with(_MS, i=_MS["i"][:, :1]), {}, ["i"]),
    "step-reset": ("mlstm_step", _MS, {"reset": torch.zeros(B, 1, dtype=torch.bool)}, ["reset"]),
    "wx-4d": ("slstm_sequence", _SS, {}, ["wx"]),
    "wx-gates": ("slstm_sequence", _with(_S, wx=_S["wx"][:, :, :3]), {}, ["wx"]),
    "r-weight": ("slstm_sequence", _with(_S, r_weight=_S["r_weight"][:, :, :, :-1]), {},
                 ["r_weight"]),
    "bias": ("slstm_sequence", _with(_S, bias=_S["bias"][:3]), {}, ["bias"]),
    "slstm-reset": ("slstm_sequence", _S, {"reset": torch.zeros(B, S + 2, dtype=torch.bool)},
                    ["reset"]),
    "step-wx-5d": ("slstm_step", _S, {}, ["wx"]),
    "step-r-heads": ("slstm_step", _with(_SS, r_weight=torch.zeros(4, H + 1, DH, DH)), {},
                     ["r_weight"]),
    "step-slstm-reset": ("slstm_step", _SS, {"reset": torch.zeros(B, S, dtype=torch.bool)},
                         ["reset"]),
}


@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_bad_input_shapes_are_one_line_value_errors(case):
    op, args, kw, words = BAD_SHAPES[case]
    with pytest.raises(ValueError) as excinfo:
        call(op, args, backend="reference", **kw) if op != "mlstm_recurrent" else \
            call(op, args, **kw)
    assert_one_line_value_error(excinfo, *words)


def _bad_states():
    C, n, m = torch.zeros(B, H, DK, DV), torch.zeros(B, H, DK), torch.zeros(B, H)
    h = torch.zeros(B, H, DH)
    mlstm_bad = {"batch-1": (C[:1], n[:1], m[:1]), "C-transposed": (C.transpose(-1, -2), n, m),
                 "two-tensors": (C, n)}
    slstm_bad = {"batch-1": (h[:1],) * 4, "head-dim": (torch.zeros(B, H, DH + 1),) * 4,
                 "three-tensors": (h,) * 3}
    params = []
    for op in OPS:
        for name, state in (mlstm_bad if op.startswith("mlstm") else slstm_bad).items():
            params.append(pytest.param(op, state, id=f"{op}-{name}"))
    return params


@pytest.mark.parametrize("op,state", _bad_states())
def test_bad_state_shapes_are_one_line_value_errors(op, state):
    kw = {} if op == "mlstm_recurrent" else {"backend": "reference"}
    with pytest.raises(ValueError) as excinfo:
        call(op, default_args(op), state=state, **kw)
    assert_one_line_value_error(excinfo, "state")


@pytest.mark.parametrize("op", ["mlstm_chunkwise", "mlstm_recurrent", "slstm_sequence"])
def test_empty_sequence_is_a_clear_error(op):
    if op.startswith("mlstm"):
        args = mlstm_args(s=0)
    else:
        args = slstm_args(s=0)
    kw = {} if op == "mlstm_recurrent" else {"backend": "reference"}
    with pytest.raises(ValueError) as excinfo:
        call(op, args, **kw)
    assert_one_line_value_error(excinfo, "S=0")


@pytest.mark.parametrize("chunk_size", [0, -16, 2.0, "64", None])
def test_bad_chunk_size_is_a_value_error(chunk_size):
    with pytest.raises(ValueError) as excinfo:
        call("mlstm_chunkwise", mlstm_args(), chunk_size=chunk_size, backend="reference")
    assert_one_line_value_error(excinfo, "chunk_size")


@pytest.mark.parametrize("chunk_size", [1, 2, 3, S, S + 1, 1000])
def test_any_positive_chunk_size_runs(chunk_size):
    args = mlstm_args()
    h, state = call("mlstm_chunkwise", args, chunk_size=chunk_size, backend="reference")
    h_ref, state_ref = call("mlstm_recurrent", args)
    assert h.shape == (B, H, S, DV)
    assert ((h - h_ref).abs().max() / h_ref.abs().max()).item() <= 1e-5
    for a, b in zip(state, state_ref):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-5


# ------------------------------------------------------------------------------------ backends

@pytest.mark.parametrize("backend", ["cuda", "Triton", "torch", "", None])
@pytest.mark.parametrize("op", BACKEND_OPS)
def test_unknown_backend_is_a_value_error(op, backend):
    with pytest.raises(ValueError) as excinfo:
        call(op, default_args(op), backend=backend)
    assert_one_line_value_error(excinfo, "backend")


def test_resolve_backend():
    cpu = torch.device("cpu")
    assert resolve_backend("reference", cpu) == "reference"
    assert resolve_backend("auto", cpu) == "reference"
    with pytest.raises(ValueError) as excinfo:
        resolve_backend("fast", cpu)
    assert_one_line_value_error(excinfo, "fast", "backend")


@pytest.mark.parametrize("interpret", [None, "0"], ids=["unset", "0"])
@pytest.mark.parametrize("op", BACKEND_OPS)
def test_triton_on_cpu_without_interpreter_is_a_value_error(op, interpret, monkeypatch):
    if interpret is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
    monkeypatch.setattr(dispatch, "_triton_ops", _no_triton)
    with pytest.raises(ValueError) as excinfo:
        call(op, default_args(op), backend="triton")
    assert_one_line_value_error(excinfo, "TRITON_INTERPRET")
    with pytest.raises(ValueError):
        resolve_backend("triton", torch.device("cpu"))


def test_triton_requested_without_triton_is_a_runtime_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    monkeypatch.setattr(dispatch, "_triton_ops", _no_triton)
    with pytest.raises(RuntimeError, match="triton"):
        call("mlstm_chunkwise", mlstm_args(), backend="triton")


def _no_triton():
    raise AssertionError("the Triton path must not be taken here")


@pytest.mark.parametrize("interpret", [None, "1"], ids=["unset", "interpret"])
@pytest.mark.parametrize("op", BACKEND_OPS)
def test_auto_on_cpu_runs_the_reference(op, interpret, monkeypatch):
    if interpret is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
    monkeypatch.setattr(dispatch, "_triton_ops", _no_triton)
    args = default_args(op)
    h_auto, state_auto = call(op, args, backend="auto")
    h_ref, state_ref = call(op, args, backend="reference")
    assert torch.equal(h_auto, h_ref)
    assert all(torch.equal(a, b) for a, b in zip(state_auto, state_ref))
    h_default, _ = call(op, args)        # "auto" is the default
    assert torch.equal(h_default, h_ref)


# -------------------------------------------------------------------------------------- dtypes

def _expected_shapes(op):
    if op == "mlstm_step":
        return (B, H, DV), [(B, H, DK, DV), (B, H, DK), (B, H)]
    if op.startswith("mlstm"):
        return (B, H, S, DV), [(B, H, DK, DV), (B, H, DK), (B, H)]
    if op == "slstm_step":
        return (B, H, DH), [(B, H, DH)] * 4
    return (B, S, H, DH), [(B, H, DH)] * 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=["bf16", "f16", "f32"])
@pytest.mark.parametrize("op", OPS)
def test_low_precision_inputs_keep_float32_states(op, dtype):
    """h keeps the input dtype, the state is float32, and the math runs in float32: the result
    is the float32 result on the same (rounded) inputs, up to the final rounding of h."""
    args = default_args(op, dtype)
    kw = {} if op == "mlstm_recurrent" else {"backend": "reference"}
    h, state = call(op, args, **kw)
    h_shape, state_shapes = _expected_shapes(op)
    assert h.dtype == dtype and tuple(h.shape) == h_shape
    assert [s.dtype for s in state] == [torch.float32] * len(state)
    assert [tuple(s.shape) for s in state] == state_shapes
    # the state carried into a next call stays float32 too
    _, state2 = call(op, args, state=state, **kw)
    assert [s.dtype for s in state2] == [torch.float32] * len(state)

    h32, state32 = call(op, {n: x.float() for n, x in args.items()}, **kw)
    half_ulp = torch.finfo(dtype).eps / 2
    assert (h.float() - h32).abs().max() <= half_ulp * h32.abs().max()
    for a, b in zip(state, state32):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-6


@pytest.mark.parametrize("op", OPS)
def test_float64_inputs_compute_in_float64(op):
    """float64 (used by the golden and gradcheck tests) keeps float64 states."""
    args = default_args(op, torch.float64)
    kw = {} if op == "mlstm_recurrent" else {"backend": "reference"}
    h, state = call(op, args, **kw)
    assert h.dtype == torch.float64
    assert all(s.dtype == torch.float64 for s in state)
