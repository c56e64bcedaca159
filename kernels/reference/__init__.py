"""Pure-PyTorch reference kernels: they define the math every fast path must reproduce."""
from .mlstm_chunkwise import mlstm_chunkwise_reference
from .mlstm_chunkwise_fused import mlstm_chunkwise_fused
from .mlstm_final_state import mlstm_final_state
from .mlstm_parallel import mlstm_parallel
from .mlstm_recurrent import (MLSTMState, mlstm_recurrent, mlstm_step_reference,
                              mlstm_zero_state, state_dtype)
from .slstm import (SLSTMState, slstm_sequence_reference, slstm_step_reference,
                    slstm_zero_state)
from .slstm_fused import slstm_sequence_fused

__all__ = ["MLSTMState", "SLSTMState", "mlstm_chunkwise_fused", "mlstm_chunkwise_reference",
           "mlstm_final_state", "mlstm_parallel", "mlstm_recurrent", "mlstm_step_reference",
           "mlstm_zero_state", "slstm_sequence_fused", "slstm_sequence_reference",
           "slstm_step_reference", "slstm_zero_state", "state_dtype"]
