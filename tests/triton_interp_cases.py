"""Triton-vs-reference checks, run under the Triton interpreter on CPU tensors.

``tests/test_triton_kernels.py`` runs this file in a subprocess with ``TRITON_INTERPRET=1`` (the
flag must be set before the kernels are first decorated, so it cannot be flipped inside the
pytest process, which on a GPU machine also runs the compiled kernels). By hand::

    TRITON_INTERPRET=1 .venv/bin/python tests/triton_interp_cases.py [CASE ...]

Every case prints one JSON line ``{"case", "ok", "errors": {quantity: [rel_err, tol]},
"message", "seconds"}``. Relative error is ``max|a - b| / max|b|`` over a tensor, ``b`` the
oracle (the float64 reference), as in ``test_mlstm_reference.py``. The tolerance for float32
is fixed at 1e-4 (``F32_TOL``).
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch

from xlstm_rl.kernels import mlstm_chunkwise, mlstm_step, slstm_sequence, slstm_step
from xlstm_rl.kernels.reference import (mlstm_chunkwise_reference, mlstm_recurrent,
                                        mlstm_step_reference, slstm_sequence_reference,
                                        slstm_step_reference)

F32_TOL = 1e-4
BF16_TOL = 2e-2
GOLDEN = pathlib.Path(__file__).parent / "data" / "mlstm_float64.npz"
NAMES = ("h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0")
CASES: dict[str, Callable[[], dict[str, tuple[float, float]]]] = {}


def case(fn):
    """Register a check: a function returning ``{quantity: (rel_err, tol)}``."""
    CASES[fn.__name__] = fn
    return fn


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` in float64 (``b`` the oracle); inf on shape or NaN trouble."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape or not torch.isfinite(a).all():
        return math.inf
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else a.abs().max().item()


# ------------------------------------------------------------------------------ mLSTM inputs

def mlstm_inputs(B, H, S, dk, dv, *, seed, state=True, resets=(), p_reset=0.0, q_scale=1.0,
                 i_std=1.0):
    """Float64 ``[q, k, v, i, f]`` (+ ``[C0, n0, m0]`` when ``state``) and a reset mask.

    ``resets`` lists forced ``(b, t)`` resets; ``p_reset`` adds random ones.
    """
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)
    xs = [r(B, H, S, dk) * q_scale, r(B, H, S, dk), r(B, H, S, dv), r(B, H, S) * i_std,
          r(B, H, S) * 2.0 + 1.0]
    if state:
        xs += [r(B, H, dk, dv), r(B, H, dk), r(B, H)]
    reset = None
    if resets or p_reset:
        reset = torch.rand(B, S, generator=g) < p_reset
        for b, t in resets:
            reset[b, t] = True
    return xs, reset


def mlstm_run(fn, xs, reset, dtype, *, seed=123, **kw):
    """Outputs, final state and gradients of a random linear loss on all of them."""
    leaves = [x.to(dtype).detach().requires_grad_() for x in xs]
    state = tuple(leaves[5:]) if len(leaves) > 5 else None
    h, (C, n, m) = fn(*leaves[:5], state=state, reset=reset, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum()
               for o in (h, C, n, m))
    return [h, C, n, m, *torch.autograd.grad(loss, leaves)]


def compare_chunkwise(xs, reset, *, chunk, eps=1e-6, oracle="chunkwise", tol=F32_TOL,
                      dtype=torch.float32):
    """Triton (``dtype``) against the float64 reference; ``{quantity: (err, tol)}``."""
    got = mlstm_run(mlstm_chunkwise, xs, reset, dtype, chunk_size=chunk, eps=eps,
                    backend="triton")
    if oracle == "chunkwise":
        ref = mlstm_run(mlstm_chunkwise_reference, xs, reset, torch.float64, chunk_size=chunk,
                        eps=eps)
    else:
        ref = mlstm_run(mlstm_recurrent, xs, reset, torch.float64, eps=eps)
    return {name: (rel_err(a, b), tol) for name, a, b in zip(NAMES, got, ref)}


# ------------------------------------------------------------------------- chunkwise cases

@case
def chunk16_s37_zero_state_no_reset():
    xs, reset = mlstm_inputs(1, 1, 37, 16, 16, seed=0, state=False)
    return compare_chunkwise(xs, reset, chunk=16)


@case
def chunk16_s50_resets_mid_chunk_carried_state():
    xs, reset = mlstm_inputs(2, 1, 50, 16, 16, seed=1, resets=[(0, 21), (1, 5), (1, 6)],
                             p_reset=0.05)
    return compare_chunkwise(xs, reset, chunk=16)


@case
def chunk32_s50_dv32_resets_at_boundary_and_end_eps1e2():
    xs, reset = mlstm_inputs(2, 2, 50, 16, 32, seed=2, resets=[(0, 32), (1, 49), (1, 17)])
    return compare_chunkwise(xs, reset, chunk=32, eps=1e-2)


@case
def chunk64_s70_dk32_dv16_wide_input_gates():
    xs, reset = mlstm_inputs(2, 1, 70, 32, 16, seed=3, resets=[(0, 40)], i_std=3.0)
    return compare_chunkwise(xs, reset, chunk=64)


@case
def chunk128_s150_and_padded_head_dims_dk8_dv40():
    """Chunk 128 (one full chunk plus a masked tail), and head dims padded inside the kernels."""
    xs, reset = mlstm_inputs(1, 1, 150, 16, 16, seed=11, resets=[(0, 50)])
    errs = compare_chunkwise(xs, reset, chunk=128)
    xs, reset = mlstm_inputs(2, 1, 40, 8, 40, seed=12, resets=[(1, 13)])
    errs.update({f"{k}_dk8_dv40": v for k, v in compare_chunkwise(xs, reset, chunk=32).items()})
    return errs


@case
def chunk16_normalizer_exp_branch():
    """Small queries: ``exp(-m)`` wins the normalizer max on most steps, so the gradient
    through ``m`` (eps and the exp branch) carries weight."""
    xs, reset = mlstm_inputs(1, 2, 45, 16, 16, seed=4, resets=[(0, 20)], q_scale=0.2)
    frac = _exp_branch_fraction(xs, reset)
    errs = compare_chunkwise(xs, reset, chunk=16, eps=1e-3)
    errs["exp_branch_on_most_not_all_steps"] = (0.0 if 0.5 < frac < 1.0 else math.inf, 1.0)
    return errs


def _exp_branch_fraction(xs, reset) -> float:
    q, k, v, i, f, C, n, m = xs
    hits = 0
    state = (C, n, m)
    for t in range(q.shape[2]):
        r = None if reset is None else reset[:, t]
        _, state = mlstm_step_reference(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t],
                                        f[:, :, t], state, reset=r)
        qn = (q[:, :, t] / math.sqrt(q.shape[-1]) * state[1]).sum(-1)
        hits += (qn.abs() < torch.exp(-state[2])).sum().item()
    return hits / (q.shape[0] * q.shape[1] * q.shape[2])


@case
def chunk16_extreme_gates_nan_in_discarded_state():
    """f = -1e3 / +30, i = +-50, resets at t = 0, back to back and at chunk ends; a NaN
    initial state in the rows reset at t = 0 must not reach outputs or gradients. Oracle:
    the float64 step loop."""
    xs, reset = mlstm_inputs(2, 1, 45, 16, 16, seed=5, resets=[(1, 0), (0, 18), (0, 19),
                                                              (0, 31), (1, 44)], i_std=3.0)
    f, i = xs[4], xs[3]
    f[:, :, 7] = -1e3
    f[0, 0, 33] = -1e3
    f[:, :, 20] = 30.0
    i[:, :, 25] = 50.0
    i[:, :, 26] = -50.0
    for s in xs[5:]:
        s[1] = float("nan")
    reset[1, 0] = True
    return compare_chunkwise(xs, reset, chunk=16, oracle="recurrent")


@case
def chunk16_saturated_negative_gates_then_recovery():
    """i = f = -100 for the first steps from the zero state drive m to -100, where exp(-m)
    overflows float32 (the normalizer floor is clamped as in the reference); later gates are
    ordinary. Oracle: the float32 reference, which clamps at the same point."""
    xs, reset = mlstm_inputs(1, 2, 40, 16, 16, seed=9, state=False)
    xs[3][:, :, :10] = -100.0
    xs[4][:, :, :10] = -100.0
    got = mlstm_run(mlstm_chunkwise, xs, reset, torch.float32, chunk_size=16, backend="triton")
    ref = mlstm_run(mlstm_chunkwise_reference, xs, reset, torch.float32, chunk_size=16)
    errs = {name: (rel_err(a, b), F32_TOL) for name, a, b in zip(NAMES, got, ref)}
    errs["all_finite"] = (0.0 if all(torch.isfinite(x).all() for x in got) else math.inf, 1.0)
    return errs


@case
def golden_float64_vectors_dv24():
    """The independent float64 golden file (Dv = 24: padded inside the kernels)."""
    d = {k: torch.from_numpy(v) for k, v in np.load(GOLDEN).items()}
    xs = [d[k].float().requires_grad_() for k in "qkvif"]
    h, (C, n, m) = mlstm_chunkwise(*xs, chunk_size=32, backend="triton")
    grads = torch.autograd.grad((h.double() * d["w"]).sum(), xs)
    errs = {k: (rel_err(a, d[k]), F32_TOL)
            for k, a in zip(("h", "C", "n", "m", "dq", "dk", "dv", "di", "df"),
                            (h, C, n, m, *grads))}
    with torch.no_grad():
        hr, _ = mlstm_chunkwise(*(d[k].float() for k in "qkvif"), reset=d["reset"],
                                chunk_size=16, backend="triton")
        hm, _ = mlstm_chunkwise(*(d[k][:, :, 48:].float() for k in "qkvif"),
                                state=(d["C_mid"], d["n_mid"], d["m_mid"]), chunk_size=64,
                                backend="triton")
    errs["h_reset"] = (rel_err(hr, d["h_reset"]), F32_TOL)
    errs["h_from_mid_state"] = (rel_err(hm, d["h"][:, :, 48:]), F32_TOL)
    return errs


@case
def bf16_inputs_float32_states():
    """bfloat16 q, k, v: h in bfloat16, states float32, gradients close to float64 on the
    same (rounded) inputs. In the interpreter the dots run in float32."""
    xs, reset = mlstm_inputs(1, 2, 40, 16, 16, seed=6, resets=[(0, 23)])
    xs = [x.to(torch.bfloat16).double() if j < 3 else x for j, x in enumerate(xs)]
    leaves = [x.to(torch.bfloat16) if j < 3 else x.float() for j, x in enumerate(xs)]
    h, (C, n, m) = mlstm_chunkwise(*leaves[:5], state=tuple(leaves[5:]), reset=reset,
                                   chunk_size=16, backend="triton")
    dtypes_ok = (h.dtype == torch.bfloat16 and C.dtype == n.dtype == m.dtype == torch.float32)
    got = _bf16_run(xs, reset)
    ref = mlstm_run(mlstm_chunkwise_reference, xs, reset, torch.float64, chunk_size=16)
    errs = {name: (rel_err(a, b), BF16_TOL) for name, a, b in zip(NAMES, got, ref)}
    errs["dtypes"] = (0.0 if dtypes_ok else math.inf, 1.0)
    return errs


def _bf16_run(xs, reset):
    leaves = [(x.to(torch.bfloat16) if j < 3 else x.float()).requires_grad_()
              for j, x in enumerate(xs)]
    h, (C, n, m) = mlstm_chunkwise(*leaves[:5], state=tuple(leaves[5:]), reset=reset,
                                   chunk_size=16, backend="triton")
    g = torch.Generator().manual_seed(123)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum()
               for o in (h, C, n, m))
    return [h, C, n, m, *torch.autograd.grad(loss, leaves)]


# ------------------------------------------------------------------------------ step cases

@case
def mlstm_step_fused_vs_reference():
    g = torch.Generator().manual_seed(7)
    B, H, dk, dv = 3, 2, 16, 24
    xs = [torch.randn(*s, generator=g, dtype=torch.float64)
          for s in ((B, H, dk), (B, H, dk), (B, H, dv), (B, H), (B, H), (B, H, dk, dv),
                    (B, H, dk), (B, H))]
    reset = torch.tensor([False, True, False])

    def run(fn, dtype, **kw):
        leaves = [x.to(dtype).detach().requires_grad_() for x in xs]
        h, st = fn(*leaves[:5], tuple(leaves[5:]), reset=reset, **kw)
        loss = (h.double() ** 2).sum() + sum((s.double() * (j + 1)).sum() for j, s in enumerate(st))
        return [h, *st, *torch.autograd.grad(loss, leaves)]
    got = run(mlstm_step, torch.float32, backend="triton")
    ref = run(mlstm_step_reference, torch.float64)
    names = ("h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC", "dn", "dm")
    errs = {n: (rel_err(a, b), F32_TOL) for n, a, b in zip(names, got, ref)}
    from xlstm_rl.kernels.triton_ops import mlstm_step as fused
    state = [x.float().clone() for x in xs[5:]]
    ptrs = [s.data_ptr() for s in state]
    with torch.no_grad():
        h, new = fused(*(x.float() for x in xs[:5]), tuple(state), reset=reset, inplace=True)
    same = all(s.data_ptr() == p for s, p in zip(new, ptrs))
    errs["inplace_h"] = (rel_err(h, ref[0]), F32_TOL)
    errs["inplace_C"] = (rel_err(new[0], ref[1]), F32_TOL)
    errs["inplace_writes_given_tensors"] = (0.0 if same else math.inf, 1.0)
    return errs


@case
def slstm_step_and_sequence_vs_reference():
    g = torch.Generator().manual_seed(8)
    B, S, H, dh = 3, 6, 2, 12

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)
    xs = [r(B, S, 4, H, dh), r(4, H, dh, dh) * 0.3, r(4, H, dh), r(B, H, dh), r(B, H, dh),
          r(B, H, dh).abs() + 0.5, r(B, H, dh)]
    reset = torch.zeros(B, S, dtype=torch.bool)
    reset[1, 2] = reset[2, 0] = True

    def run(fn, dtype, **kw):
        leaves = [x.to(dtype).detach().requires_grad_() for x in xs]
        h, st = fn(*leaves[:3], state=tuple(leaves[3:]), reset=reset, **kw)
        loss = (h.double() ** 2).sum() + sum((s.double() * (j + 1)).sum() for j, s in enumerate(st))
        return [h, *st, *torch.autograd.grad(loss, leaves)]
    names = ("h", "h_state", "c", "n", "m", "dwx", "dR", "dbias", "dh0", "dc0", "dn0", "dm0")
    got = run(slstm_sequence, torch.float32, backend="triton")
    ref = run(slstm_sequence_reference, torch.float64)
    errs = {n: (rel_err(a, b), F32_TOL) for n, a, b in zip(names, got, ref)}
    with torch.no_grad():
        st = tuple(x.float() for x in xs[3:])
        h1, s1 = slstm_step(xs[0][:, 0].float(), xs[1].float(), xs[2].float(), st,
                            reset=reset[:, 0], backend="triton")
        h2, s2 = slstm_step_reference(xs[0][:, 0], xs[1], xs[2], xs[3:], reset=reset[:, 0])
    errs["step_h"] = (rel_err(h1, h2), F32_TOL)
    errs["step_c"] = (rel_err(s1[1], s2[1]), F32_TOL)
    with torch.no_grad():  # zero state, input gate far below the forget gate: h = σ(o) tanh(z)
        wx = xs[0][:, 0].clone()
        wx[:, 1] = -1e3
        h1, _ = slstm_step(wx.float(), xs[1].float(), xs[2].float(), None, backend="triton")
        h2, _ = slstm_step_reference(wx, xs[1], xs[2], None)
    errs["step_zero_state_tiny_input_gate"] = (rel_err(h1, h2), F32_TOL)
    return errs


@case
def clear_errors_for_unsupported_inputs():
    from xlstm_rl.kernels.triton_ops import mlstm_step as fused
    x = torch.zeros(1, 1, 8, 16)
    g = torch.zeros(1, 1, 8)
    checks = {
        "chunk_size_48": lambda: mlstm_chunkwise(x, x, x, g, g, chunk_size=48, backend="triton"),
        "head_dim_512": lambda: mlstm_chunkwise(*(torch.zeros(1, 1, 8, 512),) * 3, g, g,
                                                backend="triton"),
        "float64": lambda: mlstm_chunkwise(x.double(), x.double(), x.double(), g, g,
                                           backend="triton"),
        "inplace_with_grad": lambda: fused(
            x[:, :, 0].requires_grad_(), x[:, :, 0], x[:, :, 0], g[:, :, 0], g[:, :, 0],
            (torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16), torch.zeros(1, 1)), inplace=True),
    }
    words = {"chunk_size_48": "16, 32, 64, 128", "head_dim_512": "1..256", "float64": "float64",
             "inplace_with_grad": "autograd"}
    errs = {}
    for name, fn in checks.items():
        try:
            fn()
            errs[name] = (math.inf, 1.0)
        except ValueError as e:
            errs[name] = (0.0 if words[name] in str(e) else math.inf, 1.0)
    return errs


@case
def bench_kernels_small_smoke():
    """``bench_kernels`` plumbing at tiny sizes (timings under the interpreter mean nothing)."""
    import tempfile

    from xlstm_rl.kernels.bench import bench_kernels
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "bench.json"
        got = bench_kernels("cpu", str(path), small=True)
        written = json.loads(path.read_text())
    keys = ("mlstm_chunkwise_vs_reference", "mlstm_chunkwise_vs_sdpa", "mlstm_step_1024_envs",
            "slstm_step_1024_envs")
    ok = written == got and all(written[k]["speedup"] > 0 for k in keys)
    return {"json_written_with_speedups": (0.0 if ok else math.inf, 1.0)}


# ------------------------------------------------------------------------------------ main

def run_case(name: str) -> dict:
    """Run one case; never raises (a crash is a failed case with its traceback)."""
    t0 = time.perf_counter()
    try:
        errs = CASES[name]()
        bad = {k: v for k, v in errs.items() if not v[0] <= v[1]}
        message = "; ".join(f"{k}: {e:.3e} > {t:.0e}" for k, (e, t) in bad.items())
        ok = not bad
    except Exception:  # noqa: BLE001 - reported to the test as a failure with its traceback
        errs, ok, message = {}, False, traceback.format_exc()
    return {"case": name, "ok": ok, "errors": errs, "message": message,
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1 (these checks run the Triton interpreter)", file=sys.stderr)
        return 2
    names = argv or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown cases: {unknown}; known: {list(CASES)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        result = run_case(name)
        failed += not result["ok"]
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
