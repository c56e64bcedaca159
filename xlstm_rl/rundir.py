"""Run directories: naming, creation, and where their files live.

A run directory holds::

    config.yaml                     the resolved run config
    metrics.jsonl                   one JSON line of training metrics per iteration
    tb/                             TensorBoard event files
    checkpoints/latest.safetensors  the most recent state (also written on interrupt)
    checkpoints/best.safetensors    the state with the best evaluation return so far
    eval.json                       the final evaluation summary
    .xlstm-rl-run                   marker: this folder was created by xlstm-rl (JSON)

``--overwrite`` deletes a folder only when it carries the marker and holds nothing but the
entries above (and stale ``.<name>.tmp<pid>`` files of killed writers); anything else in it is
refused with a one-line error and nothing is touched.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from xlstm_rl.errors import RunDirError
from xlstm_rl.version import __version__

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.safetensors"
BEST = "best.safetensors"
EVAL_FILE = "eval.json"
MARKER_FILE = ".xlstm-rl-run"
_TOP_FILES = frozenset({CONFIG_FILE, METRICS_FILE, EVAL_FILE, MARKER_FILE})
_TMP = re.compile(r"^\..+\.tmp\d+$")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a line torn by a kill is skipped (missing file: [])."""
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    """``<root>/<name>-<YYYYmmdd-HHMMSS>``, with ``-1``, ``-2``, ... if that exists already."""
    base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, j = base, 1
    while path.exists():
        path, j = base.with_name(f"{base.name}-{j}"), j + 1
    return path


def looks_like_run_dir(path: Path) -> bool:
    """True if ``path`` holds the files of an xlstm-rl run (old run directories included)."""
    return (path / CONFIG_FILE).is_file() or (path / CHECKPOINT_DIR).is_dir()


def _foreign_entry(path: Path) -> Path | None:
    """The first entry of run directory ``path`` that xlstm-rl does not write (None: all are
    its own). Symbolic links always count as foreign."""
    allowed_below = {CHECKPOINT_DIR: lambda n: n.endswith(".safetensors"),
                     TB_DIR: lambda n: n.startswith("events.out.tfevents.")}
    for entry in sorted(path.iterdir()):
        if entry.is_symlink():
            return entry
        if entry.name in _TOP_FILES or _TMP.match(entry.name):
            if not entry.is_file():
                return entry
            continue
        if entry.name not in allowed_below or not entry.is_dir():
            return entry
        for inner in sorted(entry.rglob("*")):
            if inner.is_symlink() or not inner.is_file() or not (
                    allowed_below[entry.name](inner.name) or _TMP.match(inner.name)):
                return inner
    return None


def _check_overwrite(path: Path) -> None:
    """Refuses to delete a folder unless xlstm-rl wrote everything in it."""
    if not (path / MARKER_FILE).is_file():
        if looks_like_run_dir(path):
            raise RunDirError(f"refusing to overwrite {path}: it has no {MARKER_FILE} marker "
                              "(a run directory of an older xlstm-rl, or not one at all); "
                              "delete it by hand if you no longer need it")
        raise RunDirError(f"{path} is not empty and does not look like an xlstm-rl run "
                          "directory; refusing to overwrite it")
    foreign = _foreign_entry(path)
    if foreign is not None:
        raise RunDirError(f"refusing to overwrite {path}: it holds {foreign.relative_to(path)}, "
                          "which xlstm-rl did not write; move it away or choose another "
                          "--run-dir")


def check_creatable_dir(path: str | Path) -> None:
    """Checks that folder ``path`` exists or can be created, by a probe that leaves nothing.

    Raises:
        RunDirError: If an ancestor is a regular file, or the nearest existing ancestor
            cannot be written (``/proc/...``, a read-only mount, missing permissions).
    """
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise RunDirError(f"cannot create run directory {path}: {existing} is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"cannot create run directory {path}: {existing} is a file, not a "
                          "directory")
    try:
        probe = tempfile.mkdtemp(prefix=".xlstm-rl-probe-", dir=existing)
    except OSError as exc:
        raise RunDirError(f"cannot write run directory {path}: {existing} is not writable "
                          f"({exc.strerror or type(exc).__name__})") from exc
    os.rmdir(probe)


def check_new_run_dir(path: str | Path, overwrite: bool = False) -> None:
    """Checks that a fresh run may use ``path``; changes nothing.

    Raises:
        RunDirError: If ``path`` cannot be created or written, or exists and is not an empty
            directory, unless ``overwrite`` is set and xlstm-rl wrote everything in it (its
            marker file is present and nothing else is there).
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise RunDirError(f"run directory {path} exists and is not a directory")
    check_creatable_dir(path)
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise RunDirError(f"run directory {path} already exists; pass --resume {path} to "
                              "continue it or --overwrite to replace it")
        _check_overwrite(path)


def write_marker(path: str | Path) -> Path:
    """Writes the marker that identifies ``path`` as a run directory created by xlstm-rl."""
    from xlstm_rl.fileio import atomic_write_text

    marker = Path(path) / MARKER_FILE
    info = {"library": "xlstm-rl", "version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return atomic_write_text(marker, json.dumps(info) + "\n")


def prepare_new_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Creates an empty run directory for a fresh run (see :func:`check_new_run_dir`).

    The directory gets the :data:`MARKER_FILE` marker, so a later ``--overwrite`` knows
    xlstm-rl made it.

    Args:
        path: The directory.
        overwrite: Delete an existing run directory first (only one xlstm-rl wrote).

    Returns:
        The directory, created, holding only the marker.

    Raises:
        RunDirError: As :func:`check_new_run_dir`; nothing is changed then.
    """
    path = Path(path)
    check_new_run_dir(path, overwrite)
    try:
        if path.is_dir() and any(path.iterdir()):
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        write_marker(path)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {path}: "
                          f"{exc.strerror or type(exc).__name__}") from exc
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
