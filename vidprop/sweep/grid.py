"""The grid of a sweep: ``--grid KEY=V1,V2,...`` axes over any config key, checked before any compute.

An axis is a dotted config key (a leaf of :class:`~vidprop.config.VidpropConfig`, as in ``--set``)
and a non-empty list of values, each parsed as YAML like a ``--set`` value (``0.1`` is a number,
``null`` is None, ``[1, 2]`` a list). The grid is the product of the axes, the first axis varying
slowest. Every point's config is built and validated up front, so a bad axis stops the sweep
before a frame is read, with the key named (:class:`~vidprop.errors.ConfigError`, exit code 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import re
from typing import Any, Iterable, Sequence

import yaml

from vidprop.config import VidpropConfig, result_fingerprint
from vidprop.config_base import iter_fields
from vidprop.errors import ConfigError

__all__ = ["Axis", "GridPoint", "Grid", "parse_axis", "build_grid", "config_value", "format_value"]


@dataclasses.dataclass(frozen=True)
class Axis:
    """One varied config key.

    Attributes:
        key: dotted config key, e.g. ``"propagation.topk"``.
        values: the values in the order given, as the config stores them (int -> float for float
            fields, lists -> tuples).
    """

    key: str
    values: tuple[Any, ...]

    @property
    def label(self) -> str:
        """The key without its section, for plot axes (``"topk"``, ``"timestep"``)."""
        return self.key.rsplit(".", 1)[-1]


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One setting of the grid.

    Attributes:
        index: position in the grid's product order (0-based).
        values: the axis values of this point, one per axis, in axis order.
        config: the complete config of this point (base config with the values applied).
        fingerprint: :func:`~vidprop.config.result_fingerprint` of ``config``.
    """

    index: int
    values: tuple[Any, ...]
    config: VidpropConfig = dataclasses.field(repr=False)
    fingerprint: str

    def name(self, axes: Sequence[Axis]) -> str:
        """A folder name: ``topk-5_temperature-0.1-<fingerprint prefix>`` (file-name-safe)."""
        parts = [f"{axis.label}-{format_value(v)}" for axis, v in zip(axes, self.values)]
        slug = re.sub(r"[^A-Za-z0-9._=-]+", "", "_".join(parts))[:80]
        return f"{slug}-{self.fingerprint[:8]}" if slug else self.fingerprint


@dataclasses.dataclass(frozen=True)
class Grid:
    """A validated grid: the base config, the axes and every point (product order)."""

    base: VidpropConfig = dataclasses.field(repr=False)
    axes: tuple[Axis, ...]
    points: tuple[GridPoint, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(axis.key for axis in self.axes)

    def axis(self, key: str) -> Axis | None:
        """The axis of ``key`` (None if ``key`` is not varied)."""
        return next((a for a in self.axes if a.key == key), None)


def format_value(value: Any) -> str:
    """A value as text for CSV cells, folder names and plot labels (lists as ``[1, 2]``, None as ``null``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return json.dumps(value)


def config_value(config: Any, key: str) -> Any:
    """The value of dotted ``key`` in a config tree."""
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """Split ``"KEY=V1,V2,..."`` into the key and its values, each parsed as YAML (as ``--set`` does).

    The values are read as a YAML flow sequence, so a list value is written in brackets
    (``features.dift.up_ft_index=1,[1,2]``) and a string holding a comma is quoted.

    Raises:
        ConfigError: no ``=``, an empty key, no value, or values that are not valid YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"--grid {text!r} is not of the form KEY=V1,V2,... (e.g. --grid propagation.topk=5,10,15)", key=key or None
        )
    if not raw.strip():
        raise ConfigError("empty grid axis: give at least one value (KEY=V1,V2,...)", key=key)
    try:
        values = yaml.safe_load(f"[{raw}]")
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"cannot parse grid values {raw!r} as a comma-separated YAML list ({reason})", key=key) from None
    if not isinstance(values, list) or not values:
        raise ConfigError("empty grid axis: give at least one value (KEY=V1,V2,...)", key=key)
    return key, values


