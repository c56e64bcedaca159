"""Prioritized sequence replay on torchrl (a TensorDict storage and its C++ sum-tree sampler).

torchrl switches the process's multiprocessing start method when it is imported, so this is
the only module of the library that imports it, and only the R2D2 trainer imports this module.

Priorities follow R2D2 (Kapturowski et al. 2019, Sec. 2.3): a sequence's priority is
``eta * max_t |td_t| + (1 - eta) * mean_t |td_t|`` over its trained steps
(:func:`.learning.sequence_priority`); it is sampled with probability
``p ** alpha / sum p ** alpha``
(alpha = ``priority_exponent``, 0.9) and its loss weighted by ``(N P(i)) ** -beta``
(beta = ``importance_exponent``, 0.6) divided by the largest weight of the batch. New
sequences get the largest priority seen so far (Schaul et al. 2016), so each is sampled soon.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor
from torchrl.data import LazyTensorStorage, PrioritizedSampler, TensorDictReplayBuffer

from .learning import sequence_priority  # noqa: F401  (re-exported)

logging.getLogger("torchrl").setLevel(logging.WARNING)  # no INFO line per storage on stdout


class SampleInsertRatio:
    """Keeps sampled / inserted sequences near ``samples_per_insert`` (Acme's rate limiter).

    The learner may sample while ``samples < spi * (inserted - min_size + 1)`` (it waits for
    data otherwise); the actors may insert while the learner is no more than ``tolerance``
    samples behind ``spi * (inserted - min_size)`` (they wait for the learner otherwise).
    The trainer acts and learns in turn, learning until :meth:`can_sample` is False, so after
    every iteration the ratio is within one batch of ``spi``.

    Args:
        samples_per_insert: Target ratio; min_size: inserts before the first sample;
        tolerance: Allowed gap in samples (one iteration's worth).
    """

    def __init__(self, samples_per_insert: float, min_size: int, tolerance: float) -> None:
        self.spi, self.min_size, self.tolerance = samples_per_insert, min_size, tolerance
        self.inserted, self.sampled = 0, 0

    def can_sample(self) -> bool:
        """The learner may sample another batch now."""
        if self.inserted < self.min_size:
            return False
        return self.sampled < self.spi * (self.inserted - self.min_size + 1)

    def can_insert(self) -> bool:
        """The actors may insert now (the learner is not behind by more than ``tolerance``)."""
        if self.inserted < self.min_size:
            return True
        return self.spi * (self.inserted - self.min_size) - self.sampled <= self.tolerance

    def ratio(self) -> float:
        """Samples per insert since learning began (NaN before)."""
        past = self.inserted - self.min_size
        return self.sampled / past if past > 0 else float("nan")


class SequenceReplay:
    """Prioritized replay of fixed-length sequences (see module docstring).

    Args:
        capacity: Sequences kept (the oldest is overwritten first).
        priority_exponent: alpha; importance_exponent: beta.
        seed: Seed of the sampler's generator.
    """

    def __init__(self, capacity: int, priority_exponent: float = 0.9,
                 importance_exponent: float = 0.6, seed: int = 0) -> None:
        self.capacity = int(capacity)
        self.alpha, self.beta = float(priority_exponent), float(importance_exponent)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.max_priority = 1.0
        self.buffer = self._new_buffer()

    def _new_buffer(self) -> TensorDictReplayBuffer:
        return TensorDictReplayBuffer(
            storage=LazyTensorStorage(self.capacity),
            sampler=PrioritizedSampler(self.capacity, alpha=self.alpha, beta=self.beta),
            priority_key="priority", generator=self.generator)

    def __len__(self) -> int:
        return len(self.buffer)

    def add(self, sequences: TensorDict, priorities: Tensor | None = None) -> None:
        """Inserts sequences ``[n]`` with the given initial ``priorities [n]`` (an Ape-X
        actor's own TD errors) or, by default, the largest priority seen so far."""
        if sequences.batch_size[0] == 0:
            return
        data = sequences.clone(False)
        if priorities is None:
            data["priority"] = torch.full((data.batch_size[0],), self.max_priority)
        else:
            data["priority"] = priorities.detach().to(torch.float32).clamp_min(1e-6).cpu()
            self.max_priority = max(self.max_priority, float(data["priority"].max()))
        self.buffer.extend(data)

    def sample(self, batch_size: int) -> tuple[TensorDict, Tensor, Tensor]:
        """A prioritized batch.

        Returns:
            ``(sequences [B], index [B] int64, weights [B] float32)``, the importance weights
            ``(N P(i)) ** -beta`` normalized by the batch's largest.
        """
        batch, info = self.buffer.sample(batch_size, return_info=True)
        weight = torch.as_tensor(info["priority_weight"], dtype=torch.float32)
        index = torch.as_tensor(info["index"], dtype=torch.long)
        return batch, index, weight / weight.max()

    def update_priorities(self, index: Tensor, priority: Tensor) -> None:
        """Sets the priorities of sampled sequences (positive floats ``[B]``)."""
        priority = priority.detach().to(torch.float32).clamp_min(1e-6).cpu()
        self.buffer.update_priority(index, priority)
        self.buffer.storage._storage["priority"][index] = priority
        self.max_priority = max(self.max_priority, float(priority.max()))

    def state_dict(self, include_data: bool = True) -> dict[str, Any]:
        """Contents (when ``include_data``), write position, priorities and sampler RNG."""
        out: dict[str, Any] = {"generator": self.generator.get_state(),
                               "max_priority": self.max_priority}
        if include_data and len(self):
            writer = self.buffer._writer.state_dict()
            out.update(size=len(self), cursor=int(writer["_cursor"]),
                       write_count=int(writer["_write_count"]),
                       data=self.buffer.storage._storage[:len(self)].to_dict(),
                       leaves=torch.as_tensor(self.buffer._sampler._sum_tree[
                           torch.arange(len(self))], dtype=torch.float32))
        return out

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output (an empty replay if it held no data)."""
        self.buffer = self._new_buffer()
        self.generator.set_state(saved["generator"].to(torch.uint8))
        self.max_priority = float(saved["max_priority"])
        if "data" in saved:
            size = int(saved["size"])
            self.buffer.extend(TensorDict(saved["data"], batch_size=[size]))
            # the trees' leaves, not recomputed: torch's vectorized pow rounds (p + eps) ** alpha
            # differently depending on a value's place in the tensor it was updated with
            leaves, index = saved["leaves"].float(), torch.arange(size)
            sampler = self.buffer._sampler
            sampler._sum_tree[index] = leaves
            sampler._min_tree[index] = leaves
            self.buffer._writer.load_state_dict({"_cursor": int(saved["cursor"]),
                                                 "_write_count": int(saved["write_count"])})
