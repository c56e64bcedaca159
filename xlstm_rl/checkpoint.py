"""Safe checkpoints: every tensor in a safetensors file, everything else in its JSON metadata.

Loading a checkpoint never runs code: there is no pickle and no ``torch.load``. A checkpoint
holds a nested state (dicts, lists and tuples of tensors, numpy arrays and plain scalars,
exactly as given: integer dict keys stay integers), stored as

* tensors under dotted names (``policy.core.proj.weight``, ``trainer.optimizer.state.0.exp_avg``);
* metadata (string to string, as safetensors requires):

  ``format``            ``"xlstm-rl-checkpoint"``
  ``format_version``    :data:`FORMAT_VERSION`
  ``library_version``   the xlstm-rl version that wrote it
  ``config``            the resolved run config (JSON)
  ``spaces``            observation and action spaces (JSON, see :mod:`xlstm_rl.spaces`)
  ``structure``         the nested state with tensors replaced by references (JSON)
  ``extra``             free-form JSON (run progress, evaluation results, ...)
  ``sha256``            a digest of all tensor bytes and of every metadata field above,
                        checked on load (format 1 files: of the tensors only)

Files are written to a temporary name, fsynced and renamed, so an interrupted save never
leaves a half-written checkpoint behind; a state holding a NaN or infinite floating-point
tensor is never written (:class:`NonFiniteCheckpointError`), so it cannot replace a good file.
Metadata are checked before anything is built from them: JSON nesting is bounded
(:data:`MAX_DEPTH`) and the state must be a mapping.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from xlstm_rl.fileio import commit_temp, temp_path
from xlstm_rl.errors import CheckpointError, NonFiniteCheckpointError
from xlstm_rl.version import __version__

FORMAT_NAME = "xlstm-rl-checkpoint"
FORMAT_VERSION = 2
"""Version written. Version 1 (digest over the tensors only) is still read."""
READABLE_VERSIONS = (1, 2)
_MAX_HEADER = 100 * 2**20
MAX_DEPTH = 64
"""Deepest nesting of JSON metadata (config, spaces, structure, extra) accepted."""
_DIGESTED_METADATA = ("format", "format_version", "library_version", "config", "spaces",
                      "structure", "extra")


@dataclass(frozen=True)
class Checkpoint:
    """The contents of a loaded checkpoint."""

    path: Path
    """File the checkpoint was read from."""
    state: dict[str, Any]
    """The nested state as saved (tensors, numpy arrays and plain values)."""
    config: dict[str, Any]
    """The resolved run config as plain data."""
    spaces: dict[str, Any] = field(default_factory=dict)
    """JSON descriptions of the ``observation`` and ``action`` spaces."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form JSON data saved with the checkpoint."""
    format_version: int = FORMAT_VERSION
    """Format version of the file."""
    library_version: str = __version__
    """xlstm-rl version that wrote the file."""


# ---------------------------------------------------------------------------- structure


def _encode(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replaces tensors in ``obj`` by references, collecting them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        return {"t": _add_tensor(tensors, name, obj)}
    if isinstance(obj, np.ndarray):
        return {"n": _add_tensor(tensors, name, torch.from_numpy(np.ascontiguousarray(obj)))}
    if isinstance(obj, np.generic):
        return {"v": obj.item()}
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"checkpoint state key {name}.{key!r}: only str and int keys "
                                "can be saved")
            items.append([key, _encode(value, f"{name}.{key}" if name else str(key), tensors)])
        return {"d": items}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{name}.{j}", tensors) for j, v in enumerate(obj)]
        return {"l" if isinstance(obj, list) else "u": items}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"v": obj}
    raise TypeError(f"checkpoint state {name!r}: cannot save a {type(obj).__name__} (only "
                    "tensors, numpy arrays, dicts, lists, tuples and plain scalars)")


