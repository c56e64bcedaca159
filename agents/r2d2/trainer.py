"""The R2D2 trainer: actors, prioritized sequence replay and the learner on one process.

One :meth:`R2D2Trainer.train_iteration` takes ``collect_steps`` vector-env steps; after each
step the completed sequences go into replay and the learner takes updates for as long as the
samples-per-insert ratio allows (:class:`~.replay.SampleInsertRatio`): before ``min_replay``
sequences it waits for data, and the actors never run ahead of it by more than one step's
sequences.

Exact resume: :meth:`state_dict` holds the weights (online and target), Adam's state, every
RNG, the replay contents with their priorities (unless ``save_replay`` is False), the sequence
cutter's open windows, the actors' observations / recurrent states / episode books and an
env snapshot (every sub-env is wrapped in :class:`~xlstm_rl.envs.episode_log.EpisodeReplay`).
A trainer built with the same config and seed continues exactly after :meth:`load_state_dict`
(on CPU).
"""
from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from xlstm_rl.acting import build_training_envs as build_envs
from xlstm_rl.envs.episode_log import restore_envs, snapshot_envs
from xlstm_rl.evaluation import evaluate_on_fresh_envs
from xlstm_rl.schema import EnvConfig, ModelConfig
from xlstm_rl.train_state import (env_snapshot_from_state, env_snapshot_to_state,
                                  optimizer_from_state, optimizer_to_state, rng_from_state,
                                  rng_to_state)

from .actor import Actor
from .config import R2D2Config
from .learning import R2D2Learner, staleness
from .networks import R2D2Network
from .replay import SampleInsertRatio, SequenceReplay
from .resume import actor_from_state, actor_to_state, load_checked


