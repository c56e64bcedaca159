"""Checkpoint conversions every algorithm shares: optimizer, RNG and env-snapshot states as
nested ``{str: Tensor | int | float | str | dict}`` (checkpoints hold no pickled objects).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def optimizer_to_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Per-parameter state tensors keyed by parameter index, plus the learning rate."""
    sd = optimizer.state_dict()
    per_param = {str(k): {name: v.clone() if torch.is_tensor(v) else torch.tensor(v)
                          for name, v in entry.items()} for k, entry in sd["state"].items()}
    return {"state": per_param, "lr": float(sd["param_groups"][0]["lr"])}


def optimizer_from_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Loads :func:`optimizer_to_state` output into an optimizer over the same parameters."""
    sd = optimizer.state_dict()
    sd["state"] = {int(k): dict(v) for k, v in (saved.get("state") or {}).items()}
    for group in sd["param_groups"]:
        group["lr"] = float(saved["lr"])
    optimizer.load_state_dict(sd)


def rng_to_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Torch's global (CPU, CUDA) and numpy's global RNG states, plus ``generators`` by name."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        **{name: g.get_state() for name, g in generators.items()},
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached), "numpy_kind": str(kind)}
    if torch.cuda.is_available():
        state["cuda"] = {str(j): s for j, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def rng_from_state(saved: dict[str, Any], generators: dict[str, torch.Generator],
                   optional: tuple[str, ...] = ()) -> None:
    """Restores :func:`rng_to_state` output; a generator named in ``optional`` may be absent
    (states saved before it existed)."""
    torch.set_rng_state(saved["torch"].to(torch.uint8))
    for name, generator in generators.items():
        if name in saved or name not in optional:
            generator.set_state(saved[name].cpu().to(torch.uint8))
    keys = saved["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((str(saved.get("numpy_kind", "MT19937")), keys, int(saved["numpy_pos"]),
                         int(saved["numpy_has_gauss"]), float(saved["numpy_cached_gaussian"])))
    if "cuda" in saved and torch.cuda.is_available():
        states = [saved["cuda"][str(j)].to(torch.uint8) for j in range(len(saved["cuda"]))]
        torch.cuda.set_rng_state_all(states[:torch.cuda.device_count()])


def env_snapshot_to_state(snapshots: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``EpisodeReplay.replay_state`` list -> ``{"0": {"base_seed", "episode", "actions"}}``."""
    return {str(j): {"base_seed": int(s["base_seed"]), "episode": int(s["episode"]),
                     "actions": torch.as_tensor(np.ascontiguousarray(s["actions"]))}
            for j, s in enumerate(snapshots)}


def env_snapshot_from_state(saved: dict[str, dict[str, Any]], num_envs: int
                            ) -> list[dict[str, Any]]:
    """Inverse of :func:`env_snapshot_to_state` (scalars may come back as 0-d tensors)."""
    out = []
    for j in range(num_envs):
        s = saved[str(j)]
        actions = s["actions"]
        out.append({"base_seed": int(s["base_seed"]), "episode": int(s["episode"]),
                    "actions": (actions.numpy() if torch.is_tensor(actions)
                                else np.asarray(actions))})
    return out
