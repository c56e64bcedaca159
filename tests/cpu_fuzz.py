"""Random calls of every compiled CPU entry point with mutated inputs (run as a script).

``python tests/cpu_fuzz.py SEED CALLS`` makes ``CALLS`` calls; each builds valid inputs of
random small sizes, applies one random mutation (a wrong batch, rank, width, dtype or device,
a strided or expanded layout, an empty dim, NaN and inf, a bad reset, a non-tensor, a wrong
head count), calls an entry point and classifies the outcome:

- ``equal``: it returned, and the result equals the PyTorch definition on the same inputs
  (with non-finite values in the same places). A NaN, inf or 1e30 put into one batch row is
  compared in the other rows only, which must be untouched: in its own row the two orders of
  operations overflow differently, and after a reset C skips the conv taps that PyTorch
  multiplies by zero (a NaN weight spreads further there);
- ``ran``: it returned after a non-finite weight (every row touched: nothing to compare);
- ``refused``: it raised ``ValueError`` (the one-line refusal);
- ``declined``: the wrapper returned None (the caller takes the PyTorch path);
- anything else is a failure: printed, and the exit code is 1.

The test runs it in a subprocess, so a crash fails that test instead of killing pytest. The
last line is a JSON summary of the counts per entry point and outcome.
"""
from __future__ import annotations

import json
import random
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from xlstm_rl.cores.config import CoreConfig
from xlstm_rl.cores.mlstm_block import MLSTMBlock
from xlstm_rl.kernels import cpu as cpu_kernels
from xlstm_rl.kernels.cpu.mlstm_block import WEIGHTS
from xlstm_rl.kernels.reference import mlstm_recurrent, mlstm_step_reference

TOL = {torch.float64: 1e-9, torch.float32: 2e-4}
"""Relative to each tensor's largest finite value (the sequences are short)."""
MUTATIONS = ("none", "batch", "rank", "width", "dtype", "device", "strided", "expanded",
             "empty", "nonfinite", "reset", "not_tensor", "heads")


class Mismatch(AssertionError):
    """A returned result differs from the PyTorch definition."""


def _mutate(rng: random.Random, tensors: dict[str, Any], kind: str) -> dict[str, Any]:
    """One mutation of one tensor in ``tensors`` (a copy; ``heads``/``reset`` keys included)."""
    out = dict(tensors)
    names = [n for n, t in out.items() if isinstance(t, Tensor) and n != "reset"]
    name = rng.choice(names)
    t = out[name]
    if kind == "batch":
        out[name] = torch.cat([t, t[:1]]) if rng.random() < 0.5 or t.shape[0] < 2 else t[1:]
    elif kind == "rank":
        out[name] = t.unsqueeze(rng.randrange(t.dim() + 1)) if rng.random() < 0.5 else t.flatten()
    elif kind == "width" and t.dim() > 0:
        dim = rng.randrange(t.dim())
        out[name] = torch.cat([t, t.narrow(dim, 0, 1)], dim) if t.shape[dim] else t
    elif kind == "dtype":
        out[name] = t.to(rng.choice([torch.float16, torch.int64, torch.bool, torch.float32,
                                     torch.float64, torch.bfloat16]))
    elif kind == "device":
        out[name] = t.to("meta")
    elif kind == "strided" and t.dim() > 0:
        out[name] = torch.stack([t, torch.full_like(t, 7.0)], -1)[..., 0]  # same values, stride 2
    elif kind == "expanded" and t.dim() > 0 and t.shape[0] > 0:
        out[name] = t[:1].expand(t.shape)  # stride 0 along the batch
    elif kind == "empty" and t.dim() > 0:
        out[name] = t[:0] if rng.random() < 0.5 else t.narrow(t.dim() - 1, 0, 0)
    elif kind == "nonfinite" and t.is_floating_point() and t.numel():
        t = t.clone()
        pos = rng.randrange(t.numel())
        t.view(-1)[pos] = rng.choice([float("nan"), float("inf"), -float("inf"), 1e30])
        out[name] = t
        # The row it went into: the others must still equal the definition (nothing leaks
        # across rows); a weight reaches every row.
        batch_first = name not in WEIGHTS and t.dim() > 1
        out["_row"] = pos // (t.numel() // t.shape[0]) if batch_first else "all"
    elif kind == "reset":
        reset = out.get("reset")
        shape = reset.shape if isinstance(reset, Tensor) else (2,)
        out["reset"] = rng.choice([torch.ones(shape), torch.ones(*shape, 2, dtype=torch.bool),
                                   torch.ones(3, 3, dtype=torch.bool), [True, False], "yes"])
    elif kind == "not_tensor":
        out[name] = rng.choice([None, 3.0, [1.0, 2.0]])
    elif kind == "heads" and "heads" in out:
        out["heads"] = rng.choice([0, -1, 3, 5, 2.0, True])
    return out


