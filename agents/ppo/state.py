"""Conversions between live training state and nested dicts of tensors / python scalars.

Checkpoints hold no pickled objects: optimizer state, RNG states and env snapshots are turned
into nested ``{str: Tensor | int | float | str | dict}`` here and back.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict


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


def rng_to_state(generator: torch.Generator, action_generator: torch.Generator
                 ) -> dict[str, Any]:
    """Torch (CPU, CUDA), numpy global and the trainer's two generators' states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(), "generator": generator.get_state(),
        "action_generator": action_generator.get_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached), "numpy_kind": str(kind)}
    if torch.cuda.is_available():
        state["cuda"] = {str(j): s for j, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def rng_from_state(generator: torch.Generator, action_generator: torch.Generator,
                   saved: dict[str, Any]) -> None:
    """Restores :func:`rng_to_state` output."""
    torch.set_rng_state(saved["torch"].to(torch.uint8))
    generator.set_state(saved["generator"].to(torch.uint8))
    if "action_generator" in saved:  # absent in states saved before it existed
        action_generator.set_state(saved["action_generator"].cpu().to(torch.uint8))
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


def collector_to_state(collector: Any, parallel: Any) -> dict[str, Any]:
    """The collector's carried rows (observation, recurrent state, reset flags, running episode
    return / length) as plain nested tensors, over every rank's envs in global order."""
    if collector.obs is None:
        raise RuntimeError("state_dict() before the collector was reset")
    rows = parallel.gather_rows({"obs": collector.obs.clone(), "state": collector.state.clone(),
                                 "reset": collector.reset_flags.clone(),
                                 "ep_return": torch.tensor(collector.ep_return),
                                 "ep_length": torch.tensor(collector.ep_length)})
    for key in ("obs", "state"):
        if hasattr(rows[key], "to_dict"):
            rows[key] = rows[key].to_dict()
    return rows


def collector_from_state(collector: Any, saved: dict[str, Any], parallel: Any,
                         template: TensorDict, device: torch.device) -> None:
    """Restores :func:`collector_to_state` output (this rank's rows of it)."""
    n = collector.num_envs
    total = int(saved["reset"].shape[0])

    def local(value: Any) -> Any:
        return parallel.local_rows(value, n) if total != n else value

    obs = saved["obs"]
    obs = TensorDict(obs, batch_size=[total]) if isinstance(obs, dict) else obs
    collector.obs = local(obs).to(device)
    saved_state = saved.get("state") or {}  # an empty state (mlp) may be dropped on save
    template.update(local(TensorDict(saved_state, batch_size=[total])).to(device))
    collector.state = template
    reset = local(saved["reset"])
    collector.reset_flags = reset.to(device, torch.bool)
    collector.ep_return[:] = local(saved["ep_return"]).numpy()
    collector.ep_length[:] = local(saved["ep_length"]).numpy()
    collector.stepper.reset_flags[:] = reset.cpu().numpy().astype(bool)
