"""End-to-end tests of the ``xlstm-rl`` command line, run in-process with tiny budgets."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import shutil
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import xlstm_rl
import xlstm_rl.cli.bench as bench
import xlstm_rl.cli.train as train_mod
from xlstm_rl.agents.ppo import PPOTrainer
from xlstm_rl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xlstm_rl.cli import main
from xlstm_rl.rundir import default_run_dir

# 2 envs x 8 steps = 16 steps per iteration; 64 steps = 4 iterations; evaluation and
# checkpoint every 2 iterations.
_SETS = ("env.num_envs=2 env.kwargs.corridor_length=3 model.hidden_size=8 model.num_heads=2 "
         "model.encoder_hidden=8 ppo.rollout_len=8 ppo.seq_len=4 ppo.minibatches=2 ppo.epochs=2 "
         "train.eval_episodes=4 train.eval_every=32 train.checkpoint_every=32 "
         "train.target_return=null train.torch_threads=1")
TINY = [a for item in _SETS.split() for a in ("--set", item)] + ["--total-steps", "64",
                                                                  "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny uninterrupted run; the trainer object is kept for comparisons."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    built = []
    original = train_mod._build_trainer

    def keep(config):
        built.append(original(config))
        return built[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "_build_trainer", keep)
        code = main(["train", *TINY, "--run-dir", str(run)])
    assert code == 0
    return {"run": run, "trainer": built[0]}


def _user_error(capsys, argv: list[str], *fragments: str) -> str:
    """Runs ``argv``; asserts exit code 2 and exactly one ``error: ...`` line on stderr."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


