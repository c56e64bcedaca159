"""The R2D2 learner: burn-in from stored states, n-step double-Q with value rescaling.

Math (Kapturowski et al., ICLR 2019, Sec. 2.3 and 3; Pohlen et al. 2018 for ``h``):

* value rescaling ``h(x) = sign(x)(sqrt(|x| + 1) - 1) + eps x`` and its exact inverse
  ``h^-1(x) = sign(x)(((sqrt(1 + 4 eps (|x| + 1 + eps)) - 1) / (2 eps))^2 - 1)``;
* the n-step double-Q target of transition ``t``
  ``y_t = h(sum_{k<m} gamma^k r_{t+k} + gamma^m h^-1(Q_target(s_{t+m}, argmax_a Q(s_{t+m}, a))))``
  with ``m = n`` unless the valid data ends first (a truncated episode or the sequence's end:
  bootstrap from the observation after the last transition) or a transition terminates
  (no bootstrap);
* burn-in: both networks are unrolled without gradient over the first ``burn_in`` steps from
  the stored state (``advance``: the state only, no Q-values); the loss ``0.5 td^2`` is taken
  on the remaining ``trace_len`` steps, averaged over each sequence's valid steps and weighted
  by the importance weights.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from xlstm_rl.errors import TrainingFault

from .config import R2D2Config
from .networks import R2D2Network


def h(x: Tensor, eps: float = 1e-3) -> Tensor:
    """Invertible value rescaling ``sign(x)(sqrt(|x| + 1) - 1) + eps x`` (elementwise)."""
    return torch.sign(x) * (torch.sqrt(x.abs() + 1.0) - 1.0) + eps * x


def h_inv(x: Tensor, eps: float = 1e-3) -> Tensor:
    """The exact inverse of :func:`h` (elementwise)."""
    root = (torch.sqrt(1.0 + 4.0 * eps * (x.abs() + 1.0 + eps)) - 1.0) / (2.0 * eps)
    return torch.sign(x) * (root * root - 1.0)


def n_step_targets(reward: Tensor, terminated: Tensor, valid: Tensor, boot_value: Tensor,
                   gamma: float, n: int) -> Tensor:
    """Untransformed n-step returns with bootstrap, ``[B, T]``.

    Args:
        reward, terminated, valid: ``[B, T]`` per transition.
        boot_value: ``[B, T + 1]`` value of the observation *before* each transition slot
            (slot ``t`` is the observation transition ``t`` acts on; slot ``T`` follows the last).
        gamma: Discount; n: steps.

    Returns:
        ``G_t = sum_{k<m} gamma^k r_{t+k} + gamma^m boot_value[t+m]`` where the sum stops after
        ``n`` transitions, after a terminal one (then without bootstrap) or at the last valid
        one (bootstrap from the next slot). Entries of invalid transitions are meaningless.
    """
    B, T = reward.shape
    pad = lambda x, v: torch.cat([x, x.new_full((B, n), v)], dim=1)  # noqa: E731
    r, term, val = pad(reward, 0), pad(terminated, False), pad(valid, False)
    dtype = boot_value.dtype
    ret = torch.zeros(B, T, dtype=dtype, device=reward.device)
    disc = torch.ones(B, T, dtype=dtype, device=reward.device)
    boot_disc = torch.zeros_like(ret)
    slots = torch.arange(T, device=reward.device).expand(B, T)
    boot_slot = slots.clone()
    alive = valid.clone()
    for j in range(n):
        ret = ret + torch.where(alive, disc * r[:, j:j + T].to(dtype), 0.0)
        disc = disc * gamma
        ended = term[:, j:j + T] & alive
        stop = alive & (ended | ~val[:, j + 1:j + 1 + T] | (j == n - 1))
        boot_disc = torch.where(stop, torch.where(ended, 0.0, disc), boot_disc)
        boot_slot = torch.where(stop, slots + j + 1, boot_slot)
        alive = alive & ~stop
    return ret + boot_disc * boot_value.gather(1, boot_slot.clamp_max(T))


def sequence_priority(abs_td: Tensor, mask: Tensor, eta: float) -> Tensor:
    """R2D2's sequence priority ``eta * max|td| + (1 - eta) * mean|td|`` over masked steps.

    Args:
        abs_td: ``[B, T]`` absolute TD errors; mask: ``[B, T]`` bool, the steps that count.
        eta: Mixing weight of the max.

    Returns:
        ``[B]`` priorities (0 for a sequence without counted steps).
    """
    m = mask.to(abs_td.dtype)
    count = m.sum(dim=1).clamp_min(1.0)
    mean = (abs_td * m).sum(dim=1) / count
    biggest = torch.where(mask, abs_td, torch.zeros_like(abs_td)).amax(dim=1)
    return eta * biggest + (1.0 - eta) * mean


def double_q_bootstrap(q_online: Tensor, q_target: Tensor) -> Tensor:
    """Double-Q bootstrap ``Q_target(s, argmax_a Q_online(s, a))``: ``[..., A]`` -> ``[...]``
    (van Hasselt et al. 2016)."""
    greedy = q_online.argmax(dim=-1, keepdim=True)
    return q_target.gather(-1, greedy).squeeze(-1)


def float_state(state: TensorDict) -> TensorDict:
    """A stored state with its floating-point leaves back in float32."""
    return state.apply(lambda t: t.float() if t.is_floating_point() else t)


def _check_finite(what: str, value: Tensor, step: int) -> None:
    if not bool(torch.isfinite(value).all()):
        raise TrainingFault(f"r2d2 learner update {step}: non-finite {what}; nothing was updated")


class R2D2Learner:
    """Online and target networks, Adam, the loss and the target-network schedule.

    Args:
        network: The online network (the actors act with it too).
        cfg: Hyper-parameters.

    Attributes:
        online, target, optimizer, updates (learner steps taken).
    """

    def __init__(self, network: R2D2Network, cfg: R2D2Config) -> None:
        self.online, self.cfg = network, cfg
        self.target = copy.deepcopy(network).requires_grad_(False)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.updates = 0

    def unroll(self, batch: TensorDict) -> tuple[Tensor, Tensor]:
        """Q-values of the trace part of a batch, after burn-in from the stored states.

        Args:
            batch: Sequences ``[B]`` (see :mod:`.sequences`).

        Returns:
            ``(q_online [B, T + 1, A]`` with gradient, ``q_target [B, T + 1, A])`` for the
            observation slots ``burn_in .. burn_in + trace_len``.
        """
        obs, bi = batch["obs"], self.cfg.burn_in
        state = float_state(batch["state"])
        reset = batch["reset"]
        online_state = target_state = state
        if bi > 0:
            with torch.no_grad():
                online_state = self.online.advance(obs[:, :bi], state, reset[:, :bi])
                target_state = self.target.advance(obs[:, :bi], state, reset[:, :bi])
        q_online, _ = self.online(obs[:, bi:], online_state, reset[:, bi:])
        with torch.no_grad():
            q_target, _ = self.target(obs[:, bi:], target_state, reset[:, bi:])
        return q_online, q_target

    def loss(self, batch: TensorDict, weights: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The importance-weighted loss, the new priorities ``[B]`` and statistics."""
        cfg, bi = self.cfg, self.cfg.burn_in
        q_online, q_target = self.unroll(batch)
        boot = double_q_bootstrap(q_online.detach(), q_target).double()
        if cfg.value_rescaling:
            boot = h_inv(boot, cfg.rescale_eps)
        valid = batch["valid"][:, bi:]
        target = n_step_targets(batch["reward"][:, bi:], batch["terminated"][:, bi:], valid,
                                boot, cfg.gamma, cfg.n_step)
        if cfg.value_rescaling:
            target = h(target, cfg.rescale_eps)
        q_taken = q_online[:, :-1].gather(-1, batch["action"][:, bi:, None]).squeeze(-1)
        td = torch.where(valid, target.float() - q_taken, 0.0)
        count = valid.sum(dim=1).clamp_min(1)
        per_sequence = 0.5 * (td * td).sum(dim=1) / count
        loss = (weights * per_sequence).mean()
        priority = sequence_priority(td.detach().abs(), valid, cfg.priority_eta)
        stats = {"r2d2/q_mean": q_taken.detach()[valid].mean(),
                 "r2d2/td_abs": td.detach().abs().sum() / valid.sum().clamp_min(1)}
        return loss, priority, stats

    def update(self, batch: TensorDict, weights: Tensor) -> tuple[Tensor, dict[str, float]]:
        """One Adam step on a batch; copies online -> target every ``target_update_period``.

        Returns:
            ``(new priorities [B], metrics)``.

        Raises:
            TrainingFault: A non-finite loss, gradient or parameter (one line saying which).
        """
        step = self.updates + 1
        loss, priority, stats = self.loss(batch, weights)
        _check_finite("loss", loss, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.online.parameters() if p.grad is not None]
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else math.inf
        grad_norm = nn.utils.clip_grad_norm_(params, max_norm)
        _check_finite("gradient norm", grad_norm, step)
        self.optimizer.step()
        _check_finite("parameters", torch.stack(torch._foreach_norm(list[Tensor](params))), step)
        self.updates = step
        if step % self.cfg.target_update_period == 0:
            self.sync_target()
        return priority, {"r2d2/loss": float(loss.detach()), "r2d2/grad_norm": float(grad_norm),
                          **{k: float(v) for k, v in stats.items()}}

    def sync_target(self) -> None:
        """Copies the online network's weights into the target network."""
        self.target.load_state_dict(self.online.state_dict())


