"""Small utilities shared by every stage's config dataclass.

Each stage owns a frozen dataclass whose fields are declared with :func:`option` (so every
field has a help line) and checked in ``__post_init__`` with :func:`check`. This module turns
nested dicts (from YAML or ``--set key=value`` overrides) into those dataclasses strictly:
an unknown key fails with the closest valid name, a value of the wrong type fails with the
dotted key, the value and the expected type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Mapping, TypeVar

from vidprop.errors import ConfigError

__all__ = ["option", "check", "from_dict", "to_dict", "field_help", "iter_fields", "replace_options"]

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with a help line (shown by the CLI and required by the tests)."""
    if not help:
        raise ValueError("every config option needs a help line")
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def check(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"invalid value {value!r} (expected {allowed})", key=key)


def field_help(cls: type, name: str) -> str:
    """The help line of field ``name`` of dataclass ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def iter_fields(cls: type, prefix: str = ""):
    """Yield ``(dotted_key, type, default, help)`` for every leaf field of a config tree."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, key + ".")
        else:
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                default = None
            yield key, tp, default, f.metadata.get("help", "")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int -> float and list -> tuple."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"invalid value {value!r} (expected {_type_name(tp)})", key=key)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"invalid value {value!r} (expected one of {', '.join(map(repr, allowed))})", key=key)
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"invalid value {value!r} (expected a list)", key=key)
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"invalid value {value!r} (expected {len(args)} items)", key=key)
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [_coerce(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
        return origin(items)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"invalid value {value!r} (expected a number)", key=key)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"invalid value {value!r} (expected an integer)", key=key)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"invalid value {value!r} (expected true or false)", key=key)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"invalid value {value!r} (expected a string)", key=key)
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"invalid value {value!r} (expected {_type_name(tp)})", key=key)
    return value


def from_dict(cls: type[C], data: Mapping[str, Any] | None, prefix: str = "", base: C | None = None) -> C:
    """Build dataclass ``cls`` from a nested mapping, strictly.

    Args:
        cls: a (frozen) config dataclass, possibly with nested config dataclasses.
        data: nested mapping of overrides; missing keys keep ``base``'s (or the default) value.
        prefix: dotted prefix used in error messages.
        base: an instance whose values are the starting point (defaults when None).

    Raises:
        ConfigError: unknown key (with the closest valid name), wrong type, or a value the
            dataclass's ``__post_init__`` rejects.
    """
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", key=prefix.rstrip(".") or None)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
        raise ConfigError(f"unknown config key{hint}", key=f"{prefix}{key}")
    kwargs: dict[str, Any] = {}
    for name in names:
        tp = hints[name]
        current = getattr(base, name) if base is not None else None
        if dataclasses.is_dataclass(tp):
            sub = data.get(name)
            if sub is not None and not isinstance(sub, Mapping):
                raise ConfigError(f"expected a mapping of options, got {sub!r}", key=f"{prefix}{name}")
            kwargs[name] = from_dict(tp, sub, prefix=f"{prefix}{name}.", base=current)
        elif name in data:
            kwargs[name] = _coerce(data[name], tp, f"{prefix}{name}")
        elif base is not None:
            kwargs[name] = current
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if exc.key and prefix and not exc.key.startswith(prefix):
            raise ConfigError(exc.reason, key=f"{prefix}{exc.key}") from None
        raise


def to_dict(obj: Any) -> dict[str, Any]:
    """A nested plain dict of a config dataclass (tuples become lists, for YAML)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(obj)


def replace_options(config: C, overrides: Mapping[str, Any], prefix: str) -> C:
    """A copy of the config dataclass ``config`` with the fields named in ``overrides`` replaced.

    For APIs that take a config plus keyword overrides (``create_extractor(..., ensemble_size=2)``,
    ``evaluate_davis(..., processes=2)``). The values are checked like YAML values.

    Args:
        prefix: the config's dotted section, for error messages (e.g. ``"scoring."``).

    Raises:
        ConfigError: an unknown name (with the closest valid one) or a bad value.
    """
    if not overrides:
        return config
    names = [f.name for f in dataclasses.fields(config)]
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid options: {', '.join(names)}"
            raise ConfigError(f"unknown option{hint}", key=f"{prefix}{key}")
    return from_dict(type(config), dict(overrides), prefix=prefix, base=config)
