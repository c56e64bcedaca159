"""Async env workers and Ctrl-C (issue 8, item 5): the workers ignore SIGINT, so the main
process decides; they start with an explicit start method; the parent's handlers are untouched;
``allow_imports=False`` imports nothing a name points to."""
from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import textwrap
from typing import cast

import pytest
from gymnasium.vector import AsyncVectorEnv

from xlstm_rl.envs import make_env, make_vec_env, resolve_env_id
from xlstm_rl.envs.make import worker_start_method
from xlstm_rl.envs.wrappers import ImportNotAllowedError

_GROUP_SIGINT = textwrap.dedent('''
    import os, signal, time
    import xlstm_rl.envs
    from xlstm_rl.envs import make_vec_env

    envs = make_vec_env("CartPole-v1", 2, vectorization="async", seed=0)
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    os.killpg(0, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    time.sleep(0.5)
    envs.step(envs.action_space.sample())  # the workers are still there
    envs.close()
    print("stepped after SIGINT", received)
''')


def test_async_workers_survive_a_process_group_sigint() -> None:
    out = subprocess.run([sys.executable, "-c", _GROUP_SIGINT], capture_output=True, text=True,
                         timeout=120, start_new_session=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stepped after SIGINT [2]" in out.stdout


def test_async_workers_use_an_explicit_start_method() -> None:
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)  # as importing torchrl does
    try:
        envs = make_vec_env("CartPole-v1", 1, vectorization="async")
        try:
            kind = type(cast(AsyncVectorEnv, envs).processes[0]).__name__
        finally:
            envs.close()
    finally:
        multiprocessing.set_start_method(previous, force=True)
    assert worker_start_method() == "fork"  # Linux
    assert kind == "ForkProcess"


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_parent_sigint_handler_is_untouched(vectorization) -> None:
    before = signal.getsignal(signal.SIGINT)
    envs = make_vec_env("CartPole-v1", 1, vectorization=vectorization)
    envs.close()
    assert signal.getsignal(signal.SIGINT) is before


def test_no_imports_when_forbidden() -> None:
    for module in ("this", "antigravity"):
        sys.modules.pop(module, None)
    with pytest.raises(ImportNotAllowedError, match="needs module 'antigravity'"):
        resolve_env_id("antigravity:Fly-v0", allow_imports=False)
    assert resolve_env_id("this:CartPole-v1", allow_imports=False) == "CartPole-v1"
    with pytest.raises(ImportNotAllowedError, match="pydoc.pipepager"):
        make_env("CartPole-v1", wrappers=[{"name": "pydoc.pipepager", "kwargs": {"cmd": "x"}}],
                 allow_imports=False)
    with pytest.raises(ImportNotAllowedError, match="loads other environment"):
        resolve_env_id("GymV26Environment-v0", allow_imports=False)
    assert "this" not in sys.modules and "antigravity" not in sys.modules
