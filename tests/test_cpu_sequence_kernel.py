"""The compiled mLSTM sequence kernel (``kernels/cpu/mlstm_sequence.h``) against the definition.

``mlstm_sequence_cpu`` must give the outputs, final states and every gradient (q, k, v, i, f and
the initial state C0, n0, m0) of the autograd of ``mlstm_recurrent`` (the step loop), with a
loss that touches ``h`` and the whole final state: float64 to 1e-10, float32 to 1e-5 (the
chunkwise kernels' tolerances, ``tests/test_mlstm_chunkwise_fused.py``, whose helpers and error
measure this reuses). Sequences shorter than, equal to and longer than the 16-step segments
the backward rebuilds, resets in the middle of segments, at their edges, at t = 0 and in a row,
carried states, head sizes below, at and off the 64-byte vector width.
"""
from __future__ import annotations

import functools

import pytest
import torch

from test_mlstm_chunkwise_fused import (  # tests/ is on sys.path under pytest
    F32_TOL, F64_TOL, assert_match, make_inputs, make_state, resets, run)

from xlstm_rl.kernels import cpu as cpu_kernels
from xlstm_rl.kernels import mlstm_chunkwise, mlstm_recurrent
from xlstm_rl.kernels.cpu import mlstm_cell as cell_module
from xlstm_rl.kernels.cpu import mlstm_sequence_cpu


def compiled(q, k, v, i, f, *, state=None, reset=None, chunk_size=None):  # noqa: ANN001, ANN201
    out = mlstm_sequence_cpu(q, k, v, i, f, state=state, reset=reset)
    assert out is not None, cpu_kernels.why_unavailable()
    return out


def definition(q, k, v, i, f, *, state=None, reset=None, chunk_size=None):  # noqa: ANN001, ANN201
    return mlstm_recurrent(q, k, v, i, f, state=state, reset=reset)


@pytest.fixture(scope="module", autouse=True)
def library() -> None:
    cpu_kernels.forget()
    if cpu_kernels.load_library() is None:
        pytest.skip(f"no compiled CPU kernels here: {cpu_kernels.why_unavailable()}")


def compare(B, H, S, dk, dv, dtype, *, with_state, reset_kind, seed, **kw) -> dict:
    inputs = make_inputs(B, H, S, dk, dv, seed=seed, dtype=dtype)
    state = make_state(B, H, dk, dv, seed=seed + 1, dtype=dtype) if with_state else None
    r = None if reset_kind is None else resets(B, S, 7, reset_kind)
    got = run(compiled, inputs, state, r, **kw)
    want = run(definition, inputs, state, r, **kw)
    assert_match(got, want, F64_TOL if dtype == torch.float64 else F32_TOL)
    return got


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reset_kind", [None, "mixed"], ids=["no-reset", "resets"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
@pytest.mark.parametrize("S", [1, 15, 16, 17, 37])
def test_matches_the_step_loop(S, with_state, reset_kind, dtype):
    compare(3, 2, S, 5, 7, dtype, with_state=with_state, reset_kind=reset_kind, seed=S)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["mid", "boundary", "t0", "consecutive"])
def test_each_reset_kind(kind, dtype):
    compare(2, 2, 40, 4, 6, dtype, with_state=True, reset_kind=kind, seed=11)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("dk,dv", [(64, 64), (16, 48), (20, 33)])
def test_head_sizes_on_and_off_the_vector_width(dk, dv, dtype):
    """The backward's vector loop (16 float / 8 double lanes) and its scalar tail."""
    compare(2, 2, 35, dk, dv, dtype, with_state=True, reset_kind="mixed", seed=dk + dv)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
def test_final_state_left_out_of_the_loss(with_state):
    """Gradients arrive for ``h`` only (the final state's are None): still exact."""
    S = 33
    compare(2, 2, S, 4, 5, torch.float64, with_state=with_state, reset_kind="mixed", seed=5,
            loss_rows=torch.rand(2, S, generator=torch.Generator().manual_seed(6)) < 0.5)


def test_only_the_final_state_in_the_loss():
    """No gradient reaches ``h`` (None): the state's gradient alone flows back (q then gets
    zeros, where the step loop's autograd gives None)."""
    inputs = make_inputs(2, 2, 20, 4, 3, seed=8)
    state = make_state(2, 2, 4, 3, seed=9)
    grads = {}
    for name, fn in (("got", compiled), ("want", definition)):
        xs = [x.clone().requires_grad_() for x in (*inputs, *state)]
        _, (C, n, m) = fn(*xs[:5], state=tuple(xs[5:]), reset=resets(2, 20, 7, "mid"))
        (C.sum() + (n ** 2).sum() + m.sum()).backward()
        grads[name] = [x.grad for x in xs]
    assert grads["want"][0] is None and not grads["got"][0].any()
    for a, b in zip(grads["got"][1:], grads["want"][1:]):
        assert (a - b).abs().max() <= F64_TOL * b.abs().max()


