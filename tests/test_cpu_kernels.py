"""The compiled CPU kernels (``xlstm_rl.kernels.cpu``) equal the reference, and their absence
is harmless.

* ``mlstm_cell_step`` against ``mlstm_step_reference``: zero, carried and reset states (a NaN in
  a reset row must not leak), strided inputs, float32 / float64 / bfloat16 inputs.
* ``MLSTMBlock.step_nograd`` through the kernel against the same block's autograd ``step``, over
  several steps with resets in between, for conv kernels 1 and 4, block-diagonal and dense q/k/v
  maps, one and several heads.
* With ``overwrite_state`` the new state is written into the state handed over (same storage)
  and still equals the autograd step.
* Without a compiler (a failing one), or switched off, the PyTorch path runs and agrees.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xlstm_rl.cores.config import CoreConfig
from xlstm_rl.cores.mlstm_block import STATE_KEYS, MLSTMBlock
from xlstm_rl.kernels import cpu as cpu_kernels
from xlstm_rl.kernels.reference import mlstm_step_reference

TOL = 1e-5  # the no-grad paths' tolerance (tests/test_core_speed_paths.py)


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    if not b.numel():  # the empty conv window of kernel size 1
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="module", autouse=True)
def compiled() -> None:
    cpu_kernels.forget()
    if cpu_kernels.load_library() is None:
        pytest.skip(f"no compiled CPU kernels here: {cpu_kernels.why_unavailable()}")


def _cell_inputs(B: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    H, dk, dv = 3, 8, 6
    qkv = torch.randn(B, 3, H, 8, generator=g).to(dtype)  # q, k, v as strided views
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2, :, :dv]
    i, f = ((3 * torch.randn(B, H, generator=g)).to(dtype) for _ in range(2))
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    state = (torch.randn(B, H, dk, dv, generator=g, dtype=sd),
             torch.rand(B, H, dk, generator=g, dtype=sd), torch.randn(B, H, generator=g, dtype=sd))
    return (q, k, v, i, f), state


@pytest.mark.parametrize("B", (1, 16, 7))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cell_step_equals_reference(B: int, dtype: torch.dtype) -> None:
    (q, k, v, i, f), state = _cell_inputs(B, dtype)
    reset = torch.zeros(B, dtype=torch.bool)
    reset[0] = True
    poisoned = (state[0].clone(), state[1].clone(), state[2].clone())
    poisoned[0][0], poisoned[1][0], poisoned[2][0] = float("nan"), float("nan"), float("nan")
    before = [t.clone() for t in poisoned]
    for st, r in [(None, None), (state, None), (poisoned, reset), (state, ~reset)]:
        h_ref, s_ref = mlstm_step_reference(q, k, v, i, f, st, reset=r)
        with torch.no_grad():
            out = cpu_kernels.mlstm_cell_step(q, k, v, i, f, st, reset=r)
        assert out is not None
        h, s = out
        assert h.dtype == h_ref.dtype and torch.isfinite(h).all()
        assert _max_rel(h.float(), h_ref.float()) <= TOL
        for a, b in zip(s, s_ref):
            assert a.dtype == b.dtype and a.shape == b.shape and _max_rel(a, b) <= TOL
    for a, b in zip(poisoned, before):  # the state passed in is never written
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_block_step_lays_strided_weights_out_itself() -> None:
    block = _block(4, 4, 2, torch.float32)
    weights = block._kernel_weights()
    state = [block.initial_state(3)[key] for key in STATE_KEYS]
    up = torch.randn(3, 2 * block.inner)
    dense = cpu_kernels.mlstm_block_step(up, state[3], None, weights, state[:3], 2, 1e-5)
    weights["gate_w"] = weights["gate_w"].t().contiguous().t()  # same values, column-major
    strided = cpu_kernels.mlstm_block_step(up, state[3], None, weights, state[:3], 2, 1e-5)
    assert dense is not None and strided is not None
    for a, b in zip((dense[0], *dense[1]), (strided[0], *strided[1])):
        assert torch.equal(a, b)


def test_cell_step_declines_what_it_cannot_take() -> None:
    (q, k, v, i, f), state = _cell_inputs(2, torch.float32)
    half = tuple(t.half() for t in state)
    assert cpu_kernels.mlstm_cell_step(q, k, v, i, f, half) is None       # a float16 state
    with cpu_kernels.disabled():
        assert cpu_kernels.mlstm_cell_step(q, k, v, i, f, state) is None
    assert cpu_kernels.mlstm_cell_step(q, k, v, i, f, state) is not None


def _block(conv_kernel: int, block_size: int, heads: int, dtype: torch.dtype) -> MLSTMBlock:
    torch.manual_seed(0)
    block = MLSTMBlock(8, CoreConfig(hidden_size=8, num_heads=heads, conv_kernel=conv_kernel,
                                     qkv_block_size=block_size))
    with torch.no_grad():  # gates and output away from their zero / tiny initialization
        for p in (block.gates.weight, block.down.weight, block.skip, block.cell_norm.weight):
            p.normal_(0.0, 0.5)
    return block.to(dtype)


@pytest.mark.parametrize("conv_kernel,block_size,heads", [(4, 4, 2), (1, 4, 2), (4, 0, 1),
                                                          (3, 2, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_step_through_the_kernel_equals_the_autograd_step(
        conv_kernel: int, block_size: int, heads: int, dtype: torch.dtype) -> None:
    block, B = _block(conv_kernel, block_size, heads, dtype), 7
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(6, B, 8, generator=g).to(dtype)
    resets = torch.rand(6, B, generator=g) < 0.3
    resets[0] = False
    state = block.initial_state(B).to(dtype)
    leaves = [state[key] for key in STATE_KEYS]
    for t in range(6):
        r = resets[t] if resets[t].any() else None
        y_ref, state = block.step(xs[t], state, r)
        with torch.no_grad():
            with cpu_kernels.disabled():
                y_torch, torch_leaves = block.step_nograd(xs[t], leaves, r)
            y, leaves = block.step_nograd(xs[t], leaves, r)
        ref = y_ref.detach() - xs[t]  # the block's own output, without the residual input
        assert _max_rel(y - xs[t], ref) <= TOL and _max_rel(y_torch - xs[t], ref) <= TOL
        for key, a, b in zip(STATE_KEYS, leaves, torch_leaves):
            assert a.dtype == dtype and _max_rel(a, state[key].detach()) <= TOL, key
            assert _max_rel(b, state[key].detach()) <= TOL, key


@pytest.mark.parametrize("conv_kernel,block_size,heads", [(4, 4, 2), (1, 4, 2), (3, 0, 1)])
def test_block_step_in_place_equals_the_autograd_step(conv_kernel: int, block_size: int,
                                                      heads: int) -> None:
    block, B = _block(conv_kernel, block_size, heads, torch.float32), 5
    g = torch.Generator().manual_seed(2)
    xs, resets = torch.randn(7, B, 8, generator=g), torch.rand(7, B, generator=g) < 0.3
    state = block.initial_state(B)
    leaves = [state[key].clone() for key in STATE_KEYS]
    for t in range(7):
        r = resets[t] if resets[t].any() else None
        y_ref, state = block.step(xs[t], state, r)
        before = [leaf.data_ptr() for leaf in leaves]
        with torch.no_grad():
            y, leaves = block.step_nograd(xs[t], leaves, r, overwrite=True)
        assert [leaf.data_ptr() for leaf in leaves] == before  # written where it was
        assert _max_rel(y - xs[t], y_ref.detach() - xs[t]) <= TOL
        for key, leaf in zip(STATE_KEYS, leaves):
            assert _max_rel(leaf, state[key].detach()) <= TOL, key


def test_core_step_overwrite_state_equals_a_fresh_state_step() -> None:
    from xlstm_rl.cores import make_core

    torch.manual_seed(0)
    core = make_core("xlstm", 8, hidden_size=8, num_heads=2, pattern="ms")
    x, reset = torch.randn(4, 8), torch.tensor([False, True, False, False])
    state = core.initial_state(4)
    with torch.no_grad():
        state = core.step(x, state, None)[1]
        y_ref, s_ref = core.step(x, state, reset)
        y, s = core.step(x, state.clone(), reset, overwrite_state=True)
    assert torch.equal(y, y_ref)
    assert all(torch.equal(a, b) for a, b in zip(s.values(True, True), s_ref.values(True, True)))


def _run_python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=True)
    return done.stdout.strip()


PROBE = ("from xlstm_rl.kernels import cpu; import torch; from xlstm_rl.cores import make_core;"
         "core = make_core('mlstm', 8, hidden_size=8, num_heads=2); x = torch.randn(3, 8);"
         "torch.manual_seed(0);"
         "y, _ = core.step(x, None, None);"
         "z, _ = core.step_reference(x, None, None);"
         "print(cpu.load_library() is None, (y - z).abs().max().item() < 1e-5, "
         "'|', cpu.why_unavailable())")


def test_switched_off_or_without_a_working_compiler_the_torch_path_runs(tmp_path: Path) -> None:
    off = _run_python(PROBE, {"XLSTM_RL_CPU_KERNELS": "0", "XLSTM_RL_CACHE": str(tmp_path)})
    assert off.startswith("True True |") and "XLSTM_RL_CPU_KERNELS" in off
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: no such feature' >&2\nexit 1\n")
    broken.chmod(0o755)
    out = _run_python(PROBE, {"CC": str(broken), "XLSTM_RL_CACHE": str(tmp_path / "c")})
    assert out.startswith("True True |") and "failed" in out
    assert not list((tmp_path / "c").glob("*.so"))  # nothing half-built is left behind


def test_the_library_is_cached_and_a_damaged_or_untrusted_copy_is_rebuilt(tmp_path: Path) -> None:
    env = {"XLSTM_RL_CACHE": str(tmp_path)}
    first = _run_python(PROBE, env)
    assert first.startswith("False True |")
    (lib,) = tmp_path.glob("xlstm_rl_cpu_*.so")
    stamp = lib.stat().st_mtime_ns
    assert _run_python(PROBE, env).startswith("False True |") and lib.stat().st_mtime_ns == stamp
    lib.write_bytes(b"not a shared library")
    assert _run_python(PROBE, env).startswith("False True |")
    assert lib.read_bytes()[:4] == b"\x7fELF"
    lib.chmod(0o666)  # writable by anyone: not trusted, built again
    stamp = lib.stat().st_mtime_ns
    assert _run_python(PROBE, env).startswith("False True |")
    assert lib.stat().st_mtime_ns != stamp and not lib.stat().st_mode & 0o022
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


TRAIN_PROBE = (
    "import torch; from xlstm_rl.kernels import cpu; from xlstm_rl.cores import make_core;"
    "import xlstm_rl.kernels.cpu.mlstm_cell as cell; cell.PARALLEL_MIN_ELEMENTS = 0;"
    "torch.set_num_threads(2); torch.manual_seed(0);"
    "core = make_core('mlstm', 8, hidden_size=16, num_heads=2); x = torch.randn(8, 5, 8);"
    "run = lambda: torch.autograd.grad(core(x, None, None)[0].square().sum(),"
    " list(core.parameters()));"
    "fast = run(); slow = (cpu.disabled().__enter__(), run())[1];"
    "print(cpu.load_library() is not None, cpu.uses_openmp(),"
    " max((a - b).abs().max().item() for a, b in zip(fast, slow)) < 1e-5)")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_the_library_runs_on_torchs_openmp_threads() -> None:
    """Built with OpenMP, the library maps no second runtime: its threads are torch's workers
    (threads of its own competed with them for the cores, kernels/cpu/kernels.c)."""
    from xlstm_rl.kernels.cpu.build import openmp_runtimes

    torch.ones(64, 64) @ torch.ones(64, 64)  # torch's OpenMP runtime is loaded
    torch_runtimes = openmp_runtimes()
    if len(torch_runtimes) != 1 or "libgomp" not in next(iter(torch_runtimes)):
        pytest.skip(f"this torch maps no single GNU OpenMP runtime: {torch_runtimes}")
    assert cpu_kernels.uses_openmp(), cpu_kernels.why_unavailable()
    assert "-fopenmp" in cpu_kernels.why_unavailable()
    assert openmp_runtimes() == torch_runtimes


def test_threads_of_a_second_openmp_runtime_count_as_threads_of_its_own(monkeypatch) -> None:
    """Were the library's runtime not torch's, its threads would compete with torch's: small
    calls then stay on one thread, as with POSIX threads."""
    from xlstm_rl.kernels.cpu import build
    from xlstm_rl.kernels.cpu.mlstm_cell import threads_for

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        build._STATE.pop("openmp", None)
        two = {"/a/libgomp.so.1", "/b/libiomp5.so"}
        monkeypatch.setattr(build, "openmp_runtimes", lambda: two)
        assert not build.uses_openmp() and threads_for(1024) == 1
        build._STATE.pop("openmp", None)
        monkeypatch.setattr(build, "openmp_runtimes", lambda: {"/a/libgomp.so.1"})
        lib = build.load_library()
        assert lib is not None and build.uses_openmp() == bool(lib.xlstm_cpu_kernels_openmp())
    finally:
        build._STATE.pop("openmp", None)
        torch.set_num_threads(torch_threads)


def test_a_compiler_without_openmp_gets_posix_threads(tmp_path: Path) -> None:
    """A compiler that rejects -fopenmp: the next flag set builds a library with threads of its
    own, and training through it (two threads) still equals the PyTorch path."""
    plain = tmp_path / "cc-without-openmp"
    plain.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\n'
                     'exec cc "$@"\n')
    plain.chmod(0o755)
    env = {"CC": str(plain), "XLSTM_RL_CACHE": str(tmp_path / "c")}
    assert _run_python(TRAIN_PROBE, env) == "True False True"


def test_step_benchmark_times_every_path_side_by_side() -> None:
    from xlstm_rl.bench_cores import bench_steps

    report = bench_steps(torch.device("cpu"), envs=2, width=16)
    ratios = report["ratios"]
    for name in ("mlstm_step_over_lstm_cell", "mlstm_step_torch_over_lstm_cell",
                 "core_mlstm_step_over_lstm_core", "core_mlstm_torch_step_over_lstm_core",
                 "core_mlstm_overwrite_step_over_lstm_core",
                 "core_xlstm_overwrite_step_over_lstm_core"):
        assert 0.0 < ratios[name] < float("inf"), name
