"""Cutting each env's stream into stored-state sequences (Kapturowski et al. 2019, Sec. 3).

A sequence starts every ``period`` steps of an episode (episode steps 0, period, 2 period,
...) and holds ``L = burn_in + trace_len`` transitions plus one more observation to bootstrap
from, together with the recurrent state the actor fed into its network at the sequence's first
step (zero at an episode's first step). A sequence never crosses an episode boundary: when an
episode ends, each of its open sequences is emitted with the transitions it has, padded with
zeros and masked (``valid``). The observation after the last valid transition is the next
observation of the episode, the truncated episode's final observation (bootstrapped from), or
zeros after a termination (never bootstrapped from). Sequences whose valid transitions all fall
inside the burn-in would train nothing and are dropped.

Sequence fields (TensorDict, batch ``[]``; stacked ``[N]`` for replay)::

    obs        [L + 1, ...]  observations (zeros after the bootstrap slot)
    action     [L]           joint action indices (int64)
    reward     [L]           rewards (float32)
    terminated [L]           True at a terminal transition (no bootstrap after it)
    valid      [L]           True for real transitions, False for padding
    first      []            the sequence starts at the episode's first step
    state      TensorDict    the core state before step 0, in the storage dtype
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor

Obs = Any  # a Tensor, or a TensorDict for composite observation spaces


def _stack(items: list[Obs], pad_to: int) -> Obs:
    """Stacks ``items`` along a new dim 0 and pads it with zeros to ``pad_to`` rows."""
    stacked = torch.stack(items)
    if stacked.shape[0] >= pad_to:
        return stacked
    pad = torch.zeros_like(stacked[:1]).expand(pad_to - stacked.shape[0], *stacked.shape[1:])
    return torch.cat([stacked, pad.clone()])


def cast_state(state: TensorDict, dtype: torch.dtype) -> TensorDict:
    """A detached copy of a recurrent state with floating-point leaves in ``dtype``."""
    return state.apply(lambda t: t.detach().to(dtype) if t.is_floating_point()
                       else t.detach().clone())


@dataclass
class EnvWindow:
    """The open part of one env's current episode.

    Attributes:
        t: Transitions of the episode so far.
        base: Episode step of ``obs[0]`` (entries before it were trimmed).
        obs, action, reward: Per transition since ``base``.
        starts: Episode step -> stored state, for the sequences not emitted yet.
    """

    t: int = 0
    base: int = 0
    obs: list = field(default_factory=list)
    action: list = field(default_factory=list)
    reward: list = field(default_factory=list)
    starts: dict = field(default_factory=dict)


class SequenceCutter:
    """Builds replay sequences from a batch of env streams (see module docstring).

    Args:
        num_envs: Parallel envs.
        burn_in, trace_len, period: Sequence geometry (see :class:`R2D2Config`).
        state_dtype: Storage dtype of the stored states.
        record_episodes: Whole episodes of env 0 to keep for the staleness diagnostic (0: none).
        record_max_len: Longest episode kept.
    """

    def __init__(self, num_envs: int, burn_in: int, trace_len: int, period: int,
                 state_dtype: torch.dtype = torch.float32, record_episodes: int = 0,
                 record_max_len: int = 2000) -> None:
        self.num_envs, self.burn_in, self.period = num_envs, burn_in, period
        self.length = burn_in + trace_len
        self.state_dtype = state_dtype
        self.windows = [EnvWindow() for _ in range(num_envs)]
        self.record_max_len = record_max_len
        self.episodes: deque = deque(maxlen=max(record_episodes, 1))
        self.recording = record_episodes > 0
        self.record: dict[str, Any] = {"obs": [], "starts": {}}

    def observe(self, obs: Obs, state: TensorDict, reset: Tensor) -> None:
        """Records the state each env feeds into its network at this step, where a sequence
        starts (call before acting).

        Args:
            obs: Current observations ``[N, ...]``.
            state: The state the network is given, after zeroing reset rows, TensorDict ``[N]``.
            reset: ``[N]`` bool, True where ``obs`` starts an episode.
        """
        for i, window in enumerate(self.windows):
            if bool(reset[i]) and window.t:
                raise ValueError(f"env {i} starts an episode in the middle of another")
            if window.t % self.period == 0:
                window.starts[window.t] = cast_state(state[i], self.state_dtype)
        if self.recording:
            window = self.windows[0]
            self.record["obs"].append(obs[0].clone())
            if window.t in window.starts:
                self.record["starts"][window.t] = window.starts[window.t]

    def step(self, obs: Obs, action: Tensor, reward: Tensor, terminated: Tensor,
             truncated: Tensor, next_obs: Obs, final_obs: dict[int, Obs]) -> list[TensorDict]:
        """Appends one transition per env and returns the sequences completed by it.

        Args:
            obs: Observations acted on ``[N, ...]``; action: ``[N]`` joint indices;
            reward: ``[N]``; terminated, truncated: ``[N]`` bool.
            next_obs: Observations returned by the step ``[N, ...]`` (already the next
                episode's first observation where an episode ended).
            final_obs: Env index -> last observation of a truncated episode (tensor, no batch).

        Returns:
            Completed sequences (TensorDicts, batch ``[]``).
        """
        out = []
        for i, window in enumerate(self.windows):
            window.obs.append(obs[i])
            window.action.append(action[i])
            window.reward.append(reward[i])
            window.t += 1
            if bool(terminated[i]) or bool(truncated[i]):
                last = (torch.zeros_like(obs[i]) if bool(terminated[i]) else final_obs[i])
                for start in sorted(window.starts):
                    seq = self._emit(window, start, last, bool(terminated[i]))
                    if seq is not None:
                        out.append(seq)
                self.windows[i] = EnvWindow()
                if i == 0 and self.recording:
                    self._end_record()
                continue
            for start in [s for s in window.starts if window.t - s == self.length]:
                out.append(self._emit(window, start, next_obs[i], False))
            self._trim(window)
        return out

    def _emit(self, window: EnvWindow, start: int, last_obs: Obs, terminated: bool
              ) -> TensorDict | None:
        state = window.starts.pop(start)
        lo, hi = start - window.base, window.t - window.base
        count = hi - lo
        if count <= self.burn_in:
            return None
        L = self.length
        term = torch.zeros(L, dtype=torch.bool)
        term[count - 1] = terminated
        valid = torch.arange(L) < count
        return TensorDict({
            "obs": _stack(window.obs[lo:hi] + [last_obs], L + 1),
            "action": _stack(window.action[lo:hi], L).long(),
            "reward": _stack(window.reward[lo:hi], L).float(),
            "terminated": term, "valid": valid,
            "first": torch.tensor(start == 0), "state": state,
        }, batch_size=[])

    def _trim(self, window: EnvWindow) -> None:
        """Drops transitions no open or future sequence needs."""
        keep_from = min(window.starts, default=window.t)
        drop = keep_from - window.base
        if drop > 0:
            del window.obs[:drop], window.action[:drop], window.reward[:drop]
            window.base = keep_from

    def _end_record(self) -> None:
        record, self.record = self.record, {"obs": [], "starts": {}}
        if 0 < len(record["obs"]) <= self.record_max_len and len(record["starts"]) > 1:
            self.episodes.append({"obs": torch.stack(record["obs"]),
                                  "starts": dict(record["starts"])})

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """The open windows and recorded episodes as nested dicts of tensors and ints."""
        def plain(x: Any) -> Any:
            return x.to_dict() if isinstance(x, TensorDict) else x

        windows = {}
        for i, w in enumerate(self.windows):
            entry: dict[str, Any] = {"t": w.t, "base": w.base,
                                     "starts": {str(s): plain(v) for s, v in w.starts.items()}}
            if w.obs:
                entry.update(obs=plain(torch.stack(w.obs)), action=torch.stack(w.action),
                             reward=torch.stack(w.reward))
            windows[str(i)] = entry
        episodes = [{"obs": plain(e["obs"]),
                     "starts": {str(s): plain(v) for s, v in e["starts"].items()}}
                    for e in self.episodes]
        record = {"obs": plain(torch.stack(self.record["obs"])) if self.record["obs"] else {},
                  "starts": {str(s): plain(v) for s, v in self.record["starts"].items()}}
        return {"windows": windows, "episodes": episodes, "record": record}

    def load_state_dict(self, saved: dict[str, Any], state_template: TensorDict,
                        obs_template: Obs) -> None:
        """Restores :meth:`state_dict` output.

        Args:
            saved: The saved dict.
            state_template: A state of one env (TensorDict ``[]``) giving the state's layout.
            obs_template: One observation (no batch) giving the observation's layout.
        """
        def state(v: Any) -> TensorDict:
            return TensorDict(v, batch_size=[]) if isinstance(v, dict) else state_template.clone()

        def obs(v: Any) -> Any:
            if isinstance(obs_template, TensorDict):
                rows = next(iter(TensorDict(v, batch_size=[]).values())).shape[0]
                return TensorDict(v, batch_size=[rows])
            return v

        for i in range(self.num_envs):
            s = saved["windows"][str(i)]
            w = EnvWindow(t=int(s["t"]), base=int(s["base"]),
                          starts={int(k): state(v) for k, v in s["starts"].items()})
            if "obs" in s:
                w.obs, w.action, w.reward = list(obs(s["obs"])), list(s["action"]), list(s["reward"])
            self.windows[i] = w
        self.episodes.clear()
        for e in saved.get("episodes", []):
            self.episodes.append({"obs": obs(e["obs"]),
                                  "starts": {int(k): state(v) for k, v in e["starts"].items()}})
        rec = saved.get("record", {})
        has_obs = isinstance(rec.get("obs"), torch.Tensor) or bool(rec.get("obs"))
        self.record = {"obs": list(obs(rec["obs"])) if has_obs else [],
                       "starts": {int(k): state(v) for k, v in rec.get("starts", {}).items()}}
