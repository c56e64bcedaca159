"""Ape-X R2D2: actor processes feed one learner over torch.distributed.rpc (agents/r2d2/apex.py).

Units of the learner's mailbox, then real runs of ``xlstm-rl train r2d2-... --actors 2``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from xlstm_rl.agents.r2d2.actor import ape_x_epsilons
from xlstm_rl.agents.r2d2.apex_actor import actor_epsilons
from xlstm_rl.agents.r2d2.apex_endpoint import Delivery, LearnerEndpoint
from xlstm_rl.agents.r2d2.config import R2D2Config
from xlstm_rl.cli import main


def _delivery(actor: int, number: int, steps: int = 8) -> Delivery:
    seqs = TensorDict({"reward": torch.zeros(2, 3)}, batch_size=[2])
    return Delivery(actor, number, seqs, torch.ones(2), steps, ([1.0], [3], [1.0]))


def test_a_delivery_seen_twice_is_counted_once() -> None:
    box = LearnerEndpoint(num_actors=2)
    assert box.deliver(_delivery(1, 0)) and box.deliver(_delivery(2, 0))
    assert not box.deliver(_delivery(1, 0))  # a retried call
    assert box.deliver(_delivery(1, 1))
    got = [box.inbox.get_nowait() for _ in range(box.inbox.qsize())]
    assert [(d.actor, d.number) for d in got] == [(1, 0), (2, 0), (1, 1)]
    assert box.duplicates == 1


def test_a_full_mailbox_holds_the_actor_until_the_learner_takes_or_stops() -> None:
    box = LearnerEndpoint(num_actors=1, capacity=1)
    assert box.deliver(_delivery(1, 0))
    done = []
    worker = threading.Thread(target=lambda: done.append(box.deliver(_delivery(1, 1))))
    worker.start()
    time.sleep(0.3)
    assert not done  # blocked: the learner is behind
    box.inbox.get_nowait()
    worker.join(timeout=5)
    assert done == [True]
    box.stop = True
    assert not box.deliver(_delivery(1, 2))  # after stop nothing more is taken


def test_weights_are_pulled_only_when_newer_and_silence_is_noticed() -> None:
    box = LearnerEndpoint(num_actors=2)
    box.publish({"w": torch.ones(1)})
    version, weights, stop = box.weights_since(1, -1)
    assert version == 0 and torch.equal(weights["w"], torch.ones(1)) and not stop
    assert box.weights_since(1, 0)[1] is None
    box.last_heard[2] = time.monotonic() - 100
    assert box.silent_actors(10.0) == [2]


def test_an_actor_that_dies_before_its_first_call_is_noticed() -> None:
    box = LearnerEndpoint(num_actors=2)
    box.heard(1)
    assert box.silent_actors(0.05) == []     # actor 2 may still be starting: not counted
    box.joined()                              # the RPC group formed: its clock starts
    time.sleep(0.1)
    box.heard(1)
    assert box.silent_actors(0.05) == [2]


def test_actor_epsilons_split_the_ape_x_schedule_over_all_envs() -> None:
    cfg = R2D2Config()
    parts = [actor_epsilons(cfg, a, 3, 4).numpy() for a in (1, 2, 3)]
    np.testing.assert_allclose(np.concatenate(parts), ape_x_epsilons(12, 0.4, 7.0))
    assert parts[0][0] == pytest.approx(0.4) and parts[2][-1] == pytest.approx(0.4 ** 8)


@pytest.mark.parametrize("argv, fragment", [
    (["train", "r2d2-mlstm-tmaze", "--nproc", "2"], "scales with --actors"),
    (["train", "ppo-mlstm-tmaze", "--actors", "2"], "scales with --nproc"),
    (["train", "r2d2-mlstm-tmaze", "--actors", "0"], "between 1 and 256"),
])
def test_scaling_flags_that_do_not_fit_the_algorithm(capsys, argv, fragment) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


_SETS = ["env.num_envs=4", "train.torch_threads=1", "train.target_return=null",
         "r2d2.min_replay=32", "r2d2.collect_steps=8", "r2d2.samples_per_insert=2",
         "train.eval_every=0", "train.eval_episodes=8"]
FAST = [a for s in _SETS for a in ("--set", s)] + ["--no-progress"]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def _rank_of(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in env if v.startswith(b"RANK=")).split(b"=")[1])


def test_the_learner_goes_on_when_an_actor_dies(tmp_path) -> None:
    run = tmp_path / "run"
    # The budget must outlast the 3 s actor timeout after the kill: at 3,000 steps a fast
    # machine finished within 3 s of it, before the silence could be noticed.
    steps = 12_000
    cmd = [sys.executable, "-m", "xlstm_rl", "train", "r2d2-mlstm-tmaze", "--actors", "2",
           *FAST, "--set", "r2d2.actor_timeout=3", "--total-steps", str(steps),
           "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (run / "metrics.jsonl").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    victim = next(p for p in _children(proc.pid) if _rank_of(p) == 2)
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "actor 2 has not answered" in out and "going on with 1 actor(s)" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["apex/actors_alive"] == 1.0 and rows[-1]["step"] >= steps
    assert json.loads((run / "eval.json").read_text())["global_step"] >= steps


@pytest.mark.learning
def test_one_learner_and_two_actors_solve_the_tmaze(tmp_path) -> None:
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "xlstm_rl", "train", "r2d2-mlstm-tmaze",
                          "--actors", "2", "--set", "env.num_envs=8", "--set",
                          "train.torch_threads=1", "--no-progress", "--run-dir", str(run)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run / "eval.json").read_text())
    assert summary["success_rate"] >= 0.95, summary
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["apex/duplicate_deliveries"] == 0
