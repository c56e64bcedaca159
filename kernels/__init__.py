"""mLSTM / sLSTM kernels: pure-PyTorch reference and Triton, behind one dispatch.

This folder installs as ``xlstm_rl.kernels``; it is never a top-level package of its own.
"""
if __name__ != "xlstm_rl.kernels":  # e.g. `import kernels` from the repository root
    raise ImportError(f"'{__name__}' is not importable on its own: this folder is the package "
                      "xlstm_rl.kernels; install xlstm-rl and import xlstm_rl.kernels")

from .dispatch import (BACKENDS, mlstm_chunkwise, mlstm_recurrent, mlstm_step,  # noqa: E402
                       resolve_backend, slstm_sequence, slstm_step, triton_available)
from .reference import (MLSTMState, SLSTMState, mlstm_parallel, mlstm_zero_state,  # noqa: E402
                        slstm_zero_state)

__all__ = ["BACKENDS", "MLSTMState", "SLSTMState", "mlstm_chunkwise", "mlstm_parallel",
           "mlstm_recurrent", "mlstm_step", "mlstm_zero_state", "resolve_backend",
           "slstm_sequence", "slstm_step", "slstm_zero_state", "triton_available"]
