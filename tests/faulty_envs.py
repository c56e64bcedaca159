"""Registered test environments that misbehave on purpose (faults named by the run loop).

Importing this module registers the ids below with gymnasium (again harmlessly). Subprocess
tests name them as ``faulty_envs:<id>`` with ``tests/`` on ``PYTHONPATH``.
"""
from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

NAN_REWARD = "xlstm_rl_test/NaNReward-v0"
NAN_OBS = "xlstm_rl_test/NaNObservation-v0"
WRONG_SHAPE_OBS = "xlstm_rl_test/WrongShapeObservation-v0"
ENDLESS = "xlstm_rl_test/Endless-v0"
SHORT_FAILURES = "xlstm_rl_test/ShortFailures-v0"


class FaultyEnv(gym.Env):
    """A one-number observation counting steps; after ``fault_at`` steps the chosen fault.

    Args:
        fault: ``"nan_reward"``, ``"nan_obs"``, ``"wrong_shape"`` or ``"none"``.
        fault_at: Step of the episode (1-based) at which the fault happens.
        length: Episode length (terminates); None: the episode never ends.
        box_actions: Box(1) actions instead of Discrete(2).
        step_seconds: Sleep this long in every step (a slow env).
    """

    observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def __init__(self, fault: str = "none", fault_at: int = 3, length: int | None = 8,
                 box_actions: bool = False, step_seconds: float = 0.0) -> None:
        self.fault, self.fault_at, self.length = fault, fault_at, length
        self.step_seconds = step_seconds
        self.action_space = (spaces.Box(-1.0, 1.0, (1,), np.float32) if box_actions
                             else spaces.Discrete(2))
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        if self.step_seconds:
            time.sleep(self.step_seconds)
        self.t += 1
        obs, reward = np.array([self.t / 10], np.float32), 0.1
        if self.t == self.fault_at:
            if self.fault == "nan_reward":
                reward = float("nan")
            elif self.fault == "nan_obs":
                obs = np.array([np.nan], np.float32)
            elif self.fault == "wrong_shape":
                obs = np.zeros(3, np.float32)
        ended = self.length is not None and self.t >= self.length
        return obs, reward, ended, False, {}


class ShortFailuresEnv(gym.Env):
    """Episodes that fail fast (2 steps, return 0) or succeed slowly (20 steps, return 1),
    each with probability 1/2 drawn from the env's seeded RNG at reset. An evaluator that counts
    the first episodes to finish over-counts failures."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.succeeds = 0, bool(self.np_random.random() < 0.5)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        length = 20 if self.succeeds else 2
        ended = self.t >= length
        reward = 1.0 if (ended and self.succeeds) else 0.0
        info = {"success": self.succeeds} if ended else {}
        return np.zeros(1, np.float32), reward, ended, False, info


def register() -> None:
    """Registers the test ids (idempotent)."""
    entry = f"{__name__}:FaultyEnv"
    ids: dict[str, dict[str, Any]] = {
        NAN_REWARD: {"fault": "nan_reward"}, NAN_OBS: {"fault": "nan_obs"},
        WRONG_SHAPE_OBS: {"fault": "wrong_shape"}, ENDLESS: {"length": None}}
    for env_id, kwargs in ids.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, kwargs=kwargs)
    if SHORT_FAILURES not in gym.registry:
        gym.register(id=SHORT_FAILURES, entry_point=f"{__name__}:ShortFailuresEnv")


register()
