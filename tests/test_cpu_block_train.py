"""The mLSTM block's compiled training path (``kernels/cpu/mlstm_block_train.h`` around the
sequence kernel) against the PyTorch definition of ``MLSTMBlock.forward``.

Outputs, the new state (C, n, m and the conv window) and every gradient (the block input, all
parameters, the initial state) for a loss touching the output and the whole new state: float64
to 1e-10, float32 to 1e-5 (the chunkwise kernels' tolerances), relative to the largest entry of
the reference; the initial state's n and m gradients, which nearly cancel, are measured against
the largest initial-state gradient (as ``dm0`` in ``tests/test_mlstm_chunkwise_fused.py``).
Conv kernels 4 and 1, block-diagonal and dense q/k/v maps, one and several heads, resets in the
middle, at t = 0, in a row and at the last step, carried states.
"""
from __future__ import annotations

import pytest
import torch

from xlstm_rl.cores.config import CoreConfig
from xlstm_rl.cores.mlstm_block import MLSTMBlock
from xlstm_rl.kernels import cpu as cpu_kernels
from xlstm_rl.kernels.cpu import mlstm_cell as cell_module

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
STATE_GRADS = ("dC", "dn", "dm")


@pytest.fixture(scope="module", autouse=True)
def library() -> None:
    cpu_kernels.forget()
    if cpu_kernels.load_library() is None:
        pytest.skip(f"no compiled CPU kernels here: {cpu_kernels.why_unavailable()}")


def make_block(dim: int, heads: int, conv_kernel: int, block_size: int, dtype: torch.dtype,
               seed: int = 0) -> MLSTMBlock:
    """A block with input-dependent gates and every parameter moved off its initial value."""
    torch.manual_seed(seed)
    cfg = CoreConfig(hidden_size=dim, num_heads=heads, conv_kernel=conv_kernel,
                     qkv_block_size=block_size)
    block = MLSTMBlock(dim, cfg).to(dtype)
    with torch.no_grad():
        block.gates.weight.normal_(0.0, 0.3)
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


