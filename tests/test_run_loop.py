"""The run loop and the algorithm registry (docs/architecture.md, "Run loop" and "Registry"):
one unbiased evaluator for training and ``eval``, a toy algorithm trained through the registry
alone, a light ``--help``, and run directories written before the refactor still working."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from xlstm_rl.algorithms import AlgorithmSpec, register_algorithm, unregister_algorithm
from xlstm_rl.cli import main
from xlstm_rl.evaluation import evaluate_policy

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import faulty_envs  # noqa: E402  (registers the xlstm_rl_test/* ids)

DATA = TESTS / "data"


class RandomPolicy:
    """Acts uniformly at random (the ShortFailures env ignores actions)."""

    def initial_state(self, n: int) -> None:
        return None

    def act(self, obs: Any, state: Any, reset: Any, deterministic: bool = True):
        return np.zeros(len(obs), dtype=np.int64), state


def _outcomes(seed: int, episodes: int) -> list[bool]:
    """Success flags of one ShortFailures sub-env's first episodes, run on its own."""
    env = gym.make(faulty_envs.SHORT_FAILURES)
    env.reset(seed=seed)
    inner = cast(faulty_envs.ShortFailuresEnv, env.unwrapped)
    flags = [inner.succeeds]
    while len(flags) < episodes:
        env.reset()
        flags.append(inner.succeeds)
    return flags


def _unbiased(seed: int, n: int, episodes: int) -> float:
    """Mean return when sub-env ``j`` (seed ``seed + j``) runs ``(episodes + j) // n``."""
    flags = [f for j in range(n) for f in _outcomes(seed + j, (episodes + j) // n)]
    return float(np.mean(flags))


def _first_to_finish(seed: int, n: int, episodes: int) -> float:
    """Mean return of the first ``episodes`` episodes to end (the biased count)."""
    ends = []
    for j in range(n):
        t = 0
        for flag in _outcomes(seed + j, episodes):
            t += 20 if flag else 2
            ends.append((t, j, flag))
    return float(np.mean([flag for _, _, flag in sorted(ends)[:episodes]]))


def test_evaluator_runs_a_quota_per_env_not_the_first_to_finish() -> None:
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(faulty_envs.SHORT_FAILURES)] * 16,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    result = evaluate_policy(RandomPolicy(), envs, 16, seed=5)
    expected = _unbiased(5, 16, 16)
    assert result["mean_return"] == pytest.approx(expected, abs=1e-12)
    assert result["success_rate"] == pytest.approx(expected, abs=1e-12)
    assert result["episodes"] == 16 and result["capped_episodes"] == 0
    assert _first_to_finish(5, 16, 16) < expected - 0.3  # the env tells the two apart


def test_training_and_eval_command_give_the_unbiased_mean(tmp_path) -> None:
    """The in-training evaluation (which picks best.safetensors and stops at target_return)
    and ``xlstm-rl eval`` both use the quota evaluator."""
    run = tmp_path / "run"
    sets = ["env.num_envs=2", "model.hidden_size=8", "model.num_heads=2",
            "model.encoder_hidden=8", "ppo.rollout_len=8", "ppo.seq_len=4", "ppo.minibatches=2",
            "ppo.epochs=1", "train.eval_episodes=16", "train.eval_num_envs=16",
            "train.target_return=null", "train.seed=7"]
    args = [a for s in sets for a in ("--set", s)]
    assert main(["train", "--env", faulty_envs.SHORT_FAILURES, *args, "--total-steps", "16",
                 "--no-progress", "--run-dir", str(run)]) == 0
    in_training = json.loads((run / "eval.json").read_text())["mean_return"]
    assert in_training == pytest.approx(_unbiased(7 + 10_000, 16, 16), abs=1e-12)
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--episodes", "16", "--num-envs", "16", "--seed", "3",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mean_return"] == pytest.approx(_unbiased(3, 16, 16),
                                                                        abs=1e-12)


