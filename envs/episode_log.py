"""The exact-resume episode log: per-episode seeds plus a replay of the current episode's actions.

Gymnasium environments cannot, in general, save their internal state. :class:`EpisodeReplay`
makes it reconstructible instead: after a seeded ``reset(seed=s)`` every later (auto)reset
reseeds the inner env with a seed derived from ``(s, episode index)``, and the actions of the
current episode are recorded. Restoring resets the inner env with that episode's seed and
replays the actions, which reproduces its state exactly for any environment that is
deterministic given its seed and actions (all gymnasium classic-control and our tasks).

The snapshot of one env is a dict ``{"base_seed": int, "episode": int, "actions": array[L,
...]}``; :func:`snapshot_envs` / :func:`restore_envs` do it for a whole vector env (sync or
async) through ``get_attr`` / ``set_attr`` of the ``replay_state`` property.
"""
from __future__ import annotations

from typing import Any, cast

import gymnasium as gym
import numpy as np


def episode_seed(base_seed: int, episode: int) -> int:
    """Seed of episode ``episode`` of a sub-env whose first seeded reset used ``base_seed``."""
    return int(np.random.SeedSequence([int(base_seed), int(episode)]).generate_state(1)[0])


class EpisodeReplay(gym.Wrapper):
    """Seeds every episode deterministically and records its actions (see module docstring).

    Apply it outermost (after every other wrapper) so the recorded actions are the ones
    ``VectorEnv.step`` passes in.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._base_seed: int | None = None
        self._episode = 0
        self._actions: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        """Seeded reset: starts a new seed stream; unseeded: next episode of the stream."""
        if seed is not None:
            self._base_seed, self._episode = int(seed), 0
        elif self._base_seed is not None:
            self._episode += 1
        self._actions = []
        ep_seed = None if self._base_seed is None else episode_seed(self._base_seed, self._episode)
        return self.env.reset(seed=ep_seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Records ``action`` and steps the inner env."""
        self._actions.append(np.array(action, copy=True))
        return self.env.step(action)

    @property
    def replay_state(self) -> dict[str, Any]:
        """Snapshot: base seed (-1 if never seeded), episode index, actions ``[L, ...]``."""
        shape = self.action_space.shape or ()
        dtype = self.action_space.dtype or np.float32
        actions = (np.stack(self._actions) if self._actions
                   else np.zeros((0, *shape), dtype=dtype))
        base = -1 if self._base_seed is None else self._base_seed
        return {"base_seed": base, "episode": self._episode, "actions": actions}

    @replay_state.setter
    def replay_state(self, snapshot: dict[str, Any]) -> None:
        base = int(snapshot["base_seed"])
        if base < 0:
            raise ValueError("cannot restore an env that was never reset with a seed")
        self._base_seed, self._episode = base, int(snapshot["episode"])
        self._actions = []
        self.env.reset(seed=episode_seed(base, self._episode))
        for action in np.asarray(snapshot["actions"]):
            self.step(action)


_Concrete = gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv
"""What ``make_vec_env`` builds: the ``VectorEnv`` base declares no ``get_attr`` / ``set_attr``."""


def snapshot_envs(envs: gym.vector.VectorEnv) -> list[dict[str, Any]]:
    """``replay_state`` of every sub-env (needs :class:`EpisodeReplay` in each)."""
    return list(cast(_Concrete, envs).get_attr("replay_state"))


def restore_envs(envs: gym.vector.VectorEnv, snapshots: list[dict[str, Any]]) -> None:
    """Puts every sub-env back into the state its snapshot describes."""
    if len(snapshots) != envs.num_envs:
        raise ValueError(f"got {len(snapshots)} env snapshots for {envs.num_envs} envs")
    cast(_Concrete, envs).set_attr("replay_state", list(snapshots))
