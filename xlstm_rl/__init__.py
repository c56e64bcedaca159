"""xlstm-rl: reinforcement learning with xLSTM memory (Beck et al. 2024, arXiv:2405.04517).

``import xlstm_rl`` stays light: :func:`load_policy` imports torch and the networks only when
it is first used, and the task ids (``xlstm_rl/TMaze-v0``, ...) are registered with gymnasium
without importing it: at once if it is imported already, else as soon as it is (see
:mod:`xlstm_rl.env_ids`).
"""
from __future__ import annotations

from typing import Any

from xlstm_rl.env_ids import register_on_gymnasium_import
from xlstm_rl.version import __version__

__all__ = ["__version__", "load_policy"]

register_on_gymnasium_import()


def __getattr__(name: str) -> Any:
    if name == "load_policy":
        from xlstm_rl.policy import load_policy

        return load_policy
    raise AttributeError(f"module 'xlstm_rl' has no attribute {name!r}")
