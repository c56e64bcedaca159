"""``xlstm-rl bench {cores,kernels,ppo,r2d2,compile}``: run a benchmark, write its JSON report."""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xlstm_rl.cli.errors import UserError, as_user_error, check_device

# what -> (module, function)
_BENCHES: dict[str, tuple[str, str]] = {
    "cores": ("xlstm_rl.bench_cores", "bench_cores"),
    "kernels": ("xlstm_rl.kernels.bench", "bench_kernels"),
    "ppo": ("xlstm_rl.agents.ppo.bench", "bench_ppo"),
    "r2d2": ("xlstm_rl.agents.r2d2.bench", "bench_r2d2"),
    "compile": ("xlstm_rl.bench_compile", "bench_compile"),
}


def _load(what: str) -> Callable[..., Any]:
    module_name, func_name = _BENCHES[what]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UserError(f"bench {what} is not available in this install "
                            f"({module_name} is missing)") from exc
        raise
    return getattr(module, func_name)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _rank(key: str) -> int | None:
    """Priority of a report key in the one-line digest (None: not a headline number)."""
    for rank, word in enumerate(("speedup", "sps", "relative", "ratio", "over")):
        if (key == word) if word == "sps" else (word in key):
            return rank
    return None


def _headline(report: Any, prefix: str = "", depth: int = 0) -> list[tuple[int, str]]:
    """``(rank, "key=value")`` for the numbers a reader looks at first."""
    found: list[tuple[int, str]] = []
    if not isinstance(report, dict) or depth > 3:
        return found
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found.extend(_headline(value, name + ".", depth + 1))
        elif isinstance(value, float) and (rank := _rank(str(key))) is not None:
            found.append((rank, f"{name}={value:.4g}"))
    return found


def _summary(report: Any, limit: int = 4) -> str:
    """A one-line digest of a report: its first few headline numbers."""
    items = [text for _, text in sorted(_headline(report), key=lambda item: item[0])]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def run_bench(args: argparse.Namespace) -> int:
    """Runs ``xlstm-rl bench``; see :func:`xlstm_rl.cli.build_parser`.

    Returns:
        0 on success.
    """
    func = _load(args.what)
    device = check_device(args.device or _default_device())
    out = Path(args.out or f"bench-{args.what}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with as_user_error():  # e.g. a GPU benchmark asked to run on a CPU
        if args.what == "kernels":
            report = func(device, str(out))
        else:
            report = func(out, device=device)
    digest = _summary(report)
    print(f"bench {args.what} on {device}: {digest + '; ' if digest else ''}report: {out}")
    return 0
