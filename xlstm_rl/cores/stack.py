"""xLSTM stack: input projection, residual mLSTM / sLSTM blocks by pattern, final norm."""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

from xlstm_rl.kernels.reference.mlstm_step_fast import any_reset

from . import mlstm_block, slstm_block
from .base import MemoryCore
from .config import CoreConfig
from .fast_step import children, fast_step_ok, leaves, new_state, sub_state, weight_bias
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
        self._state_keys = [(f"block{j}", (mlstm_block if c == "m" else slstm_block).STATE_KEYS)
                            for j, c in enumerate(cfg.pattern)]

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

    def advance(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None
                ) -> TensorDict:
        """``forward``'s new state: every block but the last as in ``forward``, the last by its
        ``advance`` (an mLSTM block then skips its read-out and output path), no final norm."""
        reset = self._check_input(x, reset, step=False)
        state = self._state_or_zero(state, x)
        y, new, blocks = self.proj(x), {}, self._blocks()
        for j, block in enumerate(blocks):
            if j == len(blocks) - 1:
                new[f"block{j}"] = block.advance(y, state[f"block{j}"], reset)
            else:
                y, new[f"block{j}"] = block(y, state[f"block{j}"], reset)
        return TensorDict(new, batch_size=state.batch_size)

    def step(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None,
             *, overwrite_state: bool = False) -> tuple[Tensor, TensorDict]:
        if fast_step_ok(x, self.cfg.backend):
            return self._step_nograd(x, state, reset, overwrite_state)
        return self._run(x, state, reset, step=True)

    def step_reference(self, x: Tensor, state: TensorDict | None = None,
                       reset: Tensor | None = None) -> tuple[Tensor, TensorDict]:
        """``step`` by the blocks' autograd-capable steps, even without autograd (the map the
        no-grad path is tested against; benchmarks time it side by side)."""
        return self._run(x, state, reset, step=True)

    def _step_nograd(self, x: Tensor, state: TensorDict | None, reset: Tensor | None,
                     overwrite: bool = False) -> tuple[Tensor, TensorDict]:
        """``step`` without autograd: the blocks' ``step_nograd`` on the state's leaves
        (``overwrite``: they may write the new state into them)."""
        reset = self._check_input(x, reset, step=True)
        state = self._state_or_zero(state, x)
        r = None
        if reset is not None and any_reset(reset):
            r = reset.to(device=x.device, dtype=torch.bool)
        mods = children(self)  # the hot acting path: module tables, not Module.__getattr__
        y, parts, bs = F.linear(x, *weight_bias(mods["proj"])), {}, state.batch_size
        for block, (name, keys) in zip(self._blocks(), self._state_keys):
            y, new = block.step_nograd(y, leaves(sub_state(state, name), keys), r, overwrite)
            parts[name] = new_state(dict(zip(keys, new)), bs)
        norm = mods["out_norm"]
        return F.layer_norm(y, norm.normalized_shape, *weight_bias(norm), norm.eps), \
            new_state(parts, bs)

    def _run(self, x: Tensor, state: TensorDict | None, reset: Tensor | None, step: bool
             ) -> tuple[Tensor, TensorDict]:
        """Input projection, every block (``block.step`` or ``block.forward``), final norm."""
        reset = self._check_input(x, reset, step=step)
        state = self._state_or_zero(state, x)
        y, new = self.proj(x), {}
        for j, block in enumerate(self._blocks()):
            run = block.step if step else block
            y, new[f"block{j}"] = run(y, state[f"block{j}"], reset)
        return self.out_norm(y), TensorDict(new, batch_size=state.batch_size)
