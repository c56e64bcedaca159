"""Memory cores: ``make_core(name, input_size, **cfg)`` and the classes behind it.

Every core maps ``x [B, T, D]`` to ``y [B, T, core.output_size]`` with a TensorDict state
(batch ``[B]``); ``forward`` trains on sequences, ``step`` acts one step at a time.
"""
from __future__ import annotations

import difflib
from dataclasses import replace

from .base import MemoryCore, clear_rows
from .baselines import GRUCore, LSTMCore, MLPCore
from .config import CORE_NAMES, CoreConfig
from .mlstm_block import MLSTMBlock
from .slstm_block import SLSTMBlock
from .stack import XLSTMCore

__all__ = ["CORE_NAMES", "CoreConfig", "GRUCore", "LSTMCore", "MLPCore", "MLSTMBlock",
           "MemoryCore", "SLSTMBlock", "XLSTMCore", "clear_rows", "make_core"]


def make_core(name: str, input_size: int, **cfg) -> MemoryCore:
    """Build a memory core.

    Args:
        name: one of ``mlstm, slstm, xlstm, lstm, gru, mlp``.
        input_size: feature size ``D`` of the inputs.
        **cfg: fields of :class:`CoreConfig` (e.g. ``hidden_size=128, pattern="mmsm"``).

    Raises:
        ValueError: unknown core name or config field (one line, with close matches).
    """
    if name not in CORE_NAMES:
        raise ValueError(f"unknown core {name!r}; expected one of {', '.join(CORE_NAMES)}")
    unknown = sorted(set(cfg) - set(CoreConfig.field_names()))
    if unknown:
        hint = difflib.get_close_matches(unknown[0], CoreConfig.field_names(), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"unknown core option {unknown[0]!r}{extra} (valid: "
                         f"{', '.join(CoreConfig.field_names())})")
    config = CoreConfig(**cfg)
    if name in ("mlstm", "slstm"):
        config = replace(config, pattern=name[0])
    if name in ("mlstm", "slstm", "xlstm"):
        return XLSTMCore(input_size, config)
    return {"lstm": LSTMCore, "gru": GRUCore, "mlp": MLPCore}[name](input_size, config)
