"""Hostile or absurd configs: every field's range is checked when the config is built, a YAML
alias bomb is refused, and no error message is longer than one short line (issue 8, 9-10)."""
from __future__ import annotations

import time

import pytest

from xlstm_rl.cli import main
from xlstm_rl.cli.errors import MAX_MESSAGE, UserError, report
from xlstm_rl.config import ConfigError, load_config
from xlstm_rl.schema import EnvConfig


@pytest.mark.parametrize("override, fragment", [
    ("model.proj_factor=0", "proj_factor must be > 0"),
    ("model.proj_factor=.inf", "proj_factor must be > 0"),
    ("model.ffn_factor=.nan", "ffn_factor must be > 0"),
    ("model.encoder_layers=-1", "encoder_layers must be >= 0"),
    ("model.hidden_size=1099511627776", "hidden_size must be >= 1 and <= 65536"),
    ("model.encoder_hidden=0", "encoder_hidden must be >= 1"),
    ("model.cnn_channels=[16, 0]", "cnn_channels values must be >= 1"),
    ("model.conv_kernel=0", "conv_kernel must be >= 1"),
    ("model.chunk_size=-3", "chunk_size must be >= 1"),
    ("model.forget_bias_range=[.nan, 1]", "forget_bias_range values"),
    ("model.init_log_std=.inf", "init_log_std"),
    ("model.core=transformer", "core must be one of mlstm"),
    ("model.backend=cuda", "backend must be one of auto"),
    ("model.pattern=" + "m" * 1000, "at most 64 blocks"),
    ("ppo.lr=.inf", "lr must be > 0"),
    ("ppo.lr=0", "lr must be > 0"),
    ("ppo.reward_scale=.nan", "reward_scale must be > 0"),
    ("ppo.gamma=5", "gamma must be >= 0 and <= 1"),
    ("ppo.gae_lambda=-0.1", "gae_lambda must be >= 0 and <= 1"),
    ("ppo.clip_coef=0", "clip_coef must be > 0"),
    ("ppo.max_grad_norm=-1", "max_grad_norm must be > 0"),
    ("ppo.adam_eps=.inf", "adam_eps must be > 0"),
    ("ppo.ent_coef=-1", "ent_coef must be >= 0"),
    ("ppo.vf_coef=.nan", "vf_coef must be >= 0"),
    ("ppo.obs_clip=0", "obs_clip must be > 0"),
    ("ppo.target_kl=-1", "target_kl must be >= 0"),
    ("ppo.epochs=0", "epochs must be >= 1"),
    ("ppo.rollout_len=100000000000", "rollout_len must be >= 1 and <= 1e+06"),
    ("env.num_envs=100000000", "num_envs must be >= 1 and <= 4096"),
    ("env.id=''", "id must be a non-empty environment id"),
    ("train.total_steps=-5", "total_steps must be >= 0"),
    ("train.eval_episodes=0", "eval_episodes must be >= 1"),
    ("train.eval_num_envs=100000", "eval_num_envs must be >= 1 and <= 4096"),
    ("train.torch_threads=0", "torch_threads must be >= 1"),
    ("train.target_return=.nan", "target_return must be a finite number"),
    ("train.seed=-1", "seed must be >= 0"),
])
def test_out_of_range_values_fail_when_the_config_is_built(override, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert fragment in message and "\n" not in message, message


def test_more_minibatches_than_chunks_fail_at_config_time() -> None:
    config, _ = load_config(None, ["env.num_envs=2", "ppo.rollout_len=8", "ppo.seq_len=4",
                                   "ppo.minibatches=4"])
    assert config.ppo.minibatches == 4  # 2 envs * 8 / 4 = 4 chunks: exactly enough
    with pytest.raises(ConfigError, match=r"minibatches \(1000\) must not exceed .* = 4"):
        load_config(None, ["env.num_envs=2", "ppo.rollout_len=8", "ppo.seq_len=4",
                           "ppo.minibatches=1000"])
    with pytest.raises(ValueError, match="must not exceed"):
        config.ppo.check_env(EnvConfig(num_envs=1))


def test_bad_value_leaves_no_run_directory(tmp_path, capsys) -> None:
    run = tmp_path / "never"
    assert main(["train", "--set", "ppo.minibatches=1000", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "minibatches (1000)" in err[0]
    assert not run.exists()


_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
env: {kwargs: {x: *g}}
"""


def test_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path, capsys) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_BOMB)
    run = tmp_path / "never"
    start = time.perf_counter()
    assert main(["train", str(path), "--run-dir", str(run)]) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and len(err) < MAX_MESSAGE + 20, len(err)
    assert "expands to more than" in err
    assert not run.exists()


def test_self_referencing_alias_is_refused(tmp_path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("env: &e {kwargs: {self: *e}}\n")
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(path)


def test_deeply_nested_yaml_is_one_line(tmp_path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("env: {kwargs: {x: " + "[" * 20000 + "]" * 20000 + "}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_huge_config_file_is_refused(tmp_path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * 2_000_000 + "\n")
    with pytest.raises(ConfigError, match="at most 1000000 bytes"):
        load_config(path)


def test_error_messages_are_capped(capsys) -> None:
    assert report(UserError("x" * 10_000_000)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: x") and err.rstrip().endswith("...")
    assert len(err.rstrip()) <= len("error: ") + MAX_MESSAGE


def test_alias_bomb_in_a_set_value_is_refused(capsys) -> None:
    value = "{a: &a [1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], " + \
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], " + \
        "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(None, [f"env.kwargs.x={value}"])
