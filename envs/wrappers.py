"""Wrapper specifications: turn callables, dotted paths or dicts into applied wrappers.

A wrapper specification is one of:

* a callable ``f(env) -> env`` (a wrapper class or a function);
* a string naming one, as ``"package.module.Name"`` or ``"package.module:Name"``;
* a dict ``{"name": <callable or string>, "kwargs": {...}}``; the callable is then called as
  ``f(env, **kwargs)``.

Specifications are applied in order, so the first one wraps the bare environment and the last
one is outermost.

With ``allow_imports=False`` a string is never resolved (nothing is imported or called by
name): only callables given by the calling code are applied. ``xlstm-rl eval`` uses that for
checkpoints it was not told to trust.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym

WrapperSpec = Callable[..., gym.Env] | str | Mapping[str, Any]


def import_object(path: str) -> Any:
    """Imports an object from a dotted path ``"pkg.mod.Name"`` or ``"pkg.mod:Name"``.

    Args:
        path: The path to import.

    Returns:
        The object.

    Raises:
        ValueError: If the path is malformed or the object cannot be imported (one-line message).
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"bad wrapper path {path!r}: expected 'package.module.Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"bad wrapper path {path!r}: cannot import module {module_name!r} "
                         f"({type(exc).__name__})") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"bad wrapper path {path!r}: {module_name!r} has no attribute "
                             f"{attr!r}")
        obj = getattr(obj, part)
    return obj


class ImportNotAllowedError(ValueError):
    """A name would have to be imported, but the caller forbade imports (one-line message)."""


def resolve_wrapper(spec: WrapperSpec, *, allow_imports: bool = True
                    ) -> tuple[Callable[..., gym.Env], dict[str, Any]]:
    """Resolves one wrapper specification into a callable and its keyword arguments.

    Args:
        spec: A callable, a dotted path, or a ``{"name": ..., "kwargs": {...}}`` dict.
        allow_imports: Resolve dotted paths by importing them; False refuses them with
            :class:`ImportNotAllowedError`.

    Returns:
        ``(wrapper, kwargs)`` such that ``wrapper(env, **kwargs)`` wraps ``env``.

    Raises:
        ValueError: If the specification is malformed, cannot be imported or is not callable.
    """
    kwargs: dict[str, Any] = {}
    target: Any = spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"name", "kwargs"}
        if "name" not in spec or unknown:
            raise ValueError(f"bad wrapper spec {dict(spec)!r}: expected keys 'name' and optional "
                             "'kwargs'")
        target, kwargs = spec["name"], dict(spec.get("kwargs") or {})
    if isinstance(target, str):
        if not allow_imports:
            raise ImportNotAllowedError(f"wrapper {target[:120]!r} is named by a string; "
                                        "imports are not allowed here")
        target = import_object(target)
    if not callable(target):
        raise ValueError(f"bad wrapper spec {spec!r}: {target!r} is not callable")
    return target, kwargs


def apply_wrappers(env: gym.Env, wrappers: Sequence[WrapperSpec], *,
                   allow_imports: bool = True) -> gym.Env:
    """Applies wrapper specifications to ``env`` in order (the last one is outermost).

    Args:
        env: The environment to wrap.
        wrappers: Wrapper specifications (see the module docstring).
        allow_imports: Resolve dotted paths by importing them; False refuses every string
            specification before anything is applied.

    Returns:
        The wrapped environment.

    Raises:
        ValueError: If a specification is invalid or a wrapper does not return an environment.
    """
    if isinstance(wrappers, (str, Mapping)) or callable(wrappers):
        wrappers = [wrappers]
    resolved = [resolve_wrapper(spec, allow_imports=allow_imports) for spec in wrappers]
    for spec, (wrapper, kwargs) in zip(wrappers, resolved):
        env = wrapper(env, **kwargs)
        if not isinstance(env, gym.Env):
            raise ValueError(f"wrapper {spec!r} returned {type(env).__name__}, not a gymnasium.Env")
    return env
