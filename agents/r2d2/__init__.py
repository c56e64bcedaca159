"""R2D2: recurrent replay with stored states and burn-in (Kapturowski et al., ICLR 2019).

Example::

    from xlstm_rl.config import load_config
    from xlstm_rl.agents.r2d2 import build_trainer

    config, _ = load_config("r2d2-mlstm-tmaze")
    trainer = build_trainer(config)
    while trainer.global_step < 60_000:
        metrics = trainer.train_iteration()
    print(trainer.evaluate(100))          # {"mean_return": ..., "success_rate": ...}

Modules (Acme's split): ``config`` (R2D2Config, no torch), ``networks`` (dueling Q network on
the shared torso), ``sequences`` (cutting env streams into stored-state sequences), ``actor``
(Ape-X epsilon-greedy acting), ``replay`` (torchrl prioritized replay; the only module that
imports torchrl), ``learning`` (value rescaling, n-step double-Q, the learner, the staleness
diagnostic), ``trainer``, ``policy`` (the greedy acting policy of a checkpoint), ``bench``.

Importing this package imports only the config; the rest (and torch) load on first use.
"""
from __future__ import annotations

from typing import Any

from .config import R2D2Config

__all__ = ["R2D2Config", "R2D2Trainer", "build_trainer"]


def __getattr__(name: str) -> Any:
    if name in ("R2D2Trainer", "build_trainer"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
