"""The greedy acting policy of an R2D2 checkpoint (what ``load_policy`` returns for r2d2 runs)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from gymnasium import spaces

from xlstm_rl.checkpoint import CheckpointError
from xlstm_rl.policy import Policy, check_weights

from .networks import R2D2Network


def build_policy(config: Any, observation_space: spaces.Space, action_space: spaces.Space,
                 state: dict[str, Any], device: str | torch.device = "cpu",
                 where: str = "checkpoint") -> Policy:
    """Builds the greedy Q policy from a checkpoint's state.

    The network is built on the ``meta`` device first and the weights' names, shapes and
    dtypes are checked against it before anything is allocated.

    Args:
        config: The run config (``algo: r2d2``).
        observation_space, action_space: The single-env spaces stored in the checkpoint.
        state: The checkpoint state; ``state["policy"]`` holds the online network's weights.
        device: Torch device of the policy.
        where: Names the file in error messages.

    Returns:
        A :class:`~xlstm_rl.policy.Policy` (``deterministic=True``: greedy; False:
        epsilon-greedy with epsilon 0.01).

    Raises:
        CheckpointError: Missing or misfit weights, or a network the spaces cannot build.
    """
    weights = state.get("policy") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{where} holds no policy weights")
    model = replace(config.model, backend="auto")  # kernels are the user's choice, not the file's
    hidden = config.r2d2.dueling_hidden
    try:
        with torch.device("meta"):
            skeleton = R2D2Network(observation_space, action_space, model, hidden)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: cannot build its network ({exc})") from exc
    check_weights(skeleton, weights, where)
    network = R2D2Network(observation_space, action_space, model, hidden)
    network.load_state_dict(weights)
    return Policy(network.to(device), observation_space, action_space, config, None, device)
