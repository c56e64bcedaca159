"""Data-parallel PPO: every rank collects from its own envs; the update is the one-process
update of all envs together.

With ``R`` ranks of ``n`` envs each, rank ``r`` runs the global envs ``r*n .. r*n + n - 1``
(seeded as a one-process run of ``R*n`` envs would seed them). Then, per step and per update:

* actions are sampled from the global batch of action distributions with the shared action
  generator, each rank keeping its rows, so the draws are those of one process;
* observation-normalization statistics are updated with the global batch;
* minibatches are cut from one global shuffle of all ``R*n*C`` chunks; each rank computes its
  share of the minibatch loss weighted by its share of the chunks, advantages are normalized
  with global moments, and gradients are summed over ranks before clipping and the step.

So a 2-rank run of 8 envs per rank equals a 1-rank run of 16 envs up to float rounding (tested).
With one process every function here is the plain one-process operation.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from xlstm_rl.acting import EpisodeStats
from xlstm_rl.distributed import DistContext
from xlstm_rl.obs_norm import ObsNormalizer

from .buffer import RolloutBuffer
from .loss import normalize

__all__ = ["DataParallel", "GlobalObsNormalizer"]


class GlobalObsNormalizer(ObsNormalizer):
    """An :class:`ObsNormalizer` whose statistics are updated with every rank's batch."""

    def __init__(self, shape: tuple[int, ...], ctx: DistContext, clip: float = 10.0) -> None:
        super().__init__(shape, clip=clip)
        self.ctx = ctx

    def update(self, batch: Any) -> None:
        local = torch.as_tensor(batch).to(torch.float64)
        super().update(self.ctx.all_gather_cat(local))


