"""Where the compiled kernels cannot be built as intended, the loader says so once per process
(one CpuKernelsWarning line naming why and how to silence it) and keeps working: with the
flags that built, or on the PyTorch path, which agrees with the reference step."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from xlstm_rl.cores import make_core
from xlstm_rl.kernels.cpu import build

_QUICK = (("-O0", "-march=native", "-fopenmp"), ("-O0", "-march=native"), ("-O0",))
"""The flag sets of these tests' builds: the same fallbacks as the real ones, built at -O0."""


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """An empty cache, quick flag sets, no warning given yet; the library is forgotten after
    (the next test loads the real one)."""
    monkeypatch.setenv("XLSTM_RL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XLSTM_RL_CPU_KERNELS", raising=False)
    monkeypatch.setattr(build, "_FLAG_SETS", _QUICK)
    monkeypatch.setattr(build, "_WARNED", set())
    build.forget()
    yield
    build.forget()


def _fake_cc(tmp_path: Path, rejects: str | None) -> str:
    """A compiler that fails on the flag ``rejects`` (on everything when None), else runs the
    real one."""
    real = build._compiler()
    script = tmp_path / "fake-cc"
    check = f'for a in "$@"; do [ "$a" = "{rejects}" ] && fail=1; done\n' if rejects else "fail=1\n"
    script.write_text(f"#!/bin/sh\nfail=0\n{check}"
                      f'[ $fail = 1 ] && {{ echo "cc: error: cannot do that" >&2; exit 1; }}\n'
                      f'exec {real} "$@"\n')
    script.chmod(0o755)
    return str(script)


def _load() -> tuple[bool, list[str]]:
    """Loads twice (forgetting between: the warning is once per process, not per load);
    returns whether a library loaded and the CpuKernelsWarning messages given."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = build.load_library() is not None
        build.forget()
        assert (build.load_library() is not None) == loaded
    return loaded, [str(w.message) for w in caught
                    if issubclass(w.category, build.CpuKernelsWarning)]


def _step_agrees_with_reference() -> bool:
    torch.manual_seed(0)
    core = make_core("mlstm", 8, hidden_size=8, num_heads=2)
    x, reset = torch.randn(3, 8), torch.tensor([False, True, False])
    with torch.no_grad():
        state = core.step(x, None, None)[1]
        y, _ = core.step(x, state, reset)
        z, _ = core.step_reference(x, state, reset)
    return bool(torch.allclose(y, z, atol=1e-5, rtol=1e-5))


@pytest.mark.parametrize("rejects, dropped", [
    ("-fopenmp", "-fopenmp"), ("-march=native", "-march=native -fopenmp")])
def test_a_flag_the_compiler_rejects_is_dropped_with_one_warning(
        fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rejects: str,
        dropped: str) -> None:
    if build._compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("CC", _fake_cc(tmp_path, rejects))
    loaded, said = _load()
    assert loaded and len(said) == 1 and "\n" not in said[0], said
    assert said[0].startswith(f"compiled CPU kernels built without {dropped} (")
    assert "cc: error: cannot do that" in said[0] and "XLSTM_RL_CPU_KERNELS=quiet" in said[0]
    again = str(build.load_warning())  # the second load's: the failure was remembered
    assert again.startswith(f"compiled CPU kernels built without {dropped} (")
    assert ".failed (delete it to try again): " in again
    assert rejects not in build.why_unavailable()
    assert _step_agrees_with_reference()


def test_a_compiler_that_always_fails_gives_one_warning_and_the_torch_path(
        fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", _fake_cc(tmp_path, None))
    loaded, said = _load()
    assert not loaded and len(said) == 1, said
    assert said[0].startswith("compiled CPU kernels unavailable: ")
    assert "cannot do that" in said[0] and "XLSTM_RL_CPU_KERNELS=0" in said[0]
    assert not list((tmp_path / "cache").glob("*.so"))
    assert _step_agrees_with_reference()


@pytest.mark.parametrize("setting", ["quiet", "0"])
def test_quiet_and_off_give_no_warning(fresh: None, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    """``quiet`` keeps the kernels and their report (bench JSON) without the warning; ``0``
    switches them off, which is no fallback to report."""
    monkeypatch.setenv("CC", _fake_cc(tmp_path, None))
    monkeypatch.setenv("XLSTM_RL_CPU_KERNELS", setting)
    loaded, said = _load()
    assert not loaded and not said
    report = build.load_warning()
    assert (report is None) if setting == "0" else "unavailable" in str(report)


def test_no_compiler_gives_one_line_on_stderr(tmp_path: Path) -> None:
    """A process without any compiler: one stderr line, and the PyTorch path agrees."""
    here = str(Path(__file__).parent)
    code = (f"import sys; sys.path[:0] = [{here!r}]; from test_cpu_build import "
            "_step_agrees_with_reference as agrees; print(agrees())")
    env = {key: value for key, value in os.environ.items()
           if key not in ("CC", "XLSTM_RL_CPU_KERNELS")}
    env.update(PATH=str(tmp_path), XLSTM_RL_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=True)
    assert done.stdout.strip() == "True"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CpuKernelsWarning: compiled CPU kernels unavailable: no C " \
        "compiler found" in lines[0], done.stderr


def test_sanitizing_adds_its_flags_to_every_set_and_keys_the_cache(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XLSTM_RL_CPU_SANITIZE", raising=False)
    plain = build.flag_sets()
    monkeypatch.setenv("XLSTM_RL_CPU_SANITIZE", "1")
    sanitized = build.flag_sets()
    assert sanitized == tuple((*flags, *build.SANITIZE_FLAGS) for flags in plain)
    assert "-fsanitize=undefined,bounds" in build.SANITIZE_FLAGS
    assert build._key("cc", sanitized[0]) != build._key("cc", plain[0])
