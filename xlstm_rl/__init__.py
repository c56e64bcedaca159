"""xlstm-rl: reinforcement learning with xLSTM memory (Beck et al. 2024, arXiv:2405.04517)."""
from xlstm_rl.version import __version__

__all__ = ["__version__"]
