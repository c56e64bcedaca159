"""The learner's mailbox in an Ape-X run: what actor processes call over ``torch.distributed.rpc``.

Actors deliver finished sequences (with their stored start states and initial priorities) and
pull fresh weights; both calls also tell the learner an actor is alive. Deliveries carry the
actor's running number, so a delivery seen twice (a retried call) is counted once. The
mailbox is bounded: when the learner falls behind, ``deliver`` blocks the calling actor, which
keeps actors and learner near the samples-per-insert ratio.

Only plain functions at module level can be RPC targets; they reach the one
:class:`LearnerEndpoint` of this process through :func:`serve`.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Delivery", "LearnerEndpoint", "deliver", "goodbye", "pull_weights", "serve"]

LEARNER = "learner"
"""RPC name of the learner (rank 0)."""


def actor_name(rank: int) -> str:
    """RPC name of the actor with this rank (1, 2, ...)."""
    return f"actor{rank}"


@dataclass
class Delivery:
    """What one actor sends after ``collect_steps`` vector steps."""

    actor: int
    """The actor's rank."""
    number: int
    """The actor's running delivery number (0, 1, ...)."""
    sequences: Any
    """TensorDict ``[n]`` of finished sequences (None when none finished)."""
    priorities: Any
    """``[n]`` initial priorities computed by the actor (None with the sequences)."""
    env_steps: int
    """Env steps taken for this delivery (all of the actor's envs)."""
    episodes: tuple[list, list, list] = field(default_factory=lambda: ([], [], []))
    """Returns, lengths and success flags of the episodes that ended."""


@dataclass
class LearnerEndpoint:
    """The learner's side: a bounded queue of deliveries, the published weights, liveness."""

    num_actors: int
    """Actors expected (ranks 1 .. num_actors)."""
    capacity: int = 8
    """Deliveries waiting at most (then ``deliver`` blocks the actor)."""
    inbox: queue.Queue = field(init=False)
    last_number: dict[int, int] = field(default_factory=dict)
    last_heard: dict[int, float] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    stop: bool = False
    version: int = -1
    weights: Any = None
    duplicates: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.inbox = queue.Queue(maxsize=self.capacity)

    def heard(self, actor: int) -> None:
        """Marks ``actor`` as alive now."""
        with self.lock:
            self.last_heard[actor] = time.monotonic()

    def joined(self) -> None:
        """Every actor has joined the RPC group (now): an actor not heard from yet counts its
        silence from here, so one that dies before its first call is noticed too."""
        now = time.monotonic()
        with self.lock:
            for actor in range(1, self.num_actors + 1):
                self.last_heard.setdefault(actor, now)

    def deliver(self, delivery: Delivery) -> bool:
        """Queues a delivery once; returns False for one already seen (or after stop)."""
        self.heard(delivery.actor)
        with self.lock:
            if self.last_number.get(delivery.actor, -1) >= delivery.number:
                self.duplicates += 1
                return False
            self.last_number[delivery.actor] = delivery.number
        while not self.stop:
            try:
                self.inbox.put(delivery, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def publish(self, weights: dict[str, Any]) -> None:
        """Makes ``weights`` (CPU tensors) the newest version for actors to pull."""
        with self.lock:
            self.version += 1
            self.weights = weights

    def weights_since(self, actor: int, version: int) -> tuple[int, Any, bool]:
        """``(version, weights or None when the actor has them, stop)``."""
        self.heard(actor)
        with self.lock:
            newer = self.weights if self.version > version else None
            return self.version, newer, self.stop

    def silent_actors(self, seconds: float) -> list[int]:
        """Actors not heard from for ``seconds`` (and not finished); before :meth:`joined`, an
        actor never heard from is not counted (it may still be starting)."""
        now = time.monotonic()
        with self.lock:
            return [a for a in range(1, self.num_actors + 1) if a not in self.finished
                    and now - self.last_heard.get(a, now) > seconds]


_ENDPOINT: LearnerEndpoint | None = None


def serve(endpoint: LearnerEndpoint | None) -> None:
    """Sets the endpoint the RPC functions below use in this process (None: none)."""
    global _ENDPOINT
    _ENDPOINT = endpoint


def _endpoint() -> LearnerEndpoint:
    if _ENDPOINT is None:
        raise RuntimeError("this process serves no Ape-X learner endpoint")
    return _ENDPOINT


def deliver(delivery: Delivery) -> bool:
    """RPC: an actor hands in a :class:`Delivery`."""
    return _endpoint().deliver(delivery)


def pull_weights(actor: int, version: int) -> tuple[int, Any, bool]:
    """RPC: an actor asks for weights newer than ``version``; also says whether to stop."""
    return _endpoint().weights_since(actor, version)


def goodbye(actor: int) -> None:
    """RPC: an actor has stopped on the learner's word."""
    endpoint = _endpoint()
    with endpoint.lock:
        endpoint.finished.add(actor)
