"""Running mean / variance observation normalization, kept on the CPU side in numpy.

Raw observations from a vector env are numpy arrays on the CPU; the statistics are updated
and applied there, before the tensor is made and moved to the network's device, so acting on
a GPU costs no device round trip per step.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class ObsNormalizer:
    """Normalizes ``Box`` observations ``[B, *shape]`` with running statistics.

    Statistics (float64 ``mean``, ``var`` and a scalar ``count``) are merged batch by batch
    with the parallel-variance formula (Chan, Golub and LeVeque 1979), as gymnasium's
    ``NormalizeObservation`` does. Normalized values are float32, clipped to ``[-clip, clip]``.

    Args:
        shape: Shape of one observation.
        clip: Clip range of normalized values.
        eps: Added to the variance.
    """

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8) -> None:
        self.clip, self.eps = float(clip), float(eps)
        self.shape = tuple(int(s) for s in shape)
        self.mean = np.zeros(self.shape, dtype=np.float64)
        self.var = np.ones(self.shape, dtype=np.float64)
        self.count = 1e-4

    def update(self, batch: Any) -> None:
        """Merges the statistics of ``batch [B, *shape]`` (numpy, or a CPU/GPU tensor)."""
        x = _to_numpy(batch).astype(np.float64, copy=False)
        b_mean, b_var, b_count = x.mean(0), x.var(0), x.shape[0]
        delta, total = b_mean - self.mean, self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta ** 2 * self.count * b_count / total
        self.var, self.count = m2 / total, total

    def normalize(self, batch: Any, update: bool = False) -> np.ndarray:
        """Normalized ``batch [B, *shape]`` as float32 numpy; merges its statistics first if
        ``update``."""
        x = _to_numpy(batch)
        if update:
            self.update(x)
        mean = self.mean.astype(np.float32)
        std = np.sqrt(self.var + self.eps).astype(np.float32)
        return np.clip((x.astype(np.float32) - mean) / std, -self.clip, self.clip)

    def __call__(self, obs: Any, update: bool = False) -> Any:
        """Normalizes a batch given as a tensor (returns a float32 tensor on its device, in its
        own memory: see :func:`~xlstm_rl.networks.encoders.owned_tensor`) or as numpy (returns
        numpy)."""
        import torch

        from xlstm_rl.networks.encoders import owned_tensor

        if isinstance(obs, torch.Tensor):
            return owned_tensor(self.normalize(obs, update), device=obs.device)
        return self.normalize(obs, update)

    def state_dict(self) -> dict[str, Any]:
        """``{"mean", "var", "count"}`` as float64 tensors (the checkpoint layout)."""
        import torch

        return {"mean": torch.from_numpy(self.mean.copy()),
                "var": torch.from_numpy(self.var.copy()),
                "count": torch.tensor(self.count, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output.

        Raises:
            ValueError: If the statistics do not have this normalizer's shape or are not finite.
        """
        arrays = {}
        for name in ("mean", "var", "count"):
            value = np.asarray(_to_numpy(state[name]))
            if not np.issubdtype(value.dtype, np.floating):
                raise ValueError(f"observation normalization statistic {name!r} is not a "
                                 f"floating-point array (dtype {value.dtype})")
            want = () if name == "count" else self.shape
            if value.shape != want and not (name == "count" and value.size == 1):
                raise ValueError(f"observation normalization statistic {name!r} has shape "
                                 f"{list(value.shape)}; the observation space needs "
                                 f"{list(want) if want else 'one value'}")
            if not np.isfinite(value).all() or (name != "mean" and (value < 0).any()):
                raise ValueError(f"observation normalization statistic {name!r} holds NaN, "
                                 "infinite or negative values")
            arrays[name] = value.astype(np.float64)
        mean, var, count = arrays["mean"], arrays["var"], float(arrays["count"].reshape(()))
        self.mean, self.var, self.count = mean, var, count


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
