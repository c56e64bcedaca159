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
may write, is never loaded (it is rebuilt).

Nothing here is required: without a compiler, with ``XLSTM_RL_CPU_KERNELS=0``, or when a build
fails, :func:`load_library` returns None and callers use the PyTorch path (same math, more
ops). The first failure is remembered for the process; ``why_unavailable`` says what it was.
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
from collections.abc import Iterator
from pathlib import Path

_HERE = Path(__file__).resolve().parent
SOURCES = ("kernels.c", "mlstm_cell.h", "mlstm_block.h", "mlstm_tile.h", "mlstm_sequence.h",
           "mlstm_sequence_bwd.h", "mlstm_block_train.h", "mlstm_block_maps.h", "vec.h")
"""Files the library is built from (the first is compiled; the others are included)."""
ABI_VERSION = 4
"""Must equal ``xlstm_cpu_kernels_abi()`` of the loaded library."""
_FAST = ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast")
_FLAG_SETS = ((*_FAST, "-fopenmp"), _FAST, ("-O3", "-march=native"), ("-O3",))
"""Tried in order until one builds and loads."""
_STATE: dict[str, object] = {}


def enabled() -> bool:
    """False when ``XLSTM_RL_CPU_KERNELS`` is ``0`` / ``false`` / ``no`` / ``off``."""
    return os.environ.get("XLSTM_RL_CPU_KERNELS", "1").strip().lower() not in (
        "0", "false", "no", "off")


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


def _run_all(cmds: list[list[str]]) -> str | None:
    """Runs the commands at once; None when all succeed, else the first failure."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd in cmds]
    failed = None
    for cmd, proc in zip(cmds, procs):
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            err = "timed out after 120 s"
        if proc.returncode != 0 and failed is None:
            failed = f"{' '.join(cmd[:3])} ... failed: {(err or '').strip()[:200]}"
    return failed


def _build(cc: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Compiles into ``target`` (atomically); returns None on success, else why it failed."""
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
        return f"{cc} could not be run: {exc}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _trusted(path: Path) -> bool:
    """Loading a library runs its code: a cached one is used only if this user owns it and
    no one else may write it (else it is rebuilt over)."""
    if not hasattr(os, "getuid"):
        return True
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _open(path: Path) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(path))
        return lib if lib.xlstm_cpu_kernels_abi() == ABI_VERSION else None
    except (OSError, AttributeError):
        return None


def _find_or_build() -> tuple[ctypes.CDLL | None, str]:
    if not enabled():
        return None, "disabled by XLSTM_RL_CPU_KERNELS"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (cc, gcc, clang or $CC)"
    why = "not built"
    for flags in _FLAG_SETS:
        target = cache_dir() / f"xlstm_rl_cpu_{_key(cc, flags)}.so"
        lib = _open(target) if target.exists() and _trusted(target) else None
        if lib is None:
            try:
                failed = _build(cc, flags, target)
            except OSError as exc:  # the cache folder is not writable
                failed = f"cannot write {target.parent}: {exc}"
            if failed:
                why = failed
                continue
            lib = _open(target)
        if lib is not None:
            return lib, f"built with {cc} {' '.join(flags)}: {target}"
        why = f"{target} does not load"
    return None, why


def load_library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first call), or None when they are unavailable."""
    if "lib" not in _STATE:
        _STATE["lib"], _STATE["why"] = _find_or_build()
    found = _STATE["lib"]
    return found if isinstance(found, ctypes.CDLL) else None


def function(name: str, argtypes: list, restype: object = None):  # noqa: ANN201
    """The library's C function ``name`` with its ctypes signature set, or None (no library).
    Cached: ctypes' argument conversion is set up once, not per call."""
    if _STATE.get("off"):
        return None
    key = "fn:" + name
    if key not in _STATE:
        lib = load_library()
        if lib is None:
            return None
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
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
