"""Throughput of R2D2 per core: learner updates/s and actor env-steps/s, side by side.

Every core is timed in one process, round-robin (:func:`xlstm_rl.kernels.timing.time_side_by_side`),
so the ratios hold on a shared machine. The learner update is the paper's shape: a batch of 64
sequences of 40 burn-in + 80 trace steps (plus the bootstrap observation) at width 128.

Example::

    xlstm-rl bench r2d2 --out bench-r2d2.json
    python -c "from xlstm_rl.agents.r2d2.bench import bench_r2d2; print(bench_r2d2(None))"
"""
from __future__ import annotations

import functools
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from xlstm_rl.kernels import cpu as cpu_kernels
from xlstm_rl.kernels.cpu.build import load_warning
from xlstm_rl.kernels.timing import time_side_by_side
from xlstm_rl.schema import EnvConfig, ModelConfig

from .actor import Actor
from .config import R2D2Config
from .learning import R2D2Learner
from .networks import R2D2Network
from .sequences import bytes_per_sequence
from .trainer import build_envs


def _batch(net: R2D2Network, cfg: R2D2Config, obs_dim: int, device: torch.device
           ) -> TensorDict:
    """A random replay batch ``[batch_size]`` of full-length sequences."""
    B, L = cfg.batch_size, cfg.sequence_len
    state = net.initial_state(B, device).apply(lambda t: 0.1 * torch.randn_like(t))
    return TensorDict({
        "obs": torch.randn(B, L + 1, obs_dim), "reset": torch.zeros(B, L + 1, dtype=torch.bool),
        "action": torch.randint(net.num_actions, (B, L)), "reward": torch.randn(B, L),
        "terminated": torch.zeros(B, L, dtype=torch.bool),
        "valid": torch.ones(B, L, dtype=torch.bool)}, batch_size=[B]).to(device).update(
            {"state": state})


def _act_steps(actor: Actor, steps: int) -> None:
    for _ in range(steps):
        actor.step()


def bench_r2d2(out_path: str | Path | None,
               cores: Sequence[str] = ("mlp", "lstm", "gru", "mlstm"), hidden_size: int = 128,
               batch_size: int = 64, burn_in: int = 40, trace_len: int = 80,
               env_id: str = "CartPole-v1", num_envs: int = 16, actor_steps: int = 50,
               repeats: int = 3, device: str = "cpu", num_threads: int | None = None,
               budget_s: float = 120.0) -> dict[str, Any]:
    """Measures learner updates/s and actor env-steps/s for each core; writes JSON.

    Args:
        out_path: JSON file to write (None: don't write).
        cores: Memory cores to compare.
        hidden_size: Width of the core and the encoder.
        batch_size, burn_in, trace_len: Shape of a learner update.
        env_id, num_envs, actor_steps: The actors' env, its copies, vector steps per timing.
        repeats: Timed rounds (interleaved across cores).
        device: Torch device.
        num_threads: Torch intra-op threads during the benchmark (None: leave as is).
        budget_s: Stop starting new timing rounds after this many seconds (per phase).

    Returns:
        ``{"config", "results": {core: {learner_update_s, learner_updates_per_s, actor_sps,
        replay_bytes_per_sequence, state_bytes_per_sequence, params}}, "ratios":
        {"mlstm_over_lstm_learner_time", "mlstm_over_mlp_actor_sps"}}`` (each ratio only
        when both cores ran).
    """
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    cfg = R2D2Config(burn_in=burn_in, trace_len=trace_len, period=max(1, trace_len // 2),
                     batch_size=batch_size,
                     min_replay=batch_size, replay_capacity=max(batch_size, 1000))
    env = EnvConfig(id=env_id, num_envs=num_envs)
    start = time.perf_counter()
    learn: dict[str, Callable[[], object]] = {}
    act: dict[str, Callable[[], object]] = {}
    results: dict[str, dict[str, float]] = {}
    closers: list[Any] = []
    try:
        for core in cores:
            model = ModelConfig(core=core, hidden_size=hidden_size, encoder_hidden=hidden_size)
            envs = build_envs(env, seed=0)
            closers.append(envs)
            torch.manual_seed(0)
            obs_space, act_space = envs.single_observation_space, envs.single_action_space
            net = R2D2Network(obs_space, act_space, model, cfg.dueling_hidden).to(dev)
            learner = R2D2Learner(net, cfg)
            batch = _batch(net, cfg, int(np.prod(obs_space.shape or ())), dev)
            weights = torch.ones(batch_size).to(dev)
            learn[core] = functools.partial(learner.update, batch, weights)
            actor = Actor(envs, net, cfg, env_id, dev, torch.Generator().manual_seed(0))
            actor.reset(seed=0)
            act[core] = functools.partial(_act_steps, actor, actor_steps)
            size = bytes_per_sequence(obs_space, act_space, model, cfg)
            results[core] = {"replay_bytes_per_sequence": float(size["total"]),
                             "state_bytes_per_sequence": float(size["state"]),
                             "params": float(sum(p.numel() for p in net.parameters()))}
        learn_s = time_side_by_side(learn, dev, repeats=repeats, warmup=1, budget_s=budget_s)
        act_s = time_side_by_side(act, dev, repeats=repeats, warmup=1, budget_s=budget_s)
    finally:
        for envs in closers:
            envs.close()
        torch.set_num_threads(threads)
    for core in cores:
        results[core].update(learner_update_s=learn_s[core],
                             learner_updates_per_s=1.0 / learn_s[core],
                             actor_sps=num_envs * actor_steps / act_s[core])
    ratios = {}
    if "mlstm" in results and "lstm" in results:
        ratios["mlstm_over_lstm_learner_time"] = (results["mlstm"]["learner_update_s"]
                                                  / results["lstm"]["learner_update_s"])
    if "mlstm" in results and "mlp" in results:
        ratios["mlstm_over_mlp_actor_sps"] = (results["mlstm"]["actor_sps"]
                                              / results["mlp"]["actor_sps"])
    out = {"config": {"cores": list(cores), "hidden_size": hidden_size,
                      "batch_size": batch_size, "burn_in": burn_in, "trace_len": trace_len,
                      "env_id": env_id, "num_envs": num_envs, "actor_steps": actor_steps,
                      "repeats": repeats, "device": device,
                      "torch_threads": num_threads or threads, "torch": torch.__version__,
                      "machine": platform.machine(), "cpu_kernels": cpu_kernels.why_unavailable(),
                      "cpu_kernels_warning": load_warning(),
                      "seconds": time.perf_counter() - start},
           "results": results, "ratios": ratios}
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(out, indent=2))
    return out