class R2D2Trainer:
    """R2D2 on one vector env (implements :class:`xlstm_rl.trainer.Trainer`).

    Args:
        env, model, cfg: Configurations.
        seed: Seeds torch, numpy, the envs (sub-env ``j`` gets ``seed + j``), the exploration
            and the replay sampler.
        device: Torch device of the networks.
        run_config: The run config (for the acting policy; built from the parts when None).
        logger: Optional ``MetricLogger`` every iteration's metrics go to.
    """

    def __init__(self, env: EnvConfig, model: ModelConfig, cfg: R2D2Config, *, seed: int = 0,
                 device: str | torch.device = "cpu", run_config: Any = None,
                 logger: Any = None) -> None:
        self.env_cfg, self.model_cfg, self.cfg = env, model, cfg
        self.seed, self.device, self.logger = int(seed), torch.device(device), logger
        self.run_config = run_config
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % 2**32)
        self.envs = build_envs(env, self.seed)
        self.network = R2D2Network(self.envs.single_observation_space,
                                   self.envs.single_action_space, model,
                                   cfg.dueling_hidden).to(self.device)
        self.learner = R2D2Learner(self.network, cfg)
        self.actor_generator = torch.Generator().manual_seed(self.seed + 1)
        self.actor = Actor(self.envs, self.network, cfg, env.id, self.device,
                           self.actor_generator)
        self.actor.reset(seed=self.seed)
        self.replay = SequenceReplay(cfg.replay_capacity, cfg.priority_exponent,
                                     cfg.importance_exponent, seed=self.seed + 2)
        self.limiter = SampleInsertRatio(cfg.samples_per_insert, cfg.min_replay, cfg.batch_size)
        self.global_step, self.iteration, self.total_steps = 0, 0, 0

    @property
    def observation_space(self) -> gym.Space:
        """Observation space of one env."""
        return self.envs.single_observation_space

    @property
    def action_space(self) -> gym.Space:
        """Action space of one env."""
        return self.envs.single_action_space

    @property
    def steps_per_iteration(self) -> int:
        """Env steps per iteration: ``collect_steps * num_envs``."""
        return self.cfg.collect_steps * self.envs.num_envs

    def train_iteration(self, should_stop: Any = None) -> dict[str, float]:
        """``collect_steps`` acting steps, each followed by the updates the ratio allows.

        ``should_stop`` is not polled: an iteration is short.

        Raises:
            TrainingFault: Non-finite loss / gradient / parameter, or an env fault.
        """
        t0 = time.perf_counter()
        learn_time, count = 0.0, 0
        sums: dict[str, float] = {}
        extra: dict[str, float] = {}
        for _ in range(self.cfg.collect_steps):
            sequences = self.actor.step()
            if sequences:
                self.replay.add(torch.stack(sequences))
                self.limiter.inserted += len(sequences)
            t1 = time.perf_counter()
            while self.limiter.can_sample():
                for key, value in self._update().items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                every = self.cfg.staleness_every
                if every and self.learner.updates % every == 0:
                    extra.update(self._staleness())
            learn_time += time.perf_counter() - t1
        elapsed = time.perf_counter() - t0
        self.global_step += self.steps_per_iteration
        self.iteration += 1
        metrics = {**self.actor.take_episode_stats().summary(),
                   **{k: v / count for k, v in sums.items()}, **extra,
                   "r2d2/updates": float(self.learner.updates),
                   "r2d2/updates_this_iter": float(count),
                   "replay/size": float(len(self.replay)),
                   "replay/samples_per_insert": self.limiter.ratio(),
                   "perf/sps": self.steps_per_iteration / elapsed,
                   "perf/learn_fraction": learn_time / elapsed,
                   "global_step": float(self.global_step), "iteration": float(self.iteration)}
        if self.logger is not None:
            self.logger.log(metrics, self.global_step)
        return metrics

    def _update(self) -> dict[str, float]:
        batch, index, weights = self.replay.sample(self.cfg.batch_size)
        batch = batch.to(self.device)
        priority, metrics = self.learner.update(batch, weights.to(self.device))
        self.replay.update_priorities(index, priority.cpu())
        self.limiter.sampled += self.cfg.batch_size
        metrics["r2d2/importance_weight_min"] = float(weights.min())
        return metrics

    def _staleness(self) -> dict[str, float]:
        episodes = self.actor.cutter.episodes
        if not episodes:
            return {}
        return staleness(self.network, episodes[0], self.cfg.burn_in, self.cfg.trace_len)

    def _run_config(self) -> Any:
        if self.run_config is None:
            from xlstm_rl.config import RunConfig

            self.run_config = RunConfig(env=self.env_cfg, model=self.model_cfg, algo="r2d2",
                                        algo_config=self.cfg)
        return self.run_config

    def acting_policy(self) -> Any:
        """The greedy policy sharing the online network (acting does not touch training RNGs)."""
        from xlstm_rl.policy import Policy

        return Policy(self.network, self.observation_space, self.action_space,
                      self._run_config(), None, self.device)

    def evaluate(self, episodes: int, deterministic: bool = True, seed: int | None = None,
                 num_envs: int | None = None) -> dict[str, float]:
        """Runs ``episodes`` episodes of the greedy policy on fresh envs (see
        :func:`xlstm_rl.evaluation.evaluate_policy`); ``seed`` defaults to ``seed + 10_000``."""
        try:
            return evaluate_on_fresh_envs(self.acting_policy(), self.env_cfg, episodes,
                                          num_envs=num_envs, deterministic=deterministic,
                                          seed=self.seed + 10_000 if seed is None else seed)
        finally:
            self.network.train()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint layout ``{"policy", "obs_norm", "trainer"}`` (see module docstring)."""
        weights = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa
        return {"policy": weights(self.network), "obs_norm": {}, "trainer": {
            "target": weights(self.learner.target),
            "optimizer": optimizer_to_state(self.learner.optimizer),
            "rng": rng_to_state({"actor": self.actor_generator}),
            "replay": self.replay.state_dict(include_data=self.cfg.save_replay),
            "limiter": {"inserted": self.limiter.inserted, "sampled": self.limiter.sampled},
            "actor": actor_to_state(self.actor),
            "cutter": self.actor.cutter.state_dict(),
            "envs": env_snapshot_to_state(snapshot_envs(self.envs)),
            "counters": {"global_step": self.global_step, "iteration": self.iteration,
                         "total_steps": self.total_steps, "updates": self.learner.updates,
                         "seed": self.seed}}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output (envs included) for an exact resume.

        Raises:
            CheckpointError: If the weights do not fit this trainer's networks.
        """
        saved = state["trainer"]
        load_checked(self.network, state["policy"], "policy weights")
        load_checked(self.learner.target, saved["target"], "target weights")
        optimizer_from_state(self.learner.optimizer, saved["optimizer"])
        rng_from_state(saved["rng"], {"actor": self.actor_generator})
        self.replay.load_state_dict(saved["replay"])
        if "data" in saved["replay"]:
            self.limiter.inserted = int(saved["limiter"]["inserted"])
            self.limiter.sampled = int(saved["limiter"]["sampled"])
        else:  # replay left out of the checkpoint: refill it before learning again
            self.limiter.inserted = self.limiter.sampled = 0
        actor_from_state(self.actor, saved["actor"])
        one_state = self.network.initial_state(1, "cpu")[0]
        one_obs = self.actor._torch(self.actor.stepper.obs)[0].cpu()
        self.actor.cutter.load_state_dict(saved["cutter"], one_state, one_obs)
        restore_envs(self.envs, env_snapshot_from_state(saved["envs"], self.envs.num_envs))
        counters = saved["counters"]
        self.global_step, self.iteration = int(counters["global_step"]), int(counters["iteration"])
        self.total_steps = int(counters["total_steps"])
        self.learner.updates = int(counters["updates"])

    def close(self) -> None:
        """Closes the envs (the logger belongs to the caller)."""
        self.envs.close()


def build_trainer(run_config: Any) -> R2D2Trainer:
    """The registry's trainer builder: ``RunConfig`` with ``algo: r2d2`` -> :class:`R2D2Trainer`."""
    return R2D2Trainer(run_config.env, run_config.model, run_config.r2d2,
                       seed=run_config.train.seed, device=run_config.train.resolved_device(),
                       run_config=run_config)