def _close(name: str, got: Tensor, want: Tensor, row: object = None) -> None:
    """``got`` equals ``want`` where ``want`` is finite, and is non-finite where it is not;
    only in the batch rows other than ``row`` (the one a non-finite value went into: there the
    two may overflow differently), and not at all when ``row`` is ``"all"``."""
    if got.shape != want.shape:
        raise Mismatch(f"{name}: shape {list(got.shape)} vs {list(want.shape)}")
    if row == "all":
        return
    if isinstance(row, int):
        keep = torch.arange(got.shape[0]) != row
        got, want = got[keep], want[keep]
    tol = TOL[torch.float32 if torch.float32 in (got.dtype, want.dtype) else torch.float64]
    got, want = got.double(), want.double()
    finite = torch.isfinite(want)
    if (torch.isfinite(got) != finite).any():
        raise Mismatch(f"{name}: non-finite values in other places than the definition's")
    if finite.any():
        a, b = got[finite], want[finite]
        scale = max(b.abs().max().item(), 1.0)
        err = (a - b).abs().max().item()
        if err > tol * scale:
            raise Mismatch(f"{name}: error {err:.3e} at scale {scale:.3e}")


def _cell_case(rng: random.Random, seq: bool) -> dict[str, Any]:
    B, H, S, dk, dv = (rng.randint(1, 3), rng.randint(1, 2), rng.randint(1, 20),
                       rng.randint(1, 9), rng.randint(1, 9))
    dtype = rng.choice([torch.float32, torch.float64])
    lead = (B, H, S) if seq else (B, H)
    rand = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    reset = torch.rand(*lead[:1], *lead[2:]) < 0.3
    return {"q": rand(*lead, dk), "k": rand(*lead, dk), "v": rand(*lead, dv), "i": rand(*lead),
            "f": rand(*lead) + 2, "C": rand(B, H, dk, dv), "n": rand(B, H, dk),
            "m": rand(B, H).abs(), "reset": reset}


def run_cell_step(rng: random.Random, kind: str) -> str:
    c = _mutate(rng, _cell_case(rng, seq=False), kind)
    state = (c["C"], c["n"], c["m"])
    got = cpu_kernels.mlstm_cell_step(c["q"], c["k"], c["v"], c["i"], c["f"], state, c["reset"])
    if got is None:
        return "declined"
    with cpu_kernels.disabled():
        want = mlstm_step_reference(c["q"], c["k"], c["v"], c["i"], c["f"], state,
                                    reset=c["reset"])
    for name, a, b in zip(("h", "C", "n", "m"), (got[0], *got[1]), (want[0], *want[1])):
        _close(name, a, b, c.get("_row"))
    return "ran" if c.get("_row") == "all" else "equal"


def run_sequence(rng: random.Random, kind: str) -> str:
    c = _mutate(rng, _cell_case(rng, seq=True), kind)
    grad = rng.random() < 0.5 and all(isinstance(c[n], Tensor) and c[n].is_floating_point()
                                      for n in "qkvif")
    inputs = [c[n].detach().requires_grad_(grad) if grad else c[n] for n in "qkvif"]
    state = (c["C"], c["n"], c["m"])
    got = cpu_kernels.mlstm_sequence_cpu(*inputs, state=state, reset=c["reset"])
    if got is None:
        return "declined"
    want_inputs = [t.detach().requires_grad_(grad) for t in inputs]
    with cpu_kernels.disabled():
        want = mlstm_recurrent(*want_inputs, state=state, reset=c["reset"])
    _close("h", got[0], want[0].to(got[0].dtype), c.get("_row"))
    for name, a, b in zip("Cnm", got[1], want[1]):
        _close(name, a, b.to(a.dtype), c.get("_row"))
    if grad:
        w = torch.randn_like(got[0])
        got_grads = torch.autograd.grad((got[0] * w).sum(), inputs)
        want_grads = torch.autograd.grad((want[0].to(w.dtype) * w).sum(), want_inputs)
        for name, a, b in zip("qkvif", got_grads, want_grads):
            _close("d" + name, a, b, c.get("_row"))
    return "ran" if c.get("_row") == "all" else "equal"


