"""Throughput benchmark of recurrent PPO: env-steps/s of collection, update and overall per core.

Example::

    python -c "from xlstm_rl.agents.ppo.bench import bench_ppo; print(bench_ppo('ppo.json'))"
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from xlstm_rl.kernels import cpu as cpu_kernels
from xlstm_rl.kernels.cpu.build import load_warning
from xlstm_rl.schema import EnvConfig, ModelConfig

from .config import PPOConfig
from .trainer import PPOTrainer


_CORE_OVERRIDES: dict[str, dict[str, Any]] = {"xlstm": {"pattern": "ms"}}
"""Per-core model fields: the ``xlstm`` stack is benchmarked as ``ms`` (its default pattern
``m`` would repeat the ``mlstm`` core)."""


def _run_side_by_side(trainers: dict[str, PPOTrainer], iterations: int, warmup: int
                      ) -> tuple[dict[str, dict[str, float]], list[dict[str, dict[str, float]]]]:
    """Iterations of every trainer interleaved round-robin: a load change on a shared machine
    hits all cores alike, so their ratios hold.

    Returns:
        Totals per core (``collect_sps``, ``update_sps``, ``sps``, ``params``) and, per round,
        each core's seconds of collection and update (``{"collect", "update"}``).
    """
    for _ in range(warmup):
        for trainer in trainers.values():
            trainer.train_iteration()
    rounds: list[dict[str, dict[str, float]]] = []
    for _ in range(iterations):
        seconds = {}
        for core, trainer in trainers.items():
            metrics = trainer.train_iteration()
            steps = trainer.steps_per_iteration
            seconds[core] = {"collect": steps / metrics["perf/collect_sps"],
                             "update": steps / metrics["perf/update_sps"]}
        rounds.append(seconds)
    results = {}
    for core, trainer in trainers.items():
        total_steps = trainer.steps_per_iteration * iterations
        collect = sum(r[core]["collect"] for r in rounds)
        update = sum(r[core]["update"] for r in rounds)
        results[core] = {"collect_sps": total_steps / collect, "update_sps": total_steps / update,
                         "sps": total_steps / (collect + update),
                         "params": float(sum(p.numel() for p in trainer.policy.parameters()))}
    return results, rounds


def _ratios(rounds: list[dict[str, dict[str, float]]], base: str
            ) -> dict[str, dict[str, float]]:
    """``{core: {collect, update, overall}}``: each core's env-steps/s over ``base``'s, the
    median over rounds of the ratio within a round (cores of one round ran back to back, so a
    slow stretch of a shared machine shifts both sides of each ratio alike)."""
    def median_ratio(core: str, part: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(part(r[base]) / part(r[core]) for r in rounds)

    return {core: {"collect": median_ratio(core, lambda s: s["collect"]),
                   "update": median_ratio(core, lambda s: s["update"]),
                   "overall": median_ratio(core, lambda s: s["collect"] + s["update"])}
            for core in rounds[0]}


def bench_ppo(out_path: str | Path | None,
              cores: Sequence[str] = ("mlp", "lstm", "mlstm", "slstm", "xlstm"),
              env_id: str = "CartPole-v1", num_envs: int = 8, rollout_len: int = 128,
              epochs: int = 4, minibatches: int = 4, hidden_size: int = 128, seq_len: int = 16,
              iterations: int = 9, warmup: int = 1, device: str = "cpu",
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
        ``{"config": {...}, "results": {core: {"collect_sps", "update_sps", "sps", "params"}}
        (over all rounds), "ratios_over_lstm": {core: {"collect", "update", "overall"}},
        "ratios_over_mlp": {...}, "relative_to_mlp": {core: overall ratio over mlp}}`` (each
        ratio block only when its base core is benchmarked). The cores' iterations run
        interleaved, round-robin; a ratio is the median over rounds of the ratio within one.
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
        results, rounds = _run_side_by_side(trainers, iterations, warmup)
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
                   "machine": platform.machine(), "cpu_kernels": cpu_kernels.why_unavailable(),
                   "cpu_kernels_warning": load_warning(),
                   "seconds": time.perf_counter() - start},
        "results": results,
    }
    if "mlp" in results:
        out["ratios_over_mlp"] = _ratios(rounds, "mlp")
        out["relative_to_mlp"] = {core: r["overall"] for core, r in out["ratios_over_mlp"].items()}
    if "lstm" in results:
        out["ratios_over_lstm"] = _ratios(rounds, "lstm")
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(out, indent=2))
    return out
