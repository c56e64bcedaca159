"""``xlstm-rl train --nproc N``: one data-parallel run in N processes on this machine.

It starts the N ranks itself with the environment torchrun would give them (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT``), so
``torchrun --standalone --nproc-per-node N -m xlstm_rl train ...`` does the same run. The
exit code is rank 0's; if a rank fails, the others are stopped (they would wait for it
forever) and its exit code is returned (its one-line error is already on stderr).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

_GRACE_SECONDS = 10.0
"""How long the other ranks get to exit on their own once one rank has failed."""


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--nproc N`` / ``--nproc=N`` removed."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
               LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return env


def launch_local(nproc: int, train_argv: Sequence[str], fail_fast: bool = True) -> int:
    """Runs ``xlstm-rl train`` with ``train_argv`` (without ``--nproc``) in ``nproc`` ranks.

    Args:
        nproc: Processes.
        train_argv: The arguments after ``train``.
        fail_fast: Stop every rank when one fails (data-parallel ranks would wait for it
            forever). False for actor-learner runs: a failed actor is reported by the learner,
            which goes on; only the learner's failure stops the rest.

    Returns:
        Rank 0's exit code, or (with ``fail_fast``) that of the first rank that failed.
        Ctrl-C reaches every rank through the process group; rank 0 writes one checkpoint
        (exit 130).
    """
    port = free_port()
    cmd = [sys.executable, "-m", "xlstm_rl", "train", *without_nproc(train_argv)]
    procs = [subprocess.Popen(cmd, env=_rank_env(rank, nproc, port)) for rank in range(nproc)]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the ranks decide, not this one
    try:
        return _wait(procs if fail_fast else procs[:1], procs)
    finally:
        signal.signal(signal.SIGINT, previous)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _wait(watched: list[subprocess.Popen], procs: list[subprocess.Popen]) -> int:
    """Waits for every process; a failure among ``watched`` stops the others."""
    failed_at, code = None, None
    while any(p.poll() is None for p in procs):
        for p in watched:
            rc = p.poll()
            if rc not in (None, 0, 130, 143) and failed_at is None:
                failed_at, code = time.monotonic(), rc
        if failed_at is None and procs[0].poll() is not None:  # rank 0 is done: so is the run
            failed_at, code = time.monotonic(), procs[0].returncode
        if failed_at is not None and time.monotonic() - failed_at > _GRACE_SECONDS:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)
    return code if code is not None else int(procs[0].returncode)
