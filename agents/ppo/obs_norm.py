"""Running mean / variance observation normalization with tensor statistics."""
from __future__ import annotations

import torch
from torch import Tensor


class ObsNormalizer:
    """Normalizes ``Box`` observations ``[B, *shape]`` with running statistics.

    Statistics (float64 tensors ``mean``, ``var`` and a scalar ``count``) are merged batch by
    batch with the parallel-variance formula (Chan et al.), as gymnasium's
    ``NormalizeObservation`` does, and saved by :meth:`state_dict`.

    Args:
        shape: shape of one observation.
        clip: normalized values are clipped to ``[-clip, clip]``.
        eps: added to the variance.
    """

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8) -> None:
        self.clip, self.eps = float(clip), float(eps)
        self.mean = torch.zeros(shape, dtype=torch.float64)
        self.var = torch.ones(shape, dtype=torch.float64)
        self.count = torch.tensor(1e-4, dtype=torch.float64)

    def update(self, batch: Tensor) -> None:
        """Merges the statistics of ``batch [B, *shape]``."""
        x = batch.detach().to("cpu", torch.float64)
        b_mean, b_var, b_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = b_mean - self.mean, self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta.pow(2) * self.count * b_count / total
        self.var, self.count = m2 / total, total

    def __call__(self, obs: Tensor, update: bool = False) -> Tensor:
        """Normalized ``obs [B, *shape]`` (float32, on ``obs``'s device); updates first if asked."""
        if update:
            self.update(obs)
        mean = self.mean.to(obs.device, torch.float32)
        std = (self.var + self.eps).sqrt().to(obs.device, torch.float32)
        return ((obs.float() - mean) / std).clamp(-self.clip, self.clip)

    def state_dict(self) -> dict[str, Tensor]:
        """``{"mean", "var", "count"}`` tensors."""
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restores the statistics."""
        self.mean = state["mean"].to(torch.float64).clone()
        self.var = state["var"].to(torch.float64).clone()
        self.count = state["count"].to(torch.float64).reshape(()).clone()
