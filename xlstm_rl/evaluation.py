"""The one evaluator: in-training evaluation, ``xlstm-rl eval`` and ``trainer.evaluate`` all use it.

Unbiased: sub-env ``i`` of ``n`` runs exactly ``(episodes + i) // n`` episodes, so episodes
that end early are not over-counted (counting the first ``episodes`` episodes to finish
favours short ones, and a task whose failures are short would look worse than it is, one whose
failures are long better).

Bounded: an episode that runs ``max_episode_steps`` steps without ending is cut there and
counted (its return so far) in ``capped_episodes``, so an env that never ends cannot hang an
evaluation. A stop check is polled every step.
"""
from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from xlstm_rl.acting import EnvStepper
from xlstm_rl.envs import episode_success
from xlstm_rl.errors import StopRequested
from xlstm_rl.trainer import StopCheck

__all__ = ["DEFAULT_MAX_EPISODE_STEPS", "evaluate_on_fresh_envs", "evaluate_policy", "summarize"]

DEFAULT_MAX_EPISODE_STEPS = 100_000
"""Step cap of one evaluation episode when none is given."""


def summarize(returns: list[float], lengths: list[int], successes: list[float]
              ) -> dict[str, float]:
    """``mean/std/min/max`` of return and length, ``episodes``, and ``success_rate`` when any
    episode reported success (NaN entries of ``successes`` mean "not reported")."""
    out: dict[str, float] = {"episodes": float(len(returns))}
    for name, values in (("return", returns), ("length", lengths)):
        arr = np.asarray(values, dtype=np.float64)
        out.update({f"mean_{name}": float(arr.mean()), f"std_{name}": float(arr.std()),
                    f"min_{name}": float(arr.min()), f"max_{name}": float(arr.max())})
    reported = [s for s in successes if not math.isnan(s)]
    if reported:
        out["success_rate"] = float(np.mean(reported))
    return out


def evaluate_policy(policy: Any, envs: gym.vector.VectorEnv, episodes: int, *,
                    deterministic: bool = True, seed: int | None = None,
                    max_episode_steps: int | None = DEFAULT_MAX_EPISODE_STEPS,
                    should_stop: StopCheck | None = None, env_id: str = "env"
                    ) -> dict[str, float]:
    """Runs ``policy`` on a vector env for ``episodes`` episodes (quota per sub-env).

    Args:
        policy: Has ``initial_state(n)`` and ``act(obs, state, reset, deterministic)`` returning
            ``(actions, state)`` (an :class:`xlstm_rl.policy.Policy`).
        envs: Vector env with ``autoreset_mode="same_step"``.
        episodes: Episodes to run (>= 1).
        deterministic: Act with the most likely action.
        seed: Seed of ``envs.reset`` and of the action sampling (torch's global RNG is forked,
            so the caller's RNG stream is untouched).
        max_episode_steps: Cut an episode after this many steps (None: never; only for envs
            known to end).
        should_stop: Polled every step; when it returns True, :class:`StopRequested` is raised.
        env_id: Name of the env in error messages.

    Returns:
        :func:`summarize` of the episodes plus ``capped_episodes`` (episodes cut at the cap).

    Raises:
        StopRequested: See ``should_stop``.
        EnvFault: The env returned a non-finite or misfit value.
    """
    import torch

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    stepper = EnvStepper(envs, env_id)
    n = stepper.num_envs
    quota = np.array([(episodes + i) // n for i in range(n)])
    taken = np.zeros(n, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    successes: list[float] = []
    capped = 0
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        obs = stepper.reset(seed=seed)
        state = policy.initial_state(n)
        while (taken < quota).any():
            if should_stop is not None and should_stop():
                raise StopRequested("evaluation stopped")
            actions, state = policy.act(obs, state, stepper.reset_flags,
                                        deterministic=deterministic)
            ep_ret, ep_len = stepper.ep_return.copy(), stepper.ep_length.copy()
            result = stepper.step(actions)
            obs = stepper.obs
            ep_ret, ep_len = ep_ret + result.reward, ep_len + 1
            cut = ~result.ended & (ep_len >= (max_episode_steps or np.iinfo(np.int64).max))
            success = episode_success(result.infos, n)
            for i in np.flatnonzero((result.ended | cut) & (taken < quota)):
                returns.append(float(ep_ret[i]))
                lengths.append(int(ep_len[i]))
                successes.append(float(success[i]) if result.ended[i] else math.nan)
                taken[i] += 1
                capped += int(cut[i])
            if cut.any():  # a cut episode's env sits out: it has run its share or will restart
                taken[cut] = np.maximum(taken[cut], quota[cut])
    out = summarize(returns, lengths, successes)
    out["capped_episodes"] = float(capped)
    return out


def evaluate_on_fresh_envs(policy: Any, env: Any, episodes: int, *,
                           num_envs: int | None = None, **options: Any) -> dict[str, float]:
    """:func:`evaluate_policy` on new envs of an ``EnvConfig`` (its id, wrappers and kwargs,
    same-step autoreset), closed afterwards; training envs are never touched.

    Args:
        policy: As for :func:`evaluate_policy`.
        env: The ``EnvConfig``.
        episodes: Episodes to run.
        num_envs: Parallel envs (default ``min(episodes, 16)``).
        **options: ``deterministic``, ``seed``, ``max_episode_steps``, ``should_stop``.
    """
    from xlstm_rl.envs import make_vec_env

    n = num_envs if num_envs is not None else min(int(episodes), 16)
    envs = make_vec_env(env.id, n, seed=None, wrappers=env.wrappers,
                        autoreset_mode="same_step", **dict(env.kwargs))
    try:
        return evaluate_policy(policy, envs, episodes, env_id=env.id, **options)
    finally:
        envs.close()
