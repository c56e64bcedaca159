"""The interface every memory core implements, and TensorDict state helpers."""
from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor, nn


def clear_rows(state: TensorDict, reset: Tensor | None) -> TensorDict:
    """Re-initialize (zero) the batch rows of ``state`` where ``reset[B]`` is True.

    Uses ``torch.where``, so NaN or inf in a discarded row cannot leak into the result.
    """
    if reset is None:
        return state
    r = reset.to(device=state.device, dtype=torch.bool) if state.device else reset.bool()

    def _clear(t: Tensor) -> Tensor:
        mask = r.view(-1, *([1] * (t.dim() - 1)))
        return torch.where(mask, torch.zeros((), dtype=t.dtype, device=t.device), t)

    return state.apply(_clear)


class MemoryCore(nn.Module):
    """A recurrent core: ``y, state = core(x[B, T, D], state, reset[B, T])``.

    ``forward`` (training, whole sequences) and ``step`` (acting, one step) are the same map:
    ``forward`` over T steps equals T calls of ``step``, resets included. ``reset[b, t]`` True
    re-initializes row ``b``'s state to :meth:`initial_state` before step ``t`` is processed.

    Attributes:
        input_size: feature size ``D`` of the inputs.
        output_size: feature size of the outputs ``y``.
    """

    input_size: int
    output_size: int

    def initial_state(self, batch_size: int, device: torch.device | str | None = None
                      ) -> TensorDict:
        """Zero state as a TensorDict with ``batch_size=[batch_size]``."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None
                ) -> tuple[Tensor, TensorDict]:
        """Run a sequence: ``x [B, T, D]``, ``reset [B, T]`` -> ``y [B, T, output_size]``."""
        raise NotImplementedError

    def advance(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None
                ) -> TensorDict:
        """The state after a sequence, as :meth:`forward` returns it, for a caller that does
        not need the outputs (R2D2's burn-in). Cores whose state does not read their outputs
        skip computing them; this default runs :meth:`forward`."""
        return self(x, state, reset)[1]

    def step(self, x: Tensor, state: TensorDict | None = None, reset: Tensor | None = None,
             *, overwrite_state: bool = False) -> tuple[Tensor, TensorDict]:
        """Run one step: ``x [B, D]``, ``reset [B]`` -> ``y [B, output_size]``.

        ``overwrite_state=True``: the caller hands ``state`` over (it keeps no other reference to
        its tensors), so a no-grad step may write the new state into them; the returned state
        then shares them. Cores that cannot use this ignore it; the results are the same.
        """
        raise NotImplementedError

    def _state_or_zero(self, state: TensorDict | None, x: Tensor) -> TensorDict:
        return self.initial_state(x.shape[0], x.device) if state is None else state

    def _check_input(self, x: Tensor, reset: Tensor | None, step: bool) -> None:
        want = 2 if step else 3
        if x.dim() != want or x.shape[-1] != self.input_size:
            shape = "[B, D]" if step else "[B, T, D]"
            raise ValueError(f"{type(self).__name__} expects x of shape {shape} with "
                             f"D={self.input_size}, got {tuple(x.shape)}")
        if reset is not None and tuple(reset.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"reset must have shape {tuple(x.shape[:-1])}, "
                             f"got {tuple(reset.shape)}")
