"""Triton kernels against the reference, on CPU, under the Triton interpreter.

The comparisons live in ``tests/triton_interp_cases.py`` and run in ONE subprocess with
``TRITON_INTERPRET=1`` (the flag has to be set before the kernels are decorated; flipping it in
this process would either not take effect or turn the GPU tests of ``test_triton_gpu.py`` into
interpreter runs). Each case is reported here as its own test, with the relative errors that
failed. Float32 tolerance: 1e-4 relative (``max|a - b| / max|b|``), fixed.

Also here: dispatch refuses ``backend="triton"`` for CPU tensors without the interpreter, and
``import xlstm_rl.kernels`` does not import triton.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

HELPER = pathlib.Path(__file__).with_name("triton_interp_cases.py")
TIMEOUT_S = 900


def _case_names() -> list[str]:
    import triton_interp_cases  # tests/ is on sys.path; imports torch and xlstm_rl.kernels only

    return list(triton_interp_cases.CASES)


CASE_NAMES = _case_names()


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="module")
def interp_results(request: pytest.FixtureRequest) -> dict[str, dict]:
    """Run the selected cases once, in a subprocess under the interpreter."""
    if not _triton_importable():
        pytest.skip("triton is not installed")
    wanted = [item.callspec.params["case"] for item in request.session.items
              if isinstance(item, pytest.Function) and getattr(item, "callspec", None)
              and "case" in item.callspec.params and item.module is request.module]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(HELPER), *(wanted or CASE_NAMES)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["case"]] = result
    if not results:
        pytest.fail(f"interpreter run produced no results (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return results


@pytest.mark.parametrize("case", CASE_NAMES)
def test_triton_interpreter_matches_reference(interp_results: dict, case: str) -> None:
    assert case in interp_results, f"case {case} did not report (crashed subprocess?)"
    result = interp_results[case]
    assert result["ok"], f"{case}: {result['message']}"


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch) -> None:
    from xlstm_rl.kernels import mlstm_chunkwise, mlstm_step, slstm_step

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(1, 1, 4, 16)
    g = torch.zeros(1, 1, 4)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        mlstm_chunkwise(x, x, x, g, g, backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        mlstm_step(x[:, :, 0], x[:, :, 0], x[:, :, 0], g[:, :, 0], g[:, :, 0], None,
                   backend="triton")
    with pytest.raises(ValueError, match="needs CUDA"):
        slstm_step(torch.zeros(1, 4, 1, 8), torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8), None,
                   backend="triton")


def test_importing_kernels_does_not_import_triton() -> None:
    code = ("import sys, xlstm_rl.kernels, xlstm_rl.kernels.dispatch; "
            "loaded = [m for m in sys.modules if m == 'triton' or m.startswith('triton.') "
            "or m.startswith('xlstm_rl.kernels.triton')]; "
            "assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=HELPER.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
