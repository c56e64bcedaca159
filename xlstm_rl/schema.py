"""Run configuration shared by the agents and the CLI: environment and model dataclasses.

Configs are frozen dataclasses of plain fields (int, float, str, bool, tuple, dict) so that a
YAML file maps onto them one to one. Lists read from YAML are turned into tuples on
construction; :func:`config_to_dict` / :func:`config_from_dict` round-trip a config through
plain dicts (``yaml.safe_dump``-able: tuples become lists).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from xlstm_rl.cores.config import CORE_NAMES, CoreConfig
from xlstm_rl.suggest import did_you_mean
from xlstm_rl.typed import MAX_SIZE, check_range

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

C = TypeVar("C")

MAX_ENVS = 4096
"""Most parallel sub-environments a config may ask for."""


def _plain(value: Any) -> Any:
    """Tuples -> lists, dicts recursively, so ``yaml.safe_dump`` accepts the value."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _tupled(value: Any) -> Any:
    """Lists -> tuples, recursively (dicts inside are kept as dicts)."""
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(v) for v in value)
    return value


def freeze_tuple_fields(config: Any) -> None:
    """In a frozen dataclass's ``__post_init__``: store tuple fields given as lists as tuples."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, list):
            object.__setattr__(config, f.name, _tupled(value))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a plain dict (tuples as lists), ready for ``yaml.safe_dump``."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_dict(cls: type[C], data: dict[str, Any] | None) -> C:
    """Builds ``cls(**data)``; an unknown key raises a one-line ValueError with a close match."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cast("type[DataclassInstance]", cls))]
    unknown = sorted(set(data) - set(names))
    if unknown:
        hint = did_you_mean(unknown[0], names, n=1)
        raise ValueError(f"unknown {cls.__name__} field {unknown[0]!r}{hint}")
    return cls(**data)


@dataclass(frozen=True)
class EnvConfig:
    """Which environment to train on and how to vectorize it."""

    id: str = "xlstm_rl/TMaze-v0"
    """Registered gymnasium id (or ``"module:EnvId"``), e.g. ``CartPole-v1``."""
    num_envs: int = 8
    """Number of parallel sub-environments."""
    vectorization: str = "sync"
    """``"sync"`` (one process) or ``"async"`` (one subprocess per sub-environment)."""
    wrappers: tuple = ()
    """Wrapper specs applied to every sub-env, innermost first: dotted paths or
    ``{"name": path, "kwargs": {...}}`` dicts (see ``xlstm_rl.envs.wrappers``)."""
    kwargs: dict = field(default_factory=dict)
    """Keyword arguments for ``gymnasium.make`` (e.g. ``{"corridor_length": 10}``)."""

    def __post_init__(self) -> None:
        freeze_tuple_fields(self)
        check_range("num_envs", self.num_envs, 1, MAX_ENVS, integer=True)
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"id must be a non-empty environment id, got {self.id!r}")
        if not isinstance(self.kwargs, dict) or not all(isinstance(k, str) for k in self.kwargs):
            raise ValueError("kwargs must be a mapping with string keys (gymnasium.make keyword "
                             "arguments)")
        if self.vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be 'sync' or 'async', got {self.vectorization!r}")


@dataclass(frozen=True)
class ModelConfig(CoreConfig):
    """Actor-critic network: encoder -> memory core -> policy and value heads.

    Extends :class:`xlstm_rl.cores.CoreConfig` (hidden_size, num_heads, pattern, proj_factor,
    qkv_block_size, conv_kernel, ffn_factor, chunk_size, forget_bias_range, backend; documented
    there) with the choice of core and the encoder and head options.
    """

    core: str = "mlstm"
    """Memory core: ``mlstm | slstm | xlstm | lstm | gru | mlp`` (see ``xlstm_rl.cores``)."""
    encoder_hidden: int = 128
    """Width of the MLP encoder layers for vector observations (and of the CNN's output)."""
    encoder_layers: int = 1
    """Hidden layers of the MLP encoder (0: vector observations go to the core unchanged)."""
    cnn_channels: tuple = (16, 32, 32)
    """Channels of the image encoder's conv layers (kernel 3, stride 2 each)."""
    shared_core: bool = True
    """True: one encoder+core feeds both heads; False: separate encoder+core for the value."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian head (Box actions)."""

    def __post_init__(self) -> None:
        freeze_tuple_fields(self)
        super().__post_init__()
        if self.core not in CORE_NAMES:
            raise ValueError(f"core must be one of {', '.join(CORE_NAMES)}, "
                             f"got {str(self.core)[:80]!r}")
        check_range("encoder_hidden", self.encoder_hidden, 1, MAX_SIZE, integer=True)
        check_range("encoder_layers", self.encoder_layers, 0, 64, integer=True)
        if not 1 <= len(self.cnn_channels) <= 16:
            raise ValueError(f"cnn_channels must list 1 to 16 conv layers, got "
                             f"{len(self.cnn_channels)}")
        for channels in self.cnn_channels:
            check_range("cnn_channels values", channels, 1, MAX_SIZE, integer=True)
        check_range("init_log_std", self.init_log_std, -20, 20)

    def core_kwargs(self) -> dict[str, Any]:
        """The fields that ``xlstm_rl.cores.make_core`` takes, by name."""
        return {name: getattr(self, name) for name in CoreConfig.field_names()}