class _Evil:
    """Unpickling it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


# ------------------------------------------------------------------ train, eval, load_policy


def test_run_directory_contents(trained) -> None:
    run = trained["run"]
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "checkpoints/latest.safetensors",
                 "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert [row["step"] for row in _metrics(run)] == [16, 32, 48, 64]
    summary = json.loads((run / "eval.json").read_text())
    assert summary["global_step"] == 64 and summary["episodes"] == 4
    assert {"mean_return", "std_return", "success_rate", "best_return"} <= set(summary)


def test_load_policy_acts_like_the_trainer(trained) -> None:
    trainer = trained["trainer"]
    policy = xlstm_rl.load_policy(trained["run"] / "checkpoints" / "latest.safetensors")
    rng = np.random.default_rng(0)
    n = 3
    state_a, state_b = policy.initial_state(n), trainer.policy.initial_state(n)
    reset = np.array([True, False, True])
    for _ in range(6):
        obs = rng.integers(0, 2, size=(n, 4)).astype(np.float32)
        actions, state_a = policy.act(obs, state_a, reset)
        with torch.no_grad():
            ref, _, _, state_b = trainer.policy.act(torch.as_tensor(obs), state_b,
                                                    torch.as_tensor(reset), deterministic=True)
        np.testing.assert_array_equal(actions, trainer.policy.actor.to_env(ref))
        reset = rng.random(n) < 0.3
    assert policy.env_id == "xlstm_rl/TMaze-v0" and policy.env_kwargs == {"corridor_length": 3}


def test_eval_prints_statistics_and_writes_json(trained, tmp_path, capsys) -> None:
    out = tmp_path / "e.json"
    assert main(["eval", str(trained["run"]), "--episodes", "5", "--num-envs", "2",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "best.safetensors" in text and "return  mean" in text and "success rate" in text
    summary = json.loads(out.read_text())
    assert summary["episodes"] == 5 and summary["deterministic"] is True
    assert summary["min_length"] == summary["max_length"] == 4  # corridor 3 + the turn
    assert main(["eval", str(trained["run"] / "checkpoints" / "latest.safetensors"),
                 "--episodes", "2", "--stochastic", "--seed", "3"]) == 0


def _hide_module(monkeypatch, hidden: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == hidden else real(name, *a))


def test_eval_video_without_moviepy_is_a_user_error(trained, capsys, monkeypatch) -> None:
    _hide_module(monkeypatch, "moviepy")
    _user_error(capsys, ["eval", str(trained["run"]), "--video", "v"], "needs moviepy")


# ------------------------------------------------------------------ interrupt and resume


def _interrupt_after(monkeypatch, iterations: int, signum: int) -> None:
    original, calls = PPOTrainer.train_iteration, []

    def train_iteration(self, *args, **kwargs):
        metrics = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == iterations:
            os.kill(os.getpid(), signum)
        return metrics

    monkeypatch.setattr(PPOTrainer, "train_iteration", train_iteration)


def test_interrupt_then_resume_equals_uninterrupted_run(trained, tmp_path, monkeypatch,
                                                        capsys) -> None:
    run = tmp_path / "interrupted"
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 2, signal.SIGINT)
        assert main(["train", *TINY, "--run-dir", str(run)]) == 130
    assert "--resume" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoints" / "latest.safetensors").extra["global_step"] == 32
    assert not (run / "eval.json").exists()
    with open(run / "metrics.jsonl", "a") as f:  # as if killed after a row past the checkpoint
        f.write('{"step": 48, "stale": 1}\n')
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _metrics(run) == _metrics(trained["run"])
    a = load_checkpoint(run / "checkpoints" / "latest.safetensors").state
    b = load_checkpoint(trained["run"] / "checkpoints" / "latest.safetensors").state
    for key, value in b["policy"].items():
        assert torch.equal(a["policy"][key], value), key
    for key, value in b["trainer"]["optimizer"]["state"]["0"].items():
        assert torch.equal(a["trainer"]["optimizer"]["state"]["0"][key], value)
    eval_a, eval_b = (json.loads((r / "eval.json").read_text()) for r in (run, trained["run"]))
    assert eval_a == eval_b


def test_sigterm_checkpoints_and_exits_143(tmp_path, monkeypatch) -> None:
    run = tmp_path / "term"
    _interrupt_after(monkeypatch, 1, signal.SIGTERM)
    found = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or what pytest was started with
    assert main(["train", *TINY, "--run-dir", str(run)]) == 143
    assert (run / "checkpoints" / "latest.safetensors").is_file()
    assert signal.getsignal(signal.SIGTERM) == found  # handler restored


# ------------------------------------------------------------------ user errors


@pytest.mark.parametrize("extra, fragments", [
    (["--set", "ppo.lrr=1"], ["unknown config key 'ppo.lrr'", "did you mean 'ppo.lr'"]),
    (["--set", "ppo.lr=fast"], ["config key 'ppo.lr': expected float, got str 'fast'"]),
    (["--env", "CartPol-v1"], ["unknown environment id 'CartPol-v1'", "CartPole-v1"]),
    (["--env", "no_such_module_xyz:Foo-v0"], ["cannot import module 'no_such_module_xyz'"]),
    (["ppo-mlstm-tmaz"], ["did you mean 'ppo-mlstm-tmaze'"]),
    (["--set", "env.num_envs=0"], ["num_envs must be >= 1"]),
    (["--set", "env.kwargs.corridor_lenght=5"], ["unexpected keyword argument"]),
    (["--device", "gpu"], ["unknown device 'gpu'"]),
])
def test_train_user_errors(capsys, tmp_path, extra, fragments) -> None:
    run = tmp_path / "never"
    _user_error(capsys, ["train", *extra, "--run-dir", str(run)], *fragments)
    assert not run.exists()


def test_bad_argument_is_one_line(capsys) -> None:
    _user_error(capsys, ["train", "--total-steps", "many"], "invalid int value")
    _user_error(capsys, ["bench", "gpu"], "invalid choice")


def test_existing_run_dir_is_left_untouched(trained, capsys) -> None:
    run = trained["run"]
    before = _snapshot(run)
    _user_error(capsys, ["train", *TINY, "--run-dir", str(run)], "already exists",
                "--resume", "--overwrite")
    assert _snapshot(run) == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    _user_error(capsys, ["train", "--run-dir", str(tmp_path), "--overwrite"],
                "does not look like an xlstm-rl run directory")
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    _user_error(capsys, ["train", "--resume", str(tmp_path)], "not a run directory")
    _user_error(capsys, ["train", "--resume", str(tmp_path), "--overwrite"], "cannot be combined")


def test_resume_with_another_architecture_is_refused(trained, tmp_path, capsys) -> None:
    before = _snapshot(trained["run"])
    _user_error(capsys, ["train", "--resume", str(trained["run"]), "--set",
                         "model.hidden_size=16"], "model.hidden_size", "16", "8")
    assert _snapshot(trained["run"]) == before
    run = tmp_path / "copy"  # same config, but weights of another shape in the checkpoint
    shutil.copytree(trained["run"], run)
    ckpt = load_checkpoint(run / "checkpoints" / "latest.safetensors")
    ckpt.state["policy"] = {k: v[:1] if v.dim() else v for k, v in ckpt.state["policy"].items()}
    save_checkpoint(ckpt.path, ckpt.state, config=ckpt.config, spaces=ckpt.spaces)
    before = _snapshot(run)
    _user_error(capsys, ["train", "--resume", str(run)], "do not match the model architecture")
    assert _snapshot(run) == before


@pytest.fixture()
def bad_files(trained, tmp_path) -> dict[str, Path]:
    good = trained["run"] / "checkpoints" / "latest.safetensors"
    data = good.read_bytes()
    files = {kind: tmp_path / f"{kind}.safetensors" for kind in ("truncated", "corrupted",
                                                                  "pickle", "mismatch")}
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["corrupted"].write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    files["marker"] = tmp_path / "EXECUTED"
    files["pickle"].write_bytes(pickle.dumps(_Evil(str(files["marker"]))))
    ckpt = load_checkpoint(good)  # its config now says hidden_size 16; the weights are 8 wide
    config = {**ckpt.config, "model": {**ckpt.config["model"], "hidden_size": 16}}
    save_checkpoint(files["mismatch"], ckpt.state, config=config, spaces=ckpt.spaces)
    return files


@pytest.mark.parametrize("kind, fragment", [
    ("missing", "checkpoint not found"),
    ("truncated", "truncated"),
    ("corrupted", "corrupted"),
    ("pickle", "is a Python pickle"),
    ("mismatch", "do not match the model architecture"),
])
def test_eval_checkpoint_errors(bad_files, capsys, tmp_path, kind, fragment) -> None:
    path = bad_files.get(kind, tmp_path / "missing.safetensors")
    _user_error(capsys, ["eval", str(path)], fragment)
    assert not bad_files["marker"].exists()


def test_load_policy_refuses_a_pickle(bad_files) -> None:
    with pytest.raises(CheckpointError, match="pickle"):
        xlstm_rl.load_policy(bad_files["pickle"])
    assert not bad_files["marker"].exists()


def test_eval_on_an_env_with_other_spaces(trained, capsys) -> None:
    _user_error(capsys, ["eval", str(trained["run"]), "--env", "CartPole-v1"],
                "observation space", "trained on")


# ------------------------------------------------------------------ module:EnvId and wrappers

_USER_MODULE = textwrap.dedent('''
    import gymnasium as gym
    from gymnasium import spaces

    class DoubleReward(gym.RewardWrapper):
        def reward(self, reward):
            return 2.0 * reward

    class TextObs(gym.Env):
        observation_space = spaces.Text(4)
        action_space = spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return "abc", {}

        def step(self, action):
            return "abc", 0.0, True, False, {}

    if "userpkg/ShortMaze-v0" not in gym.registry:
        gym.register("userpkg/ShortMaze-v0", entry_point="xlstm_rl.envs.tmaze:TMazeEnv",
                     kwargs={"corridor_length": 2})
    gym.registry.pop("userpkg/TextObs-v0", None)  # re-imported by each test: register anew
    gym.register("userpkg/TextObs-v0", entry_point=TextObs)
''')


@pytest.fixture()
def user_module(tmp_path, monkeypatch) -> Iterator[str]:
    name = f"userpkg_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_module_env_id_and_config_wrappers(user_module, tmp_path, capsys) -> None:
    run = tmp_path / "user"
    at = TINY.index("env.kwargs.corridor_length=3")
    tiny = TINY[:at - 1] + TINY[at + 1:]  # keep the registered corridor length
    argv = ["train", *tiny, "--run-dir", str(run), "--env", f"{user_module}:userpkg/ShortMaze-v0",
            "--set", f"env.wrappers=[{user_module}.DoubleReward]",
            "--total-steps", "32"]
    assert main(argv) == 0
    summary = json.loads((run / "eval.json").read_text())
    assert summary["mean_length"] == 3.0  # corridor of 2, then the turn
    assert {summary["min_return"], summary["max_return"]} <= {0.0, 2.0}  # doubled rewards
    out = tmp_path / "e.json"
    assert main(["eval", str(run), "--episodes", "3", "--json", str(out),
                 "--trust-checkpoint"]) == 0  # the file names a module and a wrapper
    assert json.loads(out.read_text())["max_length"] == 3.0


def test_unsupported_space_is_a_user_error(user_module, tmp_path, capsys) -> None:
    run = tmp_path / "never"
    _user_error(capsys, ["train", "--env", f"{user_module}:userpkg/TextObs-v0", "--run-dir",
                         str(run)], "unsupported observation space Text")
    assert not run.exists()


# ------------------------------------------------------------------ plot, bench, misc


def test_plot(trained, tmp_path, capsys) -> None:
    _user_error(capsys, ["plot", str(trained["run"]), "--tag", "episode/retrun"],
                "did you mean 'episode/return'")
    _user_error(capsys, ["plot", str(tmp_path / "nothing")], "run directory not found")
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    assert main(["plot", str(trained["run"]), str(trained["run"]), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib(trained, capsys, monkeypatch) -> None:
    _hide_module(monkeypatch, "matplotlib")
    _user_error(capsys, ["plot", str(trained["run"])], "needs matplotlib", "xlstm-rl[plot]")


def test_bench_dispatch(tmp_path, capsys, monkeypatch) -> None:
    calls = []

    def fake(out_path, device="cpu"):
        calls.append((Path(out_path), device))
        Path(out_path).write_text("{}")
        return {"device": device, "speedup": 2.5}

    monkeypatch.setattr(bench, "_load", lambda what: fake)
    out = tmp_path / "b.json"
    assert main(["bench", "cores", "--out", str(out), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert calls == [(out, "cpu")] and "speedup=2.5" in line and str(out) in line


def test_bench_missing_module_is_a_user_error(capsys, monkeypatch) -> None:
    monkeypatch.setitem(bench._BENCHES, "kernels", ("xlstm_rl.no_such_bench", "bench"))
    _user_error(capsys, ["bench", "kernels"], "not available")


def test_help_version_and_configs(capsys) -> None:
    assert main([]) == main(["--version"]) == main(["train", "--help"]) == 0
    capsys.readouterr()
    assert main(["configs"]) == 0
    assert "ppo-mlstm-tmaze  (default)" in capsys.readouterr().out


def test_default_run_dir_name(tmp_path) -> None:
    first = default_run_dir("ppo-mlstm-tmaze", tmp_path)
    assert re.fullmatch(r"ppo-mlstm-tmaze-\d{8}-\d{6}", first.name)
    first.mkdir()
    assert default_run_dir("ppo-mlstm-tmaze", tmp_path) != first
