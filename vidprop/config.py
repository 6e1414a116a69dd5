"""The composed configuration of a vidprop run: stage configs + runtime, YAML load/dump, overrides.

Each stage owns its frozen config dataclass (:class:`~vidprop.io.config.DataConfig`,
:class:`~vidprop.features.config.FeatureConfig`, :class:`~vidprop.propagation.PropagationConfig`,
:class:`~vidprop.scoring.config.ScoringConfig`); this module only adds :class:`RuntimeConfig` and
composes them into :class:`VidpropConfig`. Loading is strict: an unknown key fails with the
closest valid name, a bad value with its dotted key (see :mod:`vidprop.config_base`).

Precedence, lowest first: dataclass defaults (the paper's DAVIS setting), the YAML file,
``overrides`` in order (``"propagation.topk=10"``; values parsed with :func:`yaml.safe_load`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import yaml

from vidprop import __version__
from vidprop.config_base import check, from_dict, option, to_dict
from vidprop.device import COMPUTE_DTYPES, is_device_name
from vidprop.engines.config import RayConfig
from vidprop.errors import ConfigError
from vidprop.features.config import FeatureConfig
from vidprop.io.config import DataConfig
from vidprop.propagation.config import PropagationConfig
from vidprop.scoring.config import ScoringConfig

__all__ = [
    "RuntimeConfig",
    "VidpropConfig",
    "load_config",
    "dump_config",
    "config_to_yaml",
    "parse_override",
    "result_fingerprint",
]

logger = logging.getLogger(__name__)

VERSION_KEY = "vidprop_version"

# Keys that earlier versions wrote into config.yaml: a file holding one loads, with a warning.
RETIRED_KEYS: dict[str, str] = {
    "runtime.seed": "it seeded a random generator that nothing draws from (the diffusion backends' noise draws use "
    "features.dift.seed and features.adm.seed; --seed sets both)",
}

class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: PyYAML silently keeps
    the last, so a file with two ``topk:`` lines would run with a value the reader may not see."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # keys merged in (<<) may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                    )
        return super().construct_mapping(node, deep)


def safe_load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also refuses duplicate keys (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


# "a.b=value" strings and/or (dotted key, value) pairs, or a mapping of dotted keys to values.
Overrides = Iterable["str | tuple[str, Any]"] | Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a run executes; none of it changes the masks except rounding (``device``, ``dtype``,
    ``tf32``, ``compile``)."""

    device: str = option("auto", help="torch device: 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'")
    dtype: str = option("float32", help="compute dtype of the feature extractor: float32, float16 or bfloat16")
    tf32: bool = option(
        True,
        help="on CUDA, the feature model's float32 matrix products and convolutions use TF32 tensor cores (factors "
        "rounded to a 10-bit mantissa, float32 sums; ~1e-3 relative error per product); false = full float32. "
        "Propagation always runs in full float32",
    )
    compile: bool = option(
        False,
        help="compile the feature model's UNet blocks with torch.compile (the first frames of each frame size wait "
        "for the compiler; features equal eager ones to rounding)",
    )
    write_queue: int = option(
        8,
        help="masks waiting for the writer thread, which encodes and fsyncs the PNGs while the next frames are "
        "computed; 0 = write them on the main thread",
    )
    num_shards: int = option(1, help="split the videos into this many shards (taken from WORLD_SIZE under torchrun)")
    shard_index: int = option(0, help="which shard this process runs, 0 <= shard_index < num_shards (RANK under torchrun)")
    overwrite: bool = option(False, help="redo videos whose outputs are already complete")
    fail_fast: bool = option(False, help="stop at the first failing video instead of reporting it and going on")
    overlay: bool = option(False, help="also write the masks blended over the frames, for a person to look at")
    overlay_format: Literal["mp4", "png"] = option(
        "mp4", help="overlay as one 'mp4' per video or as 'png' frames in an overlay/ folder per video"
    )
    engine: Literal["local", "ray"] = option(
        "local",
        help="where the videos run: 'local' (this process, one after another) or 'ray' (a pool of Ray actors fed "
        "longest video first, retrying videos whose actor dies; pip install 'vidprop[ray]')",
    )
    ray: RayConfig = option(default_factory=RayConfig, help="the Ray engine's cluster, workers and retries")

    def __post_init__(self) -> None:
        check(is_device_name(self.device), "device", self.device, "'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'")
        check(self.dtype in COMPUTE_DTYPES, "dtype", self.dtype, f"one of {', '.join(COMPUTE_DTYPES)}")
        check(isinstance(self.tf32, bool), "tf32", self.tf32, "true or false")
        check(isinstance(self.compile, bool), "compile", self.compile, "true or false")
        check(isinstance(self.write_queue, int) and not isinstance(self.write_queue, bool) and self.write_queue >= 0,
              "write_queue", self.write_queue, "an integer >= 0")
        check(self.num_shards >= 1, "num_shards", self.num_shards, "an integer >= 1")
        check(
            0 <= self.shard_index < self.num_shards,
            "shard_index",
            self.shard_index,
            f"0 <= shard_index < num_shards ({self.num_shards})",
        )
        check(
            self.engine == "local" or self.num_shards == 1,
            "engine",
            self.engine,
            "'local' when the videos are split into shards (Ray balances the videos itself: drop --num-shards)",
        )


