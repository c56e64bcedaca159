"""Cutting each env's stream into stored-state sequences (Kapturowski et al. 2019, Sec. 3).

The trained parts (traces) of an episode's sequences start every ``period`` steps (episode
steps 0, period, 2 period, ...); each sequence holds ``L = burn_in + trace_len`` transitions,
the ``burn_in`` before its trace and the trace, plus one more observation to bootstrap from,
and the recurrent state the actor fed into its network at the sequence's first step. Where the
episode has fewer than ``burn_in`` steps before a trace, the burn-in is front-padded with
zeros and the episode's first step carries ``reset`` (its state is the exact zero state), so
every step of an episode is trained, short episodes included. A sequence never crosses an
episode boundary: when an episode ends, each of its open sequences is emitted with the
transitions it has, padded at the back with zeros and masked (``valid``). The observation
after the last valid transition is the next observation of the episode, the truncated
episode's final observation (bootstrapped from), or zeros after a termination (never
bootstrapped from).

Sequence fields (TensorDict, batch ``[]``; stacked ``[N]`` for replay)::

    obs        [L + 1, ...]  observations (zeros in the padding)
    reset      [L + 1]       True at the episode's first observation (zero the state there)
    action     [L]           joint action indices (int64)
    reward     [L]           rewards (float32)
    terminated [L]           True at a terminal transition (no bootstrap after it)
    valid      [L]           True for real transitions, False for padding
    env, start []            which env, and the episode step of the trace's first transition
    state      TensorDict    the core state before the first real step, in the storage dtype
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
        states: Episode step -> the state fed in at that step (steps ``s - burn_in`` of
            trace starts ``s``, and 0).
        starts: Trace start -> (step of its stored state, the state), for the sequences not
            emitted yet.
    """

    t: int = 0
    base: int = 0
    obs: list = field(default_factory=list)
    action: list = field(default_factory=list)
    reward: list = field(default_factory=list)
    states: dict = field(default_factory=dict)
    starts: dict = field(default_factory=dict)


