"""Compiled CPU kernels (plain C through ctypes) for the acting path; optional, see
:mod:`.build`."""
from .build import (cache_dir, disabled, enabled, forget, load_library, uses_openmp,
                    why_unavailable)
from .mlstm_block import mlstm_block_step
from .mlstm_block_train import mlstm_block_forward, mlstm_block_pre
from .mlstm_cell import available, mlstm_cell_step
from .mlstm_sequence import mlstm_sequence_cpu
from . import operators  # noqa: E402,F401  (registers the xlstm_rl:: operators)

__all__ = ["available", "cache_dir", "disabled", "enabled", "forget", "load_library",
           "mlstm_block_forward", "mlstm_block_pre", "mlstm_block_step", "mlstm_cell_step",
           "mlstm_sequence_cpu", "uses_openmp", "why_unavailable"]
