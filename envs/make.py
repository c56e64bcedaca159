"""Registration of the xlstm_rl tasks and the ``make_env`` / ``make_vec_env`` factories."""
from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import error as gym_error
from gymnasium.envs.registration import find_highest_version, parse_env_id
from gymnasium.vector import AutoresetMode

# the ids and their registration live in a module without gymnasium or torch, so that
# `import xlstm_rl` can register them; re-exported here (and by xlstm_rl.envs)
from xlstm_rl.env_ids import DELAYED_RECALL_ID as DELAYED_RECALL_ID
from xlstm_rl.env_ids import POSITION_ONLY_CARTPOLE_ID as POSITION_ONLY_CARTPOLE_ID
from xlstm_rl.env_ids import TASK_IDS as TASK_IDS
from xlstm_rl.env_ids import TMAZE_ID as TMAZE_ID
from xlstm_rl.env_ids import VELOCITY_ONLY_CARTPOLE_ID as VELOCITY_ONLY_CARTPOLE_ID
from xlstm_rl.env_ids import register_tasks
from xlstm_rl.suggest import close_matches
from xlstm_rl.envs.wrappers import (ImportNotAllowedError, WrapperSpec, apply_wrappers,
                                    resolve_wrapper)

LOADER_IDS = frozenset({"GymV21Environment-v0", "GymV26Environment-v0"})
"""Registered ids whose kwargs name other environments to import; refused without imports."""

_AUTORESET_MODES = {"same_step": AutoresetMode.SAME_STEP, "next_step": AutoresetMode.NEXT_STEP,
                    "disabled": AutoresetMode.DISABLED}


def register_envs() -> tuple[str, ...]:
    """Registers the xlstm_rl tasks with gymnasium; ids already registered are left alone.

    Called on ``import xlstm_rl.envs`` (and, without importing gymnasium, by ``import
    xlstm_rl``: see :mod:`xlstm_rl.env_ids`); calling it again is harmless.

    Returns:
        The task ids.
    """
    return register_tasks()


def _is_known(env_name: str) -> bool:
    if env_name in gym.registry:
        return True
    try:  # an unversioned id resolves to its newest version, as in gymnasium.make
        namespace, name, version = parse_env_id(env_name)
    except gym_error.Error:
        return False
    return version is None and find_highest_version(namespace, name) is not None


def _bare_name(env_id: str) -> str:
    """``"ns/Name-v3"`` -> ``"name"`` (lower case), for fuzzy matching."""
    return env_id.rsplit("/", 1)[-1].rsplit("-v", 1)[0].lower()


def close_env_ids(env_name: str, n: int = 3) -> list[str]:
    """Returns up to ``n`` registered ids close to ``env_name`` (case-insensitive).

    Both the full ids and their bare names (no namespace, no version) are compared, so
    ``"tmaze"`` finds ``"xlstm_rl/TMaze-v0"``.

    Args:
        env_name: The id that was not found.
        n: Maximum number of suggestions.

    Returns:
        Registered ids, best match first.
    """
    ids = list(gym.registry)
    found = close_matches(env_name, ids, n=n)
    found += close_matches(env_name, ids, n=n, normalize=_bare_name)
    return list(dict.fromkeys(found))[:n]


def _unknown_id_error(env_id: str, env_name: str) -> ValueError:
    hint = ", ".join(repr(m) for m in close_env_ids(env_name))
    hint = f"; did you mean {hint}?" if hint else "; no close matches in the gymnasium registry"
    return ValueError(f"unknown environment id {env_id!r}{hint}")


