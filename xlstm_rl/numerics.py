"""Non-finite guards for training: find where a NaN / inf first appeared and say so in one line."""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from xlstm_rl.errors import TrainingFault

__all__ = ["check_finite_losses", "check_finite_parameters", "first_nonfinite"]


def first_nonfinite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding a NaN or inf (None if all are finite)."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def check_finite_losses(losses: Mapping[str, torch.Tensor | float], where: str) -> None:
    """Raises :class:`TrainingFault` naming the first non-finite loss term.

    Args:
        losses: Loss terms by name (scalars).
        where: Where in training this is, e.g. ``"iteration 3, epoch 1, minibatch 2"``.
    """
    for name, value in losses.items():
        number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(number):
            raise TrainingFault(f"training stopped: {name} is {number} at {where}; the inputs "
                                "were finite, so the update diverged (lower the learning rate "
                                "or check the reward scale)")


def check_finite_parameters(module: nn.Module, where: str, gradients: bool = False) -> None:
    """Raises :class:`TrainingFault` naming the first non-finite parameter (or gradient)."""
    tensors = {name: (p.grad if gradients else p.detach())
               for name, p in module.named_parameters()}
    bad = first_nonfinite({k: v for k, v in tensors.items() if v is not None})
    if bad is not None:
        what = "the gradient of" if gradients else "parameter"
        raise TrainingFault(f"training stopped: {what} {bad!r} is not finite at {where}; "
                            "no checkpoint was written with it")
