"""torchrl stays inside xlstm_rl.torchrl: ``import xlstm_rl``, the CLI and PPO never load it,
and the start method that importing torchrl sets never reaches PPO's async env workers.

Each check runs in a fresh interpreter, so modules imported by other tests cannot hide an
import (or mask a changed start method)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

BUILD_PPO = """
from xlstm_rl.agents.ppo import PPOConfig, PPOTrainer
from xlstm_rl.schema import EnvConfig, ModelConfig

def build_ppo(vectorization):
    return PPOTrainer(EnvConfig(num_envs=2, vectorization=vectorization,
                                kwargs={"corridor_length": 2}),
                      ModelConfig(core="mlstm", hidden_size=8, num_heads=2, encoder_hidden=8),
                      PPOConfig(rollout_len=8, seq_len=4, epochs=1, minibatches=1), seed=0)
"""

NO_TORCHRL = BUILD_PPO + """
import contextlib, io, sys
import xlstm_rl
import xlstm_rl.cli
with contextlib.redirect_stdout(io.StringIO()) as help_text:
    try:
        code = xlstm_rl.cli.main(["--help"])
    except SystemExit as exit_:
        code = exit_.code
assert code == 0 and "train" in help_text.getvalue(), (code, help_text.getvalue()[:200])
trainer = build_ppo("sync")
trainer.train_iteration()
trainer.close()
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "torchrl")
print("torchrl modules:", loaded)
"""

FORK_AFTER_TORCHRL = BUILD_PPO + """
import multiprocessing
import torchrl  # noqa: F401
print("start method after import torchrl:", multiprocessing.get_start_method())
trainer = build_ppo("async")
kinds = {type(process).__name__ for process in trainer.envs.processes}
trainer.train_iteration()
trainer.close()
print("async env workers:", sorted(kinds))
"""


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_import_cli_help_and_ppo_never_import_torchrl() -> None:
    assert "torchrl modules: []" in run_python(NO_TORCHRL)


def test_async_ppo_envs_fork_after_torchrl_switched_the_start_method() -> None:
    stdout = run_python(FORK_AFTER_TORCHRL)
    # The premise: importing torchrl changes the process-wide default (to spawn).
    assert "start method after import torchrl: spawn" in stdout
    assert "async env workers: ['ForkProcess']" in stdout