def make_case(block: MLSTMBlock, B: int, T: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    dtype = block.skip.dtype
    x = torch.randn(B, T, block.dim, generator=g, dtype=torch.float64).to(dtype)
    state = block.initial_state(B).apply(
        lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype))
    state["m"] = state["m"].abs()
    reset = torch.zeros(B, T, dtype=torch.bool)
    for b, t in ((0, T // 3), (0, T // 3 + 1), (1, 0), (2 % B, T - 1)):
        reset[b, min(t, T - 1)] = True
    return x, state, reset


def run(block: MLSTMBlock, x, state, reset, *, compiled: bool, seed: int = 3) -> dict:
    """Values and gradients of a loss touching the output and the whole new state."""
    xs = x.clone().requires_grad_()
    st = state.apply(lambda t: t.clone().requires_grad_())
    block.zero_grad(set_to_none=True)
    if compiled:
        y, new = block(xs, st, reset)
        assert _reaches_block_train(y)
    else:
        with cpu_kernels.disabled():
            y, new = block(xs, st, reset)
    g = torch.Generator().manual_seed(seed)

    def weights(t):  # noqa: ANN001, ANN202
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)

    loss = (y * weights(y)).sum() + sum((new[k] * weights(new[k])).sum() for k in new.keys())
    loss.backward()
    out = {"y": y.detach(), "dx": xs.grad, **{k: new[k].detach() for k in new.keys()},
           **{"d" + k: st[k].grad for k in st.keys()}}
    out.update({"grad " + n: p.grad for n, p in block.named_parameters()})
    return out


def _reaches_block_train(y: torch.Tensor) -> bool:
    """True when the autograd graph of ``y`` holds the compiled block node."""
    seen, todo = set(), [y.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if "mlstm_block_train" in type(fn).__name__:
            return True
        todo.extend(f for f, _ in fn.next_functions)
    return False


def assert_match(got: dict, want: dict, tol: float) -> None:
    state_scale = max(want[k].abs().max().item() for k in STATE_GRADS)
    for name, b in want.items():
        a = got[name]
        assert a is not None and b is not None and a.shape == b.shape, name
        if not b.numel():  # the empty conv window of kernel size 1
            continue
        a, b = a.double(), b.double()
        assert torch.isfinite(a).all(), name
        scale = state_scale if name in ("dn", "dm") else b.abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= tol * scale, f"{name}: error {err:.3e} vs scale {scale:.3e} (tol {tol:.0e})"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("heads,conv_kernel,block_size,T", [
    (2, 4, 4, 23), (2, 1, 0, 23), (1, 4, 8, 17), (4, 3, 2, 40), (2, 4, 4, 1)])
def test_matches_the_pytorch_block(heads, conv_kernel, block_size, T, dtype):
    block = make_block(16, heads, conv_kernel, block_size, dtype)
    x, state, reset = make_case(block, 3, T, seed=T)
    got = run(block, x, state, reset, compiled=True)
    want = run(block, x, state, reset, compiled=False)
    assert_match(got, want, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_odd_widths_match_the_pytorch_block(dtype):
    """Width 20 with 4 heads: inner 40, head size 10, 3 * inner = 120 channels, not a whole
    number of float32 vectors (16 lanes), so the gate rows' vector sums have scalar tails, and
    the q/k/v maps take their per-channel loops (inner is not a multiple of 16)."""
    block = make_block(20, 4, 4, 4, dtype)
    x, state, reset = make_case(block, 3, 13, seed=11)
    got = run(block, x, state, reset, compiled=True)
    want = run(block, x, state, reset, compiled=False)
    assert_match(got, want, TOL[dtype])


def test_without_resets_and_with_a_zero_state():
    block = make_block(16, 2, 4, 4, torch.float64)
    x, _, _ = make_case(block, 2, 30, seed=4)
    state = block.initial_state(2).apply(lambda t: t.double())
    got = run(block, x, state, None, compiled=True)
    want = run(block, x, state, None, compiled=False)
    assert_match(got, want, TOL[torch.float64])


def test_threads_do_not_change_a_bit(monkeypatch):
    """Threads split the batch rows; only the weight gradients' summation order changes: 1
    and 3 threads (forced onto these small sizes) agree to float64 rounding."""
    monkeypatch.setattr(cell_module, "PARALLEL_MIN_ELEMENTS", 0)
    block = make_block(16, 2, 4, 4, torch.float64)
    x, state, reset = make_case(block, 5, 21, seed=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(block, x, state, reset, compiled=True)
        torch.set_num_threads(3)
        three = run(block, x, state, reset, compiled=True)
    finally:
        torch.set_num_threads(threads)
    want = run(block, x, state, reset, compiled=False)
    assert_match(three, want, TOL[torch.float64])
    for name, value in one.items():
        assert torch.allclose(value, three[name], rtol=1e-13, atol=0), name


def test_no_grad_forward_gives_the_same_values():
    block = make_block(16, 2, 4, 4, torch.float32)
    x, state, reset = make_case(block, 3, 19, seed=5)
    with torch.no_grad():
        y, new = block(x, state, reset)
    got = run(block, x, state, reset, compiled=True)
    assert torch.equal(y, got["y"])
    assert all(torch.equal(new[k], got[k]) for k in new.keys())


def test_other_dtypes_take_the_pytorch_path():
    block = make_block(16, 2, 4, 4, torch.bfloat16)
    x, state, reset = make_case(block, 2, 9, seed=6)
    y, _ = block(x.requires_grad_(), state, reset)
    assert not _reaches_block_train(y)
    assert torch.isfinite(y).all()


def test_a_nonfinite_state_reset_at_t0_does_not_leak():
    """A row that resets at t = 0 never reads its carried state or conv window: NaN there
    leaves the outputs, the new state and every gradient finite (and matching the PyTorch
    path)."""
    block = make_block(16, 2, 4, 4, torch.float64)
    x, state, reset = make_case(block, 3, 12, seed=8)
    reset[:] = False
    reset[1, 0] = True
    for key in ("C", "n", "m", "conv"):
        state[key][1] = float("nan")
    got = run(block, x, state, reset, compiled=True)
    for name, value in got.items():
        if name in ("dC", "dn", "dm", "dconv"):
            value = torch.cat([value[:1], value[2:]])  # the poisoned row's own state grads
            assert (got[name][1] == 0).all(), name
        assert torch.isfinite(value).all(), name
    want = run(block, x, state, reset, compiled=False)
    for name in ("y", "dx", "grad up.weight", "grad gates.weight", "grad conv.weight"):
        assert torch.allclose(got[name], want[name], rtol=1e-10, atol=1e-12), name
