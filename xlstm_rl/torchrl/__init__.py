"""TorchRL integration: :class:`XLSTMModule`, every memory core as a TorchRL recurrent module.

This is the only part of xlstm-rl that imports ``torchrl``; ``import xlstm_rl`` and the CLI
never load it. Swap TorchRL's ``LSTMModule`` for an mLSTM in one line::

    from torchrl.modules import LSTMModule
    core = LSTMModule(input_size=n_obs, hidden_size=64, in_key="embed", out_key="features")
    # becomes
    from xlstm_rl.torchrl import XLSTMModule
    core = XLSTMModule("mlstm", input_size=n_obs, hidden_size=64, in_key="embed",
                       out_key="features")
"""
from __future__ import annotations

from xlstm_rl.torchrl.module import XLSTMModule

__all__ = ["XLSTMModule"]
