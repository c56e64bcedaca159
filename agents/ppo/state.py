"""PPO's collector state <-> nested dicts of tensors (the conversions every algorithm shares
are in :mod:`xlstm_rl.train_state`)."""
from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict


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
