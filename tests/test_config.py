"""Tests of run configs: YAML loading, key=value overrides with type checks, packaged configs."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

import gymnasium as gym
import pytest
import yaml

from xlstm_rl.config import (DEFAULT_CONFIG, ConfigError, RunConfig, config_to_yaml, load_config,
                             packaged_configs, parse_override, save_config)
from xlstm_rl.typed import coerce, from_data

REQUIRED = {f"ppo-{core}-tmaze" for core in ("mlstm", "slstm", "xlstm", "lstm", "gru", "mlp")} | {
    "ppo-mlstm-cartpole-pos", "ppo-mlstm-recall", "ppo-mlstm-pendulum"}


def test_required_configs_are_packaged() -> None:
    assert REQUIRED <= set(packaged_configs())
    assert DEFAULT_CONFIG == "ppo-mlstm-tmaze"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_packaged_config_loads_and_builds_its_network(name: str) -> None:
    from xlstm_rl.envs import make_env
    from xlstm_rl.networks import ActorCritic

    config, stem = load_config(name)
    assert stem == name and isinstance(config, RunConfig)
    assert config.model.core in name
    # round trip: dataclasses -> YAML -> dataclasses
    assert RunConfig.from_dict(yaml.safe_load(config_to_yaml(config))) == config
    env = make_env(config.env.id, wrappers=config.env.wrappers, **dict(config.env.kwargs))
    ActorCritic(env.observation_space, env.action_space, config.model)  # validates the model
    assert config.ppo.rollout_len % config.ppo.seq_len == 0
    env.close()


def test_default_config_is_mlstm_tmaze_corridor_10() -> None:
    config, name = load_config(None)
    assert name == DEFAULT_CONFIG
    assert (config.env.id, config.model.core) == ("xlstm_rl/TMaze-v0", "mlstm")
    assert config.env.kwargs["corridor_length"] == 10


def test_yaml_round_trip_through_a_file(tmp_path) -> None:
    config, _ = load_config(None, ["env.wrappers=[gymnasium.wrappers.ClipReward]",
                                   "model.forget_bias_range=[1, 2]", "ppo.target_kl=0.02"])
    path = save_config(config, tmp_path / "c.yaml")
    again, stem = load_config(path)
    assert again == config and stem == "c"
    assert again.model.forget_bias_range == (1.0, 2.0)
    assert again.env.wrappers == ("gymnasium.wrappers.ClipReward",)


@pytest.mark.parametrize("override, key, value", [
    ("ppo.lr=3e-4", ("ppo", "lr"), 3e-4),  # YAML 1.1 reads 3e-4 as a string; floats accept it
    ("ppo.lr=1", ("ppo", "lr"), 1.0),
    ("ppo.target_kl=null", ("ppo", "target_kl"), None),
    ("train.torch_threads=2", ("train", "torch_threads"), 2),
    ("env.kwargs.corridor_length=4", ("env", "kwargs"), {"corridor_length": 4}),
    ("model.forget_bias_range=[2, 5]", ("model", "forget_bias_range"), (2.0, 5.0)),
    ("train.eval_deterministic=false", ("train", "eval_deterministic"), False),
])
def test_overrides(override: str, key: tuple[str, str], value: Any) -> None:
    config, _ = load_config(None, [override])
    assert getattr(getattr(config, key[0]), key[1]) == value


@pytest.mark.parametrize("override, message", [
    ("ppo.lrr=1", "unknown config key 'ppo.lrr'; did you mean 'ppo.lr'"),
    ("ppo.lr=abc", "config key 'ppo.lr': expected float, got str 'abc'"),
    ("env.num_envs=2.5", "config key 'env.num_envs': expected int, got float 2.5"),
    ("train.eval_deterministic=3", "expected bool, got int 3"),
    ("train.torch_threads=many", "expected int or null"),
    ("model.forget_bias_range=3", "expected a list"),
    ("env.kwargs=5", "expected a mapping"),
    ("env.num_envs=0", "config section 'env': num_envs must be >= 1"),
    ("trian.seed=1", "unknown config key 'trian.seed'; did you mean 'train.seed'"),
    ("env.id.sub=1", "'env.id' is not a mapping"),
    ("no_equals_sign", "expected key=value"),
])
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_a_file_suggests_close_keys(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("ppo:\n  learning_rat: 0.1\nmodel:\n  core: gru\n")
    with pytest.raises(ConfigError, match="unknown config key 'ppo.learning_rat'"):
        load_config(path)
    path.write_text("env: [1, 2]\n")
    with pytest.raises(ConfigError, match="config section 'env': expected a mapping"):
        load_config(path)
    path.write_text("env: {id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_unknown_config_name_suggests_packaged_ones() -> None:
    with pytest.raises(ConfigError, match="did you mean 'ppo-mlstm-tmaze'"):
        load_config("ppo-mlstm-tmaz")


def test_parse_override_parses_yaml_values() -> None:
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a= x ") == ("a", "x")
    assert parse_override("a=") == ("a", "")


@dataclasses.dataclass(frozen=True)
class _Inner:
    mode: Literal["a", "b"] = "a"
    """A literal."""


@dataclasses.dataclass(frozen=True)
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    """A nested section."""
    pair: tuple[int, str] = (1, "x")
    """A fixed tuple."""
    table: dict[str, float] = dataclasses.field(default_factory=dict)
    """A typed dict."""
    maybe: list[int] | None = None
    """An optional list."""


def test_generic_coercion_of_typing_constructs() -> None:
    out = from_data(_Outer, {"inner": {"mode": "b"}, "pair": [2, "y"], "table": {"k": 1},
                             "maybe": [1, 2]})
    assert out == _Outer(_Inner("b"), (2, "y"), {"k": 1.0}, [1, 2])
    with pytest.raises(ConfigError, match="expected one of 'a', 'b'"):
        from_data(_Outer, {"inner": {"mode": "c"}})
    with pytest.raises(ConfigError, match=r"'pair': expected 2 items"):
        from_data(_Outer, {"pair": [1]})
    with pytest.raises(ConfigError, match=r"'table.k': expected float"):
        from_data(_Outer, {"table": {"k": "x"}})
    with pytest.raises(ConfigError, match=r"'maybe\[1\]': expected int"):
        from_data(_Outer, {"maybe": [1, "two"]})
    assert coerce(None, Optional[int], "k") is None  # noqa: UP045  (the typing form is tested)


def test_with_overrides_and_gym_ids_stay_strings() -> None:
    config = RunConfig().with_overrides(["env.id=CartPole-v1", "env.num_envs=3"])
    assert config.env.id == "CartPole-v1" and config.env.num_envs == 3
    assert "CartPole-v1" in gym.registry
