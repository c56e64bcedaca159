"""Exact resume whatever the memory alignment of the tensors a checkpoint loads.

torch's CPU matmul runs on MKL's sgemm, whose low-order bits depend on the memory alignment of
its inputs. safetensors hands out tensors at whatever offset the file header left them (8, 20,
32, ... bytes past a 64-byte boundary) and numpy's buffers are 16-byte aligned at addresses that
vary with the heap, while torch's CPU allocator aligns to 64 bytes. So what enters the library
(loaded tensors, env observations) is copied into torch-owned memory; these tests resume from
tensors placed deliberately off a 64-byte boundary and require bit-exact metrics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from tensordict import TensorDict
from test_ppo_units import _comparable, tmaze_trainer  # tests/ is on sys.path under pytest
from test_r2d2_resume import _metrics, _same, _trainer

import xlstm_rl.checkpoint as checkpoint_mod
from xlstm_rl.checkpoint import load_checkpoint, save_checkpoint
from xlstm_rl.networks import obs_to_torch
from xlstm_rl.obs_norm import ObsNormalizer


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in its own storage starting 4 bytes past a 64-byte boundary, as
    safetensors hands tensors out (a view into a larger storage would not do: torch's
    ``set_rng_state`` reads a state tensor from the start of its storage)."""
    nbytes = t.numel() * t.element_size()
    raw = np.empty(nbytes + 128, dtype=np.uint8)
    start = -raw.ctypes.data % 64 + 4
    out = torch.from_numpy(raw[start:start + nbytes]).view(t.dtype).view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 64 == 4 and out.storage_offset() == 0
    return out


@pytest.fixture
def misaligned_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Makes the safetensors loading behind ``load_checkpoint`` return every tensor off a
    64-byte boundary; returns a list holding the number of tensors handed out so far."""
    real, handed = checkpoint_mod.load_file, [0]

    def load_file(path: str, device: str = "cpu") -> dict[str, torch.Tensor]:
        loaded = {key: _misaligned(t) for key, t in real(path, device=device).items()}
        handed[0] += len(loaded)
        return loaded

    monkeypatch.setattr(checkpoint_mod, "load_file", load_file)
    return handed


def _aligned(*tensors: torch.Tensor | TensorDict) -> bool:
    """True if every tensor (or TensorDict leaf) starts on a 64-byte boundary."""
    leaves = [leaf for t in tensors for leaf in (
        t.values(include_nested=True, leaves_only=True) if isinstance(t, TensorDict) else [t])]
    return all(leaf.data_ptr() % 64 == 0 for leaf in leaves)


# --- the entry points ------------------------------------------------------------------------

def test_load_checkpoint_returns_64_byte_aligned_tensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    state: dict[str, Any] = {
        "a": torch.randn(3), "b": torch.arange(5, dtype=torch.uint8), "c": torch.randn(7, 3),
        "d": torch.randn(2, 2).to(torch.bfloat16), "f": torch.zeros(0),
        "e": np.arange(6, dtype=np.float64).reshape(2, 3)}
    path = save_checkpoint(tmp_path / "c.safetensors", state)
    assert not all(_aligned(t) for t in load_file(str(path)).values())  # the file's own offsets
    loaded = load_checkpoint(path).state
    for key in ("a", "b", "c", "d"):
        assert _aligned(loaded[key]) and torch.equal(loaded[key], state[key]), key
    assert loaded["e"].ctypes.data % 64 == 0 and np.array_equal(loaded["e"], state["e"])
    assert loaded["f"].shape == (0,)


def test_load_checkpoint_copies_misaligned_loads(tmp_path: Path,
                                                 misaligned_loads: list[int]) -> None:
    state = {"w": torch.randn(4, 5), "n": torch.arange(3)}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.safetensors", state)).state
    assert misaligned_loads[0] == 2
    assert all(_aligned(loaded[k]) and torch.equal(loaded[k], state[k]) for k in state)


def _misaligned_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A numpy array of ``shape`` whose buffer starts 4 bytes past a 64-byte boundary."""
    size, item = int(np.prod(shape)), np.dtype(dtype).itemsize
    raw = np.zeros(size * item + 128, dtype=np.uint8)
    start = -raw.ctypes.data % 64 + 4
    arr = raw[start:start + size * item].view(dtype).reshape(shape)
    arr[...] = np.arange(size).reshape(shape) % 7
    assert arr.ctypes.data % 64 == 4
    return arr


@pytest.mark.parametrize("space,dtype", [
    (spaces.Box(-1, 1, (5,)), np.float32), (spaces.Box(-1, 1, (5,)), np.float64),
    (spaces.Box(0, 255, (2, 2, 3), np.uint8), np.uint8), (spaces.Discrete(7), np.int64),
    (spaces.MultiDiscrete([7, 7]), np.int32)])
