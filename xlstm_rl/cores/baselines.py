"""Baseline cores behind the same interface: fused torch LSTM / GRU, and a memoryless MLP."""
from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from .base import MemoryCore, clear_rows
from .config import CoreConfig


def _segment_bounds(reset: Tensor | None, T: int) -> list[int]:
    """Times at which any row resets (plus 0 and T): the fused RNN runs between them."""
    if reset is None:
        return [0, T]
    times = reset.any(dim=0).nonzero().flatten().tolist()
    return sorted({0, T, *times})


class _TorchRNNCore(MemoryCore):
    """Shared logic of the LSTM and GRU cores (single layer, cuDNN/MKL-fused sequences).

    A reset inside the sequence splits it at that time: the rows that reset get their state
    cleared and the fused RNN runs to the next reset time.
    """

    keys: tuple[str, ...]

    def __init__(self, input_size: int, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.input_size, self.output_size, self.rnn = input_size, rnn.hidden_size, rnn
        gates = 4 if isinstance(rnn, nn.LSTM) else 3
        for name, p in rnn.named_parameters():
            if "weight_hh" in name:
                for block in p.data.chunk(gates):
                    nn.init.orthogonal_(block)
            elif "bias" in name:
                nn.init.zeros_(p)
        if isinstance(rnn, nn.LSTM):  # forget-gate bias 1 (Jozefowicz et al. 2015)
            bias_hh = rnn.get_parameter("bias_hh_l0")  # typed, unlike the attribute
            nn.init.ones_(bias_hh.data[rnn.hidden_size:2 * rnn.hidden_size])

    def initial_state(self, batch_size: int, device: torch.device | str | None = None
                      ) -> TensorDict:
        zeros = {key: torch.zeros(batch_size, self.output_size, device=device) for key in self.keys}
        return TensorDict(zeros, batch_size=[batch_size], device=device)

    def _pack(self, state: TensorDict):
        parts = tuple(state[key][None].contiguous() for key in self.keys)
        return parts if len(parts) == 2 else parts[0]

    def _unpack(self, hx, batch_size) -> TensorDict:
        parts = hx if isinstance(hx, tuple) else (hx,)
        return TensorDict({key: p[0] for key, p in zip(self.keys, parts)}, batch_size=batch_size)

    def forward(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None
                ) -> tuple[Tensor, TensorDict]:
        reset = self._check_input(x, reset, step=False)
        state = self._state_or_zero(state, x)
        bounds, ys = _segment_bounds(reset, x.shape[1]), []
        for t0, t1 in zip(bounds[:-1], bounds[1:]):
            if reset is not None:
                state = clear_rows(state, reset[:, t0])
            y, hx = self.rnn(x[:, t0:t1], self._pack(state))
            state = self._unpack(hx, state.batch_size)
            ys.append(y)
        return torch.cat(ys, dim=1), state

    def step(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None,
             *, overwrite_state: bool = False) -> tuple[Tensor, TensorDict]:
        reset = self._check_input(x, reset, step=True)
        state = clear_rows(self._state_or_zero(state, x), reset)
        y, hx = self.rnn(x[:, None], self._pack(state))
        return y[:, 0], self._unpack(hx, state.batch_size)


class LSTMCore(_TorchRNNCore):
    """``torch.nn.LSTM`` core; state ``h, c`` ``[B, hidden]``."""

    keys = ("h", "c")

    def __init__(self, input_size: int, cfg: CoreConfig) -> None:
        super().__init__(input_size, nn.LSTM(input_size, cfg.hidden_size, batch_first=True))


class GRUCore(_TorchRNNCore):
    """``torch.nn.GRU`` core; state ``h`` ``[B, hidden]``."""

    keys = ("h",)

    def __init__(self, input_size: int, cfg: CoreConfig) -> None:
        super().__init__(input_size, nn.GRU(input_size, cfg.hidden_size, batch_first=True))


class MLPCore(MemoryCore):
    """No memory: a two-layer MLP per step. Its state is an empty TensorDict."""

    def __init__(self, input_size: int, cfg: CoreConfig) -> None:
        super().__init__()
        self.input_size, self.output_size = input_size, cfg.hidden_size
        self.net = nn.Sequential(nn.Linear(input_size, cfg.hidden_size), nn.Tanh(),
                                 nn.Linear(cfg.hidden_size, cfg.hidden_size), nn.Tanh())

    def initial_state(self, batch_size: int, device: torch.device | str | None = None
                      ) -> TensorDict:
        return TensorDict({}, batch_size=[batch_size], device=device)

    def forward(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None
                ) -> tuple[Tensor, TensorDict]:
        reset = self._check_input(x, reset, step=False)
        return self.net(x), self._state_or_zero(state, x)

    def step(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None,
             *, overwrite_state: bool = False) -> tuple[Tensor, TensorDict]:
        reset = self._check_input(x, reset, step=True)
        return self.net(x), self._state_or_zero(state, x)
