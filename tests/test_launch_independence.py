"""What the code does must not depend on how the process was launched (issue 22, parts 7, 8a).

* Signals: a process started with SIGINT ignored (``make test &`` from a script, some CI
  runners) or with Python's default handler behaves as documented, and
  every handler installed is put back exactly as found. The compare runner's own cases are in
  ``test_compare_units.py``.
* Imports: a bare ``import xlstm_rl`` in a fresh interpreter registers the ``xlstm_rl/...``
  gymnasium ids without importing torch or gymnasium, whatever the order of the imports.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from xlstm_rl.cli.train import StopFlag


@pytest.fixture(params=[signal.default_int_handler, signal.SIG_IGN],
                ids=["sigint-default", "sigint-ignored"])
def inherited_sigint(request) -> Iterator[Any]:
    """SIGINT's disposition as a command inherits it, whatever pytest was started with; the
    original is put back after."""
    found = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, request.param)
    yield request.param
    if found is not None:  # None: installed outside Python, never changed here
        signal.signal(signal.SIGINT, found)


def test_training_acts_on_sigint_whatever_it_inherited_and_restores_it(inherited_sigint) -> None:
    """``train``'s handler is installed over an ignored SIGINT too (compare stops its cells
    with SIGINT) and the inherited disposition is back afterwards."""
    term = signal.getsignal(signal.SIGTERM)
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # handled in this (the main) thread right away
        assert stop.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is inherited_sigint
    assert signal.getsignal(signal.SIGTERM) is term


_IMPORTS = {
    "xlstm_rl first": "import xlstm_rl\nlight()\nimport gymnasium\n",
    "gymnasium first": "import gymnasium\nimport xlstm_rl\n",
    # torchrl and others ask whether gymnasium is installed before anything imports it
    "find_spec first": ("import xlstm_rl, importlib.util\nlight()\n"
                        "assert importlib.util.find_spec('gymnasium') is not None\n"
                        "import gymnasium\n"),
}


@pytest.mark.parametrize("order", list(_IMPORTS))
def test_import_xlstm_rl_registers_the_env_ids_without_torch(order: str) -> None:
    code = textwrap.dedent("""
        import sys

        def light():
            heavy = [m for m in ('torch', 'gymnasium', 'numpy') if m in sys.modules]
            assert not heavy, f'import xlstm_rl imported {heavy}'
    """) + _IMPORTS[order] + textwrap.dedent("""
        assert 'xlstm_rl.envs' not in sys.modules  # registered by name: no env module yet
        for env_id in ('xlstm_rl/TMaze-v0', 'xlstm_rl/DelayedRecall-v0',
                       'xlstm_rl/PositionOnlyCartPole-v0', 'xlstm_rl/VelocityOnlyCartPole-v0'):
            env = gymnasium.make(env_id)
            env.reset(seed=0)
            env.close()
        assert 'torch' not in sys.modules
        assert not [f for f in sys.meta_path if 'xlstm_rl' in type(f).__module__]
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
