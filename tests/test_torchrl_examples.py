"""examples/: both scripts run (tiny step counts, in a subprocess, so they never rot), and the
TorchRL pipeline of examples/torchrl_ppo.py (GymWrapper, InitTracker, the XLSTMModule primer,
Collector, GAE, ClipPPOLoss) learns the T-maze with the mLSTM module."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FINAL = re.compile(r"(\S+): (\d+) env steps at \d+ steps/s; final success rate ([0-9.]+)")


def run_example(*args: str) -> re.Match:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                         cwd=EXAMPLES.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    match = FINAL.search(out.stdout)
    assert match is not None, out.stdout[-2000:]
    return match


@pytest.mark.parametrize("core", ["mlstm", "lstm-torchrl"])
def test_torchrl_example_runs(core: str) -> None:
    match = run_example(str(EXAMPLES / "torchrl_ppo.py"), "--total-steps", "64", "--core", core,
                        "--num-envs", "4", "--rollout-len", "16", "--seq-len", "8")
    assert match.group(1) == core
    assert int(match.group(2)) == 4 * 16  # one iteration: 4 envs x 16 steps
    assert 0.0 <= float(match.group(3)) <= 1.0


def test_minimal_example_runs() -> None:
    match = run_example(str(EXAMPLES / "minimal_ppo.py"), "--total-steps", "64",
                        "--num-envs", "4", "--num-steps", "16")
    assert match.group(1) == "mlstm" and int(match.group(2)) == 4 * 16
    assert 0.0 <= float(match.group(3)) <= 1.0


def test_minimal_example_imports_only_make_core_from_xlstm_rl() -> None:
    source = (EXAMPLES / "minimal_ppo.py").read_text()
    imports = re.findall(r"^(?:from|import) (xlstm_rl\S*)(?: import (.+))?$", source, re.M)
    assert imports == [("xlstm_rl.cores", "make_core")]
    assert "torchrl" not in source
    assert 200 <= len(source.splitlines()) <= 300


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.learning
def test_torchrl_pipeline_with_mlstm_module_learns_the_tmaze() -> None:
    """Corridor 10: a memoryless policy succeeds half the time; the mLSTM must reach 0.95."""
    example = load_example("torchrl_ppo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = example.train("mlstm", total_steps=30_000, seed=0, target_success=1.0,
                               eval_every=2, verbose=False)
        memoryless = example.train("mlp", total_steps=4096, seed=0, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert example.Settings().corridor_length == 10
    assert result["success"] >= 0.95, result
    # The control: the same pipeline without memory can only guess the turn.
    assert memoryless["success"] <= 0.75, memoryless


def test_gae_with_the_mlstm_critic_agrees_shifted_and_unshifted() -> None:
    """GAE's unshifted ("next", ...) pass restarts the critic from stored non-zero states at
    is_init steps; its advantages must equal the single shifted pass over each row."""
    example = load_example("torchrl_ppo")
    from torchrl.objectives.value import GAE

    settings = example.Settings(num_envs=4, rollout_len=24)  # two T-maze episodes per row
    torch.manual_seed(0)
    env = example.make_env(settings)
    env.set_seed(0)
    policy, value = example.make_agent(env, "mlstm", settings)
    collector = example.Collector(env, policy, frames_per_batch=96, total_frames=-1)
    batch = next(iter(collector))
    collector.shutdown()
    assert batch["is_init"][:, 1:].any()  # episodes start inside the rows
    advantages = []
    for shifted in (True, False):
        gae = GAE(gamma=0.99, lmbda=0.95, value_network=value, shifted=shifted,
                  deactivate_vmap=True)
        with torch.no_grad(), example.set_recurrent_mode(True):
            advantages.append(gae(batch.clone())["advantage"])
    torch.testing.assert_close(advantages[0], advantages[1], atol=1e-5, rtol=1e-5)
