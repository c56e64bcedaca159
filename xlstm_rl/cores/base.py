"""The interface every memory core implements, and TensorDict state helpers."""
from __future__ import annotations

import numpy as np
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
        """``state``, or the zero state for ``x``'s batch; a state for another batch size is
        refused in one line (the kernels would read or write rows that do not exist)."""
        if state is None:
            return self.initial_state(x.shape[0], x.device)
        batch = getattr(state, "batch_size", None)
        if batch is None or tuple(batch)[:1] != (x.shape[0],):
            got = "no batch size" if batch is None else f"batch size {list(batch)}"
            raise ValueError(f"{type(self).__name__}: the state has {got} but x has "
                             f"{x.shape[0]} rows; pass the state of this batch (or "
                             f"initial_state({x.shape[0]}))")
        return state

    def _check_input(self, x: Tensor, reset: object, step: bool) -> Tensor | None:
        """Checks ``x`` (``[B, D]`` for a step, else ``[B, T, D]``) and returns ``reset`` as a
        bool tensor on ``x``'s device (given as a tensor, a numpy array or a list of bools or
        0/1 integers, of shape ``x.shape[:-1]``), or None."""
        want = 2 if step else 3
        if not isinstance(x, Tensor) or x.dim() != want or x.shape[-1] != self.input_size:
            shape = "[B, D]" if step else "[B, T, D]"
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects x of shape {shape} with "
                             f"D={self.input_size}, got {got}")
        return as_reset(reset, tuple(x.shape[:-1]), x.device)


def as_reset(reset: object, shape: tuple[int, ...], device: torch.device) -> Tensor | None:
    """``reset`` as a bool tensor of ``shape`` on ``device`` (None stays None).

    Accepts tensors, numpy arrays and nested lists of bools or integers (nonzero is True), as
    a vector env returns them. Floating-point or other values are refused in one line.
    """
    if reset is None:
        return None
    if not isinstance(reset, Tensor):
        try:
            reset = torch.as_tensor(np.asarray(reset))
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"reset must be an array of bools, got {type(reset).__name__}"
                             ) from None
    if reset.dtype != torch.bool and (reset.is_floating_point() or reset.is_complex()):
        raise ValueError(f"reset must hold bools (or 0/1 integers), got {reset.dtype}")
    if tuple(reset.shape) != shape:
        raise ValueError(f"reset must have shape {shape}, got {tuple(reset.shape)}")
    if reset.dtype == torch.bool and reset.device == device:
        return reset
    return reset.to(device=device, dtype=torch.bool)
