"""Crash-safe file writes: a temporary file in the same folder, fsync, then an atomic rename.

A reader (or a run resumed after ``kill -9``) sees either the old file or the new one, never a
half-written mix. Temporary files are named ``.<name>.tmp<pid>``;
:func:`remove_stale_temp_files` deletes those left by a killed writer.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_TMP = re.compile(r"^\..+\.tmp\d+$")


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name used while writing ``path`` (same folder, so rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flushes a folder's entries (the rename itself) to disk, where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_temp(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """fsyncs the finished temporary file ``tmp`` and renames it over ``path``."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (parents must exist). Returns the path."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically. Returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Deletes ``.<name>.tmp<pid>`` files in ``folder`` (not below it) left by killed writers.

    Only names of exactly that form are touched.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.is_file() and _TMP.match(entry.name):
            entry.unlink()
            removed.append(entry)
    return removed
