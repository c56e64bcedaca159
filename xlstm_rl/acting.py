"""The acting loop every algorithm and the evaluator share: step a vector env, keep the books.

:class:`EnvStepper` wraps a Gymnasium 1.x vector env built with same-step autoreset (see
:func:`xlstm_rl.envs.make_vec_env`). Per step it

* checks what the env returned (a reward or a float observation that is not finite, or an
  observation that does not fit the space, is an :class:`~xlstm_rl.errors.EnvFault` naming
  the env, the sub-env and the step; an exception raised inside ``env.step`` becomes one too);
* builds the reset flags for the next step (True where an episode ended, so the next
  observation starts a new one and the recurrent state must be zeroed before it);
* collects the last observation of every truncated (not terminated) episode, which the
  caller bootstraps from with the state that episode carried;
* accumulates episode returns, lengths and success flags.

The network call stays with the algorithm (PPO samples from a policy, R2D2 acts
epsilon-greedily on Q-values); the recurrent state it returns is carried in :attr:`state`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from xlstm_rl.envs import episode_success
from xlstm_rl.errors import EnvFault, first_line

__all__ = ["EnvStepper", "EpisodeStats", "StepResult", "build_training_envs",
           "check_observation"]


@dataclass
class EpisodeStats:
    """Returns, lengths and success flags (NaN: not reported) of the episodes that ended."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Means over the ended episodes (NaN when none ended / none reported success)."""
        succ = [s for s in self.successes if not np.isnan(s)]

        def mean(xs: list) -> float:
            return float(np.mean(xs)) if xs else float("nan")

        return {"episode/return": mean(self.returns), "episode/length": mean(self.lengths),
                "episode/success": mean(succ), "episode/count": float(len(self.returns))}


@dataclass
class StepResult:
    """One vector step, all arrays ``[N]`` (N sub-envs)."""

    reward: np.ndarray
    """Rewards (float64, as the env returned them)."""
    terminated: np.ndarray
    """The episode ended in a terminal state (never bootstrap)."""
    truncated: np.ndarray
    """The episode was cut (time limit): bootstrap from ``final_obs``."""
    final_obs: dict[int, Any]
    """Sub-env index -> last observation of its truncated-but-not-terminated episode."""
    ended: np.ndarray
    """``terminated | truncated``: the next observation starts a new episode."""
    infos: dict[str, Any]
    """The vector env's info dict."""


def _describe(value: Any) -> str:
    return np.array2string(np.asarray(value).ravel()[:4], precision=4, separator=", ")


def check_observation(space: gym.Space, obs: Any, what: str) -> None:
    """Checks a batch of observations ``[N, ...]`` against a single-env space.

    Raises:
        EnvFault: A row whose shape does not fit, or a non-finite float value; the message
            starts with ``what`` (which env, which step).
    """
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            check_observation(sub, obs[key], f"{what}, key {key!r}")
        return
    if isinstance(space, gym.spaces.Tuple):
        for j, sub in enumerate(space.spaces):
            check_observation(sub, obs[j], f"{what}, part {j}")
        return
    arr = np.asarray(obs)
    shape = tuple(space.shape or ())
    if arr.shape[1:] != shape:
        raise EnvFault(f"{what}: observation of shape {list(arr.shape[1:])} does not fit the "
                       f"observation space {space} (shape {list(shape)})")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EnvFault(f"{what}: sub-env {i} returned a non-finite observation "
                           f"{_describe(arr[i])}; the environment is at fault")


