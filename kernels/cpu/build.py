"""Compiles the C kernels of this folder once per machine and loads them with ctypes.

The sources are plain C11, libm and OpenMP (no Python or torch headers), so the system C
compiler builds them in a few seconds on first use (``make`` does it while setting up the
environment). With ``-fopenmp`` the library needs ``libgomp.so.1``, and the loader hands it the
one torch already mapped: its threads are torch's OpenMP workers, not a second set competing
with them for the cores. A compiler without OpenMP gets the next flag set (POSIX threads).
The library is cached per user under
``$XLSTM_RL_CACHE`` (default ``$XDG_CACHE_HOME/xlstm-rl`` or ``~/.cache/xlstm-rl``), keyed by
a digest of the sources, the compiler, its flags and the CPU's instruction-set flags (the
build uses ``-march=native``), and written under a temporary name then renamed, so concurrent
processes never load a half-written file. A cached library another user owns, or one others
may write, is never loaded (it is rebuilt). A flag set the compiler refuses (clang without
libomp links no ``-fopenmp``) is remembered beside it in a ``.failed`` file, so later processes
go straight to the next set instead of compiling again.

Before anything is called, the library's own description of its ABI (``abi.h``) is compared
with the declarations Python expects (:mod:`.abi`); a library that differs is refused.

Nothing here is required: without a compiler, with ``XLSTM_RL_CPU_KERNELS=0``, or when a build
fails or is refused, :func:`load_library` returns None and callers use the PyTorch path (same
math, more ops). The first failure is remembered for the process; ``why_unavailable`` says what
it was. Unless the kernels were switched off, that fallback, and a build that had to drop some
of the best flags (no OpenMP, no ``-march=native``), is said once per process in one
:class:`CpuKernelsWarning` line (``XLSTM_RL_CPU_KERNELS=quiet`` keeps the kernels, silently);
:func:`load_warning` returns it for reports. ``XLSTM_RL_CPU_SANITIZE=1`` builds with UBSan
(``make test-kernels-sanitized``).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from . import abi

_HERE = Path(__file__).resolve().parent
SOURCES = ("kernels.c", "mlstm_cell.h", "mlstm_block.h", "mlstm_tile.h", "mlstm_sequence.h",
           "mlstm_sequence_bwd.h", "mlstm_block_train.h", "mlstm_block_maps.h", "vec.h", "abi.h")
"""Files the library is built from (the first is compiled; the others are included)."""
ABI_VERSION = abi.DIGEST
"""A digest of the ABI table Python expects (:func:`.abi.expected_table`), in the cache key: the
table itself is checked at every load, so no number has to be bumped by hand."""
_FAST = ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast")
_FLAG_SETS = ((*_FAST, "-fopenmp"), _FAST, ("-O3", "-march=native"), ("-O3",))
"""Tried in order until one builds and loads."""
SANITIZE_FLAGS = ("-fsanitize=undefined,bounds", "-fno-sanitize-recover=undefined", "-g")
"""Added to every flag set (compile and link) under ``XLSTM_RL_CPU_SANITIZE=1``: undefined
behaviour aborts the process with a report instead of passing unnoticed."""
_STATE: dict[str, object] = {}
_WARNED: set[str] = set()
"""The warning this process gave (kept through :func:`forget`: said once per process)."""


class CpuKernelsWarning(RuntimeWarning):
    """The compiled CPU kernels fell back to the PyTorch path, or were built without some of
    the best flags."""


def enabled() -> bool:
    """False when ``XLSTM_RL_CPU_KERNELS`` is ``0`` / ``false`` / ``no`` / ``off``."""
    return os.environ.get("XLSTM_RL_CPU_KERNELS", "1").strip().lower() not in (
        "0", "false", "no", "off")


def _quiet() -> bool:
    """True when ``XLSTM_RL_CPU_KERNELS=quiet``: kernels on, no warning about how they built."""
    return os.environ.get("XLSTM_RL_CPU_KERNELS", "").strip().lower() == "quiet"


def sanitized() -> bool:
    """True when ``XLSTM_RL_CPU_SANITIZE`` is set to something other than ``0`` / empty."""
    return os.environ.get("XLSTM_RL_CPU_SANITIZE", "").strip().lower() not in (
        "", "0", "false", "no", "off")


def flag_sets() -> tuple[tuple[str, ...], ...]:
    """The compiler flag sets to try, best first (with :data:`SANITIZE_FLAGS` when
    :func:`sanitized`)."""
    extra = SANITIZE_FLAGS if sanitized() else ()
    return tuple((*flags, *extra) for flags in _FLAG_SETS)


def cache_dir() -> Path:
    """Folder of the compiled libraries (see the module docstring)."""
    if os.environ.get("XLSTM_RL_CACHE"):
        return Path(os.environ["XLSTM_RL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xlstm-rl"


def _cpu_flags() -> str:
    """The CPU's instruction-set description (Linux: the ``flags`` line of /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _key(cc: str, flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((_HERE / name).read_bytes())
    h.update(f"|{cc}|{' '.join(flags)}|{ABI_VERSION}|{_cpu_flags()}".encode())
    return h.hexdigest()[:20]


