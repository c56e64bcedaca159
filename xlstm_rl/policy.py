"""Trained policies for your own code: ``load_policy(path)`` and the :class:`Policy` it returns.

Example::

    import gymnasium as gym
    import xlstm_rl

    policy = xlstm_rl.load_policy("runs/ppo-mlstm-tmaze-20250101-120000")  # or a .safetensors
    env = gym.make(policy.env_id, **policy.env_kwargs)  # xlstm_rl/* ids are registered by now
    obs, _ = env.reset(seed=0)
    state = policy.initial_state(1)
    done = False
    while not done:
        action, state = policy.act(obs[None], state)          # batch of one
        obs, reward, terminated, truncated, _ = env.step(action[0])
        done = terminated or truncated

Observations go in batched (``[n, ...]`` numpy arrays or tensors, as a gymnasium vector env
returns them); actions come out as a numpy batch ready for ``VectorEnv.step``. The recurrent
state is a ``tensordict.TensorDict`` with batch ``[n]``; pass ``reset[i] = True`` when env
``i`` starts a new episode (its state is zeroed before the observation is processed).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDict

from xlstm_rl.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from xlstm_rl.config import RunConfig
from xlstm_rl.spaces import SpaceError, space_from_json
from xlstm_rl.typed import ConfigError

__all__ = ["Policy", "build_checked_network", "check_weights", "load_policy",
           "policy_from_checkpoint"]


class _ActingNetwork(Protocol):
    """What :class:`Policy` calls on its network (``ActorCritic``, the R2D2 Q-network)."""

    def initial_state(self, batch_size: int, device: torch.device | str | None = None
                      ) -> TensorDict: ...

    def act_env(self, obs: Any, state: TensorDict, reset: torch.Tensor | None,
                deterministic: bool = True) -> tuple[Any, TensorDict]: ...


class Policy:
    """A trained actor-critic ready to act, with its observation normalization.

    Args:
        network: The ``ActorCritic`` network.
        observation_space: Single-env observation space.
        action_space: Single-env action space.
        config: The run config the policy was trained with.
        normalizer: Observation normalizer (None when the run did not normalize).
        device: Torch device of the network.

    Attributes:
        network, observation_space, action_space, config, normalizer, device: As given.
    """

    def __init__(self, network: torch.nn.Module, observation_space: spaces.Space,
                 action_space: spaces.Space, config: RunConfig, normalizer: Any = None,
                 device: str | torch.device = "cpu") -> None:
        self.network = network.eval()
        self.observation_space, self.action_space = observation_space, action_space
        self.config, self.normalizer, self.device = config, normalizer, torch.device(device)

    @property
    def env_id(self) -> str:
        """Id of the training env without a ``module:`` prefix (for ``gymnasium.make``; loading
        a policy imports no module named in its file: import yours before ``gym.make``)."""
        return self.config.env.id.rpartition(":")[2]

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """The ``gymnasium.make`` keyword arguments of the training env."""
        return dict(self.config.env.kwargs)

    def initial_state(self, n: int = 1) -> TensorDict:
        """Zero recurrent state for ``n`` envs (TensorDict, batch ``[n]``)."""
        return cast(_ActingNetwork, self.network).initial_state(int(n), self.device)

    def _obs(self, obs: Any) -> Any:
        from xlstm_rl.networks import obs_to_torch

        if isinstance(obs, torch.Tensor):
            obs = obs.detach().cpu().numpy()
        x = obs_to_torch(obs, self.observation_space, self.device)
        return x if self.normalizer is None else self.normalizer(x)

    @torch.no_grad()
    def act(self, obs: Any, state: TensorDict | None = None, reset: Any = None,
            deterministic: bool = True) -> tuple[np.ndarray, TensorDict]:
        """Chooses actions for a batch of observations.

        Args:
            obs: Batched observations ``[n, ...]`` (numpy or torch; dict / tuple of arrays for
                Dict / Tuple spaces).
            state: Recurrent state from :meth:`initial_state` or the previous call; None
                starts fresh (zero state).
            reset: ``[n]`` booleans, True where an episode starts at this observation
                (default: none; a fresh state needs no reset).
            deterministic: Take the most likely action instead of sampling.

        Returns:
            ``(actions, state)``: actions as a numpy batch for ``VectorEnv.step`` (take
            ``actions[0]`` for a single env) and the new recurrent state.
        """
        from xlstm_rl.networks.encoders import owned_tensor

        x = self._obs(obs)
        n = int(x.shape[0]) if isinstance(x, torch.Tensor) else int(x.batch_size[0])
        state = self.initial_state(n) if state is None else state
        flags = torch.zeros(n, dtype=torch.bool, device=self.device) if reset is None else (
            owned_tensor(np.asarray(reset, dtype=bool).reshape(n), device=self.device))
        network = cast(_ActingNetwork, self.network)
        return network.act_env(x, state, flags, deterministic=deterministic)

    def __repr__(self) -> str:
        return (f"Policy(core={self.config.model.core!r}, env={self.config.env.id!r}, "
                f"observation_space={self.observation_space}, action_space={self.action_space})")


def _weight_mismatch(expected: dict[str, torch.Tensor], weights: dict[str, Any]) -> str | None:
    """The first difference between a model's state_dict and ``weights`` (None if they fit)."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    for k in expected:
        if k not in weights:
            continue
        have = weights[k]
        if not isinstance(have, torch.Tensor):
            return f"{k!r} is a {type(have).__name__} in the checkpoint, not a tensor"
        if tuple(expected[k].shape) != tuple(have.shape):
            return (f"{k!r} has shape {list(have.shape)} in the checkpoint but "
                    f"{list(expected[k].shape)} in the model")
        if expected[k].dtype != have.dtype:
            return (f"{k!r} has dtype {str(have.dtype).removeprefix('torch.')} in the "
                    f"checkpoint but {str(expected[k].dtype).removeprefix('torch.')} in the model")
    if missing:
        return f"{len(missing)} weights missing from the checkpoint, e.g. {missing[0]!r}"
    if unexpected:
        return f"{len(unexpected)} unexpected weights, e.g. {str(unexpected[0])[:80]!r}"
    return None