def _q_distance(q: Tensor, q_true: Tensor) -> float:
    """Mean over steps of ``||q - q_true||_2 / max |q_true|`` (the paper's Q discrepancy)."""
    scale = q_true.abs().max().clamp_min(1e-8)
    return float((q - q_true).norm(dim=-1).mean() / scale)


@torch.no_grad()
def staleness(network: R2D2Network, episode: dict[str, Any], burn_in: int, trace_len: int
              ) -> dict[str, float]:
    """Q discrepancy of stored against recomputed states (Kapturowski et al. 2019, Fig. 1).

    The current network is unrolled over the whole recorded episode from its first step to
    get the true state at every sequence start; each stored state (recorded while acting,
    with older weights, in the storage dtype) is compared with it: Q over the first
    ``trace_len`` steps from each state (no burn-in), and Q over the steps after ``burn_in``
    steps of burn-in from each state.

    Args:
        network: The online network.
        episode: ``{"obs": [E, ...], "starts": {step: stored state TensorDict []}}``.

    Returns:
        ``r2d2/staleness_no_burn_in`` and ``r2d2/staleness_burn_in`` (NaN when no window fits).
    """
    obs, device = episode["obs"], next(network.parameters()).device
    length = obs.shape[0]
    starts = sorted(s for s in episode["starts"] if 0 < s < length)
    true_state = network.initial_state(1, device)
    no_burn, burn, done = [], [], 0
    for s in starts:
        _, true_state = network(obs[done:s].unsqueeze(0).to(device), true_state, None)
        done = s
        stored = float_state(episode["starts"][s]).unsqueeze(0).to(device)
        window = obs[s:min(s + burn_in + trace_len, length)].unsqueeze(0).to(device)
        q_true, _ = network(window, true_state, None)
        q_stored, _ = network(window, stored, None)
        no_burn.append(_q_distance(q_stored[:, :trace_len], q_true[:, :trace_len]))
        if window.shape[1] > burn_in:
            burn.append(_q_distance(q_stored[:, burn_in:], q_true[:, burn_in:]))
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return {"r2d2/staleness_no_burn_in": mean(no_burn), "r2d2/staleness_burn_in": mean(burn)}