@dataclasses.dataclass(frozen=True)
class VidpropConfig:
    """Every option of a run, one section per stage; defaults are the paper's DAVIS setting."""

    data: DataConfig = option(default_factory=DataConfig, help="frame loading and resizing")
    features: FeatureConfig = option(default_factory=FeatureConfig, help="feature extractor backend and cache")
    propagation: PropagationConfig = option(default_factory=PropagationConfig, help="label propagation")
    scoring: ScoringConfig = option(default_factory=ScoringConfig, help="DAVIS J&F scoring")
    runtime: RuntimeConfig = option(default_factory=RuntimeConfig, help="device, dtype, sharding, resume, overlays")

    def replace(self, **sections: Any) -> "VidpropConfig":
        """A copy with whole sections replaced, e.g. ``cfg.replace(runtime=rt)``."""
        return dataclasses.replace(self, **sections)

    def with_overrides(self, overrides: Overrides) -> "VidpropConfig":
        """A copy with dotted overrides applied (same syntax as :func:`load_config`)."""
        return from_dict(VidpropConfig, _overrides_tree(overrides), base=self)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into ``("a.b", parsed value)``; the value is parsed as YAML.

    Raises:
        ConfigError: no ``=`` or an empty key or unparsable value.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form KEY=VALUE (e.g. propagation.topk=10)", key=key or None)
    try:
        value = safe_load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse value {raw!r} as YAML ({exc})", key=key) from None
    return key, value


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError("empty part in dotted key", key=key)
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is a value, not a section", key=key)
        node = child
    last = parts[-1]
    if isinstance(value, Mapping) and isinstance(node.get(last), dict):
        _deep_merge(node[last], value)
    else:
        node[last] = dict(value) if isinstance(value, Mapping) else value


def _deep_merge(dest: dict, src: Mapping) -> None:
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dest.get(key), dict):
            _deep_merge(dest[key], value)
        else:
            dest[key] = dict(value) if isinstance(value, Mapping) else value


def _overrides_tree(overrides: Overrides) -> dict:
    tree: dict = {}
    if isinstance(overrides, str):
        overrides = [overrides]
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    for item in items:
        key, value = parse_override(item) if isinstance(item, str) else item
        _set_dotted(tree, key, value)
    return tree


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "config file does not exist"
        raise ConfigError(what, path=path)
    try:
        data = safe_load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file ({exc})", path=path) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML ({exc})", path=path) from None
    if data is None:
        # An empty file is as likely a mistake (wrong or truncated file) as a template with every
        # key commented out: run with the defaults, but never silently.
        logger.warning("%s: config file is empty (no keys); every option keeps its default", path)
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of sections at the top level, got {type(data).__name__}", path=path)
    version = data.pop(VERSION_KEY, None)
    if version is not None and str(version) != __version__:
        logger.info("%s was written by vidprop %s (this is %s)", path, version, __version__)
    _drop_retired(data, path)
    return data


def _drop_retired(tree: dict, path: Path) -> None:
    for dotted, why in RETIRED_KEYS.items():
        *sections, name = dotted.split(".")
        node: Any = tree
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and name in node:
            del node[name]
            logger.warning("%s: ignoring %s, an option this version of vidprop no longer has: %s", path, dotted, why)


def load_config(path: str | os.PathLike | None = None, overrides: Overrides = ()) -> VidpropConfig:
    """Build a :class:`VidpropConfig` from defaults, an optional YAML file and dotted overrides.

    Args:
        path: YAML file with any subset of the sections (``data``, ``features``, ``propagation``,
            ``scoring``, ``runtime``); a ``vidprop_version`` key (written by :func:`dump_config`)
            is accepted and ignored. An empty file (blank or only comments) means the defaults
            and is logged as a warning.
        overrides: ``"section.key=value"`` strings (values parsed as YAML, so ``10`` is an int,
            ``null`` is None, ``[1, 2]`` a list), ``(dotted_key, value)`` pairs, or a mapping of
            dotted keys to values; applied after the file, in order.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: missing/unreadable file (with its absolute path), unknown key (with the
            closest valid name) or bad value (with its dotted key).
    """
    tree: dict = {}
    abs_path = None
    if path is not None:
        abs_path = Path(path).expanduser().absolute()
        tree = _read_yaml(abs_path)
        try:
            # validate the file alone first, so that its errors name the file
            from_dict(VidpropConfig, tree)
        except ConfigError as exc:
            raise ConfigError(exc.reason, key=exc.key, path=abs_path) from None
    _deep_merge(tree, _overrides_tree(overrides))
    return from_dict(VidpropConfig, tree)


def config_to_yaml(cfg: VidpropConfig) -> str:
    """The YAML text of ``cfg`` with a ``vidprop_version`` line; :func:`load_config` reads it back."""
    data = {VERSION_KEY: __version__, **_yaml_safe(to_dict(cfg))}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _yaml_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def dump_config(cfg: VidpropConfig, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML to ``path`` atomically (with the vidprop version). Returns the path."""
    from vidprop.io.atomic import atomic_write

    path = Path(path)
    with atomic_write(path, "w") as fh:
        fh.write(config_to_yaml(cfg))
    return path


def result_fingerprint(cfg: VidpropConfig) -> str:
    """A short hash of every option that changes the output masks (of runtime only ``dtype`` and
    ``tf32``; not scoring or where the feature cache is).

    Used to tell whether a complete output folder was made with the same settings. Of the cache
    it covers the storage dtype: features come back rounded to it (float32 storage and no cache
    give the same features and the same hash).
    """
    data = to_dict(cfg)
    data.pop("runtime", None)
    data.pop("scoring", None)
    data.get("data", {}).pop("prefetch", None)
    data.get("features", {}).pop("cache", None)
    data["dtype"] = cfg.runtime.dtype
    # TF32 rounds the feature model's products on CUDA (~1e-3 relative): enough to move masks.
    data["tf32"] = cfg.runtime.tf32
    cache = cfg.features.cache
    if cache.dir is not None and cache.dtype != "float32":
        data["feature_cache_dtype"] = cache.dtype
    text = json.dumps(_yaml_safe(data), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
