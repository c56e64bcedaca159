"""T-maze memory task (after Bakker, 2001), reduced to its memory component.

The agent starts at the beginning of a corridor and sees a cue, *up* or *down*, on the very
first observation only. It is then carried one cell per step along the corridor (actions taken
in the corridor have no effect), reaches the junction and must turn towards the side the cue
pointed to. Walking the corridor is automatic on purpose: the only difficulty left is
remembering the cue for ``corridor_length`` steps, so a memoryless policy is capped at 0.5
success while a recurrent policy can reach 1.0.

Timeline for ``corridor_length = L``::

    t = 0      obs = [cue_up, cue_down, 1, 0]   (cue visible, in corridor)
    t = 1..L-1 obs = [0, 0, 1, 0]               (in corridor, actions ignored)
    t = L      obs = [0, 0, 0, 1]               (at junction: action 0 = up, 1 = down)

Every episode therefore lasts exactly ``L + 1`` steps and ends by termination (never
truncation); the last step carries ``info["success"]`` (bool) and ``info["cue"]`` (int).
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

UP, DOWN = 0, 1
_CUE_UP, _CUE_DOWN, _IN_CORRIDOR, _AT_JUNCTION = range(4)


class TMazeEnv(gym.Env[np.ndarray, np.int64]):
    """T-maze with an automatic corridor walk; success depends only on remembering the cue.

    Observation space: ``Box(0, 1, (4,), float32)`` with flags
    ``[cue_up, cue_down, in_corridor, at_junction]``; the cue flags are non-zero only at t = 0.
    Action space: ``Discrete(2)``, ``0 = up``, ``1 = down``; only the action taken at the
    junction matters.

    Rewards: ``correct_reward`` for turning towards the cue, ``wrong_reward`` for the other
    side, ``step_reward`` for every corridor step. With the defaults (1, 0, 0) the episode
    return equals the success indicator.

    Args:
        corridor_length: Number of corridor steps between the cue and the junction (>= 1).
        correct_reward: Reward for the correct turn.
        wrong_reward: Reward for the wrong turn.
        step_reward: Reward for each corridor step.
        render_mode: ``None`` or ``"ansi"``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, corridor_length: int = 10, correct_reward: float = 1.0,
                 wrong_reward: float = 0.0, step_reward: float = 0.0,
                 render_mode: str | None = None) -> None:
        if int(corridor_length) < 1:
            raise ValueError(f"corridor_length must be >= 1, got {corridor_length}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}; expected None or 'ansi'")
        self.corridor_length = int(corridor_length)
        self.correct_reward = float(correct_reward)
        self.wrong_reward = float(wrong_reward)
        self.step_reward = float(step_reward)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._cue = UP
        self._position = 0
        self._done = True
        self._last_turn: int | None = None

    @property
    def episode_length(self) -> int:
        """Number of steps every episode lasts (``corridor_length + 1``)."""
        return self.corridor_length + 1

    def _observation(self) -> np.ndarray:
        obs = np.zeros(4, dtype=np.float32)
        if self._position == 0:
            obs[_CUE_UP if self._cue == UP else _CUE_DOWN] = 1.0
        if self._position < self.corridor_length:
            obs[_IN_CORRIDOR] = 1.0
        else:
            obs[_AT_JUNCTION] = 1.0
        return obs

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Starts an episode with a random cue.

        Args:
            seed: Seeds the environment's random generator (cue draws).
            options: Optional ``{"cue": 0 | 1}`` to force the cue (0 = up, 1 = down).

        Returns:
            The first observation (with the cue) and an empty info dict.
        """
        super().reset(seed=seed)
        cue = None if options is None else options.get("cue")
        self._cue = int(self.np_random.integers(2)) if cue is None else int(cue)
        if self._cue not in (UP, DOWN):
            raise ValueError(f"cue must be 0 (up) or 1 (down), got {cue}")
        self._position = 0
        self._done = False
        self._last_turn = None
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advances one corridor cell, or takes the turn when at the junction.

        Args:
            action: 0 (up) or 1 (down); ignored in the corridor.

        Returns:
            ``(obs, reward, terminated, truncated, info)``; ``terminated`` is True after the
            turn, and then ``info`` holds ``success`` and ``cue``.

        Raises:
            RuntimeError: If called after the episode ended without a reset.
            ValueError: If the action is not in the action space.
        """
        if self._done:
            raise RuntimeError("TMazeEnv.step called after the episode ended; call reset()")
        if not self.action_space.contains(np.int64(action)):
            raise ValueError(f"invalid action {action!r}; expected 0 (up) or 1 (down)")
        if self._position < self.corridor_length:
            self._position += 1
            return self._observation(), self.step_reward, False, False, {}
        self._last_turn = int(action)
        success = self._last_turn == self._cue
        self._done = True
        reward = self.correct_reward if success else self.wrong_reward
        info = {"success": bool(success), "cue": self._cue}
        return self._observation(), reward, True, False, info

    def render(self) -> str | None:
        """Returns a one-line text picture of the maze when ``render_mode == "ansi"``."""
        if self.render_mode != "ansi":
            return None
        cells = ["." for _ in range(self.corridor_length + 1)]
        cells[min(self._position, self.corridor_length)] = "A"
        turn = {None: "", UP: " turned up", DOWN: " turned down"}[self._last_turn]
        cue = "up" if self._cue == UP else "down"
        return f"cue={cue} |{''.join(cells)}|{turn}"
