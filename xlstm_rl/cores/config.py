"""Configuration of a memory core."""
from __future__ import annotations

from dataclasses import dataclass, fields

from xlstm_rl.typed import MAX_SIZE, check_range

CORE_NAMES = ("mlstm", "slstm", "xlstm", "lstm", "gru", "mlp")
BACKEND_NAMES = ("auto", "reference", "triton")
MAX_BLOCKS = 64
"""Most blocks an xLSTM pattern may stack."""
MAX_FACTOR = 16.0
"""Largest up-projection / feed-forward width factor."""


@dataclass(frozen=True)
class CoreConfig:
    """Hyper-parameters of a memory core (unused fields are ignored by cores that lack them)."""

    hidden_size: int = 128
    """Width of the core's residual stream and of its output ``y[..., hidden_size]``."""
    num_heads: int = 4
    """Heads of the mLSTM / sLSTM cells (the width must divide evenly)."""
    pattern: str = "m"
    """Block pattern of the xLSTM stack, one letter per block: ``m`` mLSTM, ``s`` sLSTM."""
    proj_factor: float = 2.0
    """Up-projection factor of the mLSTM block (inner width = proj_factor * hidden_size)."""
    qkv_block_size: int = 4
    """Block size of the block-diagonal q, k, v projections of the mLSTM block (the paper's
    headwise projections; must divide the inner width). 0 means dense projections."""
    conv_kernel: int = 4
    """Length of the causal depthwise convolution that feeds the mLSTM queries and keys."""
    ffn_factor: float = 4.0 / 3.0
    """Width factor of the gated MLP inside the sLSTM block."""
    chunk_size: int = 64
    """Chunk length of the chunkwise-parallel mLSTM used in ``forward``."""
    forget_bias_range: tuple[float, float] = (3.0, 6.0)
    """Forget-gate biases ``(low, high)`` are spread linearly over this range: memory starts
    long."""
    backend: str = "auto"
    """Kernel backend: ``auto`` (Triton on CUDA, reference otherwise), ``reference``, ``triton``."""

    def __post_init__(self) -> None:
        check_range("hidden_size", self.hidden_size, 1, MAX_SIZE, integer=True)
        check_range("num_heads", self.num_heads, 1, self.hidden_size, integer=True)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size "
                             f"({self.hidden_size})")
        if (not isinstance(self.pattern, str) or not self.pattern
                or set(self.pattern) - {"m", "s"} or len(self.pattern) > MAX_BLOCKS):
            raise ValueError(f"pattern must be a non-empty string of 'm' and 's' (at most "
                             f"{MAX_BLOCKS} blocks), got {str(self.pattern)[:80]!r}")
        for name in ("proj_factor", "ffn_factor"):
            check_range(name, getattr(self, name), 0, MAX_FACTOR, low_open=True)
        check_range("conv_kernel", self.conv_kernel, 1, 1024, integer=True)
        check_range("chunk_size", self.chunk_size, 1, MAX_SIZE, integer=True)
        check_range("qkv_block_size", self.qkv_block_size, 0, MAX_SIZE, integer=True)
        if len(tuple(self.forget_bias_range)) != 2:
            raise ValueError("forget_bias_range must be (low, high), "
                             f"got {self.forget_bias_range!r}")
        for value in self.forget_bias_range:
            check_range("forget_bias_range values", value, -1000, 1000)
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}, "
                             f"got {str(self.backend)[:80]!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all configurable fields."""
        return tuple(f.name for f in fields(cls))
