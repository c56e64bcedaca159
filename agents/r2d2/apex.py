"""Ape-X R2D2 (Horgan et al. 2018, "Distributed Prioritized Experience Replay"; Kapturowski et al.
2019): actor processes step their own envs and send sequences to one learner process.

Roles over ``torch.distributed.rpc`` (TensorPipe; launched by ``xlstm-rl train ... --actors N``
or by ``torchrun`` with ``N + 1`` processes): rank 0 is the learner, ranks ``1..N`` are actors.

* Each actor has its own vector env (seeded apart from the others) and its own epsilons: the
  Ape-X schedule is spread over all ``N * num_envs`` envs of the job. It delivers its finished
  sequences with their stored start states and initial priorities (the actor's own TD errors)
  every ``collect_steps`` vector steps, and pulls new weights before each delivery.
* The learner inserts deliveries into the prioritized replay and learns while the
  samples-per-insert ratio allows; it publishes its weights every ``weight_sync_period``
  updates. A delivery seen twice is counted once.
* An actor that stops answering is reported (``apex/actors_alive``) and the learner goes on
  with the others; when every actor is gone training stops with one line. (Under ``torchrun``,
  torchrun itself ends the whole job when any process fails.)
* Checkpoints hold the learner: weights, target, optimizer, replay and counters. Resuming
  restarts the actors' environments, so an Ape-X resume is not bit-exact (one-process R2D2's
  is).
"""
from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import torch

from xlstm_rl.acting import EpisodeStats
from xlstm_rl.errors import StopRequested, TrainingFault

from . import apex_endpoint as mailbox
from .learning import R2D2Learner
from .networks import R2D2Network
from .replay import SampleInsertRatio, SequenceReplay
from .resume import load_checked

def init_rpc(name: str, rank: int, world_size: int) -> None:
    """Joins the RPC group (rendezvous from ``MASTER_ADDR`` / ``MASTER_PORT``)."""
    import warnings

    from torch.distributed import rpc

    options = rpc.TensorPipeRpcBackendOptions(num_worker_threads=8, rpc_timeout=600)
    with warnings.catch_warnings():  # torch's own RPC set-up trips its gloo deprecation notice
        warnings.simplefilter("ignore", UserWarning)
        rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=options)


def spaces_of(env: Any) -> tuple[gym.Space, gym.Space]:
    """Single-env observation and action spaces of an ``EnvConfig``."""
    from xlstm_rl.envs import make_env

    probe = make_env(env.id, wrappers=env.wrappers, **dict(env.kwargs))
    try:
        return probe.observation_space, probe.action_space
    finally:
        probe.close()


