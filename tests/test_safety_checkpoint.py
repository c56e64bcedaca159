"""Hostile checkpoints (issue 8, item 7 and the checksum of item 2): every crafted file gives one
line and exit code 2 from ``eval`` and a ``CheckpointError`` from ``load_policy``; validation
happens before anything large is built; NaN states are never written."""
from __future__ import annotations

import json
import math
import os
import re
import struct
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import xlstm_rl
from xlstm_rl import checkpoint as ckpt_mod
from xlstm_rl.checkpoint import (CheckpointError, NonFiniteCheckpointError, load_checkpoint,
                                 save_checkpoint)
from xlstm_rl.cli import main

TINY = ["--set", "env.num_envs=2", "--set", "env.kwargs.corridor_length=2", "--set",
        "model.hidden_size=8", "--set", "model.num_heads=2", "--set", "model.encoder_hidden=8",
        "--set", "ppo.rollout_len=8", "--set", "ppo.seq_len=8", "--set", "ppo.minibatches=1",
        "--set", "ppo.epochs=1", "--set", "train.eval_episodes=1", "--set",
        "train.torch_threads=1", "--total-steps", "16", "--no-progress"]
FORMAT1 = Path(__file__).parent / "data" / "run_format1" / "checkpoints" / "latest.safetensors"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """The latest checkpoint of one tiny training run."""
    run = tmp_path_factory.mktemp("safety") / "run"
    assert main(["train", *TINY, "--run-dir", str(run)]) == 0
    return run / "checkpoints" / "latest.safetensors"