class SequenceCutter:
    """Builds replay sequences from a batch of env streams (see module docstring).

    Args:
        num_envs: Parallel envs.
        burn_in, trace_len, period: Sequence geometry (see :class:`R2D2Config`).
        state_dtype: Storage dtype of the stored states.
        record_episodes: Whole episodes of the last env (the greediest Ape-X actor) to keep for
            the staleness diagnostic (0: none).
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
        """Records the state each env feeds into its network at this step where a sequence
        will need it, and opens a sequence where a trace starts (call before acting).

        Args:
            obs: Current observations ``[N, ...]``.
            state: The state the network is given, after zeroing reset rows, TensorDict ``[N]``.
            reset: ``[N]`` bool, True where ``obs`` starts an episode.
        """
        for i, window in enumerate(self.windows):
            t = window.t
            if bool(reset[i]) and t:
                raise ValueError(f"env {i} starts an episode in the middle of another")
            if t == 0 or (t + self.burn_in) % self.period == 0:
                window.states[t] = cast_state(state[i], self.state_dtype)
            if t % self.period == 0:
                first = max(0, t - self.burn_in)
                window.starts[t] = (first, window.states[first])
            for old in [k for k in window.states if k < max(0, t + 1 - self.burn_in)]:
                del window.states[old]
        if self.recording:
            window = self.windows[-1]
            self.record["obs"].append(obs[-1].clone())
            if window.t in window.states:
                self.record["starts"][window.t] = window.states[window.t]

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
                    out.append(self._emit(i, window, start, last, bool(terminated[i])))
                self.windows[i] = EnvWindow()
                if i == self.num_envs - 1 and self.recording:
                    self._end_record()
                continue
            for start in [s for s in window.starts if window.t - s == self.length - self.burn_in]:
                out.append(self._emit(i, window, start, next_obs[i], False))
            self._trim(window)
        return out

    def _emit(self, env: int, window: EnvWindow, start: int, last_obs: Obs, terminated: bool
              ) -> TensorDict:
        first, state = window.starts.pop(start)
        lo, hi = first - window.base, window.t - window.base
        count, pad, L = hi - lo, self.burn_in - (start - first), self.length
        term = torch.zeros(L, dtype=torch.bool)
        term[pad + count - 1] = terminated
        valid = (torch.arange(L) >= pad) & (torch.arange(L) < pad + count)
        reset = torch.zeros(L + 1, dtype=torch.bool)
        reset[pad] = first == 0
        front = lambda x: torch.cat([torch.zeros_like(x[:1]).expand(pad, *x.shape[1:]), x])  # noqa
        return TensorDict({
            "obs": _stack(list(front(torch.stack(window.obs[lo:hi] + [last_obs]))), L + 1),
            "reset": reset,
            "action": _stack(list(front(torch.stack(window.action[lo:hi]))), L).long(),
            "reward": _stack(list(front(torch.stack(window.reward[lo:hi]))), L).float(),
            "terminated": term, "valid": valid, "env": torch.tensor(env),
            "start": torch.tensor(start), "state": state,
        }, batch_size=[])

    def _trim(self, window: EnvWindow) -> None:
        """Drops transitions no open or future sequence needs."""
        next_start = -(-window.t // self.period) * self.period
        keep_from = min([*(q for q, _ in window.starts.values()),
                         max(0, next_start - self.burn_in)])
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
            entry: dict[str, Any] = {
                "t": w.t, "base": w.base,
                "states": {str(s): plain(v) for s, v in w.states.items()},
                "starts": {str(s): {"first": q, "state": plain(v)}
                           for s, (q, v) in w.starts.items()}}
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
                          states={int(k): state(v) for k, v in s["states"].items()},
                          starts={int(k): (int(v["first"]), state(v["state"]))
                                  for k, v in s["starts"].items()})
            if "obs" in s:
                w.obs, w.action = list(obs(s["obs"])), list(s["action"])
                w.reward = list(s["reward"])
            self.windows[i] = w
        self.episodes.clear()
        for e in saved.get("episodes", []):
            self.episodes.append({"obs": obs(e["obs"]),
                                  "starts": {int(k): state(v) for k, v in e["starts"].items()}})
        rec = saved.get("record", {})
        has_obs = isinstance(rec.get("obs"), torch.Tensor) or bool(rec.get("obs"))
        self.record = {"obs": list(obs(rec["obs"])) if has_obs else [],
                       "starts": {int(k): state(v) for k, v in rec.get("starts", {}).items()}}


def bytes_per_sequence(observation_space: Any, action_space: Any, model: Any, cfg: Any) -> dict:
    """Bytes one stored sequence takes in replay, in total and for its recurrent state.

    Built on the ``meta`` device (nothing allocated): the sequence layout of the module
    docstring plus the replay's float32 priority and int64 index (torchrl adds it).

    Args:
        observation_space, action_space: Single-env spaces; model: ``ModelConfig``;
        cfg: ``R2D2Config`` (sequence length, state dtype, dueling width).

    Returns:
        ``{"total": int, "state": int, "obs": int}`` bytes.
    """
    from xlstm_rl.networks import obs_to_torch

    from .actor import STATE_DTYPES
    from .networks import R2D2Network

    with torch.device("meta"):
        net = R2D2Network(observation_space, action_space, model, cfg.dueling_hidden)
        state = cast_state(net.initial_state(1)[0], STATE_DTYPES[cfg.state_dtype])
    sample = observation_space.sample()
    obs = obs_to_torch(_batch_of_one(sample), observation_space, "cpu")[0]
    count = lambda td: sum(t.numel() * t.element_size() for t in td.values(True, True))  # noqa
    obs_bytes = (cfg.sequence_len + 1) * (count(obs) if isinstance(obs, TensorDict)
                                          else obs.numel() * obs.element_size())
    per_step = 8 + 4 + 1 + 1  # action int64, reward float32, terminated, valid
    per_step += 1  # reset (L + 1 of them)
    scalars = 1 + 8 + 8 + 4 + 8  # reset's last slot, env, start; the replay's priority, index
    state_bytes = count(state)
    return {"total": obs_bytes + cfg.sequence_len * per_step + scalars + state_bytes,
            "state": state_bytes, "obs": obs_bytes}


def _batch_of_one(sample: Any) -> Any:
    import numpy as np

    if isinstance(sample, dict):
        return {k: _batch_of_one(v) for k, v in sample.items()}
    if isinstance(sample, tuple):
        return tuple(_batch_of_one(v) for v in sample)
    return np.asarray(sample)[None]
