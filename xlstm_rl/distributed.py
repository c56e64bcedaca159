"""Multi-process training on ``torch.distributed``: the process group and the few collectives
the trainers need.

Processes are launched by ``torchrun`` (or ``xlstm-rl train --nproc N``, which runs it), which
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables. The backend is gloo
on CPU and NCCL on CUDA. Without those variables everything here is a no-op for one process,
so single-process code paths pay nothing.

Teardown: :func:`shutdown` must leave no thread of the group running. The group's native
threads (gloo's two workers and its socket loop, rank 0's TCPStore server) are joined only when
the group's last reference goes. If a reference survives ``destroy_process_group``, they are
still running while the interpreter finalizes and ``exit`` tears the runtime down under them,
and now and then a rank of a completed run aborts at exit ("terminate called without an active
exception", SIGABRT; exit code 250 from ``--nproc``). Hence the import in
:func:`init_from_environment`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DistContext", "current", "init_from_environment", "shutdown"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    """Global rank (0: the process that logs, evaluates and writes checkpoints)."""
    world_size: int = 1
    """Number of processes."""
    local_rank: int = 0
    """Rank on this machine (picks the CUDA device)."""

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor`` over all ranks, in place; returns it."""
        if self.enabled:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenates every rank's ``tensor [n, ...]`` in rank order: ``[world * n, ...]``
        (every rank must pass the same shape)."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (objects travel between our own processes)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)

    def max_int(self, value: int) -> int:
        """The largest ``value`` over all ranks."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def barrier(self) -> None:
        """Waits for every rank."""
        if self.enabled:
            torch.distributed.barrier()


_CURRENT = DistContext()


def current() -> DistContext:
    """The context set by :func:`init_from_environment` (one process when never called)."""
    return _CURRENT


def launched_by_torchrun() -> bool:
    """True when ``WORLD_SIZE`` says this process is one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: str = "cpu") -> DistContext:
    """Joins the process group described by torchrun's environment variables.

    Args:
        device: The training device; ``cuda`` picks NCCL and this rank's local GPU.

    Returns:
        The context (also kept for :func:`current`).
    """
    global _CURRENT
    if not launched_by_torchrun():
        _CURRENT = DistContext()
        return _CURRENT
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        _import_group_defaults()
        torch.distributed.init_process_group(backend=backend)
    _CURRENT = DistContext(rank=rank, world_size=world, local_rank=local)
    return _CURRENT


def _import_group_defaults() -> None:
    """Imports ``torch.distributed.nn`` while there is no default group yet.

    Its functions declare ``group=group.WORLD`` as a default argument, evaluated once, at import.
    Imported after ``init_process_group`` (tensordict's functorch wrappers import
    ``torch._dynamo``, which imports it, while the trainer is built), ten function defaults hold
    the default group until the process ends: ``destroy_process_group`` then forgets it without
    freeing it, and its threads outlive the interpreter (the module docstring). Imported first,
    the defaults are None, which the collectives read as "the default group".
    """
    import torch.distributed.nn  # noqa: F401


def shutdown(graceful: bool = True) -> None:
    """Leaves the process group (if any) and forgets the context.

    Args:
        graceful: Every rank reaches this point together (the run completed, or the ranks agreed
            to stop): wait at a barrier first, so that the ranks close their connections only
            once all are done with them (rank 0 ends with an evaluation of its own). False
            when this rank leaves on an error: the others may be inside a collective that a
            barrier would wrongly join, so leave at once.
    """
    global _CURRENT
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if graceful and torch.distributed.get_world_size() > 1:
            try:
                torch.distributed.barrier()
            except RuntimeError:  # a rank already left on an error: nobody left to wait for
                pass
        torch.distributed.destroy_process_group()
    _CURRENT = DistContext()
