"""PPO's acting policy from a checkpoint: the actor-critic and its observation normalizer."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from gymnasium import spaces

from xlstm_rl.checkpoint import CheckpointError
from xlstm_rl.obs_norm import ObsNormalizer
from xlstm_rl.policy import Policy, build_checked_network


def build_policy(config: Any, observation_space: spaces.Space, action_space: spaces.Space,
                 state: dict[str, Any], device: str, where: str) -> Policy:
    """The :class:`Policy` of a PPO checkpoint (registered in :mod:`xlstm_rl.algorithms`).

    Args:
        config: The checkpoint's ``RunConfig`` (``algo: ppo``).
        observation_space, action_space: The checkpoint's single-env spaces.
        state: The checkpoint state (``policy`` weights, ``obs_norm`` statistics).
        device: Torch device of the network.
        where: The file, for error messages.

    Raises:
        CheckpointError: Weights or statistics that do not fit the config's network (checked
            before anything large is allocated).
    """
    from xlstm_rl.networks import ActorCritic

    model = replace(config.model, backend="auto")  # kernels are the user's choice, not the file's
    network = build_checked_network(lambda: ActorCritic(observation_space, action_space, model),
                                    state.get("policy"), where)
    normalizer = None
    if config.ppo.normalize_obs:
        normalizer = _normalizer(config, observation_space, state.get("obs_norm"), where)
    return Policy(network.to(device), observation_space, action_space, config, normalizer,
                  device)


def _normalizer(config: Any, observation_space: spaces.Space, stats: Any, where: str
                ) -> ObsNormalizer:
    if not isinstance(observation_space, spaces.Box):
        raise CheckpointError(f"{where}: its config normalizes observations, but the "
                              f"observation space is {type(observation_space).__name__}, not a "
                              "Box")
    normalizer = ObsNormalizer(observation_space.shape, clip=config.ppo.obs_clip)
    try:
        if not isinstance(stats, dict):
            raise KeyError("obs_norm")
        normalizer.load_state_dict(stats)
    except (KeyError, ValueError, TypeError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else f"missing {exc}"
        raise CheckpointError(f"{where}: {detail[:200]}") from exc
    return normalizer
