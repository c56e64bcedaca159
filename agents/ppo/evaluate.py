"""Policy evaluation on a vector env (no learning, no buffer)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from xlstm_rl.envs import episode_success
from xlstm_rl.networks import ActorCritic, obs_to_torch

from .obs_norm import ObsNormalizer


@torch.no_grad()
def evaluate_policy(policy: ActorCritic, envs: gym.vector.VectorEnv, episodes: int, *,
                    deterministic: bool = True, seed: int | None = None,
                    normalizer: ObsNormalizer | None = None,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """Runs ``policy`` until ``episodes`` episodes have ended (the first ones to end count).

    Args:
        envs: vector env with ``autoreset_mode="same_step"``.
        deterministic: act with the mode of the action distribution.
        seed: passed to ``envs.reset``.
        normalizer: applied (not updated) to observations when given.

    Returns:
        ``mean_return, std_return, min_return, max_return, mean_length, episodes`` and
        ``success_rate`` when the env reports ``success``.
    """
    space, n = envs.single_observation_space, envs.num_envs

    def prepare(raw):
        obs = obs_to_torch(raw, space, device)
        return obs if normalizer is None else normalizer(obs)

    raw, _ = envs.reset(seed=seed)
    obs, state = prepare(raw), policy.initial_state(n, device)
    reset = torch.ones(n, dtype=torch.bool, device=device)
    ep_ret, ep_len = np.zeros(n), np.zeros(n, dtype=np.int64)
    returns, lengths, successes = [], [], []
    while len(returns) < episodes:
        action, _, _, state = policy.act(obs, state, reset, deterministic=deterministic)
        raw, reward, term, trunc, infos = envs.step(policy.actor.to_env(action))
        done = np.asarray(term, bool) | np.asarray(trunc, bool)
        ep_ret += np.asarray(reward, np.float64)
        ep_len += 1
        success = episode_success(infos, n)
        for i in np.flatnonzero(done)[: episodes - len(returns)]:
            returns.append(ep_ret[i])
            lengths.append(ep_len[i])
            successes.append(success[i])
        ep_ret[done], ep_len[done] = 0.0, 0
        obs, reset = prepare(raw), torch.as_tensor(done, device=device)
    out = {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
           "min_return": float(np.min(returns)), "max_return": float(np.max(returns)),
           "mean_length": float(np.mean(lengths)), "episodes": float(len(returns))}
    reported = [s for s in successes if not np.isnan(s)]
    if reported:
        out["success_rate"] = float(np.mean(reported))
    return out