def _block_case(rng: random.Random, seq: bool) -> tuple[MLSTMBlock, dict[str, Any]]:
    heads, head_dim = rng.choice([(1, 4), (2, 4), (2, 8), (1, 6), (3, 2)])
    dtype = rng.choice([torch.float32, torch.float64])
    bs = rng.choice([b for b in (1, 2, 4) if (heads * head_dim) % b == 0])
    dim = heads * head_dim  # proj_factor 1: inner = dim
    cfg = CoreConfig(hidden_size=dim, num_heads=heads, conv_kernel=rng.randint(1, 4),
                     qkv_block_size=bs, proj_factor=1.0)
    block = MLSTMBlock(cfg.hidden_size, cfg).to(dtype)
    B, T = rng.randint(1, 3), rng.randint(1, 12) if seq else 1
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = block.initial_state(B).apply(lambda t: torch.randn_like(t, dtype=dtype))
    up = torch.randn(B, T, 2 * block.inner, dtype=dtype)
    case = {"up": up if seq else up[:, 0], "window": state["conv"], "C": state["C"],
            "n": state["n"], "m": state["m"].abs(), "heads": heads,
            "reset": torch.rand(B, T) < 0.3 if seq else torch.rand(B) < 0.3,
            **{name: t.detach().clone() for name, t in block._kernel_weights().items()}}
    return block, case


def _block_definition(block: MLSTMBlock, up: Tensor, c: dict[str, Any]) -> tuple[Tensor, ...]:
    """The block between its projections in PyTorch ops (``up [B, T, 2 inner]``)."""
    _load_weights(block, c)
    reset = c["reset"] if c["reset"].dim() == 2 else c["reset"][:, None]
    xm, z = up.chunk(2, dim=-1)
    xc, window = block.conv(xm, c["window"], reset)
    xc = F.silu(xc)
    q, k, v, i, f = block._qkv_gates(xc, xm)
    tr = lambda t: t.transpose(1, 2)  # noqa: E731
    h, (C, n, m) = mlstm_recurrent(*(tr(t).contiguous() for t in (q, k, v, i, f)), reset=reset,
                                   state=(c["C"], c["n"], c["m"]))
    out = (block.cell_norm(tr(h).to(up.dtype)) + block.skip * xc) * F.silu(z)
    return out, C, n, m, window


def _load_weights(block: MLSTMBlock, c: dict[str, Any]) -> None:
    """Copies the case's weights (strided or non-finite copies of them) into ``block``."""
    with torch.no_grad():
        for name in WEIGHTS:
            target = dict(block.named_parameters())[_PARAM[name]]
            target.copy_(c[name].reshape(target.shape))


_PARAM = {"conv_w": "conv.weight", "conv_b": "conv.bias", "qk_w": "qk.weight",
          "v_w": "v.weight", "gate_w": "gates.weight", "gate_b": "gates.bias",
          "norm_w": "cell_norm.weight", "skip": "skip"}


def _block_call(block: MLSTMBlock, c: dict[str, Any], fn: Callable[..., Any], seq: bool,
                **kwargs: Any) -> str:
    weights = {name: c[name] for name in WEIGHTS}
    state = [c["C"], c["n"], c["m"]]
    copies = {n: t.clone() if isinstance(t, Tensor) else t for n, t in c.items()}
    got = fn(c["up"], c["window"], c["reset"], weights, state, c["heads"], 1e-5, **kwargs)
    if got is None:
        return "declined"
    up = copies["up"] if seq else copies["up"][:, None]
    with cpu_kernels.disabled(), torch.no_grad():  # on copies: overwrite may write c's state
        want = _block_definition(block, up, copies)
    out = got[0] if seq else got[0][:, None]
    for name, a, b in zip(("out", "C", "n", "m", "window"), (out, *got[1]), want):
        _close(name, a, b.to(a.dtype), c.get("_row"))
    return "ran" if c.get("_row") == "all" else "equal"


def run_block_step(rng: random.Random, kind: str) -> str:
    block, c = _block_case(rng, seq=False)
    c = _mutate(rng, c, kind)
    before = {n: t.clone() for n, t in c.items()
              if isinstance(t, Tensor) and t.device.type == "cpu"}
    overwrite = rng.random() < 0.5
    result = _block_call(block, {**c, **{n: t.clone() for n, t in before.items()}} if overwrite
                         else c, cpu_kernels.mlstm_block_step, False, overwrite=overwrite)
    for name, t in before.items():  # never written without overwrite
        if not overwrite and not torch.equal(t.nan_to_num(), c[name].nan_to_num()):
            raise Mismatch(f"{name} was written without overwrite")
    return result


