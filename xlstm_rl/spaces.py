"""JSON descriptions of gymnasium spaces, so a checkpoint can rebuild them without pickle.

Supported: ``Box``, ``Discrete``, ``MultiDiscrete``, ``MultiBinary``, ``Tuple`` and ``Dict``
(nested). Box bounds that are the same everywhere are stored as one number.

Descriptions read from a file are checked before anything is allocated: element counts,
category counts, nesting depth and the number of sub-spaces are bounded (``MAX_*`` below), and
only numeric dtypes are accepted.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

from xlstm_rl.errors import SpaceError


MAX_ELEMENTS = 2**24
"""Most elements of one Box / MultiBinary / MultiDiscrete space (e.g. a 2048x2048x4 image)."""
MAX_CATEGORIES = 2**20
"""Largest ``n`` of a Discrete space (or entry of a MultiDiscrete ``nvec``)."""
MAX_NESTING = 8
"""Deepest nesting of Tuple / Dict spaces."""
MAX_SUBSPACES = 1024
"""Most sub-spaces of one Tuple / Dict space."""
_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                     "uint8", "uint16", "uint32", "uint64", "bool"})


def _int(value: Any, what: str, low: int, high: int) -> int:
    """``value`` as an int within ``[low, high]`` (bools and floats with a fraction refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise SpaceError(f"malformed space description: {what} must be an integer, got "
                         f"{str(value)[:40]!r}")
    if not low <= int(value) <= high:
        raise SpaceError(f"malformed space description: {what} must be in [{low}, {high}], "
                         f"got {str(value)[:40]}")
    return int(value)


def _shape(value: Any, what: str) -> tuple[int, ...]:
    """A shape of at most 8 non-negative dimensions holding at most MAX_ELEMENTS elements."""
    if not isinstance(value, list) or len(value) > 8:
        raise SpaceError(f"malformed space description: {what} must be a list of at most 8 "
                         "dimensions")
    shape = tuple(_int(v, f"{what} entries", 0, MAX_ELEMENTS) for v in value)
    total = 1
    for dim in shape:
        total *= dim
    if total > MAX_ELEMENTS:
        raise SpaceError(f"malformed space description: {what} {list(shape)} has {total} "
                         f"elements, more than {MAX_ELEMENTS}")
    return shape


def _dtype(value: Any) -> np.dtype:
    if not isinstance(value, str) or value not in _DTYPES:
        raise SpaceError(f"malformed space description: dtype must be one of "
                         f"{', '.join(sorted(_DTYPES))}, got {str(value)[:40]!r}")
    return np.dtype(value)


def _int_list(value: Any, what: str, low: int, high: int) -> np.ndarray:
    """A flat list (or one int) of bounded ints as an int64 array."""
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_ELEMENTS // 16:
        raise SpaceError(f"malformed space description: {what} has too many entries")
    return np.asarray([_int(v, f"{what} entries", low, high) for v in items], dtype=np.int64)


def _bound_to_json(values: np.ndarray) -> Any:
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size and np.all(flat == flat[0]):
        return _number(flat[0])
    return [_number(v) for v in flat]


def _number(value: float) -> float | str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def _bound_from_json(value: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    flat = np.asarray(value if isinstance(value, list) else [value], dtype=np.float64)
    full = np.broadcast_to(flat, (int(np.prod(shape)),)) if flat.size == 1 else flat
    return np.asarray(full, dtype=np.float64).reshape(shape).astype(dtype)


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """Describes a gymnasium space as JSON-compatible data.

    Args:
        space: The space.

    Returns:
        A dict with a ``type`` key and the parameters needed to rebuild the space.

    Raises:
        SpaceError: For a space type that is not supported.
    """
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _bound_to_json(space.low), "high": _bound_to_json(space.high)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist(),
                "start": np.asarray(space.start).tolist(), "dtype": str(space.dtype)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    raise SpaceError(f"unsupported space {type(space).__name__}: {space}")


def _children(data: dict[str, Any], keyed: bool) -> list[tuple[Any, Any]]:
    """The sub-space descriptions of a Tuple (a list) or a Dict (a mapping of str keys)."""
    children = data["spaces"]
    if keyed:
        if not isinstance(children, dict) or not all(isinstance(k, str) for k in children):
            raise SpaceError("malformed space description: a Dict space needs a mapping of "
                             "names to spaces")
        items = list(children.items())
    else:
        if not isinstance(children, list):
            raise SpaceError("malformed space description: a Tuple space needs a list of spaces")
        items = list(enumerate(children))
    if len(items) > MAX_SUBSPACES:
        raise SpaceError(f"malformed space description: more than {MAX_SUBSPACES} sub-spaces")
    return items


def _build(data: Any, depth: int) -> spaces.Space:
    if not isinstance(data, dict):
        raise SpaceError(f"malformed space description: expected a mapping, got "
                         f"{type(data).__name__}")
    if depth > MAX_NESTING:
        raise SpaceError(f"malformed space description: Tuple / Dict spaces nest more than "
                         f"{MAX_NESTING} levels deep")
    kind = data["type"]
    if kind == "Box":
        shape, dtype = _shape(data["shape"], "Box shape"), _dtype(data["dtype"])
        return spaces.Box(_bound_from_json(data["low"], shape, dtype),
                          _bound_from_json(data["high"], shape, dtype), shape, dtype)
    if kind == "Discrete":
        return spaces.Discrete(_int(data["n"], "Discrete n", 1, MAX_CATEGORIES),
                               start=_int(data.get("start", 0), "Discrete start",
                                          -2**62, 2**62))
    if kind == "MultiDiscrete":
        nvec = _int_list(data["nvec"], "MultiDiscrete nvec", 1, MAX_CATEGORIES)
        start = _int_list(data.get("start", 0), "MultiDiscrete start", -2**62, 2**62)
        return spaces.MultiDiscrete(nvec, dtype=_dtype(data.get("dtype", "int64")), start=start)
    if kind == "MultiBinary":
        n = data["n"]
        return spaces.MultiBinary(list(_shape(n, "MultiBinary n")) if isinstance(n, list)
                                  else _int(n, "MultiBinary n", 1, MAX_ELEMENTS))
    if kind in ("Tuple", "Dict"):
        items = [(k, _build(s, depth + 1)) for k, s in _children(data, kind == "Dict")]
        return spaces.Dict(dict(items)) if kind == "Dict" else spaces.Tuple([s for _, s in items])
    raise SpaceError(f"unknown space type {str(kind)[:40]!r} in a space description")


def space_from_json(data: Any) -> spaces.Space:
    """Rebuilds a gymnasium space from :func:`space_to_json` output.

    The description is checked before anything is allocated (see the ``MAX_*`` bounds).

    Raises:
        SpaceError: If the description is malformed or exceeds a bound (one line).
    """
    try:
        return _build(data, 1)
    except SpaceError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise SpaceError(f"malformed space description {str(data)[:80]!r}: "
                         f"{str(exc)[:120]}") from exc