class EnvStepper:
    """Steps a same-step-autoreset vector env and keeps per-env books (see module docstring).

    Args:
        envs: The vector env (``autoreset_mode="same_step"``).
        env_id: Id used in error messages.

    Attributes:
        obs: The current observations (raw, as the env returned them).
        reset_flags: ``[N]`` bool, True where ``obs`` starts an episode.
        state: The recurrent state the caller carries between steps (opaque here).
        steps: Vector steps taken since the last :meth:`reset` of every env.
        episodes: Statistics of the episodes that ended since :meth:`take_episode_stats`.
    """

    def __init__(self, envs: gym.vector.VectorEnv, env_id: str) -> None:
        self.envs, self.env_id = envs, env_id
        self.num_envs = int(envs.num_envs)
        self.space = envs.single_observation_space
        self.obs: Any = None
        self.state: Any = None
        self.reset_flags = np.ones(self.num_envs, dtype=bool)
        self.ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self.steps = 0
        self.episodes = EpisodeStats()

    def _where(self) -> str:
        return f"environment {self.env_id!r} at vector step {self.steps}"

    def reset(self, seed: int | None = None) -> Any:
        """Resets every env (seeded: reproducible); returns the first observations."""
        try:
            obs, _ = self.envs.reset(seed=seed)
        except (ValueError, TypeError, IndexError, AssertionError) as exc:
            raise EnvFault(f"{self._where()} failed in reset: {type(exc).__name__}: "
                           f"{first_line(exc, 200)}") from exc
        check_observation(self.space, obs, self._where())
        self.obs, self.steps = obs, 0
        self.reset_flags[:] = True
        self.ep_return[:], self.ep_length[:] = 0.0, 0
        return obs

    def step(self, actions: Any) -> StepResult:
        """Steps every env with ``actions`` (a batch for ``VectorEnv.step``).

        Updates :attr:`obs` and :attr:`reset_flags`; the caller updates :attr:`state`.

        Raises:
            EnvFault: Non-finite reward or observation, a misfit observation, or an error
                inside the env's ``step``.
        """
        self.steps += 1
        try:
            obs, reward, terminated, truncated, infos = self.envs.step(actions)
        except (ValueError, TypeError, IndexError, AssertionError) as exc:
            raise EnvFault(f"{self._where()} failed in step: {type(exc).__name__}: "
                           f"{first_line(exc, 200)} (its observation space is {self.space})"
                           ) from exc
        reward = np.asarray(reward, dtype=np.float64)
        bad = ~np.isfinite(reward)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise EnvFault(f"{self._where()}: sub-env {first} returned a non-finite reward "
                           f"({reward[first]}); the environment is at fault")
        check_observation(self.space, obs, self._where())
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        ended = terminated | truncated
        final_obs = {}
        for i in np.flatnonzero(truncated & ~terminated):
            final_obs[int(i)] = infos["final_obs"][i]
            if isinstance(self.space, gym.spaces.Box):
                check_observation(self.space, np.asarray(final_obs[int(i)])[None],
                                  f"{self._where()} (last observation of sub-env {i})")
        self._track(reward, ended, infos)
        self.obs, self.reset_flags = obs, ended
        return StepResult(reward, terminated, truncated, final_obs, ended, infos)

    def _track(self, reward: np.ndarray, ended: np.ndarray, infos: dict[str, Any]) -> None:
        self.ep_return += reward
        self.ep_length += 1
        if not ended.any():
            return
        success = episode_success(infos, self.num_envs)
        for i in np.flatnonzero(ended):
            self.episodes.returns.append(float(self.ep_return[i]))
            self.episodes.lengths.append(int(self.ep_length[i]))
            self.episodes.successes.append(float(success[i]))
        self.ep_return[ended], self.ep_length[ended] = 0.0, 0

    def take_episode_stats(self) -> EpisodeStats:
        """The statistics gathered since the last call (and starts a new collection)."""
        stats, self.episodes = self.episodes, EpisodeStats()
        return stats


def build_training_envs(env: Any, seed: int) -> gym.vector.VectorEnv:
    """The training vector env of an ``EnvConfig``: same-step autoreset, and the exact-resume
    episode log (:class:`~xlstm_rl.envs.episode_log.EpisodeReplay`) outermost on every sub-env.

    Args:
        env: The ``EnvConfig`` (id, num_envs, vectorization, wrappers, kwargs).
        seed: Base seed (sub-env ``j`` gets ``seed + j``).
    """
    from xlstm_rl.envs import make_vec_env
    from xlstm_rl.envs.episode_log import EpisodeReplay

    wrappers = (*env.wrappers, EpisodeReplay)
    return make_vec_env(env.id, env.num_envs, vectorization=env.vectorization, seed=seed,
                        wrappers=wrappers, autoreset_mode="same_step", **dict(env.kwargs))
