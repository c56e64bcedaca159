"""Configuration of a memory core."""
from __future__ import annotations

from dataclasses import dataclass, fields

CORE_NAMES = ("mlstm", "slstm", "xlstm", "lstm", "gru", "mlp")


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
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if self.num_heads < 1 or self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size "
                             f"({self.hidden_size})")
        if not self.pattern or set(self.pattern) - {"m", "s"}:
            raise ValueError(f"pattern must be a non-empty string of 'm' and 's', "
                             f"got {self.pattern!r}")
        if self.conv_kernel < 1 or self.chunk_size < 1:
            raise ValueError("conv_kernel and chunk_size must be >= 1")
        if len(tuple(self.forget_bias_range)) != 2:
            raise ValueError(f"forget_bias_range must be (low, high), got {self.forget_bias_range!r}")
        if self.qkv_block_size < 0:
            raise ValueError(f"qkv_block_size must be >= 0, got {self.qkv_block_size}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all configurable fields."""
        return tuple(f.name for f in fields(cls))
