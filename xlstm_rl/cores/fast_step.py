"""Helpers of the cores' no-grad ``step`` (the acting path): state access and cached weights.

Acting runs one small step per env step, so its cost is the number of torch calls, not their
arithmetic. The fast path reads the TensorDict state's leaves directly, builds the new state with
``TensorDict._new_unsafe`` (no per-key validation: the core made every leaf itself) and keeps
weights re-laid-out for the step (e.g. block-diagonal maps as one broadcast product), rebuilt
whenever a parameter changes (its ``_version`` moves on every in-place update, as by an
optimizer, and its ``data_ptr`` when the module is moved).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from xlstm_rl.kernels import resolve_backend

_FAST_DTYPES = (torch.float32, torch.float64)


def fast_step_ok(x: Tensor, backend: str) -> bool:
    """True when ``step`` may take the no-grad path for input ``x [B, D]``.

    That is: autograd is off (``torch.no_grad`` / ``torch.inference_mode``), the kernels resolve
    to the PyTorch reference (the Triton step stays as it is) and ``x`` is float32 / float64.
    """
    return (not torch.is_grad_enabled() and x.dtype in _FAST_DTYPES
            and resolve_backend(backend, x.device) == "reference")


def leaves(state: TensorDict, keys: Sequence[str]) -> list[Tensor]:
    """The tensors of ``state`` under ``keys`` (one level), without TensorDict overhead."""
    if type(state) is TensorDict:
        store = state._tensordict
        return [store[key] for key in keys]
    return [state.get(key) for key in keys]


def sub_state(state: TensorDict, key: str) -> TensorDict:
    """The sub-TensorDict ``state[key]``."""
    if type(state) is TensorDict:
        return state._tensordict[key]
    return state.get(key)


def new_state(parts: dict[str, Tensor | TensorDict], batch_size: torch.Size) -> TensorDict:
    """A TensorDict of ``parts`` (already the right shapes, made by the core)."""
    return TensorDict._new_unsafe(parts, batch_size=batch_size)


def children(module: nn.Module) -> dict[str, Any]:
    """``module``'s submodules by name, read from its table: ``Module.__getattr__`` costs
    about a microsecond per lookup, which adds up on the acting path."""
    return module._modules


def params(module: nn.Module) -> dict[str, Any]:
    """``module``'s own parameters by name, read from its table (see :func:`children`)."""
    return module._parameters


def weight_bias(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(module.weight, module.bias)`` from its parameter table."""
    table = params(module)
    return table["weight"], table.get("bias")


def clear(tensors: Sequence[Tensor], reset: Tensor) -> list[Tensor]:
    """Zero the rows of ``tensors`` (batch first) where ``reset [B]`` is True (``torch.where``,
    so a NaN in a discarded row cannot leak)."""
    out = []
    for t in tensors:
        mask = reset.view(-1, *([1] * (t.dim() - 1)))
        out.append(torch.where(mask, torch.zeros((), dtype=t.dtype, device=t.device), t))
    return out


def cached(module: nn.Module, params: Sequence[Tensor], build: Callable[[], dict[str, Tensor]]
           ) -> dict[str, Tensor]:
    """``build()``'s tensors, rebuilt only when one of ``params`` changed since the last call.

    The cache lives on ``module`` as a plain attribute (not a buffer: nothing of it reaches a
    ``state_dict``).
    """
    key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
    entry = module.__dict__.get("_fast_cache")
    if entry is None or entry[0] != key:
        with torch.no_grad():
            entry = (key, build())
        module.__dict__["_fast_cache"] = entry
    return entry[1]
