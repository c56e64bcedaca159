"""Typed conversion between plain data (YAML / JSON) and frozen dataclasses.

``from_data(cls, data)`` builds a (nested) dataclass from dicts, lists and scalars and checks
every value against the field's type hint (``int``, ``float``, ``bool``, ``str``, ``Optional``,
``Union``, ``Literal``, ``tuple[...]``, ``list[...]``, ``dict[...]``, nested dataclasses and
``Any``). ``to_data(obj)`` is its inverse (tuples become lists, so the result dumps as YAML).
Every problem raises :class:`ConfigError` with a one-line message naming the dotted key.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union, cast

from xlstm_rl.errors import ConfigError
from xlstm_rl.suggest import close_matches, format_suggestions


MAX_SIZE = 65536
"""Upper bound of width-like config sizes (hidden sizes, channels): nothing absurd is built."""


def _bounds_text(low: float | None, high: float | None, low_open: bool, integer: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    kind = "an integer" if integer else "a finite number"
    return f"{' and '.join(parts)} ({kind})" if parts else kind


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, integer: bool = False) -> None:
    """Checks that a config value is a finite number within ``[low, high]``.

    Meant for dataclass ``__post_init__`` methods; :func:`from_data` turns the ``ValueError``
    into a one-line :class:`ConfigError` naming the section.

    Args:
        name: Field name used in the message.
        value: The value to check.
        low: Smallest allowed value (None: unbounded).
        high: Largest allowed value (None: unbounded).
        low_open: Exclude ``low`` itself (``value > low``).
        integer: The value must be an ``int`` (not a bool).

    Raises:
        ValueError: If the value is not a number, not finite or out of range; the message
            says what is allowed.
    """
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and (isinstance(value, int) or not integer)
    if ok and isinstance(value, float):
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise ValueError(f"{name} must be {_bounds_text(low, high, low_open, integer)}, "
                         f"got {_show(value)}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields (string annotations included)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every field of a (nested) dataclass, nested fields included."""
    keys: list[str] = []
    for name, tp in field_types(cls).items():
        key = f"{prefix}{name}"
        keys.append(key)
        if dataclasses.is_dataclass(tp):
            keys.extend(all_keys(cast(type, tp), key + "."))
    return keys


def unknown_key_error(key: str, valid: Sequence[str]) -> ConfigError:
    """A one-line error for an unknown dotted key, suggesting the closest valid keys."""
    if "." in key:  # suggest fields, not whole sections, for a dotted key
        valid = [k for k in valid if "." in k] or list(valid)
    close = close_matches(key, valid)
    if not close:  # compare the last segment alone: 'lr' -> 'ppo.lr'
        close = close_matches(key, valid, normalize=lambda k: k.rsplit(".", 1)[-1])
    return ConfigError(f"unknown config key {key!r}{format_suggestions(close)}")


def _coerce_scalar(value: Any, tp: type, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, "
                      f"got {type(value).__name__} {_show(value)}")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    options = typing.get_args(tp)
    others = [o for o in options if o is not type(None)]
    if value is None:
        if type(None) in options:
            return None
    elif len(others) == 1:  # Optional[X]: X's own, more precise, message
        try:
            return coerce(value, others[0], key)
        except ConfigError as exc:
            if not str(exc).startswith(f"config key {key!r}: expected"):
                raise
    else:
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, key)
            except ConfigError:
                continue
    names = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"config key {key!r}: expected {names}, got {type(value).__name__} "
                      f"{_show(value)}")


def _coerce_sequence(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ConfigError(f"config key {key!r}: expected a list, got {type(value).__name__} "
                          f"{_show(value)}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r}: expected {len(args)} items, got {len(value)}")
        return tuple(coerce(v, a, f"{key}[{j}]") for j, (v, a) in enumerate(zip(value, args)))
    item = args[0] if args else Any
    items = [coerce(v, item, f"{key}[{j}]") for j, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_mapping(value: Any, tp: Any, key: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"config key {key!r}: expected a mapping, got {type(value).__name__} "
                          f"{_show(value)}")
    args = typing.get_args(tp) or (Any, Any)
    return {coerce(k, args[0], f"{key} (a key)"): coerce(v, args[1], f"{key}.{k}")
            for k, v in value.items()}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the type hint ``tp`` and converts it (lists to tuples, ...).

    Args:
        value: Plain data (from YAML or JSON).
        tp: A type hint.
        key: Dotted key of the value, for error messages.

    Returns:
        The converted value.

    Raises:
        ConfigError: If the value does not fit the type.
    """
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        cls = cast(type, tp)  # a type hint: the dataclass itself
        if isinstance(value, cls):
            return value
        return from_data(cls, value, prefix=key + ".")
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _coerce_union(value, tp, key)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        raise ConfigError(f"config key {key!r}: expected one of "
                          f"{', '.join(repr(c) for c in choices)}, got {_show(value)}")
    if origin in (tuple, list) or tp in (tuple, list):
        return _coerce_sequence(value, tp, key)
    if origin in (dict, Mapping) or tp is dict:
        return _coerce_mapping(value, tp, key)
    if isinstance(tp, type):
        return _coerce_scalar(value, tp, key)
    return value


def from_data(cls: type, data: Any, prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from a mapping, checking every key and value.

    Missing fields take their defaults; the dataclass's own ``__post_init__`` validation runs
    and a ``ValueError`` it raises becomes a :class:`ConfigError` naming the section.

    Args:
        cls: A dataclass type.
        data: A mapping of field names to plain values (``None`` means all defaults).
        prefix: Dotted prefix of this section, for error messages (``"ppo."``).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: For an unknown key, a value of the wrong type, a missing required field
            or a value the dataclass rejects.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        where = f"config section {prefix[:-1]!r}" if prefix else "a config"
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {_show(data)}")
    types_ = field_types(cls)
    for name in data:
        if name not in types_:
            raise unknown_key_error(f"{prefix}{name}", all_keys(cls, prefix))
    kwargs = {name: coerce(value, types_[name], f"{prefix}{name}") for name, value in data.items()}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"config key {prefix + missing[0]!r} is required")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        where = f"config section {prefix[:-1]!r}" if prefix else "config"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: {first}") from exc


def to_data(obj: Any) -> Any:
    """Converts a (nested) dataclass into plain dicts, lists and scalars (YAML/JSON friendly)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    return obj


def _unwrap_optional(tp: Any) -> Any:
    """``Optional[X]`` -> ``X``; any other hint unchanged."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def set_path(data: dict, cls: type, key: str, value: Any) -> None:
    """Sets dotted ``key`` in the plain config ``data`` (built for ``cls``), checking the key.

    Keys are checked against the dataclass fields; below a ``dict`` or ``Any`` field any key
    is allowed (``env.kwargs.corridor_length``). Values are checked later, by :func:`from_data`.

    Raises:
        ConfigError: If the key names no field.
    """
    tp: Any  # a type hint
    parts, node, tp = key.split("."), data, cls
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        tp = _unwrap_optional(tp)
        if tp is not None and dataclasses.is_dataclass(tp):
            types_ = field_types(cast(type, tp))
            if part not in types_:
                raise unknown_key_error(key, all_keys(cls))
            tp = types_[part]
        elif typing.get_origin(tp) in (dict, Mapping) or tp in (dict, Any, None):
            tp = None
        else:
            raise ConfigError(f"config key {'.'.join(parts[:depth])!r} is not a section; cannot "
                              f"set {key!r}")
        if last:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(f"config key {'.'.join(parts[:depth + 1])!r} is not a "
                                      f"mapping; cannot set {key!r}")
                node[part] = child
            node = child
