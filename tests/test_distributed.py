"""Data-parallel PPO on torch.distributed (gloo, loopback only; docs/architecture.md, "Run loop").

Every test starts real processes: ``xlstm-rl train --nproc 2`` or two ``torchrun`` launchers.
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
from xlstm_rl.cli.launch import free_port

_SETS = ("env.kwargs.corridor_length=4 model.hidden_size=8 model.num_heads=2 "
         "model.encoder_hidden=8 ppo.rollout_len=8 ppo.seq_len=4 ppo.minibatches=4 "
         "ppo.epochs=2 train.eval_episodes=4 train.target_return=null train.torch_threads=1")
TINY = [a for item in _SETS.split() for a in ("--set", item)] + ["--no-progress"]


def _train(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xlstm_rl", "train", *args],
                          capture_output=True, text=True, timeout=timeout)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "latest.safetensors").state["policy"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_of_4_envs_equal_one_rank_of_8(tmp_path) -> None:
    """Same seeds: the 2-process run's weights, losses and episodes after one update equal the
    1-process run's (actions are drawn from the global batch, minibatches from one global
    shuffle, gradients summed over ranks)."""
    one, two = tmp_path / "one", tmp_path / "two"
    out = _train(*TINY, "--set", "env.num_envs=8", "--total-steps", "64", "--run-dir", str(one))
    assert out.returncode == 0, out.stderr
    out = _train(*TINY, "--set", "env.num_envs=4", "--nproc", "2", "--total-steps", "64",
                 "--run-dir", str(two))
    assert out.returncode == 0, out.stderr
    assert "on 2 processes" in out.stdout
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    row_a, row_b = _rows(one)[0], _rows(two)[0]
    assert row_a["step"] == row_b["step"] == 64
    for key in ("episode/return", "episode/count", "loss/policy", "loss/value", "loss/entropy",
                "ppo/grad_norm"):
        assert row_b[key] == pytest.approx(row_a[key], rel=1e-4, abs=1e-6), key
    two_ckpt = load_checkpoint(two / "checkpoints" / "latest.safetensors").state["trainer"]
    assert two_ckpt["counters"]["world_size"] == 2
    assert len(two_ckpt["envs"]) == 8  # every rank's envs, in global order


def test_resume_needs_the_same_world_size_then_continues(tmp_path) -> None:
    run = tmp_path / "run"
    out = _train(*TINY, "--set", "env.num_envs=2", "--nproc", "2", "--total-steps", "32",
                 "--run-dir", str(run))
    assert out.returncode == 0, out.stderr
    out = _train("--resume", str(run), "--total-steps", "64")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 process(es)" in lines[0] and "--nproc 2" in lines[0], lines
    out = _train("--resume", str(run), "--total-steps", "64", "--nproc", "2")
    assert out.returncode == 0, out.stderr
    assert [r["step"] for r in _rows(run)] == [32, 64]


def test_ctrl_c_stops_every_rank_with_one_checkpoint(tmp_path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "xlstm_rl", "train", *TINY, "--set", "env.num_envs=2",
           "--nproc", "2", "--total-steps", "10000000", "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while not (run / "metrics.jsonl").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert out.count("checkpoint written") == 1  # rank 0 alone speaks and writes
    step = load_checkpoint(run / "checkpoints" / "latest.safetensors").extra["global_step"]
    assert step > 0 and step % 32 == 0  # an iteration boundary (2 ranks x 2 envs x 8 steps)


def test_two_node_launch_on_loopback(tmp_path) -> None:
    """Two torchrun launchers (--nnodes 2), one process each, meet on 127.0.0.1."""
    run, port = tmp_path / "run", free_port()
    base = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    train = ["-m", "xlstm_rl", "train", *TINY, "--set", "env.num_envs=2", "--total-steps", "64",
             "--run-dir", str(run)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen([*base, "--node-rank", str(rank), *train], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (_out, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-2000:]
    assert "on 2 processes" in outputs[0][0]
    assert load_checkpoint(run / "checkpoints" / "latest.safetensors").extra["global_step"] == 64


_RANK_TEARDOWN = """
import json, os, sys
from xlstm_rl.algorithms import get_algorithm
from xlstm_rl.config import load_config
from xlstm_rl.distributed import init_from_environment, shutdown

def group_threads():  # the native threads of torch.distributed: gloo's and the TCPStore's
    names = [open(f"/proc/self/task/{t}/comm").read().strip()
             for t in os.listdir("/proc/self/task")]
    return sorted(n for n in names if n.startswith(("pt_gloo", "gloo", "pt_tcpstore")))

ctx = init_from_environment("cpu")
config = load_config(None, sys.argv[1:])[0]
trainer = get_algorithm(config.algo).build_trainer(config)  # as xlstm-rl train builds it
import torch.distributed.nn  # what any later import of torch._dynamo does, tensordict's included
ctx.all_reduce_sum(__import__("torch").ones(3))
before = group_threads()
trainer.close()
shutdown()
print(json.dumps({"before": before, "after": group_threads()}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux thread names")
def test_shutdown_leaves_no_thread_of_the_group_running() -> None:
    """After :func:`shutdown` no gloo or TCPStore thread may run: one that outlives the
    interpreter now and then aborts the rank at exit (SIGABRT, "terminate called without an
    active exception") although the run completed. Building the trainer imports
    ``torch.distributed.nn``, whose defaults capture the default group unless imported first."""
    port = free_port()
    sets = [*_SETS.split(), "env.num_envs=2"]
    procs = [subprocess.Popen([sys.executable, "-c", _RANK_TEARDOWN, *sets],
                              env=dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank),
                                       WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port), OMP_NUM_THREADS="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0 and "terminate called" not in err, (rank, err[-2000:])
        threads = json.loads(out.strip().splitlines()[-1])
        assert any(n.startswith("pt_gloo") for n in threads["before"]), threads  # seen at all
        assert threads["after"] == [], (rank, threads)


@pytest.mark.learning
def test_two_ranks_learn_the_tmaze(tmp_path) -> None:
    run = tmp_path / "run"
    out = _train("--set", "env.num_envs=8", "--set", "train.torch_threads=1", "--nproc", "2",
                 "--total-steps", "40000", "--no-progress", "--run-dir", str(run), timeout=600)
    assert out.returncode == 0, out.stderr
    summary = json.loads((run / "eval.json").read_text())
    assert summary["success_rate"] >= 0.95, summary
