"""An Ape-X actor process: its own envs and epsilons, sequences and priorities to the learner.

See :mod:`.apex` for the roles. The actor ignores SIGINT (the learner decides when to stop
and writes the checkpoint) and ends when the learner says stop or can no longer be reached.
"""
from __future__ import annotations

import signal
import sys
from typing import Any, cast

import torch
from tensordict import TensorDict

from xlstm_rl.acting import EpisodeStats
from xlstm_rl.errors import first_line

from . import apex_endpoint as mailbox
from .actor import Actor, ape_x_epsilons
from .apex import init_rpc
from .learning import R2D2Learner
from .networks import R2D2Network
from .trainer import build_envs

ENV_SEED_STRIDE = 100_003
"""Actor ``a`` seeds its envs from ``seed + a * ENV_SEED_STRIDE`` (no two actors share one)."""


def actor_epsilons(cfg: Any, actor: int, num_actors: int, num_envs: int) -> torch.Tensor:
    """This actor's slice of the Ape-X epsilons spread over every env of the job."""
    every = ape_x_epsilons(num_actors * num_envs, cfg.eps_base, cfg.eps_alpha)
    low = (actor - 1) * num_envs
    return torch.as_tensor(every[low:low + num_envs])


class ApexActor:
    """Acts with the latest weights it pulled; delivers every ``collect_steps`` steps.

    Args:
        run_config: The run config (``algo: r2d2``).
        rank: This actor's rank (1 .. num_actors).
        num_actors: Actor processes in the job.
    """

    def __init__(self, run_config: Any, rank: int, num_actors: int) -> None:
        cfg, env = run_config.r2d2, run_config.env
        self.cfg, self.rank = cfg, rank
        seed = int(run_config.train.seed) + rank * ENV_SEED_STRIDE
        torch.manual_seed(seed)
        self.envs = build_envs(env, seed)
        self.network = R2D2Network(self.envs.single_observation_space,
                                   self.envs.single_action_space, run_config.model,
                                   cfg.dueling_hidden)
        self.scorer = R2D2Learner(self.network, cfg)  # TD errors for the initial priorities
        self.actor = Actor(self.envs, self.network, cfg, env.id, torch.device("cpu"),
                           torch.Generator().manual_seed(seed + 1))
        self.actor.epsilons = actor_epsilons(cfg, rank, num_actors, env.num_envs)
        self.actor.reset(seed=seed)
        self.version, self.number = -1, 0

    def pull(self) -> bool:
        """Loads newer weights if the learner has them; returns False when told to stop."""
        from torch.distributed import rpc

        version, weights, stop = rpc.rpc_sync(mailbox.LEARNER, mailbox.pull_weights,
                                              args=(self.rank, self.version))
        if weights is not None:
            self.network.load_state_dict(weights)
            self.scorer.sync_target()
            self.version = version
        return not stop

    @torch.no_grad()
    def collect(self) -> mailbox.Delivery:
        """``collect_steps`` vector steps; their finished sequences with initial priorities."""
        sequences = []
        for _ in range(self.cfg.collect_steps):
            sequences += self.actor.step()
        stats: EpisodeStats = self.actor.take_episode_stats()
        batch: TensorDict | None = None
        priorities = None
        if sequences:
            batch = cast(TensorDict, torch.stack(sequences))  # type: ignore[arg-type]
            _, priorities, _ = self.scorer.loss(batch, torch.ones(batch.batch_size[0]))
        delivery = mailbox.Delivery(self.rank, self.number, batch, priorities,
                                    self.cfg.collect_steps * self.envs.num_envs,
                                    (stats.returns, stats.lengths, stats.successes))
        self.number += 1
        return delivery

    def run(self) -> None:
        """Pull, collect, deliver, until the learner says stop."""
        from torch.distributed import rpc

        while self.pull():
            rpc.rpc_sync(mailbox.LEARNER, mailbox.deliver, args=(self.collect(),))
        rpc.rpc_sync(mailbox.LEARNER, mailbox.goodbye, args=(self.rank,))


def run_actor(run_config: Any, rank: int, world_size: int) -> int:
    """The whole life of an actor process; returns its exit code (0 when told to stop)."""
    from torch.distributed import rpc

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init_rpc(mailbox.actor_name(rank), rank, world_size)
    actor, finished = None, False
    try:
        actor = ApexActor(run_config, rank, world_size - 1)
        actor.run()
        finished = True
        return 0
    except RuntimeError as exc:  # the learner is gone (it ended, or failed)
        print(f"actor {rank}: stopping, the learner cannot be reached "
              f"({first_line(exc, 160)})",
              file=sys.stderr, flush=True)
        return 1
    finally:
        if actor is not None:
            actor.envs.close()
        rpc.shutdown(graceful=finished)
