"""Gymnasium environments: memory tasks, wrappers, make_env / make_vec_env.

This folder installs as ``xlstm_rl.envs``; it is never a top-level package of its own.
"""
if __name__ != "xlstm_rl.envs":  # e.g. `import envs` from the repository root
    raise ImportError(f"'{__name__}' is not importable on its own: this folder is the package "
                      "xlstm_rl.envs; install xlstm-rl and import xlstm_rl.envs")

from xlstm_rl.envs.cartpole import PositionOnlyCartPole, VelocityOnlyCartPole
from xlstm_rl.envs.make import (
    DELAYED_RECALL_ID,
    POSITION_ONLY_CARTPOLE_ID,
    TASK_IDS,
    TMAZE_ID,
    VELOCITY_ONLY_CARTPOLE_ID,
    episode_success,
    make_env,
    make_vec_env,
    register_envs,
    resolve_env_id,
)
from xlstm_rl.envs.recall import DelayedRecallEnv
from xlstm_rl.envs.tmaze import TMazeEnv
from xlstm_rl.envs.wrappers import apply_wrappers

register_envs()

__all__ = [
    "DELAYED_RECALL_ID",
    "POSITION_ONLY_CARTPOLE_ID",
    "TASK_IDS",
    "TMAZE_ID",
    "VELOCITY_ONLY_CARTPOLE_ID",
    "DelayedRecallEnv",
    "PositionOnlyCartPole",
    "TMazeEnv",
    "VelocityOnlyCartPole",
    "apply_wrappers",
    "episode_success",
    "make_env",
    "make_vec_env",
    "register_envs",
    "resolve_env_id",
]
