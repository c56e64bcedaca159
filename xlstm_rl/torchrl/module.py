"""``XLSTMModule``: a memory core behind the conventions of TorchRL's ``LSTMModule``.

Keys (with ``in_key="embed"``, ``out_key="features"``, ``state_key="recurrent_state"`` and
the mLSTM core, whose state is ``block0: {C, n, m, conv}``)::

    in_keys   "embed", ("recurrent_state", "block0", "C"), ... , "is_init"
    out_keys  "features", ("next", "recurrent_state", "block0", "C"), ...

Every leaf of the core's (nested) state lives under the one prefix ``state_key``, at the same
nested path as in ``core.initial_state``, with shape ``[*batch, *leaf_shape]``.

Two modes, chosen as TorchRL chooses them for ``LSTMModule``: the
``torchrl.modules.set_recurrent_mode`` context manager (TorchRL's losses enter it themselves),
else ``default_recurrent_mode`` (False).

- Step mode (collectors): any batch shape, one step per element; ``is_init`` True zeros the
  state first (the stored state belongs to the previous episode); runs ``core.step``.
- Sequence (recurrent) mode (losses, advantages): the last batch dimension is time. The run
  starts from the stored state at ``t = 0`` and restarts from the stored state at every
  ``is_init`` step. Data from a collector stores the zero state at ``is_init`` steps (the
  primer resets it), and then this is one call of the core's chunkwise ``forward`` with
  ``is_init`` as resets. Where a stored state at an ``is_init`` step is not zero (GAE's
  ``("next", ...)`` pass with ``shifted=False``), the sequence is split at those steps.
  As with ``LSTMModule``, the next state is written at the last time step only (zeros
  before it).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase, dispatch
from torch import Tensor
from torchrl.data import Unbounded
from torchrl.envs import TensorDictPrimer
from torchrl.modules import recurrent_mode

from xlstm_rl.cores import CoreConfig, MemoryCore, make_core

LeafKey = tuple[str, ...]


def _as_tuple(key: NestedKey) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


class XLSTMModule(TensorDictModuleBase):
    """Any memory core (mLSTM, sLSTM, xLSTM, LSTM, GRU, MLP) as a TorchRL recurrent module.

    Args:
        core: A core name for :func:`xlstm_rl.cores.make_core` (``mlstm``, ``slstm``, ``xlstm``,
            ``lstm``, ``gru``, ``mlp``) or a built :class:`~xlstm_rl.cores.MemoryCore`.
        input_size: Feature size ``D`` of ``in_key`` (required with a core name).
        in_key: Key of the input ``[*batch, D]``.
        out_key: Key of the output ``[*batch, core.output_size]``.
        state_key: Prefix of the recurrent-state keys; give two modules in one policy
            different prefixes.
        config: A :class:`~xlstm_rl.cores.CoreConfig` (only with a core name).
        device: Device of the parameters.
        default_recurrent_mode: The mode outside a ``set_recurrent_mode`` context
            (default False: step mode).
        **core_fields: :class:`~xlstm_rl.cores.CoreConfig` fields (``hidden_size=64``,
            ``num_heads=4``, ...), only with a core name.

    Raises:
        ValueError: A core name without ``input_size``, or config fields with a built core.
    """

    def __init__(self, core: str | MemoryCore = "mlstm", input_size: int | None = None, *,
                 in_key: NestedKey, out_key: NestedKey, state_key: str = "recurrent_state",
                 config: CoreConfig | None = None, device: torch.device | str | None = None,
                 default_recurrent_mode: bool | None = None, **core_fields: Any) -> None:
        super().__init__()
        if isinstance(core, MemoryCore):
            if config is not None or core_fields or input_size not in (None, core.input_size):
                raise ValueError("pass either a built core or a core name with its options")
            self.core = core
        else:
            if input_size is None:
                raise ValueError(f"XLSTMModule({core!r}) needs input_size")
            self.core = make_core(core, input_size, config, **core_fields)
        if device is not None:
            self.core.to(device)
        self.state_key = state_key
        self._default_recurrent_mode = default_recurrent_mode
        zero = self.core.initial_state(1)
        self.state_layout: dict[LeafKey, tuple[torch.Size, torch.dtype]] = {
            _as_tuple(key): (leaf.shape[1:], leaf.dtype)
            for key, leaf in zero.items(include_nested=True, leaves_only=True)}
        self.state_keys: list[NestedKey] = [(state_key, *key) for key in self.state_layout]
        self.in_keys = [in_key, *self.state_keys, "is_init"]
        self.out_keys = [out_key, *(("next", *_as_tuple(k)) for k in self.state_keys)]
        self.in_key, self.out_key = in_key, out_key

    @property
    def recurrent_mode(self) -> bool:
        """True inside ``set_recurrent_mode(True)``, else ``default_recurrent_mode``."""
        mode = recurrent_mode()
        return bool(self._default_recurrent_mode) if mode is None else bool(mode)

    def set_recurrent_mode(self, mode: bool = True) -> None:
        """Removed, as in TorchRL's ``LSTMModule``: use the context manager.

        Raises:
            RuntimeError: Always; use ``torchrl.modules.set_recurrent_mode`` or
                ``default_recurrent_mode``.
        """
        raise RuntimeError("XLSTMModule.set_recurrent_mode() does not exist, as "
                           "LSTMModule.set_recurrent_mode() in TorchRL >= 0.8: use the "
                           "torchrl.modules.set_recurrent_mode context manager or the "
                           "default_recurrent_mode argument")

    def make_tensordict_primer(self) -> TensorDictPrimer:
        """A ``TensorDictPrimer`` that makes the env carry (and zero on reset) the state keys.

        Returns:
            A primer with one ``Unbounded`` spec of shape ``leaf_shape`` per state leaf
            (expanded to the env's batch size by the primer).
        """
        specs = {(self.state_key, *key): Unbounded(shape=shape, dtype=dtype)
                 for key, (shape, dtype) in self.state_layout.items()}
        return TensorDictPrimer(specs, expand_specs=True)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Runs the core on ``tensordict`` in step or sequence mode; writes ``out_keys``.

        Args:
            tensordict: Step mode: any batch ``[*batch]`` with ``in_key [*batch, D]`` and
                ``is_init [*batch, 1]``. Sequence mode: batch ``[*lead, T]`` (time last).
                State keys missing from it count as the zero state.

        Returns:
            The same tensordict with ``out_key`` and ``("next", state keys)`` set.
        """
        if self.recurrent_mode:
            self._forward_sequence(tensordict)
        else:
            self._forward_step(tensordict)
        return tensordict

    def _forward_step(self, tensordict: TensorDictBase) -> None:
        batch_shape = tensordict.batch_size
        rows = math.prod(batch_shape)
        x = tensordict.get(self.in_key).reshape(rows, -1)
        is_init = self._is_init(tensordict).reshape(rows)
        state = self._stored_state(tensordict, rows, x.device)
        if state is None:
            state = self.core.initial_state(rows, x.device)
        y, new_state = self.core.step(x, state, is_init)
        tensordict.set(self.out_key, y.reshape(*batch_shape, -1))
        self._write_next_state(tensordict, new_state, batch_shape)

    def _forward_sequence(self, tensordict: TensorDictBase) -> None:
        batch_shape = tensordict.batch_size
        if len(batch_shape) == 0:
            raise ValueError("XLSTMModule in recurrent mode needs a tensordict whose last "
                             "batch dimension is time; got batch_size []")
        steps = batch_shape[-1]
        rows = math.prod(batch_shape[:-1])
        x = tensordict.get(self.in_key).reshape(rows, steps, -1)
        is_init = self._is_init(tensordict).reshape(rows, steps)
        stored = self._stored_state(tensordict, rows * steps, x.device)
        if stored is None:
            zero = self.core.initial_state(rows, x.device)
            y, final = self.core(x, zero, self._later_starts(is_init))
        else:
            y, final = self._run_from_stored(x, is_init, stored.reshape(rows, steps))
        tensordict.set(self.out_key, y.reshape(*batch_shape, -1))
        placed = final.apply(lambda leaf: torch.cat(
            [leaf.new_zeros(rows, steps - 1, *leaf.shape[1:]), leaf[:, None]], dim=1),
            batch_size=[rows, steps])
        self._write_next_state(tensordict, placed, batch_shape)

    def _run_from_stored(self, x: Tensor, is_init: Tensor, stored: TensorDict
                         ) -> tuple[Tensor, TensorDict]:
        """Sequence mode from stored states: ``x [B, T, D]``, ``is_init [B, T]``, ``stored
        [B, T]`` -> ``y [B, T, output_size]`` and the state after step ``T - 1`` (batch [B]).

        One chunkwise call when every restart (``is_init`` at ``t >= 1``) stores the zero
        state; otherwise the sequence is cut at the restart times that store a state.
        """
        restarts = self._later_starts(is_init)
        loaded = self._stores_a_state(stored, restarts)
        if not bool(loaded.any()):
            return self.core(x, stored[:, 0], restarts)
        bounds = sorted({0, x.shape[1], *loaded.any(dim=0).nonzero().flatten().tolist()})
        zeroed = restarts & ~loaded
        state, outputs = stored[:, 0], []
        for start, end in zip(bounds[:-1], bounds[1:]):
            if start > 0:
                state = self._take_rows(loaded[:, start], stored[:, start], state)
            y, state = self.core(x[:, start:end], state, zeroed[:, start:end])
            outputs.append(y)
        return torch.cat(outputs, dim=1), state

    @staticmethod
    def _take_rows(rows: Tensor, taken: TensorDict, kept: TensorDict) -> TensorDict:
        """Per row of ``rows [B]``: ``taken`` where True, else ``kept`` (both batch [B])."""
        return taken.apply(lambda new, old: torch.where(
            rows.view(-1, *([1] * (new.dim() - 1))), new, old), kept)

    @staticmethod
    def _later_starts(is_init: Tensor) -> Tensor:
        """``is_init [B, T]`` without ``t = 0`` (the run starts from the stored state there)."""
        restarts = is_init.clone()
        restarts[:, 0] = False
        return restarts

    @staticmethod
    def _stores_a_state(stored: TensorDict, restarts: Tensor) -> Tensor:
        """``[B, T]`` bool: restarts (``restarts [B, T]``) where ``stored [B, T]`` is not zero.

        Only the restart steps are read, so the check costs little next to the core.
        """
        loaded = torch.zeros_like(restarts)
        rows, times = restarts.nonzero(as_tuple=True)
        if rows.numel() == 0:
            return loaded
        flags = [leaf[rows, times].reshape(rows.numel(), -1).ne(0).any(-1)
                 for leaf in stored.values(include_nested=True, leaves_only=True)]
        if flags:
            loaded[rows, times] = torch.stack(flags).any(0)
        return loaded

    def _is_init(self, tensordict: TensorDictBase) -> Tensor:
        is_init = tensordict.get("is_init", None)
        if is_init is None:
            raise KeyError("XLSTMModule needs the 'is_init' key: add torchrl.envs.InitTracker() "
                           "to the environment's transforms")
        return is_init.to(torch.bool)

    def _stored_state(self, tensordict: TensorDictBase, rows: int, device: torch.device
                      ) -> TensorDict | None:
        """The state leaves of ``tensordict`` flattened to batch ``[rows]`` (None if absent)."""
        if not self.state_layout:
            return None
        leaves = {}
        for key, (shape, _) in self.state_layout.items():
            leaf = tensordict.get((self.state_key, *key), None)
            if leaf is None:
                return None
            leaves[key] = leaf.reshape(rows, *shape)
        state = TensorDict({}, batch_size=[rows], device=device)
        for key, leaf in leaves.items():
            state.set(key, leaf)
        return state

    def _write_next_state(self, tensordict: TensorDictBase, state: TensorDict,
                          batch_shape: torch.Size) -> None:
        """Writes ``state`` (batch ``[prod(batch_shape)]`` or ``[rows, T]``) under ``next``."""
        for key, (shape, _) in self.state_layout.items():
            leaf = state.get(key).reshape(*batch_shape, *shape)
            tensordict.set(("next", self.state_key, *key), leaf)
