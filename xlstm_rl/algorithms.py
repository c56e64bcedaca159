"""The algorithm registry: ``algo`` name -> its config class, its trainer, its acting policy.

A run config names its algorithm (``algo: ppo``) and holds that algorithm's hyper-parameters
in a section of the same name (``ppo: {...}``). Everything algorithm-specific that the run
loop, the CLI and :func:`xlstm_rl.load_policy` need is reached through an
:class:`AlgorithmSpec` found here, so adding an algorithm is adding a folder under
``agents/`` and one :func:`register_algorithm` call.

Specs name their parts as ``"module:attribute"`` strings that are imported only when used:
loading a config imports the config class alone (no torch), and ``xlstm-rl --help`` imports
nothing of an algorithm. The names come from code (this module or the user's own
``register_algorithm`` call), never from a config or checkpoint file: a file only selects a
registered name.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xlstm_rl.typed import ConfigError
from xlstm_rl.suggest import did_you_mean

__all__ = ["AlgorithmSpec", "algorithm_names", "get_algorithm", "register_algorithm",
           "unregister_algorithm"]

Ref = Any
"""A ``"module:attribute"`` string, or the object itself."""


def _resolve(ref: Ref) -> Any:
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class AlgorithmSpec:
    """How to build and load one training algorithm.

    Attributes are ``"module:attribute"`` strings (imported on first use) or the objects.
    """

    name: str
    """The ``algo`` value in run configs, and the name of the config section."""
    config: Ref
    """Frozen dataclass of the algorithm's hyper-parameters (importable without torch). It may
    define ``check_env(env: EnvConfig)`` raising ValueError for settings that do not fit the
    environment section."""
    trainer: Ref
    """Callable ``(run_config) -> Trainer`` (see :class:`xlstm_rl.trainer.Trainer`)."""
    policy: Ref
    """Callable ``(run_config, observation_space, action_space, state, device, where) ->
    Policy`` building the acting policy from a checkpoint's ``state`` (see
    :mod:`xlstm_rl.policy`)."""
    worker: Ref = None
    """How the algorithm uses several processes. None: data-parallel, every rank is a trainer
    (``--nproc N``). Otherwise rank 0 is the trainer (a learner) and every other rank runs
    this callable ``(run_config, rank, world_size) -> exit code`` (actors; ``--actors N``)."""

    def config_class(self) -> type:
        """The config dataclass."""
        return _resolve(self.config)

    def build_trainer(self, run_config: Any) -> Any:
        """A new trainer for ``run_config``."""
        return _resolve(self.trainer)(run_config)

    def policy_builder(self) -> Callable[..., Any]:
        """The acting-policy builder."""
        return _resolve(self.policy)

    def run_worker(self, run_config: Any, rank: int, world_size: int) -> int:
        """Runs a non-learner rank of a multi-process run (needs :attr:`worker`)."""
        return int(_resolve(self.worker)(run_config, rank, world_size))


_REGISTRY: dict[str, AlgorithmSpec] = {
    "ppo": AlgorithmSpec(name="ppo", config="xlstm_rl.agents.ppo.config:PPOConfig",
                         trainer="xlstm_rl.agents.ppo.trainer:build_trainer",
                         policy="xlstm_rl.agents.ppo.policy:build_policy"),
    "r2d2": AlgorithmSpec(name="r2d2", config="xlstm_rl.agents.r2d2.config:R2D2Config",
                          trainer="xlstm_rl.agents.r2d2.apex:build_trainer",
                          policy="xlstm_rl.agents.r2d2.policy:build_policy",
                          worker="xlstm_rl.agents.r2d2.apex_actor:run_actor"),
}


def register_algorithm(spec: AlgorithmSpec, *, replace: bool = False) -> AlgorithmSpec:
    """Adds an algorithm to the registry.

    Args:
        spec: The algorithm.
        replace: Allow replacing an algorithm of the same name.

    Returns:
        ``spec``.

    Raises:
        ValueError: If the name is taken (and ``replace`` is False) or is not a plain name.
    """
    if not spec.name.isidentifier() or spec.name in ("env", "model", "train", "algo"):
        raise ValueError(f"algorithm name {spec.name!r} must be an identifier other than env, "
                         "model, train and algo (it names a config section)")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"algorithm {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_algorithm(name: str) -> None:
    """Removes an algorithm (for tests and plugins); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def algorithm_names() -> tuple[str, ...]:
    """Registered algorithm names, in registration order."""
    return tuple(_REGISTRY)


def get_algorithm(name: Any) -> AlgorithmSpec:
    """The registered algorithm called ``name``.

    Raises:
        ConfigError: One line naming the registered algorithms (and the closest match).
    """
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    hint = did_you_mean(str(name), list(_REGISTRY)) if isinstance(name, str) else ""
    raise ConfigError(f"unknown algo {name!r}{hint} (registered: {', '.join(_REGISTRY)})")