def run_block_forward(rng: random.Random, kind: str) -> str:
    block, c = _block_case(rng, seq=True)
    c = _mutate(rng, c, kind)
    return _block_call(block, c, cpu_kernels.mlstm_block_forward, True)


def run_block_pre(rng: random.Random, kind: str) -> str:
    block, c = _block_case(rng, seq=True)
    c = _mutate(rng, c, kind)
    weights = {name: c[name] for name in WEIGHTS}
    got = cpu_kernels.mlstm_block_pre(c["up"], c["window"], c["reset"], weights, c["heads"])
    if got is None:
        return "declined"
    _load_weights(block, c)
    with cpu_kernels.disabled(), torch.no_grad():
        xm = c["up"].chunk(2, dim=-1)[0]
        xc, window = block.conv(xm, c["window"], c["reset"])
        q, k, v, i, f = block._qkv_gates(F.silu(xc), xm)
    _close("qkv", got[0], torch.cat([q.flatten(-2), k.flatten(-2), v.flatten(-2)], -1),
           c.get("_row"))
    _close("gates", got[1], torch.cat([i, f], -1), c.get("_row"))
    _close("window", got[2], window, c.get("_row"))
    return "ran" if c.get("_row") == "all" else "equal"


def run_sequence_backward_op(rng: random.Random, kind: str) -> str:
    """The backward operator called directly with mutated saved tensors or gradients."""
    c = _cell_case(rng, seq=True)
    inputs = [c[n] for n in "qkvif"]
    state = (c["C"], c["n"], c["m"])
    h, C, n, m, *kept = torch.ops.xlstm_rl.mlstm_sequence(*inputs, *state, c["reset"], 1e-6,
                                                          True)
    saved = {"h": h, "ck_C": kept[0], "ck_n": kept[1], "m_all": kept[2],
             "dh": torch.randn_like(h), "dC": torch.randn_like(C), "dn": torch.randn_like(n),
             "dm": torch.randn_like(m)}
    s = _mutate(rng, saved, kind)
    changed = [name for name in saved if s[name] is not saved[name]]
    try:
        grads = torch.ops.xlstm_rl.mlstm_sequence_backward(
            *inputs, *state, c["reset"], 1e-6, s["h"], s["ck_C"], s["ck_n"], s["m_all"],
            s["dh"], s["dC"], s["dn"], s["dm"], rng.random() < 0.5)
    except RuntimeError as exc:  # the dispatcher's own check of the schema's types
        if "Expected a value of type" in str(exc) and kind == "not_tensor":
            return "refused"
        raise
    if any(g.device.type == "meta" for g in grads):
        return "declined"  # a meta input: the dispatcher ran the fake kernel, C never ran
    if not changed or kind in ("strided", "expanded", "nonfinite", "dtype") or all(
            s[name] is None and name.startswith("d") for name in changed):  # None: zeros
        return "equal"  # it ran on what it can take; values are checked in run_sequence
    raise Mismatch(f"a {kind} mutation of {changed} was accepted by the backward operator")


ENTRY_POINTS: dict[str, Callable[[random.Random, str], str]] = {
    "cell_step": run_cell_step, "sequence": run_sequence, "block_step": run_block_step,
    "block_forward": run_block_forward, "block_pre": run_block_pre,
    "sequence_backward_op": run_sequence_backward_op}


def main(seed: int, calls: int) -> int:
    rng, counts, failures = random.Random(seed), Counter[str](), 0
    torch.manual_seed(seed)
    for j in range(calls):
        name = rng.choice(list(ENTRY_POINTS))
        kind = rng.choice(MUTATIONS)
        try:
            outcome = ENTRY_POINTS[name](rng, kind)
        except ValueError as exc:
            outcome = "refused"
            if "\n" in str(exc):
                outcome = "failure"
                print(f"call {j}: {name}/{kind}: a multi-line ValueError: {exc!r}")
        except Exception:  # noqa: BLE001 - every other outcome is reported
            outcome = "failure"
            print(f"call {j}: {name}/{kind}:\n{traceback.format_exc()}")
        failures += outcome == "failure"
        counts[f"{name}:{outcome}"] += 1
    print(json.dumps(dict(sorted(counts.items()))))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
