"""Shared launch configuration and input checks for the Triton ops."""
from __future__ import annotations

import os

import torch
import triton.language as tl
from torch import Tensor

CHUNK_SIZES = (16, 32, 64, 128)
MAX_HEAD_DIM = 256
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Precision of float32 tl.dot on GPUs: "tf32x3" is float32-accurate (~1e-6) on tensor cores;
# override with XLSTM_RL_FP32_DOT=ieee (exact FMA, slower) or tf32 (fast, ~1e-3).
FP32_DOT_ENV = "XLSTM_RL_FP32_DOT"


def next_pow2(x: int) -> int:
    """Smallest power of two ``>= x`` (``x >= 1``)."""
    return 1 << (int(x) - 1).bit_length()


def padded_dim(d: int) -> int:
    """Block width a head dim ``d`` is padded to inside the kernels (power of two, >= 16)."""
    return max(16, next_pow2(d))


def check_dtype(x: Tensor, what: str) -> None:
    """Raise ValueError unless ``x`` is float32, bfloat16 or float16."""
    if x.dtype not in INPUT_DTYPES:
        raise ValueError(f"the Triton backend takes float32, bfloat16 or float16 {what}; got "
                         f"{x.dtype} (use backend='reference' for float64)")


def check_head_dim(d: int, what: str) -> None:
    """Raise ValueError for head dims the kernels do not handle (padded to a power of two)."""
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"{what} = {d} is not supported by the Triton backend: head dims must be "
                         f"1..{MAX_HEAD_DIM} (16, 32, 64, 128 and 256 run unpadded; other "
                         "sizes are zero-padded to the next of those)")


def check_chunk_size(chunk_size: int) -> None:
    """Raise ValueError unless ``chunk_size`` is one the kernels are built for."""
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_size={chunk_size} is not supported by the Triton backend; "
                         f"choose one of {', '.join(map(str, CHUNK_SIZES))}")


def dot_config(dtype: torch.dtype, device: torch.device) -> tuple:
    """``(DT, PA, PS)``: dtype of activation-by-activation dots, their precision, and the
    precision of dots against the float32 state (``tl.dot`` ``input_precision`` strings).

    float32 inputs: every dot in float32 (``ieee`` in the interpreter, ``tf32x3`` on GPUs unless
    ``XLSTM_RL_FP32_DOT`` says otherwise). bfloat16 / float16: activation dots in that dtype
    (tensor cores, float32 accumulation), state dots in float32 with tf32. Interpreter (CPU
    tensors): all float32.
    """
    if device.type != "cuda":
        # The interpreter's tl.dot multiplies bfloat16 bit patterns as integers (triton 3.8):
        # run every dot in float32 there.
        return tl.float32, "ieee", "ieee"
    if dtype == torch.float32:
        fp32 = os.environ.get(FP32_DOT_ENV, "tf32x3")
        return tl.float32, fp32, fp32
    return (tl.bfloat16 if dtype == torch.bfloat16 else tl.float16), "tf32", "tf32"


def reset_int8(reset: Tensor | None, shape: tuple[int, ...], device: torch.device
               ) -> Tensor | None:
    """``reset`` as a contiguous int8 tensor on ``device`` (None stays None)."""
    if reset is None:
        return None
    if tuple(reset.shape) != tuple(shape):
        raise ValueError(f"reset must be {tuple(shape)}; got {tuple(reset.shape)}")
    return reset.to(device=device, dtype=torch.bool).to(torch.int8).contiguous()
