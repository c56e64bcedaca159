"""``make_core``: a memory core by name, from a :class:`CoreConfig` or its fields."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from xlstm_rl.suggest import did_you_mean

from .base import MemoryCore
from .baselines import GRUCore, LSTMCore, MLPCore
from .config import CORE_NAMES, CoreConfig
from .stack import XLSTMCore


def make_core(name: str, input_size: int, config: CoreConfig | None = None,
              **fields: Any) -> MemoryCore:
    """Builds a memory core.

    Args:
        name: One of ``mlstm, slstm, xlstm, lstm, gru, mlp``.
        input_size: Feature size ``D`` of the inputs ``[B, T, D]``.
        config: A :class:`CoreConfig` (any subclass, e.g. a model config, works: only the
            core's fields are read). Default: ``CoreConfig()``.
        **fields: :class:`CoreConfig` fields overriding ``config`` (``hidden_size=128``).

    Returns:
        The core (``mlstm`` / ``slstm`` are one-block xLSTM stacks of that block type).

    Raises:
        ValueError: Unknown core name or config field (one line, with close matches).
    """
    if name not in CORE_NAMES:
        raise ValueError(f"unknown core {name!r}{did_you_mean(name, CORE_NAMES)}; expected one "
                         f"of {', '.join(CORE_NAMES)}")
    names = CoreConfig.field_names()
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise ValueError(f"unknown core option {unknown[0]!r}{did_you_mean(unknown[0], names)} "
                         f"(valid: {', '.join(names)})")
    base = {} if config is None else {n: getattr(config, n) for n in names}
    core_config = CoreConfig(**{**base, **fields})
    if name in ("mlstm", "slstm"):
        core_config = replace(core_config, pattern=name[0])
    if name in ("mlstm", "slstm", "xlstm"):
        return XLSTMCore(input_size, core_config)
    return {"lstm": LSTMCore, "gru": GRUCore, "mlp": MLPCore}[name](input_size, core_config)
