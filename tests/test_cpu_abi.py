"""The compiled kernels' ABI is checked at load: the library's own table (kernels/cpu/abi.h,
tied to the C declarations by the compiler) against the declarations Python calls them with
(kernels/cpu/abi.py). Edited copies of the sources are built at -O0 in a temporary cache (a
second or two each) and must be refused with one warning naming the first difference."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from xlstm_rl.kernels.cpu import abi, build

_QUICK = (("-O0",),)
"""The flag sets of these tests' builds: the ABI does not depend on optimization."""


@pytest.fixture
def loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A loader that builds quickly into an empty cache and has not warned yet; forgets its
    library afterwards (the next test loads the real one). Yields a copy of the sources."""
    if build.load_library() is None:
        pytest.skip(f"no compiled CPU kernels here: {build.why_unavailable()}")
    sources = tmp_path / "src"
    shutil.copytree(build._HERE, sources, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setenv("XLSTM_RL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XLSTM_RL_CPU_KERNELS", "1")
    monkeypatch.setattr(build, "_FLAG_SETS", _QUICK)
    monkeypatch.setattr(build, "_WARNED", set())
    build.forget()
    yield sources
    build.forget()
    abi.structure.cache_clear()


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) == count, f"{old!r} not found {count} times in {path.name}"
    path.write_text(text.replace(old, new))


def _load_refused(tmp_path: Path) -> str:
    """Loads (building once); asserts the library was refused with exactly one warning and
    returns its message."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert build.load_library() is None
        build.forget()
        assert build.load_library() is None  # the cached copy: refused again, not rebuilt
    said = [str(w.message) for w in caught if issubclass(w.category, build.CpuKernelsWarning)]
    assert len(said) == 1 and "\n" not in said[0], said
    assert said[0].startswith("compiled CPU kernels refused: ")
    assert said[0].endswith(")") and "using the PyTorch path" in said[0]
    assert "refused" in build.why_unavailable()
    assert len(list((tmp_path / "cache").glob("*.so"))) == 1  # one build: a refusal is final
    return said[0]


def test_the_library_reports_the_table_python_expects() -> None:
    lib = build.load_library()
    if lib is None:
        pytest.skip(f"no compiled CPU kernels here: {build.why_unavailable()}")
    table = abi.read_table(lib)
    assert table == abi.expected_table()
    assert table["xlstm_mlstm_seq_fwd_f64"] == "INT (I64, CPTR_SEQ_ARGS, INT)"
    assert build.function("xlstm_mlstm_seq_fwd_f32").argtypes == [
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]


def test_every_exported_symbol_is_in_the_table() -> None:
    lib = build.load_library()
    nm = shutil.which("nm")
    if lib is None or nm is None:
        pytest.skip("needs the compiled kernels and nm")
    listed = subprocess.run([nm, "-D", "--defined-only", lib._name], capture_output=True,
                            text=True, check=True).stdout.split()
    exported = {name for kind, name in zip(listed[1::3], listed[2::3])
                if kind == "T" and not name.startswith("_")}  # not the loader's _init, _fini
    assert exported and exported == {key for key, value in abi.expected_table().items()
                                     if "(" in value}


def test_a_c_signature_changed_with_its_table_entry_is_refused(
        loader: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An extra parameter on both the C function and its abi.h entry compiles, and the
    loader refuses it: Python would call it with one argument too few."""
    _edit(loader / "mlstm_sequence.h", "int SEQ_FWD(int64_t B, const SEQ_ARGS *args, int threads)",
          "int SEQ_FWD(int64_t B, const SEQ_ARGS *args, int threads, int64_t extra)")
    _edit(loader / "abi.h", "X(TYPED(xlstm_mlstm_seq_fwd), INT, I64, CPTR_SEQ_ARGS, INT)",
          "X(TYPED(xlstm_mlstm_seq_fwd), INT, I64, CPTR_SEQ_ARGS, INT, I64)")
    monkeypatch.setattr(build, "_HERE", loader)
    assert ("xlstm_mlstm_seq_fwd_f32 has INT (I64, CPTR_SEQ_ARGS, INT, I64) in the library, "
            "INT (I64, CPTR_SEQ_ARGS, INT) expected") in _load_refused(tmp_path)


@pytest.mark.parametrize("edit", ["listed", "unlisted"])
def test_a_struct_field_added_is_refused(loader: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, edit: str) -> None:
    """A field added to SEQ_ARGS and to its abi.h list is named; one added after ``max_exp``
    but not listed shows as bytes the table does not cover (in the float64 struct: in the
    float32 one it fills what was padding, which offsets cannot tell apart)."""
    header = loader / "mlstm_sequence.h"
    if edit == "listed":
        _edit(header, "    int64_t H, S, dk, dv;\n", "    int64_t H, S, dk, dv, extra;\n")
        _edit(loader / "abi.h", "X(R, dv, I64)", "X(R, dv, I64) X(R, extra, I64)")
        expected = "seq_args_f32.extra is in the library but not expected (I64 at 32, 8 bytes)"
    else:
        _edit(header, "    SCALAR scale, eps, max_exp;\n",
              "    SCALAR scale, eps, max_exp, pad;\n")
        expected = "seq_args_f64 bytes 224..232 is in the library but not expected"
    monkeypatch.setattr(build, "_HERE", loader)
    assert expected in _load_refused(tmp_path)


@pytest.mark.parametrize("side", ["function", "struct"])
def test_python_expectations_edited_are_refused(loader: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                side: str) -> None:
    """The real sources against an edited abi.py: a parameter dropped, a field's type."""
    if side == "function":
        monkeypatch.setitem(abi.TYPED_FUNCTIONS, "xlstm_mlstm_seq_fwd",
                            ("INT", ("I64", "CPTR_SEQ_ARGS")))
        expected = ("xlstm_mlstm_seq_fwd_f32 has INT (I64, CPTR_SEQ_ARGS, INT) in the library,"
                    " INT (I64, CPTR_SEQ_ARGS) expected")
    else:
        fields = tuple((name, "I64" if name == "norm_eps" else token)
                       for name, token in abi.STRUCTS["bt_args"])
        monkeypatch.setitem(abi.STRUCTS, "bt_args", fields)
        abi.structure.cache_clear()
        expected = ("bt_args_f32.norm_eps has SCALAR at 128, 4 bytes in the library, "
                    "I64 at 128, 8 bytes expected")
    assert expected in _load_refused(tmp_path)


def _compilers() -> list[str]:
    return [cc for cc in ("gcc", "clang") if shutil.which(cc)]


@pytest.mark.parametrize("cc", _compilers())
def test_a_prototype_edited_without_its_table_entry_does_not_compile(cc: str,
                                                                     tmp_path: Path) -> None:
    """abi.h ties every entry to the real declaration: a hard error with any flags."""
    shutil.copytree(build._HERE, tmp_path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    _edit(tmp_path / "mlstm_block_train.h",
          "const BT_ARGS *args, int threads, SCALAR *grads)",
          "const BT_ARGS *args, int64_t threads, SCALAR *grads)", count=2)
    _edit(tmp_path / "mlstm_sequence.h", "    const SCALAR *dC, *dn, *dm;",
          "    SCALAR *dC, *dn, *dm;")
    done = subprocess.run([cc, "-std=c11", "-fsyntax-only", "-DXLSTM_PART=64", "kernels.c"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "xlstm_mlstm_block_bwd_pre_f64 differs from its entry in abi.h" in done.stderr
    assert "seq_args_f64.dC differs from its entry in abi.h" in done.stderr
