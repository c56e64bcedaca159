"""Run configuration: YAML files loaded into frozen dataclasses, with ``key=value`` overrides.

A run config has four sections::

    env:    EnvConfig    which environment, how many copies, wrappers, gymnasium.make kwargs
    model:  ModelConfig  encoder, memory core and heads
    ppo:    PPOConfig    PPO hyper-parameters
    train:  TrainConfig  steps, seed, device, evaluation and checkpoint schedule

Missing keys take their defaults. Every key and value is checked against the dataclass
field types; problems raise :class:`~xlstm_rl.typed.ConfigError` with a one-line message.
Packaged configs live in ``xlstm_rl/configs/*.yaml`` and are named by file stem
(``ppo-mlstm-tmaze``).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from xlstm_rl.agents.ppo.config import PPOConfig
from xlstm_rl.schema import EnvConfig, ModelConfig
from xlstm_rl.typed import ConfigError, from_data, set_path, to_data

__all__ = ["DEFAULT_CONFIG", "ConfigError", "RunConfig", "TrainConfig", "config_to_yaml",
           "load_config", "packaged_configs", "parse_override", "save_config"]

DEFAULT_CONFIG = "ppo-mlstm-tmaze"
ALGOS = ("ppo",)


@dataclass(frozen=True)
class TrainConfig:
    """How long to train, where, and when to evaluate and checkpoint."""

    total_steps: int = 100_000
    """Environment steps to train for (summed over the parallel envs)."""
    seed: int = 0
    """Seed of the networks, the sampling and the environments."""
    device: str = "cpu"
    """Torch device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto`` (CUDA when available)."""
    torch_threads: Optional[int] = None
    """Torch CPU threads (``torch.set_num_threads``); null keeps torch's default."""
    eval_every: int = 0
    """Evaluate every this many env steps (0: only at the end); the best evaluation return
    so far is kept as ``checkpoints/best.safetensors``."""
    eval_episodes: int = 32
    """Episodes per evaluation."""
    eval_num_envs: Optional[int] = None
    """Parallel envs for evaluation (null: ``min(eval_episodes, 16)``)."""
    eval_deterministic: bool = True
    """Evaluate with the most likely action instead of sampling."""
    checkpoint_every: int = 0
    """Write ``checkpoints/latest.safetensors`` every this many env steps (0: only at the end
    and when interrupted)."""
    target_return: Optional[float] = None
    """Stop early once an evaluation's mean return reaches this (null: never)."""

    def __post_init__(self) -> None:
        for name in ("total_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_episodes < 1:
            raise ValueError(f"eval_episodes must be >= 1, got {self.eval_episodes}")
        if self.eval_num_envs is not None and self.eval_num_envs < 1:
            raise ValueError(f"eval_num_envs must be >= 1, got {self.eval_num_envs}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")

    def resolved_device(self) -> str:
        """The device to use: ``auto`` becomes ``cuda`` when available, else ``cpu``."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; ``config.yaml`` in a run directory holds one."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The environment (``env.id`` is any gymnasium id or ``module:EnvId``)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The actor-critic network."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyper-parameters."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Run length, seed, device, evaluation and checkpoint schedule."""
    algo: str = "ppo"
    """Training algorithm (``ppo``)."""

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; expected one of {', '.join(ALGOS)}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (lists for tuples), ready for YAML or JSON."""
        return to_data(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "RunConfig":
        """Builds a config from plain data, checking every key and value.

        Raises:
            ConfigError: For an unknown key or a value of the wrong type (one line).
        """
        return from_data(cls, data)

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> "RunConfig":
        """A copy with ``key=value`` overrides applied (see :func:`parse_override`)."""
        data = self.to_dict()
        for text in overrides:
            set_path(data, RunConfig, *parse_override(text))
        return RunConfig.from_dict(data)


def packaged_configs() -> list[str]:
    """Names (file stems) of the configs shipped in ``xlstm_rl/configs``, sorted."""
    folder = resources.files("xlstm_rl.configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _config_text(source: str | os.PathLike) -> tuple[str, str]:
    """Returns ``(yaml_text, name)`` for a path or a packaged config name."""
    path = Path(source)
    if path.is_file():
        return path.read_text(), path.stem
    if path.is_dir() and (path / "config.yaml").is_file():  # a run directory
        return (path / "config.yaml").read_text(), path.name
    name = str(source)[:-5] if str(source).endswith(".yaml") else str(source)
    if os.sep not in name and "/" not in name:
        resource = resources.files("xlstm_rl.configs") / f"{name}.yaml"
        if resource.is_file():
            return resource.read_text(), name
    names = packaged_configs()
    close = difflib.get_close_matches(Path(name).name, names, n=3, cutoff=0.5)
    hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close
            else f"packaged configs: {', '.join(names)}")
    raise ConfigError(f"config {str(source)!r} is neither a file nor a packaged config; {hint}")


def parse_override(text: str) -> tuple[str, Any]:
    """Splits ``"a.b=value"`` into the key and the value parsed as YAML.

    ``ppo.lr=3e-4`` gives ``("ppo.lr", "3e-4")`` (float fields accept such strings),
    ``env.wrappers=[gymnasium.wrappers.ClipReward]`` a list, ``train.torch_threads=null`` None.

    Raises:
        ConfigError: If there is no ``=`` or the value is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"bad override {text!r}: expected key=value, e.g. ppo.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad override {text!r}: value is not valid YAML "
                          f"({str(exc).splitlines()[0]})") from exc
    return key, value


def _parse_yaml(text: str, name: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config {name!r} is not valid YAML{line}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {name!r} must be a YAML mapping, got {type(data).__name__}")
    return data


def load_config(source: str | os.PathLike | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> tuple[RunConfig, str]:
    """Loads a run config from a YAML file, a run directory or a packaged config name.

    Args:
        source: A path to a YAML file, a run directory (its ``config.yaml``), a packaged
            config name (``"ppo-mlstm-tmaze"``), or None for :data:`DEFAULT_CONFIG`.
        overrides: ``"key=value"`` strings applied in order (``"ppo.lr=1e-3"``).

    Returns:
        ``(config, name)``, the name being the file stem (used to name run directories).

    Raises:
        ConfigError: Unknown file or name, invalid YAML, unknown key or wrong type (one line).
    """
    text, name = _config_text(DEFAULT_CONFIG if source is None else source)
    data = _parse_yaml(text, name)
    for item in overrides:
        set_path(data, RunConfig, *parse_override(item))
    return RunConfig.from_dict(data), name


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of scalars, which stay on one line (``[3.0, 6.0]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def config_to_yaml(config: RunConfig) -> str:
    """The config as YAML text, sections in declaration order."""
    return yaml.dump(config.to_dict(), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False)


def save_config(config: RunConfig, path: str | os.PathLike) -> Path:
    """Writes ``config`` as YAML to ``path`` and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_yaml(config))
    return path