def _check_key(key: str, leaves: Sequence[str]) -> None:
    if key in leaves:
        return
    if any(leaf.startswith(key + ".") for leaf in leaves):
        raise ConfigError("is a section, not an option: vary one of its keys (see --help)", key=key)
    close = difflib.get_close_matches(key, leaves, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else " (vidprop sweep --help lists every key)"
    raise ConfigError(f"unknown config key{hint}", key=key)


def _backend_sections(config: VidpropConfig) -> tuple[set[str], str]:
    """Config sections of all feature backends, and the one the config's backend reads."""
    from vidprop.features.base import get_backend, list_extractors

    sections = {f"features.{get_backend(name).config_field}" for name in list_extractors()}
    return sections, f"features.{get_backend(config.features.backend).config_field}"


def _check_used(axis_key: str, config: VidpropConfig) -> None:
    """An option of a feature backend other than the point's own changes nothing: say so."""
    sections, used = _backend_sections(config)
    section = axis_key.rsplit(".", 1)[0]
    if section in sections and section != used:
        raise ConfigError(
            f"has no effect with features.backend={config.features.backend} (its options are under {used}.*)", key=axis_key
        )


def build_grid(axes_text: Iterable[str], base: VidpropConfig, fixed_keys: Iterable[str] = ()) -> Grid:
    """Parse ``--grid`` strings and build every point's config, checking everything before any compute.

    Args:
        axes_text: ``"KEY=V1,V2,..."`` strings, one per axis (at least one).
        base: the config the grid varies (preset + ``--set``).
        fixed_keys: keys set explicitly on the command line (``--set``, shorthands); an axis may
            not also be one of them.

    Returns:
        The :class:`Grid`, points in product order (first axis slowest).

    Raises:
        ConfigError: naming the key: no axis, a malformed axis, an unknown key or a section, a key
            given twice or also with ``--set``, a value its field rejects, two values that give the
            same setting (also: an option that changes no mask, like ``runtime.overwrite``), or an
            option of a feature backend that the point does not use.
    """
    items = list(axes_text)
    if not items:
        raise ConfigError("no grid axis: give at least one --grid KEY=V1,V2,... (e.g. --grid propagation.topk=5,10)", key="--grid")
    leaves = [key for key, *_ in iter_fields(VidpropConfig)]
    fixed = set(fixed_keys)
    axes: list[Axis] = []
    for text in items:
        key, raw_values = parse_axis(text)
        _check_key(key, leaves)
        if any(a.key == key for a in axes):
            raise ConfigError("given in two --grid options (list all its values in one)", key=key)
        if key in fixed:
            raise ConfigError("given both with --set (or its shorthand flag) and as a --grid axis: give it once", key=key)
        configs = [base.with_overrides([(key, raw)]) for raw in raw_values]
        values = [config_value(config, key) for config in configs]
        fingerprints = [result_fingerprint(config) for config in configs]
        if len(values) > 1 and len(set(fingerprints)) == 1 and len(set(map(format_value, values))) > 1:
            raise ConfigError("does not change the masks (a run, cache or scoring option): set it with --set, not --grid", key=key)
        for j, fingerprint in enumerate(fingerprints):
            i = fingerprints.index(fingerprint)
            if i != j:
                same = format_value(values[i]) == format_value(values[j])
                reason = f"value {format_value(values[j])} is given twice" if same else (
                    f"values {format_value(values[i])} and {format_value(values[j])} give the same setting"
                )
                raise ConfigError(reason, key=key)
        axes.append(Axis(key, tuple(values)))
    points = []
    for index, combo in enumerate(itertools.product(*(axis.values for axis in axes))):
        config = base.with_overrides([(axis.key, value) for axis, value in zip(axes, combo)])
        for axis in axes:
            _check_used(axis.key, config)
        points.append(GridPoint(index, tuple(combo), config, result_fingerprint(config)))
    return Grid(base, tuple(axes), tuple(points))
