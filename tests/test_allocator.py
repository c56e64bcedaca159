"""Keeping freed memory for reuse (``xlstm_rl/allocator.py``): the setting takes, can be
switched off, takes a step's large temporaries from the heap, and the command line sets it."""
from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from xlstm_rl import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

STEPS = textwrap.dedent("""
    import ctypes, sys, torch
    from xlstm_rl.allocator import keep_freed_memory
    class Info(ctypes.Structure):  # glibc's struct mallinfo2
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        print("no-mallinfo2")
        sys.exit(0)
    libc.mallinfo2.restype = Info
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    x = torch.ones(7_500_000)  # 30 MB, as one of a step's large temporaries
    print(libc.mallinfo2().hblkhd)  # bytes in blocks with their own mapping
""")
MB = 1 << 20


def _mapped_bytes(mode: str) -> int | None:
    """Bytes in separately mapped blocks while a 30 MB tensor lives (None: this glibc has no
    mallinfo2)."""
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip().splitlines()[-1]
    return None if out == "no-mallinfo2" else int(out)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_the_setting_takes_and_the_switch_turns_it_off(monkeypatch):
    assert allocator.keep_freed_memory() is True
    monkeypatch.setenv(allocator.ENV_SWITCH, "0")
    assert allocator.keep_freed_memory() is False


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_large_temporaries_come_from_the_heap():
    """With the setting, a 30 MB block comes from the heap, which keeps it for the next step
    when freed; with glibc's defaults it gets a mapping of its own, which free hands back to the
    kernel, so the next one faults its pages in again."""
    kept, default = _mapped_bytes("keep"), _mapped_bytes("default")
    if kept is None or default is None:
        pytest.skip("this glibc has no mallinfo2")
    assert default >= 30 * MB, f"{default / MB:.1f} MB mapped without the setting"
    assert kept < 30 * MB, f"{kept / MB:.1f} MB mapped with the setting"


def test_the_command_line_turns_it_on(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    from xlstm_rl.cli import main
    assert main(["eval", str(tmp_path / "missing")]) == 2  # a user error, after the setting
    assert calls == [1]
