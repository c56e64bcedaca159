"""Run configuration: YAML files loaded into frozen dataclasses, with ``key=value`` overrides.

A run config has four sections and the algorithm's name::

    env:    EnvConfig    which environment, how many copies, wrappers, gymnasium.make kwargs
    model:  ModelConfig  encoder, memory core and heads
    <algo>: its config   hyper-parameters of the algorithm (``ppo: PPOConfig``), see
                         :mod:`xlstm_rl.algorithms`
    train:  TrainConfig  steps, seed, device, evaluation and checkpoint schedule
    algo:   str          the algorithm (default ``ppo``)

Missing keys take their defaults. Every key and value is checked against the dataclass
field types; problems raise :class:`~xlstm_rl.typed.ConfigError` with a one-line message.
Packaged configs live in ``xlstm_rl/configs/*.yaml`` and are named by file stem
(``ppo-mlstm-tmaze``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, make_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from xlstm_rl.algorithms import algorithm_names, get_algorithm
from xlstm_rl.fileio import atomic_write_text
from xlstm_rl.suggest import close_matches, format_suggestions
from xlstm_rl.schema import MAX_ENVS, EnvConfig, ModelConfig
from xlstm_rl.typed import ConfigError, check_range, from_data, set_path, to_data

__all__ = ["DEFAULT_CONFIG", "ConfigError", "RunConfig", "TrainConfig", "config_to_yaml",
           "load_config", "packaged_configs", "parse_override", "save_config"]

DEFAULT_CONFIG = "ppo-mlstm-tmaze"
DEFAULT_ALGO = "ppo"
MAX_TOTAL_STEPS = 10**15
"""Largest step count a config may name (total steps, evaluation and checkpoint periods)."""
MAX_CONFIG_BYTES = 1_000_000
"""Largest config file read."""
MAX_CONFIG_NODES = 100_000
"""Most values (mappings, lists and scalars, aliases counted each time they are used) a
config may expand to: a YAML alias bomb is refused instead of expanded."""


@dataclass(frozen=True)
class TrainConfig:
    """How long to train, where, and when to evaluate and checkpoint."""

    total_steps: int = 100_000
    """Environment steps to train for (summed over the parallel envs)."""
    seed: int = 0
    """Seed of the networks, the sampling and the environments."""
    device: str = "cpu"
    """Torch device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto`` (CUDA when available)."""
    torch_threads: int | None = None
    """Torch CPU threads (``torch.set_num_threads``); null keeps torch's default."""
    eval_every: int = 0
    """Evaluate every this many env steps (0: only at the end); the best evaluation return
    so far is kept as ``checkpoints/best.safetensors``."""
    eval_episodes: int = 32
    """Episodes per evaluation."""
    eval_num_envs: int | None = None
    """Parallel envs for evaluation (null: ``min(eval_episodes, 16)``)."""
    eval_deterministic: bool = True
    """Evaluate with the most likely action instead of sampling."""
    checkpoint_every: int = 0
    """Write ``checkpoints/latest.safetensors`` every this many env steps (0: only at the end
    and when interrupted)."""
    target_return: float | None = None
    """Stop early once an evaluation's mean return reaches this (null: never)."""
    eval_max_episode_steps: int | None = 100_000
    """Cut an evaluation episode after this many steps and count it as capped (reported as
    ``eval/capped_episodes``), so an env that never ends cannot hang an evaluation; null:
    never cut (only for envs known to end)."""

    def __post_init__(self) -> None:
        for name in ("total_steps", "eval_every", "checkpoint_every"):
            check_range(name, getattr(self, name), 0, MAX_TOTAL_STEPS, integer=True)
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        check_range("eval_episodes", self.eval_episodes, 1, 1_000_000, integer=True)
        if self.eval_num_envs is not None:
            check_range("eval_num_envs", self.eval_num_envs, 1, MAX_ENVS, integer=True)
        if self.torch_threads is not None:
            check_range("torch_threads", self.torch_threads, 1, 1024, integer=True)
        if self.target_return is not None:
            check_range("target_return", self.target_return)
        if self.eval_max_episode_steps is not None:
            check_range("eval_max_episode_steps", self.eval_max_episode_steps, 1,
                        MAX_TOTAL_STEPS, integer=True)
        if not isinstance(self.device, str) or not self.device or len(self.device) > 64:
            raise ValueError(f"device must be a torch device name (cpu, cuda, cuda:N, auto), "
                             f"got {str(self.device)[:64]!r}")

    def resolved_device(self) -> str:
        """The device to use: ``auto`` becomes ``cuda`` when available, else ``cpu``."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; ``config.yaml`` in a run directory holds one.

    In YAML the algorithm's hyper-parameters sit in a section named after ``algo``
    (``ppo: {...}``) and are read with that algorithm's registered config class (see
    :mod:`xlstm_rl.algorithms`); in Python they are ``algo_config``, also reachable under the
    algorithm's name (``config.ppo``).
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    """The environment (``env.id`` is any gymnasium id or ``module:EnvId``)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network: encoder, memory core, heads."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Run length, seed, device, evaluation and checkpoint schedule."""
    algo: str = DEFAULT_ALGO
    """Training algorithm, a name registered in :mod:`xlstm_rl.algorithms` (``ppo``)."""
    algo_config: Any = None
    """Hyper-parameters of ``algo`` (an instance of its config class; None: its defaults)."""

    def __post_init__(self) -> None:
        cls = get_algorithm(self.algo).config_class()
        if self.algo_config is None:
            object.__setattr__(self, "algo_config", cls())
        elif not isinstance(self.algo_config, cls):
            raise TypeError(f"algo_config of algo {self.algo!r} must be a {cls.__name__}, got "
                            f"{type(self.algo_config).__name__}")
        _check_env(self.algo_config, self.env)

    def __getattr__(self, name: str) -> Any:
        """``config.<algo>`` is ``config.algo_config`` (``config.ppo.lr``)."""
        if not name.startswith("_"):
            try:
                if name == object.__getattribute__(self, "algo"):
                    return object.__getattribute__(self, "algo_config")
            except AttributeError:
                pass
        raise AttributeError(f"'RunConfig' object has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (lists for tuples), ready for YAML or JSON."""
        return {"env": to_data(self.env), "model": to_data(self.model),
                self.algo: to_data(self.algo_config), "train": to_data(self.train),
                "algo": self.algo}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunConfig:
        """Builds a config from plain data, checking every key and value.

        Raises:
            ConfigError: For an unknown key or algorithm, or a value of the wrong type or out
                of range (one line).
        """
        parsed = from_data(run_schema(_algo_of(data)), data)
        return cls(env=parsed.env, model=parsed.model, train=parsed.train, algo=parsed.algo,
                   algo_config=getattr(parsed, parsed.algo))

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> RunConfig:
        """A copy with ``key=value`` overrides applied (see :func:`parse_override`)."""
        data = self.to_dict()
        for text in overrides:
            apply_override(data, text)
        return RunConfig.from_dict(data)


def _check_env(algo_config: Any, env: EnvConfig) -> None:
    check = getattr(algo_config, "check_env", None)
    if check is not None:
        check(env)


def _algo_of(data: Any) -> str:
    """The ``algo`` of plain config data (the default when absent); checks the sections."""
    algo = data.get("algo", DEFAULT_ALGO) if isinstance(data, dict) else DEFAULT_ALGO
    if not isinstance(algo, str):
        raise ConfigError(f"config key 'algo': expected str, got {type(algo).__name__}")
    get_algorithm(algo)
    others = [k for k in (data or {}) if k != algo and k in algorithm_names()]
    if others:
        raise ConfigError(f"config section {others[0]!r} belongs to algo {others[0]!r}, but the "
                          f"config has algo {algo!r}; rename the section to {algo!r} or set "
                          f"algo: {others[0]}")
    return algo


def run_schema(algo: str) -> type:
    """The dataclass that YAML data of an ``algo`` run config is checked against.

    Its fields are ``env, model, <algo>, train, algo``, so the generic typed loader
    (:func:`xlstm_rl.typed.from_data`) and override paths (``ppo.lr=...``) work unchanged.
    """
    config_cls = get_algorithm(algo).config_class()

    def check(self: Any) -> None:
        if self.algo != algo:
            raise ValueError(f"algo {self.algo!r} does not match the section {algo!r}")
        _check_env(getattr(self, algo), self.env)

    return make_dataclass(
        f"RunConfig_{algo}",
        [("env", EnvConfig, field(default_factory=EnvConfig)),
         ("model", ModelConfig, field(default_factory=ModelConfig)),
         (algo, config_cls, field(default_factory=config_cls)),
         ("train", TrainConfig, field(default_factory=TrainConfig)),
         ("algo", str, field(default=algo))],
        frozen=True, namespace={"__post_init__": check})


def apply_override(data: dict[str, Any], text: str) -> None:
    """Applies one ``key=value`` override to plain config data, checking the key."""
    key, value = parse_override(text)
    algo = value if key == "algo" and isinstance(value, str) else _algo_of(data)
    set_path(data, run_schema(algo), key, value)


def packaged_configs() -> list[str]:
    """Names (file stems) of the configs shipped in ``xlstm_rl/configs``, sorted."""
    folder = resources.files("xlstm_rl.configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_config_file(path: Path) -> str:
    """The text of a config file, refusing huge or non-UTF-8 files with a one-line error."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {str(path)!r} is {size} bytes; a config may have at most "
                              f"{MAX_CONFIG_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {str(path)!r} is not UTF-8 text") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from exc


def _config_text(source: str | os.PathLike) -> tuple[str, str]:
    """Returns ``(yaml_text, name)`` for a path or a packaged config name."""
    path = Path(source)
    if path.is_file():
        return _read_config_file(path), path.stem
    if path.is_dir() and (path / "config.yaml").is_file():  # a run directory
        return _read_config_file(path / "config.yaml"), path.name
    name = str(source)[:-5] if str(source).endswith(".yaml") else str(source)
    if os.sep not in name and "/" not in name:
        resource = resources.files("xlstm_rl.configs") / f"{name}.yaml"
        if resource.is_file():
            return resource.read_text(), name
    names = packaged_configs()
    close = close_matches(Path(name).name, names, cutoff=0.5)
    hint = (format_suggestions(close)[2:] if close
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
        raise ConfigError(f"bad override {text[:80]!r}: value is not valid YAML "
                          f"({str(exc).splitlines()[0]})") from exc
    except RecursionError as exc:
        raise ConfigError(f"bad override for {key[:80]!r}: the value is nested too deeply"
                          ) from exc
    if _count_nodes(value, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise ConfigError(f"bad override for {key[:80]!r}: the value expands to more than "
                          f"{MAX_CONFIG_NODES} values (YAML aliases are counted each time they "
                          "are used); refusing it")
    return key, value


def _count_nodes(data: Any, limit: int) -> int:
    """Counts the values in ``data`` as if every alias were expanded, stopping past ``limit``."""
    count, todo = 0, [data]
    while todo and count <= limit:
        node = todo.pop()
        count += 1
        if isinstance(node, dict):
            todo.extend(node.keys())
            todo.extend(node.values())
        elif isinstance(node, (list, tuple)):
            todo.extend(node)
    return count


def _parse_yaml(text: str, name: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config {name!r} is not valid YAML{line}: {problem}") from exc
    except RecursionError as exc:
        raise ConfigError(f"config {name!r} is nested too deeply") from exc
    if _count_nodes(data, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise ConfigError(f"config {name!r} expands to more than {MAX_CONFIG_NODES} values "
                          "(YAML aliases are counted each time they are used); refusing it")
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
        apply_override(data, item)
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
    """Writes ``config`` as YAML to ``path`` atomically (temporary file, fsync, rename).

    A kill during the write leaves the old file (or none), never a half-written one.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, config_to_yaml(config))

