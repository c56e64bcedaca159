"""Faults during ``xlstm-rl train``: a bad env or a diverging update stops the run with one line,
checkpoints are never replaced by non-finite ones, stops are acted on within seconds, and a
killed run resumes from what it wrote (issue "Nothing lost, nothing run", items 3, 4, 6, 11, 12).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xlstm_rl.checkpoint import load_checkpoint
from xlstm_rl.cli import main

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import faulty_envs  # noqa: E402  (registers the xlstm_rl_test/* ids)

_SETS = ("env.num_envs=2 model.hidden_size=8 model.num_heads=2 model.encoder_hidden=8 "
         "ppo.rollout_len=8 ppo.seq_len=4 ppo.minibatches=2 ppo.epochs=1 train.eval_episodes=2 "
         "train.target_return=null "
         "train.torch_threads=1")
TINY = [a for item in _SETS.split() for a in ("--set", item)] + ["--no-progress"]


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "tb" not in p.parts}


@pytest.mark.parametrize("env_id, box, fragments", [
    (faulty_envs.NAN_REWARD, False, ("non-finite reward", "sub-env", "environment is at fault")),
    (faulty_envs.NAN_REWARD, True, ("non-finite reward", "sub-env")),
    (faulty_envs.NAN_OBS, False, ("non-finite observation", "sub-env 0")),
    (faulty_envs.WRONG_SHAPE_OBS, False, ("vector step 3", "wrong shape", "observation space")),
])
def test_env_faults_stop_with_one_line_naming_the_env(tmp_path, capsys, env_id, box,
                                                      fragments) -> None:
    """A NaN reward / observation or a misfit observation names the env and the step; the
    checkpoint written before training (step 0) is left exactly as it was."""
    run = tmp_path / "run"
    extra = ["--set", "env.kwargs.box_actions=true"] if box else []
    line = _one_line_error(capsys, ["train", "--env", env_id, *TINY, *extra,
                                    "--total-steps", "64", "--run-dir", str(run)])
    assert env_id in line and all(f in line for f in fragments), line
    ckpt = load_checkpoint(run / "checkpoints" / "latest.safetensors")
    assert ckpt.extra["global_step"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt.state["policy"].values())
    assert not (run / "eval.json").exists() and not (run / "checkpoints" / "best.safetensors"
                                                      ).exists()


def test_divergence_never_replaces_a_good_checkpoint(tmp_path, capsys, monkeypatch) -> None:
    """Parameters that turn NaN before iteration 3's update stop the run with one line naming
    the iteration; ``latest`` (step 32) and ``best`` stay finite."""
    from xlstm_rl.agents.ppo import PPOTrainer

    original, calls = PPOTrainer._update, []

    def poisoned(self, buffer):
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("nan"))
        return original(self, buffer)

    monkeypatch.setattr(PPOTrainer, "_update", poisoned)
    run = tmp_path / "run"
    line = _one_line_error(capsys, ["train", *TINY, "--set", "train.checkpoint_every=16",
                                    "--set", "train.eval_every=16", "--total-steps", "96",
                                    "--run-dir", str(run)])
    assert "training stopped" in line and "iteration 3" in line, line
    for which in ("latest", "best"):
        state = load_checkpoint(run / "checkpoints" / f"{which}.safetensors").state
        assert all(torch.isfinite(v).all() for v in state["policy"].values()), which
    assert load_checkpoint(run / "checkpoints" / "latest.safetensors").extra["global_step"] == 32


def test_endless_env_evaluation_is_capped(tmp_path, capsys) -> None:
    """An env that never ends: the final evaluation cuts episodes at the cap and says so."""
    run = tmp_path / "run"
    code = main(["train", "--env", faulty_envs.ENDLESS, *TINY, "--total-steps", "16",
                 "--set", "train.eval_max_episode_steps=50", "--run-dir", str(run)])
    assert code == 0
    summary = json.loads((run / "eval.json").read_text())
    assert summary["capped_episodes"] == summary["episodes"] == 2
    assert summary["mean_length"] == 50
    assert "cut at train.eval_max_episode_steps" in capsys.readouterr().out


def _spawn_train(run: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "xlstm_rl", "train", *TINY, "--run-dir", str(run), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigterm_is_acted_on_within_seconds_mid_collection(tmp_path) -> None:
    """A slow env (0.2 s per step, 8 s per collection): SIGTERM mid-collection exits 143 within
    a few seconds, writing the state from before the interrupted iteration; resume works."""
    run = tmp_path / "run"
    env_id = f"faulty_envs:{faulty_envs.ENDLESS}"
    proc = _spawn_train(run, "--env", env_id, "--set", "env.kwargs.step_seconds=0.2",
                        "--set", "ppo.rollout_len=40", "--set", "ppo.seq_len=4",
                        "--total-steps", "100000")
    _wait_for(run / "checkpoints" / "latest.safetensors", proc)
    time.sleep(1.0)  # inside the first collection
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert time.monotonic() - start < 6.0
    assert load_checkpoint(run / "checkpoints" / "latest.safetensors").extra["global_step"] == 0
    assert "--resume" in out


def test_ctrl_c_right_after_start_leaves_a_resumable_run(tmp_path, capsys) -> None:
    """SIGINT as soon as the run directory exists: exit 130, and --resume continues it."""
    run = tmp_path / "run"
    proc = _spawn_train(run, "--total-steps", "100000")
    _wait_for(run / "checkpoints" / "latest.safetensors", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert (run / "config.yaml").is_file()
    assert main(["train", "--resume", str(run), "--total-steps", "32", "--no-progress"]) == 0
    assert json.loads((run / "eval.json").read_text())["global_step"] == 32


def test_resume_tolerates_a_torn_metrics_line_and_removes_stale_temp_files(tmp_path) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY, "--total-steps", "32", "--set", "train.checkpoint_every=16",
                 "--run-dir", str(run)]) == 0
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 48, "loss/po')  # torn
    stale = [run / ".metrics.jsonl.tmp123", run / "checkpoints" / ".latest.safetensors.tmp9"]
    for path in stale:
        path.write_bytes(b"half")
    keep = run / "checkpoints" / "notes.tmp"  # not a name our writers use
    keep.write_text("mine")
    assert main(["train", "--resume", str(run), "--total-steps", "64", "--no-progress"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [16, 32, 48, 64]
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"