class ApexLearner:
    """The learner process of an Ape-X run (implements :class:`xlstm_rl.trainer.Trainer`).

    Args:
        run_config: The run config (``algo: r2d2``).
        num_actors: Actor processes (ranks ``1..num_actors``).
    """

    def __init__(self, run_config: Any, num_actors: int) -> None:
        cfg, self.run_config, self.num_actors = run_config.r2d2, run_config, int(num_actors)
        self.cfg, self.env_cfg = cfg, run_config.env
        self.seed = int(run_config.train.seed)
        self.device = torch.device(run_config.train.resolved_device())
        torch.manual_seed(self.seed)
        self._spaces = spaces_of(run_config.env)
        self.network = R2D2Network(*self._spaces, run_config.model,
                                   cfg.dueling_hidden).to(self.device)
        self.learner = R2D2Learner(self.network, cfg)
        self.replay = SequenceReplay(cfg.replay_capacity, cfg.priority_exponent,
                                     cfg.importance_exponent, seed=self.seed + 2)
        self.limiter = SampleInsertRatio(cfg.samples_per_insert, cfg.min_replay, cfg.batch_size)
        self.endpoint = mailbox.LearnerEndpoint(self.num_actors)
        mailbox.serve(self.endpoint)
        self._publish()
        init_rpc(mailbox.LEARNER, 0, self.num_actors + 1)  # returns once every actor joined
        self.endpoint.joined()
        self.global_step, self.iteration, self.total_steps = 0, 0, 0
        self.logger: Any = None
        self.gone: set[int] = set()

    observation_space = property(lambda self: self._spaces[0])
    action_space = property(lambda self: self._spaces[1])

    @property
    def steps_per_iteration(self) -> int:
        """Nominal env steps per iteration: one delivery of every actor."""
        return self.cfg.collect_steps * self.env_cfg.num_envs * self.num_actors

    def _publish(self) -> None:
        self.endpoint.publish({k: v.detach().cpu().clone()
                               for k, v in self.network.state_dict().items()})

    def _check_actors(self) -> None:
        timeout = self.cfg.actor_timeout
        silent = set(self.endpoint.silent_actors(timeout)) - self.gone
        for actor in sorted(silent):
            self.gone.add(actor)
            print(f"warning: actor {actor} has not answered for {timeout:g} s; going on with "
                  f"{self.num_actors - len(self.gone)} actor(s)", flush=True)
        if len(self.gone) == self.num_actors:
            raise TrainingFault(f"training stopped: all {self.num_actors} actors are gone "
                                "(see their error lines above)")

    def _insert(self, delivery: mailbox.Delivery, stats: EpisodeStats) -> None:
        if delivery.sequences is not None and delivery.sequences.batch_size[0] > 0:
            self.replay.add(delivery.sequences, delivery.priorities)
            self.limiter.inserted += int(delivery.sequences.batch_size[0])
        returns, lengths, successes = delivery.episodes
        stats.returns += returns
        stats.lengths += lengths
        stats.successes += successes
        self.global_step += int(delivery.env_steps)

    def _learn(self, sums: dict[str, float]) -> int:
        count = 0
        while self.limiter.can_sample():
            batch, index, weights = self.replay.sample(self.cfg.batch_size)
            priority, metrics = self.learner.update(batch.to(self.device),
                                                    weights.to(self.device))
            self.replay.update_priorities(index, priority.cpu())
            self.limiter.sampled += self.cfg.batch_size
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            if self.learner.updates % self.cfg.weight_sync_period == 0:
                self._publish()
        return count

    def train_iteration(self, should_stop: Any = None) -> dict[str, float]:
        """Takes in deliveries worth :attr:`steps_per_iteration` env steps, learning in between.

        Raises:
            StopRequested: ``should_stop`` turned True while waiting.
            TrainingFault: Every actor is gone, or a non-finite loss / gradient / parameter.
        """
        import queue

        t0, start = time.perf_counter(), self.global_step
        stats, count = EpisodeStats(), 0
        sums: dict[str, float] = {}
        while self.global_step - start < self.steps_per_iteration:
            if should_stop is not None and should_stop():
                raise StopRequested("the learner stopped waiting for deliveries")
            try:
                delivery = self.endpoint.inbox.get(timeout=0.5)
            except queue.Empty:
                self._check_actors()
                continue
            self._insert(delivery, stats)
            count += self._learn(sums)
        self._check_actors()
        self.iteration += 1
        metrics = {**stats.summary(), **{k: v / max(count, 1) for k, v in sums.items()},
                   "r2d2/updates": float(self.learner.updates),
                   "replay/size": float(len(self.replay)),
                   "replay/samples_per_insert": self.limiter.ratio(),
                   "apex/actors_alive": float(self.num_actors - len(self.gone)),
                   "apex/duplicate_deliveries": float(self.endpoint.duplicates),
                   "perf/sps": (self.global_step - start) / (time.perf_counter() - t0),
                   "global_step": float(self.global_step), "iteration": float(self.iteration)}
        if self.logger is not None:
            self.logger.log(metrics, self.global_step)
        return metrics

    def acting_policy(self) -> Any:
        """The greedy policy on the learner's online network."""
        from xlstm_rl.policy import Policy

        return Policy(self.network, self.observation_space, self.action_space, self.run_config,
                      None, self.device)

    def state_dict(self) -> dict[str, Any]:
        """The learner's state in the checkpoint layout (no actor or env state)."""
        from xlstm_rl.train_state import optimizer_to_state

        def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.detach().clone() for k, v in module.state_dict().items()}

        return {"policy": weights(self.network), "obs_norm": {}, "trainer": {
            "target": weights(self.learner.target),
            "optimizer": optimizer_to_state(self.learner.optimizer),
            "replay": self.replay.state_dict(include_data=self.cfg.save_replay),
            "limiter": {"inserted": self.limiter.inserted, "sampled": self.limiter.sampled},
            "counters": {"global_step": self.global_step, "iteration": self.iteration,
                         "total_steps": self.total_steps, "updates": self.learner.updates,
                         "seed": self.seed, "actors": self.num_actors}}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the learner (actors start fresh envs)."""
        from xlstm_rl.train_state import optimizer_from_state

        saved = state["trainer"]
        load_checked(self.network, state["policy"], "policy weights")
        load_checked(self.learner.target, saved["target"], "target weights")
        optimizer_from_state(self.learner.optimizer, saved["optimizer"])
        self.replay.load_state_dict(saved["replay"])
        keep = "data" in saved["replay"]
        self.limiter.inserted = int(saved["limiter"]["inserted"]) if keep else 0
        self.limiter.sampled = int(saved["limiter"]["sampled"]) if keep else 0
        counters = saved["counters"]
        self.global_step, self.iteration = int(counters["global_step"]), int(counters["iteration"])
        self.total_steps = int(counters["total_steps"])
        self.learner.updates = int(counters["updates"])
        self._publish()

    def close(self) -> None:
        """Tells the actors to stop, waits briefly for their goodbye, leaves the RPC group."""
        from torch.distributed import rpc

        self.endpoint.stop = True
        deadline = time.monotonic() + 20.0
        alive = set(range(1, self.num_actors + 1)) - self.gone
        while not alive <= self.endpoint.finished and time.monotonic() < deadline:
            time.sleep(0.1)
        # every actor said goodbye: leave together (a lost actor would never join the barrier)
        rpc.shutdown(graceful=not self.gone and alive <= self.endpoint.finished)
        mailbox.serve(None)


def build_trainer(run_config: Any) -> Any:
    """The registry's trainer builder for ``algo: r2d2``: the Ape-X learner when this process
    is rank 0 of several (``--actors N`` or torchrun), else the one-process R2D2 trainer."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return ApexLearner(run_config, world - 1)
    from .trainer import build_trainer as build_single

    return build_single(run_config)
