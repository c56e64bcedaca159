"""Fuzz of the compiled kernels' Python/C boundary (``tests/cpu_fuzz.py``), in a subprocess so
that a crash (a segfault, an abort from a corrupted heap) fails this test instead of pytest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xlstm_rl.kernels import cpu as cpu_kernels

pytestmark = pytest.mark.skipif(cpu_kernels.load_library() is None,
                                reason="no compiled CPU kernels here")
CALLS = 2500


def test_every_entry_point_equals_pytorch_or_refuses_in_one_line() -> None:
    script = Path(__file__).with_name("cpu_fuzz.py")
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run([sys.executable, str(script), "0", str(CALLS)], capture_output=True,
                          text=True, timeout=900, env=env)
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, f"exit {done.returncode}:\n{tail}"
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert sum(counts.values()) == CALLS
    for entry in ("cell_step", "sequence", "block_step", "block_forward", "block_pre",
                  "sequence_backward_op"):
        # Both outcomes occur for every entry point: the fuzz reaches C, and it is refused.
        assert counts.get(f"{entry}:equal", 0) > 50, counts
        assert counts.get(f"{entry}:refused", 0) > 50, counts