def _add_tensor(tensors: dict[str, torch.Tensor], name: str, tensor: torch.Tensor) -> str:
    key, j = name, 1
    while key in tensors:  # 'a.b' as a key and a -> b nested would collide
        key, j = f"{name}#{j}", j + 1
    tensors[key] = tensor.detach().to("cpu").contiguous().clone()
    return key


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    (kind, value), = node.items()
    if kind == "t":
        return tensors[value]
    if kind == "n":
        return tensors[value].numpy()
    if kind == "v":
        return value
    if kind == "d":
        return {key: _decode(v, tensors) for key, v in value}
    items = [_decode(v, tensors) for v in value]
    return items if kind == "l" else tuple(items)


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """SHA-256 over the tensors (names, dtypes, shapes, bytes) and, from format 2 on, over
    the metadata fields in :data:`_DIGESTED_METADATA` (``metadata=None``: format 1 rule)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if metadata is not None:
        for key in _DIGESTED_METADATA:
            value = str(metadata.get(key, "")).encode()
            h.update(f"|{key}:{len(value)}:".encode())
            h.update(value)
    return h.hexdigest()


def _first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or inf (None if all are finite)."""
    for key, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel() \
                and not bool(torch.isfinite(t).all()):
            return key
    return None


# ---------------------------------------------------------------------------- save


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *,
                    config: dict[str, Any] | None = None, spaces: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Writes ``state`` and its metadata to a safetensors file (atomically).

    Args:
        path: Destination file; parent folders are created.
        state: Nested dicts / lists / tuples of tensors, numpy arrays and plain scalars.
        config: The resolved run config as plain data.
        spaces: ``{"observation": ..., "action": ...}`` space descriptions (JSON data).
        extra: Any JSON-compatible data.

    Returns:
        The path written.

    Raises:
        TypeError: If the state holds an object that cannot be saved without pickle.
        NonFiniteCheckpointError: If a floating-point tensor holds NaN or inf; nothing is
            written then.
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, "", tensors)
    path = Path(path)
    bad = _first_non_finite(tensors)
    if bad is not None:
        raise NonFiniteCheckpointError(f"not writing checkpoint {path}: tensor {bad!r} holds "
                                       "NaN or infinite values (the previous file, if any, is "
                                       "kept)")
    metadata = {
        "format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
        "library_version": __version__, "config": json.dumps(config or {}),
        "spaces": json.dumps(spaces or {}), "structure": json.dumps(structure),
        "extra": json.dumps(extra or {}),
    }
    metadata["sha256"] = _digest(tensors, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        commit_temp(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ---------------------------------------------------------------------------- load


def _not_safetensors(path: Path, head: bytes, why: str) -> CheckpointError:
    """The error for a file whose header does not parse, naming pickles and zips."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return CheckpointError(f"{path} is a Python pickle, not an xlstm-rl checkpoint; it was "
                               "not loaded (pickles can run code)")
    if head[:4] == b"PK\x03\x04":
        return CheckpointError(f"{path} is a zip archive (torch.save?), not an xlstm-rl "
                               "checkpoint; it was not loaded (it may hold a pickle)")
    return CheckpointError(f"{path} is truncated or not a safetensors checkpoint ({why})")


def _raw_header(path: Path) -> tuple[int, dict[str, Any]]:
    """Returns ``(header_length, header)`` of a safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _not_safetensors(path, head, f"{size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise _not_safetensors(path, head, f"header of {n} bytes in a file of {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise TypeError("header is not a JSON object")
    except (ValueError, TypeError, RecursionError) as exc:
        raise _not_safetensors(path, head, "unreadable header") from exc
    return n, header


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates the safetensors header of a checkpoint without loading tensors.

    Args:
        path: The checkpoint file.

    Returns:
        The header: tensor entries plus ``__metadata__``.

    Raises:
        CheckpointError: If the file is missing, is not a safetensors file (a pickle, a zip,
            ...), is truncated or corrupted, is not an xlstm-rl checkpoint, or has a format
            version this library cannot read.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    n, header = _raw_header(path)
    try:
        meta = header.get("__metadata__") or {}
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path} is corrupted: malformed safetensors header") from exc
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is a safetensors file but not an xlstm-rl checkpoint "
                              "(no 'format' metadata)")
    size = path.stat().st_size
    if 8 + n + end != size:
        raise CheckpointError(f"{path} is truncated or corrupted (expected {8 + n + end} bytes, "
                              f"found {size})")
    version = meta.get("format_version")
    if version not in [str(v) for v in READABLE_VERSIONS]:
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise CheckpointError(f"{path} has checkpoint format version {str(version)[:20]}, but "
                              f"xlstm-rl {__version__} reads versions {readable} only")
    if not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path} is corrupted: metadata values must be strings")
    return header


def _depth_ok(data: Any, limit: int) -> bool:
    """True if ``data`` nests dicts and lists at most ``limit`` levels deep (iteratively)."""
    todo = [(data, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return False
            values = node.values() if isinstance(node, dict) else node
            todo.extend((v, depth + 1) for v in values)
    return True


def _json_meta(meta: dict[str, str], key: str, path: Path) -> Any:
    """A metadata field parsed as JSON, nesting at most :data:`MAX_DEPTH` levels deep."""
    try:
        value = json.loads(meta.get(key) or "{}")
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is corrupted: metadata {key!r} is not valid JSON") from exc
    if not _depth_ok(value, MAX_DEPTH):
        raise CheckpointError(f"{path}: metadata {key!r} is nested more than {MAX_DEPTH} levels "
                              "deep; refusing it")
    return value


def _checked_digest(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """Checks the file's digest: format 2 covers the metadata too, format 1 tensors only."""
    v1 = meta.get("format_version") == "1"
    if _digest(tensors, None if v1 else meta) != meta.get("sha256"):
        changed = "" if v1 else " (or its metadata were changed)"
        raise CheckpointError(f"{path} is corrupted: tensor data do not match their "
                              f"checksum{changed}")


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, each copied into a fresh torch allocation (CPU).

    safetensors hands out tensors over the file's bytes, wherever its header left them (8, 20,
    32, ... bytes past a 64-byte boundary). torch's CPU matmul runs on MKL's sgemm, whose
    low-order bits depend on the memory alignment of its inputs, so a resumed run fed such
    tensors (the carried observation and recurrent state) would drift from the run it
    continues. torch's CPU allocator aligns every allocation to 64 bytes. One copy per tensor,
    the file's view of each dropped as soon as it is copied.

    Args:
        path: A safetensors file.

    Returns:
        The tensors by name.

    Raises:
        Exception: Whatever safetensors raises for a file it cannot read.
    """
    loaded = load_file(str(path), device="cpu")
    return {key: loaded.pop(key).clone() for key in list(loaded)}


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu"
                    ) -> Checkpoint:
    """Loads a checkpoint written by :func:`save_checkpoint`; runs no code from the file.

    Its tensors (and numpy arrays) are in memory of their own, 64-byte aligned (see
    :func:`load_tensors`).

    Args:
        path: The checkpoint file.
        device: Device the tensors are loaded onto.

    Returns:
        The :class:`Checkpoint`.

    Raises:
        CheckpointError: See :func:`read_header`; also if the tensors or metadata fail their
            digest, the metadata nest too deeply or the state is not a mapping.
    """
    path = Path(path)
    meta = read_header(path)["__metadata__"]
    try:
        tensors = load_tensors(path)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is corrupted: {str(exc).splitlines()[0][:120]}") from exc
    fields = {key: _json_meta(meta, key, path) for key in ("structure", "config", "spaces",
                                                            "extra")}
    for key, value in fields.items():
        if not isinstance(value, dict):
            raise CheckpointError(f"{path} is corrupted: metadata {key!r} is a "
                                  f"{type(value).__name__}, not a JSON object")
    _checked_digest(path, meta, tensors)
    try:
        state = _decode(fields.pop("structure"), tensors)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is corrupted: bad state structure") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is corrupted: the state is a {type(state).__name__}, "
                              "not a mapping")
    if str(device) != "cpu":
        state = _to_device(state, torch.device(device))
    return Checkpoint(path=path, state=state, format_version=int(meta["format_version"]),
                      library_version=meta.get("library_version", "unknown"), **fields)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
