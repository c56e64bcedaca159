"""Tests of safe checkpoints: round trip, validation of bad files, pickles never executed."""
from __future__ import annotations

import json
import math
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import save_file

from xlstm_rl.checkpoint import (FORMAT_VERSION, CheckpointError, load_checkpoint, read_header,
                                 save_checkpoint)
from xlstm_rl.spaces import SpaceError, space_from_json, space_to_json


def _state() -> dict:
    return {
        "policy": {"core.proj.weight": torch.randn(3, 2), "head.bias": torch.zeros(2)},
        "trainer": {
            "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                          "lr": 1e-3, "groups": [{"betas": (0.9, 0.999), "params": [0, 1]}]},
            "counters": {"global_step": 128, "name": "x", "flag": True, "none": None},
            "rng": {"numpy": np.arange(4, dtype=np.uint32),
                    "bf16": torch.ones(2, dtype=torch.bfloat16)},
            "empty": {}, "scalar_tensor": torch.tensor(7),
        },
        "run": {"best_return": -math.inf},
    }


def _save(path, **kwargs):
    defaults = {"config": {"env": {"id": "CartPole-v1"}},
                "spaces": {"observation": space_to_json(spaces.Box(-1, 1, (2,)))}}
    return save_checkpoint(path, _state(), **{**defaults, **kwargs})


def test_round_trip_keeps_structure_types_and_values(tmp_path) -> None:
    state = _state()
    path = save_checkpoint(tmp_path / "c" / "x.safetensors", state, config={"a": 1},
                           spaces={"s": 1}, extra={"step": 5})
    ckpt = load_checkpoint(path)
    out = ckpt.state
    assert torch.equal(out["policy"]["core.proj.weight"], state["policy"]["core.proj.weight"])
    opt = out["trainer"]["optimizer"]
    assert list(opt["state"]) == [0]  # integer keys stay integers (torch optimizers need it)
    assert opt["groups"][0]["betas"] == (0.9, 0.999) and opt["groups"][0]["params"] == [0, 1]
    assert out["trainer"]["counters"] == {"global_step": 128, "name": "x", "flag": True,
                                          "none": None}
    assert isinstance(out["trainer"]["rng"]["numpy"], np.ndarray)
    assert out["trainer"]["rng"]["numpy"].dtype == np.uint32
    assert out["trainer"]["rng"]["bf16"].dtype == torch.bfloat16
    assert out["trainer"]["empty"] == {} and out["run"]["best_return"] == -math.inf
    assert (ckpt.config, ckpt.spaces, ckpt.extra) == ({"a": 1}, {"s": 1}, {"step": 5})
    assert ckpt.format_version == FORMAT_VERSION
    assert not list((tmp_path / "c").glob(".*tmp*"))  # the atomic write left nothing behind


def test_tensor_names_are_dotted_paths(tmp_path) -> None:
    from safetensors import safe_open

    path = _save(tmp_path / "x.safetensors")
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
    assert "policy.core.proj.weight" in names and "trainer.optimizer.state.0.exp_avg" in names


def test_unsavable_objects_are_refused(tmp_path) -> None:
    with pytest.raises(TypeError, match="cannot save a object"):
        save_checkpoint(tmp_path / "x.safetensors", {"a": object()})


def test_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_posing_as_checkpoint_is_not_executed(tmp_path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "latest.safetensors"
    path.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(CheckpointError, match="is a Python pickle.*not loaded"):
        load_checkpoint(path)
    torch.save({"evil": _Evil(str(marker))}, tmp_path / "zip.safetensors")
    with pytest.raises(CheckpointError, match="zip archive"):
        load_checkpoint(tmp_path / "zip.safetensors")
    assert not marker.exists()


def test_truncated_file(tmp_path) -> None:
    path = _save(tmp_path / "x.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    path.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    path.write_bytes(data[:3])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_corrupted_tensor_bytes_fail_the_checksum(tmp_path) -> None:
    path = _save(tmp_path / "x.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted: tensor data do not match"):
        load_checkpoint(path)


def test_garbage_and_foreign_safetensors(tmp_path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not an xlstm-rl checkpoint"):
        load_checkpoint(path)


def _rewrite_metadata(path, **changes) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_wrong_format_version(tmp_path) -> None:
    path = _save(tmp_path / "x.safetensors")
    _rewrite_metadata(path, format_version="99")
    with pytest.raises(CheckpointError, match="format version 99.*reads versions 1 and 2 only"):
        read_header(path)


def test_bad_metadata_json(tmp_path) -> None:
    path = _save(tmp_path / "x.safetensors")
    _rewrite_metadata(path, config="{not json")
    with pytest.raises(CheckpointError, match="metadata 'config' is not valid JSON"):
        load_checkpoint(path)


@pytest.mark.parametrize("space", [
    spaces.Box(-np.inf, np.inf, (3,), np.float32),
    spaces.Box(np.array([0.0, -1.0], np.float32), np.array([1.0, 2.0], np.float32)),
    spaces.Box(0, 255, (4, 4, 3), np.uint8),
    spaces.Discrete(3, start=1),
    spaces.MultiDiscrete([2, 3]),
    spaces.MultiBinary(4),
    spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Tuple([spaces.Discrete(5)])}),
])
def test_space_json_round_trip(space) -> None:
    data = json.loads(json.dumps(space_to_json(space)))
    assert space_from_json(data) == space


def test_unsupported_space_is_a_one_line_error() -> None:
    with pytest.raises(SpaceError, match="unsupported space Text"):
        space_to_json(spaces.Text(5))
    with pytest.raises(SpaceError, match="unknown space type"):
        space_from_json({"type": "Graph"})
