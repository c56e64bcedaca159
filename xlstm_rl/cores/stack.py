"""xLSTM stack: input projection, residual mLSTM / sLSTM blocks by pattern, final norm."""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from .base import MemoryCore
from .config import CoreConfig
from .mlstm_block import MLSTMBlock
from .slstm_block import SLSTMBlock


class XLSTMCore(MemoryCore):
    """A stack of residual xLSTM blocks given by ``cfg.pattern`` (e.g. ``"mmsm"``).

    The ``mlstm`` and ``slstm`` cores are the one-block stacks ``"m"`` and ``"s"``. The state is
    a TensorDict with one sub-TensorDict per block, keyed ``block0``, ``block1``, ...
    """

    def __init__(self, input_size: int, cfg: CoreConfig) -> None:
        super().__init__()
        self.input_size, self.output_size, self.cfg = input_size, cfg.hidden_size, cfg
        self.proj = nn.Linear(input_size, cfg.hidden_size)
        make = {"m": MLSTMBlock, "s": SLSTMBlock}
        self.blocks = nn.ModuleList(make[c](cfg.hidden_size, cfg) for c in cfg.pattern)
        self.out_norm = nn.LayerNorm(cfg.hidden_size)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None
                      ) -> TensorDict:
        parts = {f"block{j}": b.initial_state(batch_size, device)
                 for j, b in enumerate(self._blocks())}
        return TensorDict(parts, batch_size=[batch_size], device=device)

    def _blocks(self) -> Sequence[MLSTMBlock | SLSTMBlock]:
        # The ModuleList itself (no copy); a type checker only sees nn.Module items in it.
        return cast("Sequence[MLSTMBlock | SLSTMBlock]", self.blocks)

    def forward(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None
                ) -> tuple[Tensor, TensorDict]:
        return self._run(x, state, reset, step=False)

    def step(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None
             ) -> tuple[Tensor, TensorDict]:
        return self._run(x, state, reset, step=True)

    def _run(self, x: Tensor, state: TensorDict | None, reset: Tensor | None, step: bool
             ) -> tuple[Tensor, TensorDict]:
        """Input projection, every block (``block.step`` or ``block.forward``), final norm."""
        self._check_input(x, reset, step=step)
        state = self._state_or_zero(state, x)
        y, new = self.proj(x), {}
        for j, block in enumerate(self._blocks()):
            run = block.step if step else block
            y, new[f"block{j}"] = run(y, state[f"block{j}"], reset)
        return self.out_norm(y), TensorDict(new, batch_size=state.batch_size)
