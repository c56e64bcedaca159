"""Env-steps/s of PPO on the T-maze: TorchRL with XLSTMModule (mLSTM) vs TorchRL with its own
LSTMModule of the same width, vs xlstm-rl's own PPOTrainer, side by side in one process.

All runs use the settings of ``examples/torchrl_ppo.py`` (16 envs x 64 steps per iteration,
sequences of 32, 4 epochs x 4 minibatches, width 64, one torch thread). Rounds interleave the
candidates (one timed iteration each, after a warm-up iteration), so the ratios hold on a
noisy machine; the medians over rounds are reported.

Run::

    python examples/torchrl_bench.py --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torchrl_ppo as pipeline  # noqa: E402  (the example next to this file)

from xlstm_rl.agents.ppo import PPOConfig, PPOTrainer  # noqa: E402
from xlstm_rl.schema import EnvConfig, ModelConfig  # noqa: E402


def torchrl_iteration(core: str, settings: pipeline.Settings) -> Callable[[], int]:
    """One PPO iteration (collect + GAE + updates) of the TorchRL pipeline per call."""
    torch.manual_seed(0)
    env = pipeline.make_env(settings)
    env.set_seed(0)
    policy, value = pipeline.make_agent(env, core, settings)
    ppo = pipeline.PPO(policy, value, settings)
    collector = pipeline.Collector(env, policy, total_frames=-1,
                                   frames_per_batch=settings.num_envs * settings.rollout_len)
    batches = iter(collector)

    def iteration() -> int:
        batch = next(batches)
        ppo.update(batch)
        return batch.numel()

    return iteration


def own_ppo_iteration(core: str, settings: pipeline.Settings) -> Callable[[], int]:
    """One iteration of xlstm-rl's PPOTrainer at the same settings per call."""
    trainer = PPOTrainer(
        EnvConfig(id="xlstm_rl/TMaze-v0", num_envs=settings.num_envs,
                  kwargs={"corridor_length": settings.corridor_length}),
        ModelConfig(core=core, hidden_size=settings.hidden_size, num_heads=4,
                    encoder_hidden=settings.hidden_size),
        PPOConfig(rollout_len=settings.rollout_len, seq_len=settings.seq_len,
                  epochs=settings.epochs, minibatches=settings.minibatches, lr=settings.lr),
        seed=0)

    def iteration() -> int:
        trainer.train_iteration()
        return trainer.steps_per_iteration

    return iteration


CANDIDATES = {
    "torchrl + XLSTMModule(mlstm)": lambda s: torchrl_iteration("mlstm", s),
    "torchrl + LSTMModule": lambda s: torchrl_iteration("lstm-torchrl", s),
    "torchrl + XLSTMModule(lstm)": lambda s: torchrl_iteration("lstm", s),
    "xlstm-rl PPOTrainer(mlstm)": lambda s: own_ppo_iteration("mlstm", s),
    "xlstm-rl PPOTrainer(lstm)": lambda s: own_ppo_iteration("lstm", s),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = pipeline.Settings()
    runs = {name: make(settings) for name, make in CANDIDATES.items()}
    for run in runs.values():  # warm-up: first-call costs are not measured
        run()
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            steps = run()
            speeds[name].append(steps / (time.perf_counter() - start))
    median = {name: statistics.median(values) for name, values in speeds.items()}
    base = median["torchrl + LSTMModule"]
    print(f"env-steps/s, median of {args.rounds} interleaved rounds "
          f"(one PPO iteration of {settings.num_envs * settings.rollout_len} steps each):")
    for name, value in median.items():
        print(f"  {name:32s} {value:7.0f}   x{value / base:.2f} of torchrl + LSTMModule")


if __name__ == "__main__":
    main()
