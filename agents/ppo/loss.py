"""PPO loss terms and GAE as pure functions."""
from __future__ import annotations

import torch
from torch import Tensor


def compute_gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor,
                done: Tensor, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over time-major rollouts.

    ``delta_t = r_t + gamma * next_values_t * (1 - terminated_t) - values_t`` and
    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}``. ``next_values_t`` is the value
    of the observation that followed step ``t`` in the same episode: ``values_{t+1}`` within an
    episode, the value of the final observation where the episode was truncated (its
    bootstrap), anything where it terminated (ignored, even if inf or NaN).

    A reverse loop over ``T``, vectorized over envs. (torchrl's functional GAE computes the
    same, but importing torchrl costs seconds and sets multiprocessing's start method to
    "spawn" process-wide, which slows every async vector env down.)

    Args:
        rewards, values, next_values: ``[T, N]`` float.
        terminated: ``[T, N]`` bool, the episode ended by termination after step ``t``.
        done: ``[T, N]`` bool, terminated or truncated after step ``t``.
        gamma, gae_lambda: discount and GAE lambda.

    Returns:
        ``advantages [T, N]`` and ``returns = advantages + values`` ``[T, N]``.
    """
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    deltas = rewards + gamma * torch.where(terminated.bool(), zero, next_values) - values
    done = done.bool()
    advantages = torch.empty_like(values)
    last = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        last = torch.where(done[t], deltas[t], deltas[t] + gamma * gae_lambda * last)
        advantages[t] = last
    return advantages, advantages + values


def normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit (unbiased) standard deviation; a single element is only centred."""
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) / (x.std() + eps)


def policy_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_coef: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate objective, as a loss to minimize.

    ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))``.

    Returns:
        ``loss`` (scalar), ``approx_kl = mean((ratio - 1) - log ratio)`` (Schulman's k3
        estimator, no grad) and ``clip_fraction`` (share of ``|ratio - 1| > c``, no grad).
    """
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    loss = torch.max(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return loss, approx_kl, clip_fraction


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip_coef: float,
               clip: bool) -> Tensor:
    """Squared-error value loss ``0.5 * mean((V - R)^2)``.

    With ``clip``, the PPO2 form ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))`` where
    ``V_clip = old_V + clip(V - old_V, -c, c)``.
    """
    err = (values - returns).pow(2)
    if clip:
        v_clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
        err = torch.max(err, (v_clipped - returns).pow(2))
    return 0.5 * err.mean()


def ppo_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, values: Tensor,
             old_values: Tensor, returns: Tensor, entropy: Tensor, *, clip_coef: float,
             clip_value_loss: bool, vf_coef: float, ent_coef: float
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss ``policy + vf_coef * value - ent_coef * entropy`` and its parts (detached).

    All inputs have the same shape (e.g. ``[B, T]``); advantages as they should be used
    (normalize them before calling).
    """
    pg, approx_kl, clip_fraction = policy_loss(log_prob, old_log_prob, advantages, clip_coef)
    vf = value_loss(values, old_values, returns, clip_coef, clip_value_loss)
    ent = entropy.mean()
    total = pg + vf_coef * vf - ent_coef * ent
    stats = {"loss/policy": pg.detach(), "loss/value": vf.detach(), "loss/entropy": ent.detach(),
             "ppo/approx_kl": approx_kl, "ppo/clip_fraction": clip_fraction}
    return total, stats


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """``1 - Var(target - predicted) / Var(target)``; NaN when the target has no variance."""
    var = target.var()
    if var.item() == 0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / var)