def _read_raw(path: Path) -> tuple[dict[str, Any], bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def rewrite(path: Path, out: Path, resign: bool = True, **meta: str) -> Path:
    """Copies ``path`` to ``out`` with metadata fields replaced; ``resign`` recomputes the
    digest with the library's own rule, so only validation (not the checksum) can object."""
    header, body = _read_raw(path)
    header["__metadata__"].update(meta)
    if resign:
        header["__metadata__"]["sha256"] = ckpt_mod._digest(load_file(str(path)),
                                                            header["__metadata__"])
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return out


def _edit(good: Path, out: Path, change: Callable[[Any], None]) -> Path:
    """Re-saves ``good`` after ``change(ckpt)`` edits its state / config / spaces in place."""
    ckpt = load_checkpoint(good)
    change(ckpt)
    return save_checkpoint(out, ckpt.state, config=ckpt.config, spaces=ckpt.spaces,
                           extra=ckpt.extra)


def _config(**sections: dict) -> Callable[[Any], None]:
    def change(ckpt):
        for section, values in sections.items():
            ckpt.config[section] = {**ckpt.config[section], **values}
    return change


def _space(which: str, value: Any) -> Callable[[Any], None]:
    def change(ckpt):
        ckpt.spaces[which] = value
    return change


def _weight(make: Callable[[torch.Tensor], Any]) -> Callable[[Any], None]:
    def change(ckpt):
        key = sorted(ckpt.state["policy"])[0]
        ckpt.state["policy"][key] = make(ckpt.state["policy"][key])
    return change


def _normalized_with_stats(shape: tuple[int, ...]) -> Callable[[Any], None]:
    def change(ckpt):
        ckpt.config["ppo"] = {**ckpt.config["ppo"], "normalize_obs": True}
        ckpt.state["obs_norm"] = {"mean": torch.zeros(shape, dtype=torch.float64),
                                  "var": torch.ones(shape, dtype=torch.float64),
                                  "count": torch.tensor(5.0, dtype=torch.float64)}
    return change


EDITS = {
    "huge_box": (_space("observation", {"type": "Box", "shape": [10**6, 10**6], "dtype":
                                        "float32", "low": 0.0, "high": 1.0}), "more than"),
    "discrete_1e30": (_space("action", {"type": "Discrete", "n": 10**30}), "Discrete n"),
    "dict_as_list": (_space("observation", {"type": "Dict", "spaces": [{"type": "Discrete",
                                                                         "n": 2}]}),
                     "needs a mapping"),
    "object_dtype": (_space("observation", {"type": "Box", "shape": [4], "dtype": "object",
                                            "low": 0, "high": 1}), "dtype must be one of"),
    "deep_tuple": (_space("observation", json.loads('{"type": "Tuple", "spaces": [' * 20
                                                    + '{"type": "Discrete", "n": 2}'
                                                    + ']}' * 20)), "nest more than"),
    "hidden_2e40": (_config(model={"hidden_size": 2**40}), "hidden_size must be"),
    "hidden_65536": (_config(model={"hidden_size": 65536, "num_heads": 1}),
                     "do not match the model architecture"),
    "weight_is_int": (_weight(lambda t: 3), "not a tensor"),
    "weight_float64": (_weight(lambda t: t.double()), "dtype float64"),
    "obs_norm_shape": (_normalized_with_stats((3,)), "has shape \\[3\\]"),
    "bad_ppo_range": (_config(ppo={"gamma": 5}), "gamma must be"),
}


@pytest.mark.parametrize("kind", sorted(EDITS))
def test_hostile_checkpoints_fail_in_one_line(good, tmp_path, capsys, kind) -> None:
    change, fragment = EDITS[kind]
    path = _edit(good, tmp_path / f"{kind}.safetensors", change)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=fragment) as info:
        xlstm_rl.load_policy(path)
    assert "\n" not in str(info.value)
    capsys.readouterr()
    assert main(["eval", str(path), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(fragment, err[0]), err
    assert time.perf_counter() - start < 20  # nothing huge was allocated


@pytest.mark.parametrize("meta, fragment", [
    ({"structure": json.dumps({"l": []})}, "the state is a list, not a mapping"),
    ({"structure": "[1, 2]"}, "metadata 'structure' is a list"),
    ({"config": "[" * 100_000 + "]" * 100_000}, "'config'"),
    ({"extra": json.dumps(json.loads("[" * 200 + "]" * 200))}, "nested more than 64"),
    ({"spaces": json.dumps({"observation": [], "action": 5})}, "no usable observation"),
])
def test_malformed_metadata_fail_in_one_line(good, tmp_path, capsys, meta, fragment) -> None:
    path = rewrite(good, tmp_path / "x.safetensors", **meta)
    with pytest.raises(CheckpointError, match=fragment):
        xlstm_rl.load_policy(path)
    capsys.readouterr()
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_bad_env_kwargs_are_a_user_error_in_eval(good, tmp_path, capsys) -> None:
    path = _edit(good, tmp_path / "kw.safetensors", _config(env={"kwargs": {"bogus": 1}}))
    assert main(["eval", str(path), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus" in err[0], err


def test_load_policy_rejects_obs_norm_statistics_of_the_wrong_shape(good, tmp_path) -> None:
    path = _edit(good, tmp_path / "norm.safetensors", _normalized_with_stats((3,)))
    with pytest.raises(CheckpointError, match="observation normalization statistic 'mean'"):
        xlstm_rl.load_policy(path)
    right = _edit(good, tmp_path / "ok.safetensors", _normalized_with_stats((4,)))
    assert xlstm_rl.load_policy(right).normalizer is not None


def test_checksum_covers_the_metadata(good, tmp_path) -> None:
    evil = json.dumps({**load_checkpoint(good).config, "algo": "ppo", "env": {
        "id": "antigravity:Foo-v0", "wrappers": ["pydoc.pipepager"]}})
    path = rewrite(good, tmp_path / "tampered.safetensors", resign=False, config=evil)
    with pytest.raises(CheckpointError, match="do not match their checksum"):
        load_checkpoint(path)
    for key in ("spaces", "structure", "extra", "library_version"):
        header, _ = _read_raw(good)
        value = header["__metadata__"][key]
        changed = value + " " if key != "library_version" else "0.0.0"
        with pytest.raises(CheckpointError, match="checksum"):
            load_checkpoint(rewrite(good, tmp_path / f"{key}.safetensors", resign=False,
                                    **{key: changed}))


def test_format_1_files_are_still_read(tmp_path) -> None:
    ckpt = load_checkpoint(FORMAT1)
    assert ckpt.format_version == 1
    assert xlstm_rl.load_policy(FORMAT1).action_space.n == 2
    data = bytearray(FORMAT1.read_bytes())  # format 1 digests still guard the tensors
    data[-3] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="tensor data do not match their checksum"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_nan_state_is_never_written_over_a_good_checkpoint(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "latest.safetensors", {"w": torch.ones(2)})
    before = path.read_bytes()
    for bad in (math.nan, math.inf):
        state = {"policy": {"ok": torch.ones(3), "bad": torch.tensor([1.0, bad])},
                 "steps": torch.tensor([1, 2])}
        with pytest.raises(NonFiniteCheckpointError, match="'policy.bad'") as info:
            save_checkpoint(path, state)
        assert isinstance(info.value, CheckpointError) and "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors"]


def test_save_fsyncs_the_temporary_file_before_the_rename(tmp_path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync:" + os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1])
        return real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)})
    first_replace = events.index("replace")
    assert any(e.startswith("fsync:.c.safetensors.tmp") for e in events[:first_replace]), events