def test_obs_to_torch_copies_into_aligned_torch_memory(space: spaces.Space, dtype: Any) -> None:
    arr = _misaligned_array((3, *(space.shape or ())), dtype)
    out = obs_to_torch(arr, space)
    assert isinstance(out, torch.Tensor)
    assert _aligned(out) and not np.shares_memory(out.numpy(), arr)
    assert np.array_equal(out.numpy(), arr)


@pytest.mark.parametrize("as_tensor", [True, False])
def test_obs_normalizer_tensor_output_is_aligned(as_tensor: bool) -> None:
    norm = ObsNormalizer((5,))
    arr = _misaligned_array((3, 5), np.float32)
    out = norm(torch.from_numpy(arr) if as_tensor else arr, update=True)
    if as_tensor:
        assert _aligned(out) and out.dtype == torch.float32
        assert torch.equal(out, torch.from_numpy(norm.normalize(arr)))
    else:
        assert isinstance(out, np.ndarray)  # numpy in, numpy out


# --- exact resume ----------------------------------------------------------------------------

# Normalized observations are what makes MKL's rounding show: the raw T-maze observations are
# small integers, whose products are exact whatever the summation order.
PPO_OPTIONS: list[dict[str, Any]] = [
    {"normalize_obs": False},
    {"normalize_obs": True},
    {"normalize_obs": True, "reward_scale": 0.25},
    {"normalize_obs": True, "refresh_states": True},
    {"normalize_obs": True, "target_kl": 0.005},
    {"normalize_obs": True, "anneal_lr": False, "clip_value_loss": False, "norm_adv": False},
    {"normalize_obs": True, "refresh_states": True, "target_kl": 0.5, "reward_scale": 2.0},
]


def _ppo_resumes_exactly(path: Path, core: str = "mlstm", **options: Any) -> None:
    """Trains two PPO iterations, checkpoints to ``path``, and checks that a trainer resumed
    from it carries 64-byte aligned tensors and gives the third iteration's metrics bit for bit."""
    first = tmaze_trainer(core, seed=5, **options)
    try:
        first.train_iteration()
        first.train_iteration()
        save_checkpoint(path, first.state_dict())
        expected = _comparable(first.train_iteration())
    finally:
        first.close()
    resumed = tmaze_trainer(core, seed=5, **options)
    try:
        resumed.load_state_dict(load_checkpoint(path).state)
        assert _aligned(resumed.collector.obs, resumed.collector.state)
        assert _comparable(resumed.train_iteration()) == expected
    finally:
        resumed.close()


@pytest.mark.parametrize("options", PPO_OPTIONS,
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_ppo_resume_from_misaligned_tensors_is_exact(tmp_path: Path, options: dict[str, Any],
                                                     misaligned_loads: list[int]) -> None:
    _ppo_resumes_exactly(tmp_path / "c.safetensors", **options)
    assert misaligned_loads[0] > 0


@pytest.mark.parametrize("core", ["lstm", "mlp"])
def test_ppo_resume_of_other_cores_from_misaligned_tensors_is_exact(
        tmp_path: Path, core: str, misaligned_loads: list[int]) -> None:
    _ppo_resumes_exactly(tmp_path / "c.safetensors", core, normalize_obs=True)


@pytest.mark.parametrize("extra", [(), ("r2d2.state_dtype=bfloat16",),
                                   ("r2d2.staleness_every=0", "r2d2.value_rescaling=false",
                                    "r2d2.max_grad_norm=null")])
def test_r2d2_resume_from_misaligned_tensors_is_exact(tmp_path: Path, extra: tuple[str, ...],
                                                      misaligned_loads: list[int]) -> None:
    first, _ = _trainer(extra)
    try:
        _metrics(first, 3)
        # learning has begun, and the replay goes into the checkpoint (save_replay's default)
        assert first.learner.updates > 0 and len(first.replay) > 0 and first.cfg.save_replay
        path = save_checkpoint(tmp_path / "c.safetensors", first.state_dict())
        expected = _metrics(first, 2)
    finally:
        first.close()
    second, _ = _trainer(extra)
    try:
        second.load_state_dict(load_checkpoint(path).state)
        assert misaligned_loads[0] > 0
        actor = second.actor
        obs = actor._torch(actor.stepper.obs)
        assert isinstance(obs, torch.Tensor) and _aligned(actor.stepper.state, obs)
        assert not np.shares_memory(obs.numpy(), actor.stepper.obs)
        _same(_metrics(second, 2), expected)
    finally:
        second.close()