PARTS = ("32", "64")
"""``kernels.c`` is compiled once per scalar type (``-DXLSTM_PART=32`` / ``64``), the two at
the same time, then linked: on two cores this halves the build (about 3 s instead of 6)."""


def _run_all(cmds: list[list[str]]) -> tuple[str, bool] | None:
    """Runs the commands at once; None when all succeed, else the first failure and whether it
    is lasting (the compiler refused; not a timeout of a loaded machine)."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd in cmds]
    failed = None
    limit = 120 * (4 if sanitized() else 1)  # UBSan's checks make the -O3 build slower
    for cmd, proc in zip(cmds, procs):
        lasting = True
        try:
            _, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            err, lasting = f"timed out after {limit} s", False
        if proc.returncode != 0 and failed is None:
            failed = f"{' '.join(cmd[:3])} ... failed: {(err or '').strip()[:200]}", lasting
    return failed


def _build(cc: str, flags: tuple[str, ...], target: Path) -> tuple[str, bool] | None:
    """Compiles into ``target`` (atomically); returns None on success, else why it failed and
    whether that is lasting (see :func:`_run_all`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = os.path.join(work, "lib.so")
    objects = [os.path.join(work, f"part{part}.o") for part in PARTS]
    compile_cmds = [[cc, *flags, "-std=c11", "-pthread", "-fPIC", f"-DXLSTM_PART={part}", "-c",
                     "-o", obj, str(_HERE / SOURCES[0])] for part, obj in zip(PARTS, objects)]
    link = [cc, *flags, "-pthread", "-shared", "-o", tmp, *objects, "-lm"]
    try:
        failed = _run_all(compile_cmds) or _run_all([link])
        if failed is None:
            os.replace(tmp, target)
        return failed
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{cc} could not be run: {exc}", False
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _trusted(path: Path) -> bool:
    """Loading a library runs its code: a cached one is used only if this user owns it and
    no one else may write it (else it is rebuilt over)."""
    if not hasattr(os, "getuid"):
        return True
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


class _Refused(Exception):
    """A library that loads but whose ABI table differs from :mod:`.abi`'s."""


def _open(path: Path) -> ctypes.CDLL | None:
    """The library at ``path``, or None when it does not load.

    Raises:
        _Refused: Its ABI table differs from the expected one (the first difference).
    """
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    mismatch = abi.check(lib)
    if mismatch is not None:
        raise _Refused(mismatch)
    return lib


def _remember_failure(marker: Path, why: str) -> None:
    """Writes ``why`` to ``marker`` (atomically; nothing when the cache is not writable)."""
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(prefix=f".{marker.name}.", dir=marker.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(why)
        os.replace(tmp, marker)


def _obtain(cc: str, flags: tuple[str, ...]) -> tuple[ctypes.CDLL | None, str]:
    """The library for these flags, cached or built now: ``(lib, how)`` or ``(None, why)``.
    A cached copy that does not load (damaged, or untrusted) is built again; one refused is
    not (the same sources would build the same ABI). A lasting build failure is remembered
    beside it (``.failed``): a compiler that compiles all but cannot link ``-fopenmp`` (clang
    without libomp) would otherwise cost every process a whole build.

    Raises:
        _Refused: The library's ABI table differs from the expected one.
    """
    target = cache_dir() / f"xlstm_rl_cpu_{_key(cc, flags)}.so"
    marker = target.with_suffix(".failed")
    lib = _open(target) if target.exists() and _trusted(target) else None
    if lib is None:
        if marker.exists() and _trusted(marker):
            return None, f"{marker} (delete it to try again): {marker.read_text(encoding='utf-8')}"
        try:
            failed = _build(cc, flags, target)
        except OSError as exc:  # the cache folder is not writable
            failed = f"cannot write {target.parent}: {exc}", False
        if failed:
            if failed[1]:
                _remember_failure(marker, failed[0])
            return None, failed[0]
        lib = _open(target)
    if lib is None:
        return None, f"{target} does not load"
    return lib, f"built with {cc} {' '.join(flags)}: {target}"


def _one_line(text: str, limit: int = 240) -> str:
    """``text`` on one line, cut to ``limit`` characters (compiler errors span many)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _fallback(what: str) -> str:
    """The warning of a fallback to the PyTorch path: what happened, and how to silence it."""
    return (f"compiled CPU kernels {what}; using the PyTorch path "
            "(set XLSTM_RL_CPU_KERNELS=0 to skip them without this warning)")


def _find_or_build() -> tuple[ctypes.CDLL | None, str, str | None]:
    """``(library or None, how it was built or why not, the warning to give or None)``."""
    if not enabled():
        return None, "disabled by XLSTM_RL_CPU_KERNELS", None
    cc = _compiler()
    if cc is None:
        why = "no C compiler found (cc, gcc, clang or $CC)"
        return None, why, _fallback(f"unavailable: {why}")
    sets = flag_sets()
    failures: list[str] = []
    for flags in sets:
        try:
            lib, how = _obtain(cc, flags)
        except _Refused as refused:
            return None, f"refused: {refused}", _fallback(f"refused: {refused}")
        if lib is not None:
            dropped = " ".join(flag for flag in sets[0] if flag not in flags)
            warning = None if not failures else (
                f"compiled CPU kernels built without {dropped} ({_one_line(failures[0])}); "
                "they run, slower (XLSTM_RL_CPU_KERNELS=quiet silences this)")
            return lib, how, warning
        failures.append(how)
    return None, failures[-1], _fallback(f"unavailable: {_one_line(failures[-1])}")


def _warn_once(message: str) -> None:
    """One :class:`CpuKernelsWarning` line per process (``warn_explicit`` with no source file:
    the usual second line, the warning call's source, would only show this module)."""
    if _WARNED or _quiet():
        return
    _WARNED.add(message)
    warnings.warn_explicit(message, CpuKernelsWarning, filename="xlstm-rl", lineno=0,
                           module="xlstm_rl.kernels.cpu")


def load_library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first call), or None when they are unavailable."""
    if "lib" not in _STATE:
        _STATE["lib"], _STATE["why"], _STATE["warning"] = _find_or_build()
        if _STATE["warning"]:
            _warn_once(str(_STATE["warning"]))
    found = _STATE["lib"]
    return found if isinstance(found, ctypes.CDLL) else None


def function(name: str):  # noqa: ANN201
    """The library's C function ``name`` with its ctypes signature (from :mod:`.abi`) set, or
    None (no library). Cached: ctypes' argument conversion is set up once, not per call.

    Args:
        name: The exported name (``xlstm_mlstm_seq_fwd_f32``).
    """
    if _STATE.get("off"):
        return None
    key = "fn:" + name
    if key not in _STATE:
        lib = load_library()
        if lib is None:
            return None
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = abi.signature(name)
        _STATE[key] = fn
    return _STATE[key]


_OPENMP_RUNTIMES = ("libgomp", "libiomp", "libomp")


def openmp_runtimes() -> set[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux's ``/proc/self/maps``;
    empty where that cannot be read)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "omp" in line}
    except OSError:
        return set()
    return {p for p in paths if os.path.basename(p).startswith(_OPENMP_RUNTIMES)}


def uses_openmp() -> bool:
    """True when the loaded library runs its threads on torch's OpenMP workers: it was built
    with OpenMP and the process maps a single OpenMP runtime (a torch built with another
    runtime, e.g. Intel's, would leave two sets of threads competing for the cores)."""
    if "openmp" not in _STATE:  # asked per kernel call: once per load
        lib = load_library()
        _STATE["openmp"] = (lib is not None and bool(lib.xlstm_cpu_kernels_openmp())
                            and len(openmp_runtimes()) == 1)
    return bool(_STATE["openmp"])


def why_unavailable() -> str:
    """After :func:`load_library`: how the library was obtained, or why it is unavailable."""
    load_library()
    return str(_STATE["why"])


def load_warning() -> str | None:
    """After :func:`load_library`: the warning its load gave (a fallback to the PyTorch path,
    a refused library, flags dropped), or None; for reports (said even when silenced)."""
    load_library()
    found = _STATE["warning"]
    return None if found is None else str(found)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, every caller takes the PyTorch path (benchmarks time both in one
    run; tests compare them)."""
    before = _STATE.get("off", False)
    _STATE["off"] = True
    try:
        yield
    finally:
        _STATE["off"] = before


def forget() -> None:
    """Drops the process's memory of the last load and its functions (tests switch the kernels
    on and off)."""
    _STATE.clear()