def test_a_nonfinite_state_discarded_at_t0_does_not_leak():
    inputs = make_inputs(2, 1, 18, 3, 3, seed=12)
    state = list(make_state(2, 1, 3, 3, seed=13))
    state[0][0] = float("nan")
    state[2][0] = float("inf")
    r = torch.zeros(2, 18, dtype=torch.bool)
    r[0, 0] = True
    got = run(compiled, inputs, tuple(state), r)
    for name in ("h", "C", "n", "m", "dq", "dk", "dv", "di", "df"):
        assert torch.isfinite(got[name]).all(), name
    assert (got["dC0"][0] == 0).all() and (got["dn0"][0] == 0).all() and got["dm0"][0] == 0


def test_no_grad_forward_equals_the_differentiable_one_and_threads_do_not_matter(monkeypatch):
    monkeypatch.setattr(cell_module, "PARALLEL_MIN_ELEMENTS", 0)  # thread even these sizes
    inputs = make_inputs(3, 2, 40, 8, 8, seed=14, dtype=torch.float32)
    state = make_state(3, 2, 8, 8, seed=15, dtype=torch.float32)
    r = resets(3, 40, 7, "mixed")
    with torch.no_grad():
        h, fin = compiled(*inputs, state=state, reset=r)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(run(compiled, inputs, state, r))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(h, results[0]["h"])
    assert all(torch.equal(a, results[0][key]) for a, key in zip(fin, "Cnm"))
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key  # rows are independent: bit-equal


def test_strided_inputs_are_read_in_place():
    """q, k, v as transposed views ``[B, S, H, D] -> [B, H, S, D]`` (the block's layout)."""
    B, S, H, D = 2, 21, 3, 4
    g = torch.Generator().manual_seed(16)
    raw = [torch.randn(B, S, H, D, generator=g, dtype=torch.float64) for _ in range(3)]
    gates = [torch.randn(B, S, H, generator=g, dtype=torch.float64) for _ in range(2)]
    views = [x.transpose(1, 2) for x in raw + gates]
    dense = [x.contiguous() for x in views]
    r = resets(B, S, 5, "mid")
    a = run(compiled, views, None, r)
    b = run(compiled, dense, None, r)
    for key in a:
        assert (a[key] is None and b[key] is None) or torch.equal(a[key], b[key]), key


def test_declines_what_it_cannot_take():
    inputs = make_inputs(1, 1, 4, 2, 2, seed=17, dtype=torch.bfloat16)
    assert mlstm_sequence_cpu(*inputs) is None
    mixed = make_inputs(1, 1, 4, 2, 2, seed=17)
    mixed[0] = mixed[0].float()
    assert mlstm_sequence_cpu(*mixed) is None


def test_second_derivatives_are_refused():
    inputs = [x.requires_grad_() for x in make_inputs(1, 1, 8, 2, 2, seed=18)]
    h, _ = compiled(*inputs)
    (dq,) = torch.autograd.grad(h.sum(), inputs[:1], create_graph=True)
    with pytest.raises(RuntimeError):
        dq.sum().backward()


def test_gradcheck():
    tensors = [x.requires_grad_() for x in make_inputs(1, 2, 19, 3, 2, seed=19)]
    state = [s.requires_grad_() for s in make_state(1, 2, 3, 2, seed=20)]
    r = torch.zeros(1, 19, dtype=torch.bool)
    r[0, 9] = True

    def fn(q, k, v, i, f, *st):  # noqa: ANN001, ANN202
        h, fin = compiled(q, k, v, i, f, state=tuple(st), reset=r)
        return (h, *fin)

    assert torch.autograd.gradcheck(fn, (*tensors, *state), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_the_training_dispatch_takes_it_on_cpu_and_falls_back_without_it():
    """``mlstm_chunkwise`` on CPU runs the compiled kernel; switched off, the chunkwise PyTorch
    kernel, with the same results to the float32 tolerance."""
    inputs = make_inputs(2, 2, 50, 8, 8, seed=21, dtype=torch.float32)
    state = make_state(2, 2, 8, 8, seed=22, dtype=torch.float32)
    r = resets(2, 50, 7, "mixed")
    dispatched = functools.partial(mlstm_chunkwise, backend="reference")
    xs = [x.clone().requires_grad_() for x in inputs]
    h, _ = dispatched(*xs, state=state, reset=r, chunk_size=16)
    assert "xlstm_rl_mlstm_sequence" in type(h.grad_fn).__name__
    got = run(dispatched, inputs, state, r, 16)
    with cpu_kernels.disabled():
        xs = [x.clone().requires_grad_() for x in inputs]
        h, _ = dispatched(*xs, state=state, reset=r, chunk_size=16)
        assert "ChunkwiseFused" in type(h.grad_fn).__name__
        want = run(dispatched, inputs, state, r, 16)
    assert_match(got, want, F32_TOL)


def test_long_sequences_go_to_the_chunkwise_kernel(monkeypatch):
    """Past ``COMPILED_MAX_STEPS`` the chunkwise PyTorch kernel runs (its matrix products win
    on long sequences)."""
    from xlstm_rl.kernels import dispatch

    monkeypatch.setattr(dispatch, "COMPILED_MAX_STEPS", 8)
    for S, node in ((8, "xlstm_rl_mlstm_sequence"), (9, "ChunkwiseFused")):
        xs = [x.requires_grad_() for x in make_inputs(1, 1, S, 2, 2, seed=23)]
        h, _ = mlstm_chunkwise(*xs, chunk_size=4, backend="reference")
        assert node in type(h.grad_fn).__name__, (S, type(h.grad_fn).__name__)