class DataParallel:
    """The PPO operations that differ between one process and several (module docstring).

    Args:
        ctx: The process group context.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx

    def env_offset(self, num_envs: int) -> int:
        """Global index of this rank's first env."""
        return self.ctx.rank * num_envs

    def minibatches(self, buffer: RolloutBuffer, num_minibatches: int,
                    generator: torch.Generator) -> Iterator[tuple[TensorDict, TensorDict, float]]:
        """``(batch, start_states, weight)`` of this rank's part of each global minibatch;
        ``weight`` is its share of the minibatch's chunks (1.0 with one process)."""
        if not self.ctx.enabled:
            for batch, states in buffer.minibatches(num_minibatches, generator):
                yield batch, states, 1.0
            return
        local = buffer.num_chunks
        total, low = local * self.ctx.world_size, local * self.ctx.rank
        if num_minibatches > total:
            raise ValueError(f"minibatches ({num_minibatches}) exceed the number of chunks "
                             f"({total}); lower minibatches or seq_len")
        seqs, states = buffer.sequences(), buffer.chunk_states()
        perm = torch.randperm(total, generator=generator)
        for idx in perm.tensor_split(num_minibatches):
            mine = (idx[(idx >= low) & (idx < low + local)] - low).to(seqs.device)
            yield seqs[mine], states[mine], mine.numel() / idx.numel()

    def normalize_advantages(self, advantages: Tensor) -> Tensor:
        """Zero mean, unit (unbiased) std over the global minibatch."""
        if not self.ctx.enabled:
            return normalize(advantages)
        x = advantages.double()
        moments = self.ctx.all_reduce_sum(torch.stack([x.sum(), (x * x).sum(),
                                                       torch.tensor(float(x.numel()))]))
        total, squares, count = moments.tolist()
        mean = total / count
        var = max(squares - count * mean * mean, 0.0) / max(count - 1.0, 1.0)
        return (advantages - mean) / (var ** 0.5 + 1e-8)

    def reduce_gradients(self, module: nn.Module) -> None:
        """Sums every parameter's gradient over ranks (missing gradients count as zero)."""
        if not self.ctx.enabled:
            return
        params = list(module.parameters())
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
        self.ctx.all_reduce_sum(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))  # type: ignore[union-attr]
            offset += n

    def reduce_stats(self, stats: dict[str, Tensor], weight: float) -> dict[str, Tensor]:
        """Minibatch statistics (means) over the global minibatch, given this rank's weight."""
        if not self.ctx.enabled:
            return stats
        keys = sorted(stats)
        values = torch.stack([torch.as_tensor(stats[k], dtype=torch.float64).detach().cpu()
                              for k in keys]) * weight
        self.ctx.all_reduce_sum(values)
        return {k: v for k, v in zip(keys, values)}

    def gather_episodes(self, stats: EpisodeStats) -> EpisodeStats:
        """Every rank's ended episodes (rank order)."""
        if not self.ctx.enabled:
            return stats
        out = EpisodeStats()
        for part in self.ctx.all_gather_object((stats.returns, stats.lengths, stats.successes)):
            out.returns += part[0]
            out.lengths += part[1]
            out.successes += part[2]
        return out

    def gather_rows(self, local: dict[str, Any]) -> dict[str, Any]:
        """Concatenates per-env tensors / TensorDicts ``[n, ...]`` of every rank (rank order)."""
        if not self.ctx.enabled:
            return local
        parts = self.ctx.all_gather_object(local)
        return {k: torch.cat([p[k] for p in parts], dim=0) for k in local}

    def gather_envs(self, local: dict[str, Any], num_envs: int) -> dict[str, Any]:
        """Env snapshots keyed by global env index ``"0" .. str(R*n - 1)``."""
        if not self.ctx.enabled:
            return local
        out = {}
        for rank, part in enumerate(self.ctx.all_gather_object(local)):
            out.update({str(rank * num_envs + int(k)): v for k, v in part.items()})
        return out

    def local_rows(self, value: Any, num_envs: int) -> Any:
        """This rank's rows of a global per-env tensor / TensorDict ``[R*n, ...]``."""
        low = self.env_offset(num_envs)
        return value[low:low + num_envs]

    def local_envs(self, snapshots: dict[str, Any], num_envs: int) -> dict[str, Any]:
        """This rank's env snapshots, keyed ``"0" .. str(n - 1)``."""
        low = self.env_offset(num_envs)
        return {str(j): snapshots[str(low + j)] for j in range(num_envs)}

    def sample_actions(self, head: nn.Module, dist: Any, deterministic: bool,
                       generator: torch.Generator | None) -> Tensor:
        """Actions of this rank's rows, drawn from the global batch of distributions."""
        if not self.ctx.enabled or deterministic:
            return head.sample(dist, deterministic, generator)  # type: ignore[operator]
        n = _batch_rows(dist)
        global_dist = _gather_distribution(dist, self.ctx)
        actions = head.sample(global_dist, False, generator)  # type: ignore[operator]
        low = self.ctx.rank * n
        return actions[low:low + n]


def _batch_rows(dist: Any) -> int:
    if hasattr(dist, "parts"):
        return int(dist.parts[0].logits.shape[0])
    if hasattr(dist, "logits") and not hasattr(dist, "loc"):
        return int(dist.logits.shape[0])
    return int(dist.loc.shape[0])


def _gather_distribution(dist: Any, ctx: DistContext) -> Any:
    """The same kind of distribution over every rank's rows (rank order)."""
    from torch.distributions import Categorical, Normal

    if hasattr(dist, "parts"):
        parts = [Categorical(logits=ctx.all_gather_cat(p.logits), validate_args=False)
                 for p in dist.parts]
        return type(dist)(parts)
    if isinstance(dist, Categorical):
        return Categorical(logits=ctx.all_gather_cat(dist.logits), validate_args=False)
    if isinstance(dist, Normal):
        return Normal(ctx.all_gather_cat(dist.loc), ctx.all_gather_cat(dist.scale),
                      validate_args=False)
    raise TypeError(f"data-parallel sampling does not support {type(dist).__name__}")
