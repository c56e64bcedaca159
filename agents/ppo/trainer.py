"""Recurrent PPO trainer: collect with stored states, update on minibatches of whole chunks.

It implements :class:`xlstm_rl.trainer.Trainer`, the interface the run loop uses.

Resume: :meth:`PPOTrainer.state_dict` holds only tensors, python scalars and strings in
nested dicts with string keys, in the checkpoint layout ``{"policy", "obs_norm", "trainer"}``,
including an env snapshot: every sub-env is wrapped in
:class:`~xlstm_rl.envs.episode_log.EpisodeReplay`, so its internal state is rebuilt by
reseeding the current episode and replaying its actions (:meth:`PPOTrainer.restore_envs`).
A trainer built with the same configs and seed, then given ``load_state_dict``, continues
exactly as the saved one would have (on CPU).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from xlstm_rl.acting import build_training_envs as build_envs
from xlstm_rl.distributed import DistContext
from xlstm_rl.envs.episode_log import restore_envs, snapshot_envs
from xlstm_rl.evaluation import DEFAULT_MAX_EPISODE_STEPS, evaluate_on_fresh_envs
from xlstm_rl.logging import MetricLogger
from xlstm_rl.networks import ActorCritic, is_image
from xlstm_rl.numerics import check_finite_losses, check_finite_parameters
from xlstm_rl.obs_norm import ObsNormalizer
from xlstm_rl.schema import EnvConfig, ModelConfig
from xlstm_rl.train_state import (env_snapshot_from_state, env_snapshot_to_state,
                                  optimizer_from_state, optimizer_to_state, rng_from_state,
                                  rng_to_state)
from xlstm_rl.trainer import StopCheck

from .buffer import RolloutBuffer
from .collect import RolloutCollector
from .config import PPOConfig
from .data_parallel import DataParallel, GlobalObsNormalizer
from .loss import explained_variance, ppo_loss
from .state import collector_from_state, collector_to_state


_LOSS_STATS = ("loss/policy", "loss/value", "loss/entropy", "ppo/approx_kl",
               "ppo/clip_fraction")


def build_trainer(config: Any) -> PPOTrainer:
    """The trainer of a run config (``xlstm_rl.config.RunConfig`` with ``algo: ppo``); under
    ``torchrun`` it is this rank's part of a data-parallel run."""
    from xlstm_rl.distributed import current

    return PPOTrainer(config.env, config.model, config.ppo, seed=config.train.seed,
                      device=config.train.resolved_device(), dist=current())


