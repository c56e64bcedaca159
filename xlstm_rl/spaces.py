"""JSON descriptions of gymnasium spaces, so a checkpoint can rebuild them without pickle.

Supported: ``Box``, ``Discrete``, ``MultiDiscrete``, ``MultiBinary``, ``Tuple`` and ``Dict``
(nested). Box bounds that are the same everywhere are stored as one number.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces


class SpaceError(ValueError):
    """A space that cannot be described or rebuilt (one-line message)."""


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


def space_from_json(data: Any) -> spaces.Space:
    """Rebuilds a gymnasium space from :func:`space_to_json` output.

    Raises:
        SpaceError: If the description is malformed.
    """
    try:
        kind = data["type"]
        if kind == "Box":
            shape, dtype = tuple(int(s) for s in data["shape"]), np.dtype(data["dtype"])
            return spaces.Box(_bound_from_json(data["low"], shape, dtype),
                              _bound_from_json(data["high"], shape, dtype), shape, dtype)
        if kind == "Discrete":
            return spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(np.asarray(data["nvec"]), dtype=data.get("dtype", "int64"),
                                        start=np.asarray(data.get("start", 0)))
        if kind == "MultiBinary":
            return spaces.MultiBinary(data["n"])
        if kind == "Tuple":
            return spaces.Tuple([space_from_json(s) for s in data["spaces"]])
        if kind == "Dict":
            return spaces.Dict({k: space_from_json(s) for k, s in data["spaces"].items()})
    except SpaceError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SpaceError(f"malformed space description {str(data)[:80]!r}: {exc}") from exc
    raise SpaceError(f"unknown space type {kind!r} in a space description")
