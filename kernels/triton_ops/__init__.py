"""Triton implementations of the functional kernel API (loaded lazily by ``dispatch``).

Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (arXiv:2405.04517). Importing this
package imports ``triton``; ``xlstm_rl.kernels`` only does so when a Triton kernel is run. CPU
tensors work under ``TRITON_INTERPRET=1`` (set before the first import of these modules).

Functions (same contracts as the reference, see ``xlstm_rl.kernels.dispatch``):
    mlstm_chunkwise(q, k, v, i, f, *, state, reset, chunk_size, eps) -> (h, (C, n, m))
    mlstm_step(q, k, v, i, f, state, *, reset, eps, inplace=False) -> (h, (C, n, m))
    slstm_sequence(wx, r_weight, bias, *, state, reset) -> (h [B,S,H,Dh], (h, c, n, m))
    slstm_step(wx, r_weight, bias, state, *, reset) -> (h [B,H,Dh], (h, c, n, m))
"""
from .chunkwise import mlstm_chunkwise
from .steps import mlstm_step, slstm_sequence, slstm_step

__all__ = ["mlstm_chunkwise", "mlstm_step", "slstm_sequence", "slstm_step"]