class PPOTrainer:
    """Recurrent PPO on one vector env.

    Args:
        env, model, ppo: configurations (``model.chunk_size`` is capped at ``ppo.seq_len``,
            which changes no parameter, only the mLSTM's chunking).
        seed: seeds torch, numpy, the envs (sub-env ``j`` gets ``seed + j``) and the shuffles.
        device: torch device of the network.
        logger: optional :class:`MetricLogger`; every iteration's metrics are logged to it.
        dist: the process group when data-parallel (see :mod:`.data_parallel`): this rank runs
            the global envs ``rank * num_envs ...``; None: one process.

    Attributes:
        policy: the :class:`ActorCritic`.
        global_step: env steps collected so far (all envs together).
        iteration: completed collect+update iterations.
    """

    def __init__(self, env: EnvConfig, model: ModelConfig, ppo: PPOConfig, *, seed: int = 0,
                 device: str | torch.device = "cpu", logger: MetricLogger | None = None,
                 dist: DistContext | None = None) -> None:
        self.env_cfg, self.model_cfg, self.cfg = env, model, ppo
        self.seed, self.device, self.logger = int(seed), torch.device(device), logger
        self.dist = dist or DistContext()
        self.parallel = DataParallel(self.dist)
        env_seed = self.seed + self.parallel.env_offset(env.num_envs)
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % 2**32)
        self.envs = build_envs(env, env_seed)
        obs_space = self.envs.single_observation_space
        if model.chunk_size > ppo.seq_len:  # training sequences are never longer than seq_len
            model = dataclasses.replace(model, chunk_size=ppo.seq_len)
        self.model_cfg = model
        self.policy = ActorCritic(obs_space, self.envs.single_action_space, model).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=ppo.lr, eps=ppo.adam_eps,
                                          foreach=True)
        self.generator = torch.Generator().manual_seed(self.seed)  # minibatch shuffles
        self.action_generator = torch.Generator(self.device).manual_seed(self.seed + 1)
        self.normalizer = self._make_normalizer(obs_space) if ppo.normalize_obs else None
        self.collector = RolloutCollector(self.envs, self.policy, self.normalizer,
                                          ppo.reward_scale, self.device, self.action_generator,
                                          env_id=env.id)
        if self.dist.enabled:
            self.collector.sampler = self.parallel.sample_actions
        self.collector.reset(seed=env_seed)
        self.global_step, self.iteration, self.total_steps = 0, 0, 0

    def _make_normalizer(self, space: gym.Space) -> ObsNormalizer:
        if not isinstance(space, gym.spaces.Box) or is_image(space):
            raise ValueError(f"normalize_obs needs a non-image Box observation space, got {space}")
        if self.dist.enabled:
            return GlobalObsNormalizer(space.shape, self.dist, clip=self.cfg.obs_clip)
        return ObsNormalizer(space.shape, clip=self.cfg.obs_clip)

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
        """Env steps per iteration: ``rollout_len * num_envs`` (times the ranks)."""
        return self.cfg.rollout_len * self.envs.num_envs * self.dist.world_size

    def learning_rate(self) -> float:
        """Learning rate of the next iteration (linear anneal over ``total_steps``)."""
        if not self.cfg.anneal_lr or self.total_steps <= 0:
            return self.cfg.lr
        num_iterations = max(1, math.ceil(self.total_steps / self.steps_per_iteration))
        return self.cfg.lr * max(0.0, 1.0 - self.iteration / num_iterations)

    def train(self, total_steps: int, callback: Callable[[dict[str, float]], Any] | None = None
              ) -> list[dict[str, float]]:
        """Runs iterations until ``global_step >= total_steps``.

        Args:
            total_steps: env-step budget (also the horizon of the LR anneal).
            callback: called with each iteration's metrics; returning ``False`` stops early.

        Returns:
            The metrics of every iteration run by this call.
        """
        self.total_steps = int(total_steps)
        history = []
        while self.global_step < self.total_steps:
            metrics = self.train_iteration()
            history.append(metrics)
            if callback is not None and callback(metrics) is False:
                break
        return history

    def train_iteration(self, should_stop: StopCheck | None = None) -> dict[str, float]:
        """One collect + update. Returns the iteration's metrics (see ``xlstm_rl.logging``).

        Raises:
            StopRequested: ``should_stop`` turned True during collection (nothing was updated;
                the envs have moved on, so resume from a state saved before this call).
            TrainingFault: The env returned a non-finite or misfit value, or a loss, gradient
                or parameter became non-finite (the parameters are not updated with it).
        """
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        self.policy.eval()
        buffer, episodes = self.collector.collect(self.cfg.rollout_len, self.cfg.seq_len,
                                                  should_stop)
        t1 = time.perf_counter()
        buffer.compute_advantages(self.cfg.gamma, self.cfg.gae_lambda)
        self.policy.train()
        update = self._update(buffer)
        t2 = time.perf_counter()
        self.global_step += self.steps_per_iteration
        self.iteration += 1
        steps = self.steps_per_iteration
        episodes = self.parallel.gather_episodes(episodes)
        metrics = {**episodes.summary(), **update, "ppo/learning_rate": lr,
                   "perf/sps": steps / (t2 - t0), "perf/collect_sps": steps / (t1 - t0),
                   "perf/update_sps": steps / (t2 - t1),
                   "global_step": float(self.global_step), "iteration": float(self.iteration)}
        if self.logger is not None:
            self.logger.log(metrics, self.global_step)
        return metrics

    def _minibatch_step(self, batch: TensorDict, states: TensorDict, where: str,
                        weight: float = 1.0) -> dict[str, torch.Tensor]:
        """One gradient step on a minibatch of chunks; ``weight`` is this rank's share of a
        data-parallel minibatch (1.0 with one process)."""
        cfg = self.cfg
        adv = batch["advantage"]
        if cfg.norm_adv:
            adv = self.parallel.normalize_advantages(adv)
        self.optimizer.zero_grad(set_to_none=True)
        if batch.batch_size[0] == 0:  # no chunk of this global minibatch lives on this rank
            stats = {key: torch.zeros(()) for key in _LOSS_STATS}
        else:
            log_prob, entropy, value, _ = self.policy.evaluate(batch["obs"], states,
                                                               batch["reset"], batch["action"])
            loss, stats = ppo_loss(log_prob, batch["log_prob"], adv, value, batch["value"],
                                   batch["return"], entropy, clip_coef=cfg.clip_coef,
                                   clip_value_loss=cfg.clip_value_loss, vf_coef=cfg.vf_coef,
                                   ent_coef=cfg.ent_coef)
            check_finite_losses({"the loss": loss, **stats}, where)
            (loss * weight).backward()
        self.parallel.reduce_gradients(self.policy)
        stats = self.parallel.reduce_stats(stats, weight)
        stats["ppo/grad_norm"] = nn.utils.clip_grad_norm_(self.policy.parameters(),
                                                          cfg.max_grad_norm)
        if not torch.isfinite(stats["ppo/grad_norm"]):
            check_finite_parameters(self.policy, where, gradients=True)
        self.optimizer.step()
        return stats

    def _update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """``epochs`` passes of minibatch updates (optional state refresh / KL early stop)."""
        cfg, count, epochs_run = self.cfg, 0, 0
        sums: dict[str, float] = {}
        for epoch in range(cfg.epochs):
            if epoch > 0 and cfg.refresh_states:
                buffer.refresh_states(self.policy)
            kls = []
            parts = self.parallel.minibatches(buffer, cfg.minibatches, self.generator)
            for j, (batch, states, weight) in enumerate(parts):
                where = f"iteration {self.iteration + 1}, epoch {epoch + 1}, minibatch {j + 1}"
                stats = self._minibatch_step(batch, states, where, weight)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                kls.append(float(stats["ppo/approx_kl"]))
                count += 1
            epochs_run += 1
            if cfg.target_kl is not None and float(np.mean(kls)) > cfg.target_kl:
                break
        check_finite_parameters(self.policy, f"the end of iteration {self.iteration + 1}")
        out = {key: value / count for key, value in sums.items()}
        data = buffer.data
        out["ppo/explained_variance"] = explained_variance(data["value"], data["return"])
        out["ppo/epochs"] = float(epochs_run)
        return out

    def acting_policy(self) -> Any:
        """The current policy as an :class:`xlstm_rl.policy.Policy` (shares the weights and the
        normalization statistics; acting with it changes neither)."""
        from xlstm_rl.config import RunConfig
        from xlstm_rl.policy import Policy

        config = RunConfig(env=self.env_cfg, model=self.model_cfg, algo="ppo",
                           algo_config=self.cfg)
        training = self.policy.training
        policy = Policy(self.policy, self.observation_space, self.action_space, config,
                        self.normalizer, self.device)
        self.policy.train(training)  # Policy() switches the network to eval mode
        return policy

    def evaluate(self, episodes: int, deterministic: bool = True, env_id: str | None = None,
                 num_envs: int | None = None, seed: int | None = None,
                 max_episode_steps: int | None = DEFAULT_MAX_EPISODE_STEPS) -> dict[str, float]:
        """Runs ``episodes`` episodes with the current policy on fresh envs (no learning), with
        :func:`xlstm_rl.evaluation.evaluate_policy` (each env runs its share of episodes).

        Args:
            episodes: Number of episodes.
            deterministic: Act with the distribution's mode.
            env_id: Another env id (default: the training env with its kwargs and wrappers).
            num_envs: Parallel envs (default ``min(episodes, 16)``).
            seed: Env seed (default ``seed + 10_000``).
            max_episode_steps: Cut episodes after this many steps.

        Returns:
            ``mean_return, std_return, min_return, max_return, mean_length, ..., episodes``,
            ``capped_episodes`` and ``success_rate`` when the env reports ``success``.
        """
        env = self.env_cfg if env_id in (None, self.env_cfg.id) else EnvConfig(id=env_id)
        return evaluate_on_fresh_envs(self.acting_policy(), env, episodes, num_envs=num_envs,
                                      deterministic=deterministic,
                                      seed=self.seed + 10_000 if seed is None else seed,
                                      max_episode_steps=max_episode_steps)

    def env_snapshot(self) -> dict[str, dict[str, Any]]:
        """State of every training sub-env as ``{"0": {"base_seed", "episode", "actions"}, ...}``
        (tensors and ints): enough to rebuild them with :meth:`restore_envs`."""
        return env_snapshot_to_state(snapshot_envs(self.envs))

    def restore_envs(self, snapshot: dict[str, dict[str, Any]]) -> None:
        """Rebuilds the training sub-envs' internal state from :meth:`env_snapshot`."""
        restore_envs(self.envs, env_snapshot_from_state(snapshot, self.envs.num_envs))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, in the checkpoint layout (see
        :mod:`xlstm_rl.trainer`): ``policy`` weights, ``obs_norm`` statistics, and ``trainer``
        with optimizer, RNG, collector, env snapshots and counters."""
        trainer = {
            "optimizer": optimizer_to_state(self.optimizer),
            "rng": rng_to_state({"generator": self.generator,
                                 "action_generator": self.action_generator}),
            "collector": collector_to_state(self.collector, self.parallel),
            "envs": self.parallel.gather_envs(self.env_snapshot(), self.envs.num_envs),
            "counters": {"global_step": self.global_step, "iteration": self.iteration,
                         "total_steps": self.total_steps, "seed": self.seed,
                         "world_size": self.dist.world_size},
        }
        return {"policy": {k: v.detach().clone() for k, v in self.policy.state_dict().items()},
                "obs_norm": {} if self.normalizer is None else self.normalizer.state_dict(),
                "trainer": trainer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict` (same configs). Also restores the envs.

        Raises:
            CheckpointError: If the weights or statistics do not fit this trainer's network.
        """
        from xlstm_rl.checkpoint import CheckpointError
        from xlstm_rl.policy import check_weights

        saved = state["trainer"]
        world = int(saved["counters"].get("world_size", 1))
        if world != self.dist.world_size:
            raise CheckpointError(f"checkpoint: it was trained with {world} process(es) but this "
                                  f"run has {self.dist.world_size}; resume it with --nproc "
                                  f"{world} (its envs are split over that many processes)")
        check_weights(self.policy, state["policy"], "checkpoint")
        self.policy.load_state_dict(state["policy"])
        optimizer_from_state(self.optimizer, saved["optimizer"])
        rng_from_state(saved["rng"], {"generator": self.generator,
                                      "action_generator": self.action_generator},
                       optional=("action_generator",))
        if self.normalizer is not None:
            try:
                self.normalizer.load_state_dict(state["obs_norm"])
            except (KeyError, ValueError) as exc:
                raise CheckpointError(f"checkpoint: bad observation-normalization statistics "
                                      f"({exc})") from exc
        collector_from_state(self.collector, saved["collector"], self.parallel,
                             self.policy.initial_state(self.envs.num_envs, self.device),
                             self.device)
        envs = saved["envs"]
        if self.dist.enabled:
            envs = self.parallel.local_envs(envs, self.envs.num_envs)
        self.restore_envs(envs)
        counters = saved["counters"]
        self.global_step, self.iteration = int(counters["global_step"]), int(counters["iteration"])
        self.total_steps = int(counters["total_steps"])

    def close(self) -> None:
        """Closes the envs (and nothing else: the logger belongs to the caller)."""
        self.envs.close()
