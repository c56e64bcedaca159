"""Partially observable CartPole: keep only positions or only velocities.

The full CartPole state is ``(x, x_dot, theta, theta_dot)``. ``PositionOnlyCartPole`` keeps
``(x, theta)``, so velocities must be inferred from consecutive observations;
``VelocityOnlyCartPole`` keeps ``(x_dot, theta_dot)``, so positions must be integrated over
time. Both are plain ``gymnasium.ObservationWrapper`` subclasses and wrap any CartPole env.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

POSITION_INDICES = (0, 2)
VELOCITY_INDICES = (1, 3)


class ObservationSlice(gym.ObservationWrapper[np.ndarray, Any, np.ndarray],
                       gym.utils.RecordConstructorArgs):
    """Keeps a fixed subset of the entries of a 1-D ``Box`` observation.

    Args:
        env: Environment with a 1-D ``Box`` observation space.
        indices: Entries to keep, in order.
    """

    def __init__(self, env: gym.Env, indices: Sequence[int]) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, indices=tuple(indices))
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"ObservationSlice needs a 1-D Box observation space, got {space}")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.observation_space = spaces.Box(space.low[self.indices], space.high[self.indices],
                                            dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """Returns the kept entries of ``observation``."""
        return np.asarray(observation)[self.indices]


class PositionOnlyCartPole(ObservationSlice):
    """CartPole observation reduced to ``(x, theta)``.

    Args:
        env: A CartPole environment.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)  # no kwargs beyond env
        super().__init__(env, POSITION_INDICES)


class VelocityOnlyCartPole(ObservationSlice):
    """CartPole observation reduced to ``(x_dot, theta_dot)``.

    Args:
        env: A CartPole environment.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)  # no kwargs beyond env
        super().__init__(env, VELOCITY_INDICES)


def make_position_only_cartpole(**kwargs: Any) -> gym.Env:
    """Entry point of ``xlstm_rl/PositionOnlyCartPole-v0``: ``CartPole-v1`` seeing ``(x, theta)``.

    Args:
        **kwargs: Passed to ``CartPoleEnv`` (e.g. ``render_mode``, ``sutton_barto_reward``).

    Returns:
        The wrapped environment (the time limit of 500 is added by the registration).
    """
    return PositionOnlyCartPole(CartPoleEnv(**kwargs))


def make_velocity_only_cartpole(**kwargs: Any) -> gym.Env:
    """Entry point of ``xlstm_rl/VelocityOnlyCartPole-v0``: ``CartPole-v1`` seeing velocities.

    Args:
        **kwargs: Passed to ``CartPoleEnv`` (e.g. ``render_mode``, ``sutton_barto_reward``).

    Returns:
        The wrapped environment (the time limit of 500 is added by the registration).
    """
    return VelocityOnlyCartPole(CartPoleEnv(**kwargs))
