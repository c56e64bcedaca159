"""Run directories: naming, creation, and where their files live.

A run directory holds::

    config.yaml                     the resolved run config
    metrics.jsonl                   one JSON line of training metrics per iteration
    tb/                             TensorBoard event files
    checkpoints/latest.safetensors  the most recent state (also written on interrupt)
    checkpoints/best.safetensors    the state with the best evaluation return so far
    eval.json                       the final evaluation summary
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.safetensors"
BEST = "best.safetensors"
EVAL_FILE = "eval.json"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (one-line message)."""


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    """``<root>/<name>-<YYYYmmdd-HHMMSS>``, with ``-1``, ``-2``, ... if that exists already."""
    base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, j = base, 1
    while path.exists():
        path, j = base.with_name(f"{base.name}-{j}"), j + 1
    return path


def looks_like_run_dir(path: Path) -> bool:
    """True if ``path`` holds the files of an xlstm-rl run."""
    return (path / CONFIG_FILE).is_file() or (path / CHECKPOINT_DIR).is_dir()


def check_new_run_dir(path: str | Path, overwrite: bool = False) -> None:
    """Checks that a fresh run may use ``path``; changes nothing.

    Raises:
        RunDirError: If ``path`` exists and is not an empty directory, unless ``overwrite``
            is set and it looks like a run directory (an unrelated folder is never deleted).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise RunDirError(f"run directory {path} already exists; pass --resume {path} to "
                              "continue it or --overwrite to replace it")
        if not looks_like_run_dir(path):
            raise RunDirError(f"{path} is not empty and does not look like an xlstm-rl run "
                              "directory; refusing to overwrite it")


def prepare_new_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Creates an empty run directory for a fresh run (see :func:`check_new_run_dir`).

    Args:
        path: The directory.
        overwrite: Delete an existing run directory first.

    Returns:
        The directory, created and empty.

    Raises:
        RunDirError: As :func:`check_new_run_dir`; nothing is changed then.
    """
    path = Path(path)
    check_new_run_dir(path, overwrite)
    if path.is_dir() and any(path.iterdir()):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_path(run_dir: str | Path, which: str = "latest") -> Path:
    """``<run_dir>/checkpoints/<which>.safetensors``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"{which}.safetensors"


def find_checkpoint(source: str | Path, prefer: tuple[str, ...] = ("best", "latest")) -> Path:
    """A checkpoint file from a file path or a run directory.

    Args:
        source: A checkpoint file, or a run directory (its ``checkpoints/`` are searched).
        prefer: Checkpoint names to try in a run directory, in order.

    Returns:
        The checkpoint path (a file path is returned unchanged, even if missing, so the
        checkpoint loader reports it).

    Raises:
        RunDirError: If ``source`` is a directory without any of the preferred checkpoints.
    """
    source = Path(source)
    if not source.is_dir():
        return source
    for which in prefer:
        if checkpoint_path(source, which).is_file():
            return checkpoint_path(source, which)
    names = " or ".join(f"{CHECKPOINT_DIR}/{w}.safetensors" for w in prefer)
    raise RunDirError(f"{source} holds no checkpoint ({names} not found)")