def resolve_env_id(env_id: str, *, allow_imports: bool = True) -> str:
    """Checks an id, importing the module of a ``"module:EnvId"`` id first.

    Args:
        env_id: A registered id, or ``"module:EnvId"`` where importing ``module`` registers it.
        allow_imports: Import the module of a ``"module:EnvId"`` id. False imports nothing:
            such an id is accepted only when ``EnvId`` is registered already, and ids whose
            kwargs name other environments to import (:data:`LOADER_IDS`) are refused.

    Returns:
        The id without its module prefix.

    Raises:
        ValueError: If the module cannot be imported or the id is not registered; the message
            is one line naming the id and the closest registered ids.
        ImportNotAllowedError: (a ValueError) if the id needs an import that is not allowed.
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a str, got {type(env_id).__name__}")
    module_name, sep, env_name = env_id.partition(":")
    if not sep:
        env_name = env_id
    elif not allow_imports:
        if not _is_known(env_name):
            raise ImportNotAllowedError(f"environment id {env_id[:120]!r} needs module "
                                        f"{module_name[:80]!r} imported; imports are not "
                                        "allowed here")
    else:
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"unknown environment id {env_id!r}: cannot import module "
                             f"{module_name!r} ({type(exc).__name__})") from exc
    if not allow_imports and env_name in LOADER_IDS:
        raise ImportNotAllowedError(f"environment id {env_name!r} loads other environment "
                                    "packages by name; not allowed here")
    if not _is_known(env_name):
        raise _unknown_id_error(env_id, env_name)
    return env_name


def make_env(env_id: str, *, wrappers: Sequence[WrapperSpec] = (), seed: int | None = None,
             render_mode: str | None = None, allow_imports: bool = True,
             **kwargs: Any) -> gym.Env:
    """Builds one environment from a registered id and applies wrappers in order.

    Args:
        env_id: A registered id (``"xlstm_rl/TMaze-v0"``, ``"CartPole-v1"``, ...) or the
            ``"module:EnvId"`` form, which imports ``module`` (to register ids) first.
        wrappers: Wrapper specifications applied in order, the last outermost: callables,
            dotted paths (``"gymnasium.wrappers.ClipReward"``) or
            ``{"name": path_or_callable, "kwargs": {...}}`` dicts.
        seed: If given, the environment is reset once with ``reset(seed=seed)`` and its action
            and observation spaces are seeded, so later ``env.reset()`` calls (without a seed)
            are reproducible. The observation of that reset is discarded.
        render_mode: Passed to the environment when not None.
        allow_imports: Import what ``env_id`` and string wrapper specs name. False imports
            and calls nothing by name: only registered ids and callable wrappers are used
            (see :func:`resolve_env_id`).
        **kwargs: Passed to ``gymnasium.make`` (constructor kwargs, ``max_episode_steps``, ...).

    Returns:
        The environment.

    Raises:
        ValueError: For an unknown id or a bad wrapper specification (one-line message).
    """
    env_name = resolve_env_id(env_id, allow_imports=allow_imports)
    _check_wrappers(wrappers, allow_imports)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    env = apply_wrappers(gym.make(env_name, **kwargs), wrappers, allow_imports=allow_imports)
    if seed is not None:
        env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
        env.observation_space.seed(int(seed))
    return env


def _check_wrappers(wrappers: Sequence[WrapperSpec], allow_imports: bool) -> None:
    """Without imports, refuses string wrapper specs before any env is built."""
    if not allow_imports:
        specs = [wrappers] if isinstance(wrappers, (str, dict)) else wrappers
        for spec in specs:
            resolve_wrapper(spec, allow_imports=False)


def _autoreset_mode(mode: str | AutoresetMode) -> AutoresetMode:
    if isinstance(mode, AutoresetMode):
        return mode
    key = str(mode).lower()
    if key not in _AUTORESET_MODES:
        raise ValueError(f"unknown autoreset_mode {mode!r}; expected one of "
                         f"{list(_AUTORESET_MODES)}")
    return _AUTORESET_MODES[key]


def make_vec_env(env_id: str, num_envs: int, *, vectorization: str = "sync",
                 seed: int | None = None, wrappers: Sequence[WrapperSpec] = (),
                 autoreset_mode: str | AutoresetMode = "same_step",
                 allow_imports: bool = True, **kwargs: Any) -> gym.vector.VectorEnv:
    """Builds ``num_envs`` copies of an environment in a gymnasium vector env.

    With the default ``autoreset_mode="same_step"`` (``AutoresetMode.SAME_STEP``) a sub-env
    whose episode ends in ``step`` is reset within that call: its returned observation row is
    already the first observation of the next episode, ``terminated``/``truncated`` describe
    the episode that ended, and the gymnasium 1.4 info keys are

    * ``infos["final_obs"]``: object array (length ``num_envs``) with the last observation of
      each ended episode, ``None`` elsewhere; ``infos["_final_obs"]``: bool mask of ended envs;
    * ``infos["final_info"]``: the ended episodes' last step infos batched as a dict of arrays
      with ``_key`` masks (``infos["final_info"]["success"]`` / ``["_success"]``);
      ``infos["_final_info"]`` is the same ended mask. Top-level keys come from the reset.

    Seeding: with ``seed``, the vector env is reset here with ``reset(seed=seed)`` (sub-env
    ``j`` gets ``seed + j``) and the batched action space is seeded; then call
    ``envs.reset()`` for the first observations (or ``envs.reset(seed=seed)`` to restart
    from the seeded state; both are reproducible).

    Args:
        env_id: A registered id or ``"module:EnvId"`` (see :func:`make_env`).
        num_envs: Number of sub-environments (>= 1).
        vectorization: ``"sync"`` (``SyncVectorEnv``) or ``"async"`` (``AsyncVectorEnv``).
        seed: Base seed, see above.
        wrappers: Wrapper specifications applied to every sub-env (see :func:`make_env`).
        autoreset_mode: ``"same_step"`` (default), ``"next_step"``, ``"disabled"`` or an
            ``AutoresetMode``.
        allow_imports: Import what ``env_id`` and string wrapper specs name (see
            :func:`make_env`).
        **kwargs: Passed to ``gymnasium.make`` for every sub-env.

    Async sub-envs run in worker processes started with an explicit start method (``fork``
    where the OS has it, else ``spawn``), so a process-wide change of the default start method
    does not reach them; the workers ignore SIGINT (a Ctrl-C reaches the whole process group),
    so the main process decides what an interrupt does and can still talk to them.

    Returns:
        The vector environment.

    Raises:
        ValueError: For an unknown id, vectorization or autoreset mode, a bad wrapper spec
            or ``num_envs < 1``.
    """
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    mode = _autoreset_mode(autoreset_mode)
    resolve_env_id(env_id, allow_imports=allow_imports)  # fail here, readably
    wrappers = list(wrappers) if not isinstance(wrappers, (str, dict)) else [wrappers]
    _check_wrappers(wrappers, allow_imports)
    if vectorization not in ("sync", "async"):
        raise ValueError(f"unknown vectorization {vectorization!r}; expected 'sync' or 'async'")
    worker = vectorization == "async"
    apply = _env_fn(env_id, wrappers, kwargs, allow_imports, os.getpid() if worker else None)
    env_fns = [apply for _ in range(int(num_envs))]
    if worker:
        envs: gym.vector.VectorEnv = gym.vector.AsyncVectorEnv(
            env_fns, autoreset_mode=mode, context=worker_start_method())
    else:
        envs = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=mode)
    if seed is not None:
        envs.reset(seed=int(seed))
        envs.action_space.seed(int(seed))
    return envs


def worker_start_method() -> str:
    """The multiprocessing start method of async env workers: ``fork`` where available."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _env_fn(env_id: str, wrappers: list[WrapperSpec], kwargs: dict[str, Any],
            allow_imports: bool, parent_pid: int | None) -> Callable[[], gym.Env]:
    """The env thunk; with ``parent_pid`` it ignores SIGINT when run in another process (an
    async worker), never in the parent (which also calls it once, for the spaces)."""
    def thunk() -> gym.Env:
        if parent_pid is not None and os.getpid() != parent_pid:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return make_env(env_id, wrappers=wrappers, allow_imports=allow_imports, **kwargs)
    return thunk


def episode_success(infos: dict[str, Any], num_envs: int) -> np.ndarray:
    """Reads per-env success flags of episodes that ended in a same-step-autoreset vector step.

    Args:
        infos: The info dict returned by ``VectorEnv.step`` (``autoreset_mode="same_step"``).
        num_envs: Number of sub-environments.

    Returns:
        A float array of shape ``(num_envs,)``: 1.0 / 0.0 where an episode ended with a
        ``success`` flag this step, NaN elsewhere.
    """
    out = np.full(int(num_envs), np.nan, dtype=np.float64)
    final = infos.get("final_info")
    if not isinstance(final, dict) or "success" not in final:
        return out
    mask = np.asarray(final.get("_success", np.ones(num_envs, dtype=bool)), dtype=bool)
    out[mask] = np.asarray(final["success"], dtype=np.float64)[mask]
    return out