# ---------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ToyConfig:
    """A toy algorithm's one hyper-parameter."""

    bias: float = 0.5
    """Added to the single weight every iteration."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.bias):
            raise ValueError(f"bias must be finite, got {self.bias}")


class ToyNetwork(torch.nn.Module):
    """Always takes action 0; one weight that the toy trainer moves."""

    def __init__(self) -> None:
        super().__init__()
        self.weight: torch.Tensor = torch.nn.Parameter(torch.zeros(1))

    def initial_state(self, n: int, device: Any = None) -> TensorDict:
        return TensorDict({}, batch_size=[n])

    def act_env(self, obs: Any, state: TensorDict, reset: Any, deterministic: bool = True):
        return np.zeros(obs.shape[0], dtype=np.int64), state


class ToyTrainer:
    """Implements the Trainer interface with no learning at all."""

    def __init__(self, config: Any) -> None:
        from xlstm_rl.envs import make_vec_env

        self.config, self.network = config, ToyNetwork()
        self.envs = make_vec_env(config.env.id, config.env.num_envs, seed=config.train.seed,
                                 **dict(config.env.kwargs))
        self.global_step = self.iteration = self.total_steps = 0
        self.logger = None

    observation_space = property(lambda self: self.envs.single_observation_space)
    action_space = property(lambda self: self.envs.single_action_space)
    steps_per_iteration = property(lambda self: 4 * self.envs.num_envs)

    def train_iteration(self, should_stop=None) -> dict[str, float]:
        with torch.no_grad():
            self.network.weight += self.config.toy.bias
        self.global_step += self.steps_per_iteration
        self.iteration += 1
        return {"toy/weight": float(self.network.weight.detach())}

    def acting_policy(self) -> Any:
        from xlstm_rl.policy import Policy

        return Policy(self.network, self.observation_space, self.action_space, self.config)

    def state_dict(self) -> dict[str, Any]:
        return {"policy": {"weight": self.network.weight.detach().clone()}, "obs_norm": {},
                "trainer": {"counters": {"global_step": self.global_step,
                                         "iteration": self.iteration}}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.weight.data.copy_(state["policy"]["weight"])
        self.global_step = int(state["trainer"]["counters"]["global_step"])
        self.iteration = int(state["trainer"]["counters"]["iteration"])

    def close(self) -> None:
        self.envs.close()


def build_toy_policy(config, observation_space, action_space, state, device, where):
    from xlstm_rl.policy import Policy

    network = ToyNetwork()
    network.load_state_dict(state["policy"])
    return Policy(network, observation_space, action_space, config, None, device)


@pytest.fixture
def toy_algorithm():
    spec = register_algorithm(AlgorithmSpec(name="toy", config=ToyConfig, trainer=ToyTrainer,
                                            policy=build_toy_policy))
    yield spec
    unregister_algorithm("toy")


def test_a_toy_algorithm_trains_and_evaluates_through_the_registry(toy_algorithm, tmp_path,
                                                                   capsys) -> None:
    config = tmp_path / "toy.yaml"
    config.write_text("algo: toy\ntoy:\n  bias: 0.25\nenv:\n  id: CartPole-v1\n  num_envs: 2\n"
                      "train:\n  total_steps: 8\n  eval_episodes: 2\n")
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run), "--no-progress"]) == 0
    assert [json.loads(r)["toy/weight"] for r in (run / "metrics.jsonl").read_text().splitlines()] \
        == [0.25]
    assert "toy:" in (run / "config.yaml").read_text()
    assert main(["train", str(config), "--set", "toy.bias=.nan", "--run-dir",
                 str(tmp_path / "bad")]) == 2
    assert "bias must be finite" in capsys.readouterr().err
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    assert "CartPole-v1" in capsys.readouterr().out


def test_unknown_algo_and_foreign_section_are_one_line_errors(tmp_path, capsys) -> None:
    for text, fragment in (("algo: ppp\n", "unknown algo 'ppp'; did you mean 'ppo'"),
                           ("algo: ppo\nr2d3: {}\n", "unknown config key 'r2d3'")):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        assert main(["train", str(path), "--run-dir", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err


@pytest.mark.parametrize("argv", [["--help"], ["configs"], ["train", "--help"]])
def test_help_and_configs_import_no_torch_and_no_trainer(argv) -> None:
    code = ("import sys; from xlstm_rl.cli import main; import xlstm_rl.config as c; "
            f"c.load_config('ppo-mlstm-tmaze'); code = main({argv!r}); "
            "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') "
            "or m.endswith('.trainer') or m == 'gymnasium' or m == 'tensordict'); "
            "print('HEAVY', heavy); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


# ---------------------------------------------------------------------------- compatibility


def test_a_run_written_before_the_refactor_still_evaluates_and_resumes(tmp_path) -> None:
    """tests/data/run_format1: a run directory (format 1 checkpoints, ppo section, flat
    layout) written before the run loop and registry existed. Resuming it to 128 steps gives
    the same metrics and evaluation as the code of that time gave."""
    run = tmp_path / "old"
    shutil.copytree(DATA / "run_format1", run)
    assert main(["eval", str(run), "--episodes", "4"]) == 0
    assert main(["train", "--resume", str(run), "--total-steps", "128", "--no-progress"]) == 0

    def rows(path: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
                for line in path.read_text().splitlines()]

    got, want = rows(run / "metrics.jsonl"), rows(DATA / "run_format1_resumed_to_128.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [32, 64, 96, 128]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    old_eval = json.loads((DATA / "run_format1_resumed_to_128_eval.json").read_text())
    new_eval = json.loads((run / "eval.json").read_text())
    for key, value in old_eval.items():
        assert new_eval[key] == pytest.approx(value), key
