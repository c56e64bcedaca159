"""Memory cores: ``make_core(name, input_size, config)`` and the classes behind it.

Every core maps ``x [B, T, D]`` to ``y [B, T, core.output_size]`` with a TensorDict state
(batch ``[B]``); ``forward`` trains on sequences, ``step`` acts one step at a time.

Importing this package loads only :class:`CoreConfig` (no torch); the cores load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from .config import CORE_NAMES, CoreConfig

__all__ = ["CORE_NAMES", "CoreConfig", "GRUCore", "LSTMCore", "MLPCore", "MLSTMBlock",
           "MemoryCore", "SLSTMBlock", "XLSTMCore", "clear_rows", "make_core"]

_LAZY = {"MemoryCore": "base", "clear_rows": "base", "GRUCore": "baselines",
         "LSTMCore": "baselines", "MLPCore": "baselines", "MLSTMBlock": "mlstm_block",
         "SLSTMBlock": "slstm_block", "XLSTMCore": "stack", "make_core": "factory"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
