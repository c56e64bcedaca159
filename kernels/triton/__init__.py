"""Triton kernels (``@triton.jit`` code only) for mLSTM and sLSTM.

Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (arXiv:2405.04517). The math is the
one of ``xlstm_rl.kernels.reference``; launch logic, padding and autograd live in
``xlstm_rl.kernels.triton_ops``. Modules here import ``triton`` at import time, so import them
only lazily (``xlstm_rl.kernels`` itself never does).

Modules:
    mlstm_common: decay-matrix / stabilizer helpers shared by forward and backward.
    mlstm_chunk_fwd: chunk-state recurrence and intra-chunk outputs.
    mlstm_chunk_bwd: reverse chunk-state-gradient recurrence and intra-chunk gradients.
    mlstm_step: fused single mLSTM step.
    slstm_step: fused single sLSTM step (block-diagonal recurrent matmul + pointwise update).
"""