def check_weights(model: torch.nn.Module, weights: dict[str, Any], where: str) -> None:
    """Checks that ``weights`` fit ``model`` exactly: same names, shapes and dtypes, tensors only.

    ``model`` may live on the ``meta`` device (built without memory), so a file can be checked
    before a large network is allocated.

    Raises:
        CheckpointError: A one-line message naming the first mismatch.
    """
    detail = _weight_mismatch(model.state_dict(), weights)
    if detail is not None:
        raise CheckpointError(f"{where}: the weights do not match the model architecture of the "
                              f"config ({detail})")


def checkpoint_spaces(ckpt: Checkpoint) -> tuple[spaces.Space, spaces.Space]:
    """The observation and action spaces stored in a checkpoint (validated, bounded)."""
    try:
        return (space_from_json(ckpt.spaces["observation"]),
                space_from_json(ckpt.spaces["action"]))
    except (KeyError, TypeError, SpaceError) as exc:
        raise CheckpointError(f"{ckpt.path}: no usable observation/action space description "
                              f"({str(exc)[:160]})") from exc


def checkpoint_config(ckpt: Checkpoint) -> RunConfig:
    """The run config stored in a checkpoint (every field's range checked)."""
    try:
        return RunConfig.from_dict(ckpt.config)
    except ConfigError as exc:
        raise CheckpointError(f"{ckpt.path}: its config is invalid ({exc})") from exc


def build_checked_network(factory: Callable[[], torch.nn.Module], weights: Any, where: str
                          ) -> torch.nn.Module:
    """Builds a network and loads ``weights`` only after they were checked against it.

    ``factory`` runs first under ``torch.device("meta")`` (no memory), so a file whose config
    asks for a huge network but holds other weights allocates nothing; then for real.

    Raises:
        CheckpointError: Unbuildable config, or weights whose names, shapes or dtypes differ.
    """
    if not isinstance(weights, dict):
        raise CheckpointError(f"{where} holds no policy weights")
    try:
        with torch.device("meta"):
            skeleton = factory()
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: cannot build its network ({exc})") from exc
    check_weights(skeleton, weights, where)
    network = factory()
    network.load_state_dict(weights)
    return network


def policy_from_checkpoint(ckpt: Checkpoint, device: str | torch.device = "cpu") -> Policy:
    """Builds the :class:`Policy` of a loaded checkpoint (see :func:`load_policy`) with the
    policy builder of its algorithm (:mod:`xlstm_rl.algorithms`).

    Runs nothing the file names: the config, the spaces and the weights' names, shapes and
    dtypes are all checked before the network is allocated.
    """
    import xlstm_rl.envs  # noqa: F401  (registers the xlstm_rl/* ids for gym.make)
    from xlstm_rl.algorithms import get_algorithm

    config = checkpoint_config(ckpt)
    obs_space, act_space = checkpoint_spaces(ckpt)
    build = get_algorithm(config.algo).policy_builder()
    return build(config, obs_space, act_space, ckpt.state, str(device), str(ckpt.path))


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu") -> Policy:
    """Loads a trained policy from a checkpoint file or a run directory; runs no code from it.

    Args:
        path: A ``.safetensors`` checkpoint, or a run directory (its
            ``checkpoints/best.safetensors``, else ``checkpoints/latest.safetensors``).
        device: Torch device for the network.

    Returns:
        The :class:`Policy`.

    Raises:
        CheckpointError: Missing, truncated, corrupted or foreign file (a pickle is refused,
            never unpickled), unsupported format version, malformed or out-of-range metadata,
            weights that do not match the architecture in the checkpoint's config (names,
            shapes, dtypes) or observation statistics of the wrong shape. Nothing the file
            names (env modules, wrappers) is imported or called.
    """
    from xlstm_rl.rundir import RunDirError, find_checkpoint

    try:
        file = find_checkpoint(Path(path))
    except RunDirError as exc:
        raise CheckpointError(str(exc)) from exc
    return policy_from_checkpoint(load_checkpoint(file), device)
