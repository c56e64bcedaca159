"""Delayed recall: remember a token across a stream of distractors, report it when queried.

Observation layout (all float32 in [0, 1]), length ``vocab_size + num_distractors + 1``::

    [ token one-hot (vocab_size) | distractor one-hot (num_distractors) | query flag ]

Timeline for ``delay = D``::

    t = 0        token one-hot only (the token to remember)
    t = 1..D     one random distractor one-hot each step (all zeros if num_distractors == 0)
    t = D + 1    query flag only; the action taken now is the answer

Every episode lasts exactly ``D + 2`` steps and ends by termination. Actions before the query
are ignored and earn 0; the answer earns ``1`` when it equals the token, else ``0``. The final
step's info holds ``success`` (bool) and ``target`` (int). Distractors live in their own
channels, so a distractor observation never equals the token or the query observation.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class DelayedRecallEnv(gym.Env[np.ndarray, np.int64]):
    """Shows a token, then ``delay`` distractor steps, then a query for the token.

    Observation space: ``Box(0, 1, (vocab_size + num_distractors + 1,), float32)``.
    Action space: ``Discrete(vocab_size)``.

    Args:
        delay: Number of distractor steps between token and query (>= 0; 10 to 1000 typical).
        vocab_size: Number of tokens to choose from (>= 2).
        num_distractors: Number of distinct distractor tokens (>= 0).
        render_mode: ``None`` or ``"ansi"``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, delay: int = 10, vocab_size: int = 4, num_distractors: int = 4,
                 render_mode: str | None = None) -> None:
        if int(delay) < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        if int(vocab_size) < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if int(num_distractors) < 0:
            raise ValueError(f"num_distractors must be >= 0, got {num_distractors}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}; expected None or 'ansi'")
        self.delay = int(delay)
        self.vocab_size = int(vocab_size)
        self.num_distractors = int(num_distractors)
        self.render_mode = render_mode
        self.obs_dim = self.vocab_size + self.num_distractors + 1
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.obs_dim,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.vocab_size)
        self._target = 0
        self._t = 0
        self._done = True
        self._last_obs = np.zeros(self.obs_dim, dtype=np.float32)

    @property
    def query_index(self) -> int:
        """Index of the query flag in the observation vector."""
        return self.obs_dim - 1

    @property
    def episode_length(self) -> int:
        """Number of steps every episode lasts (``delay + 2``)."""
        return self.delay + 2

    def _observation(self) -> np.ndarray:
        obs = np.zeros(self.obs_dim, dtype=np.float32)
        if self._t == 0:
            obs[self._target] = 1.0
        elif self._t <= self.delay:
            if self.num_distractors > 0:
                obs[self.vocab_size + int(self.np_random.integers(self.num_distractors))] = 1.0
        else:
            obs[self.query_index] = 1.0
        self._last_obs = obs
        return obs.copy()

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Starts an episode with a random token.

        Args:
            seed: Seeds the environment's random generator (token and distractor draws).
            options: Optional ``{"target": k}`` to force the token.

        Returns:
            The first observation (the token) and an empty info dict.
        """
        super().reset(seed=seed)
        target = None if options is None else options.get("target")
        if target is None:
            target = int(self.np_random.integers(self.vocab_size))
        if not 0 <= int(target) < self.vocab_size:
            raise ValueError(f"target must lie in [0, {self.vocab_size}), got {target}")
        self._target = int(target)
        self._t = 0
        self._done = False
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Moves one step along the stream, or scores the answer at the query step.

        Args:
            action: A token index; only the action at the query step counts.

        Returns:
            ``(obs, reward, terminated, truncated, info)``; at the answer ``terminated`` is True
            and ``info`` holds ``success`` and ``target``.

        Raises:
            RuntimeError: If called after the episode ended without a reset.
            ValueError: If the action is not in the action space.
        """
        if self._done:
            raise RuntimeError("DelayedRecallEnv.step called after the episode ended; call reset()")
        if not self.action_space.contains(np.int64(action)):
            raise ValueError(f"invalid action {action!r}; "
                             f"expected an int in [0, {self.vocab_size})")
        if self._t <= self.delay:
            self._t += 1
            return self._observation(), 0.0, False, False, {}
        success = int(action) == self._target
        self._done = True
        info = {"success": bool(success), "target": self._target}
        return self._last_obs.copy(), float(success), True, False, info

    def render(self) -> str | None:
        """Returns a short text description of the current step when ``render_mode == "ansi"``."""
        if self.render_mode != "ansi":
            return None
        if self._t == 0:
            what = f"token {self._target}"
        elif self._t <= self.delay:
            shown = np.flatnonzero(self._last_obs[self.vocab_size:-1])
            what = f"distractor {int(shown[0])}" if shown.size else "blank"
        else:
            what = "query"
        return f"t={self._t}/{self.delay + 1} {what}"
