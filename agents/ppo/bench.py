"""Throughput benchmark of recurrent PPO: env-steps/s of collection, update and overall per core.

Example::

    python -c "from xlstm_rl.agents.ppo.bench import bench_ppo; print(bench_ppo('ppo.json'))"
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from xlstm_rl.schema import EnvConfig, ModelConfig

from .config import PPOConfig
from .trainer import PPOTrainer


_CORE_OVERRIDES: dict[str, dict[str, Any]] = {"xlstm": {"pattern": "ms"}}
"""Per-core model fields: the ``xlstm`` stack is benchmarked as ``ms`` (its default pattern
``m`` would repeat the ``mlstm`` core)."""


def _run_side_by_side(trainers: dict[str, PPOTrainer], iterations: int, warmup: int
                      ) -> dict[str, dict[str, float]]:
    """Iterations of every trainer interleaved round-robin: a load change on a shared machine
    hits all cores alike, so their ratios hold."""
    for _ in range(warmup):
        for trainer in trainers.values():
            trainer.train_iteration()
    collect = dict.fromkeys(trainers, 0.0)
    update = dict.fromkeys(trainers, 0.0)
    for _ in range(iterations):
        for core, trainer in trainers.items():
            metrics = trainer.train_iteration()
            steps = trainer.steps_per_iteration
            collect[core] += steps / metrics["perf/collect_sps"]
            update[core] += steps / metrics["perf/update_sps"]
    results = {}
    for core, trainer in trainers.items():
        total_steps = trainer.steps_per_iteration * iterations
        results[core] = {"collect_sps": total_steps / collect[core],
                         "update_sps": total_steps / update[core],
                         "sps": total_steps / (collect[core] + update[core]),
                         "params": float(sum(p.numel() for p in trainer.policy.parameters()))}
    return results


def _ratios(results: dict[str, dict[str, float]], base: str) -> dict[str, dict[str, float]]:
    """``{core: {collect, update, overall}}``: each core's env-steps/s over ``base``'s."""
    b = results[base]
    return {core: {"collect": r["collect_sps"] / b["collect_sps"],
                   "update": r["update_sps"] / b["update_sps"], "overall": r["sps"] / b["sps"]}
            for core, r in results.items()}


def bench_ppo(out_path: str | Path | None,
              cores: Sequence[str] = ("mlp", "lstm", "mlstm", "slstm", "xlstm"),
              env_id: str = "CartPole-v1", num_envs: int = 8, rollout_len: int = 128,
              epochs: int = 4, minibatches: int = 4, hidden_size: int = 128, seq_len: int = 16,
              iterations: int = 3, warmup: int = 1, device: str = "cpu",
              model_kwargs: dict[str, Any] | None = None, num_threads: int | None = None
              ) -> dict[str, Any]:
    """Measures PPO env-steps per second for each core and writes them as JSON.

    Args:
        out_path: JSON file to write (None: don't write).
        cores: memory cores to compare.
        env_id, num_envs, rollout_len, epochs, minibatches, seq_len: the PPO setting.
        hidden_size: width of the core and of the encoder.
        iterations: measured iterations per core (after ``warmup`` unmeasured ones).
        device: torch device.
        model_kwargs: extra :class:`ModelConfig` fields (e.g. ``{"proj_factor": 1.0}``).
        num_threads: torch intra-op threads during the benchmark (None: leave as is; 1 gives
            steadier numbers on a shared machine).

    Returns:
        ``{"config": {...}, "results": {core: {"collect_sps", "update_sps", "sps", "params"}},
        "relative_to_mlp": {core: sps / mlp sps}, "ratios_over_lstm": {core: {"collect",
        "update", "overall"}}, "ratios_over_mlp": {...}}`` (each ratio block only when its base
        core is benchmarked). The cores' iterations run interleaved, round-robin.
    """
    env = EnvConfig(id=env_id, num_envs=num_envs)
    ppo = PPOConfig(rollout_len=rollout_len, seq_len=seq_len, epochs=epochs,
                    minibatches=minibatches)
    model = {"hidden_size": hidden_size, "encoder_hidden": hidden_size, **(model_kwargs or {})}
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    start = time.perf_counter()
    trainers: dict[str, PPOTrainer] = {}
    try:
        for core in cores:
            config = ModelConfig(core=core, **{**model, **_CORE_OVERRIDES.get(core, {})})
            trainers[core] = PPOTrainer(env, config, ppo, seed=0, device=device)
        results = _run_side_by_side(trainers, iterations, warmup)
    finally:
        for trainer in trainers.values():
            trainer.close()
        torch.set_num_threads(threads)
    out: dict[str, Any] = {
        "config": {"env_id": env_id, "num_envs": num_envs, "rollout_len": rollout_len,
                   "seq_len": seq_len, "epochs": epochs, "minibatches": minibatches,
                   "model": model, "core_overrides": _CORE_OVERRIDES, "iterations": iterations,
                   "device": device,
                   "torch_threads": num_threads or threads, "torch": torch.__version__,
                   "machine": platform.machine(), "seconds": time.perf_counter() - start},
        "results": results,
    }
    if "mlp" in results:
        base = results["mlp"]["sps"]
        out["relative_to_mlp"] = {core: r["sps"] / base for core, r in results.items()}
        out["ratios_over_mlp"] = _ratios(results, "mlp")
    if "lstm" in results:
        out["ratios_over_lstm"] = _ratios(results, "lstm")
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(out, indent=2))
    return out
