"""Live R2D2 state <-> nested dicts of tensors and plain scalars (checkpoints hold no pickle)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from xlstm_rl.checkpoint import CheckpointError

from .actor import Actor


def _plain_obs(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {str(k): _plain_obs(v) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return {str(j): _plain_obs(v) for j, v in enumerate(obs)}
    return np.array(obs, copy=True)


def _raw_obs(saved: Any, template: Any) -> Any:
    if isinstance(template, dict):
        return {k: _raw_obs(saved[str(k)], v) for k, v in template.items()}
    if isinstance(template, tuple):
        return tuple(_raw_obs(saved[str(j)], v) for j, v in enumerate(template))
    arr = saved.numpy() if isinstance(saved, torch.Tensor) else np.asarray(saved)
    return arr.astype(np.asarray(template).dtype, copy=True)


def actor_to_state(actor: Actor) -> dict[str, Any]:
    """The actors' current observations, reset flags, recurrent states and episode books."""
    st = actor.stepper
    return {"obs": _plain_obs(st.obs), "reset": torch.as_tensor(st.reset_flags.copy()),
            "state": st.state.detach().cpu().clone().to_dict(),
            "ep_return": torch.as_tensor(st.ep_return.copy()),
            "ep_length": torch.as_tensor(st.ep_length.copy()), "steps": int(st.steps)}


def actor_from_state(actor: Actor, saved: dict[str, Any]) -> None:
    """Restores :func:`actor_to_state` output (after ``actor.reset``, which gives the layout)."""
    st, n = actor.stepper, actor.stepper.num_envs
    st.obs = _raw_obs(saved["obs"], st.obs)
    st.reset_flags = np.asarray(saved["reset"].numpy(), dtype=bool).copy()
    template = actor.network.initial_state(n, actor.device)
    template.update(TensorDict(saved.get("state") or {}, batch_size=[n]).to(actor.device))
    st.state = template
    st.ep_return[:] = saved["ep_return"].numpy()
    st.ep_length[:] = saved["ep_length"].numpy()
    st.steps = int(saved["steps"])


def load_checked(module: nn.Module, weights: Any, what: str) -> None:
    """``module.load_state_dict(weights)``, a misfit raising a one-line CheckpointError."""
    from xlstm_rl.policy import check_weights

    if not isinstance(weights, dict):
        raise CheckpointError(f"r2d2 checkpoint: {what} are missing")
    check_weights(module, weights, f"r2d2 checkpoint ({what})")
    module.load_state_dict(weights)
