"""Keeping freed memory for reuse in this process (glibc's ``malloc``), so that the large
temporaries of every training step do not fault their pages in again.

A training step allocates and frees tensors of megabytes (activations, gradients, the compiled
kernels' outputs). glibc hands a freed block above its mmap threshold back to the kernel at
once, and trims the top of its heap beyond a trim threshold, so the next block of that size is
mapped afresh and faults in page by page. Measured on this project's 2-core machine: about
12,000 page faults and 20-40 ms of system time per R2D2 learner update (batch 64 x 120 steps,
width 128), and 12-15% of the update's wall time for the LSTM and the mLSTM core alike.
Raising both thresholds keeps such blocks in the heap for the next step; the process's
resident memory then stays at its high-water mark, as with PyTorch's usual alternative
allocators (jemalloc, tcmalloc).

The command line turns this on for the commands it runs; ``XLSTM_RL_KEEP_FREED_MEMORY=0``
turns it off. Library users may call :func:`keep_freed_memory` themselves.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
"""glibc's ``mallopt`` parameter for the heap's trim threshold."""
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter for the size above which a block gets its own mapping."""
MMAP_THRESHOLD = 32 * 1024 * 1024
"""The largest mmap threshold glibc accepts on 64-bit systems (32 MiB)."""
TRIM_THRESHOLD = 1 << 30
"""Free memory at the top of the heap kept before trimming (1 GiB)."""
ENV_SWITCH = "XLSTM_RL_KEEP_FREED_MEMORY"
"""Set to ``0`` to leave the allocator's settings alone."""


def keep_freed_memory() -> bool:
    """Asks glibc to keep freed blocks of up to 32 MiB, and up to 1 GiB at the heap's top, for
    reuse. Process-wide; later allocations follow it.

    Returns:
        True when both settings took effect; False on other C libraries or platforms, when
        ``XLSTM_RL_KEEP_FREED_MEMORY=0``, or when glibc refused a value.
    """
    if os.environ.get(ENV_SWITCH, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
