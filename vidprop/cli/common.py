"""Options shared by the sub-commands: the config file, ``--set`` overrides and shorthand flags.

Help lines come from the config dataclasses' field metadata, so the CLI and the YAML presets
never disagree. Precedence, lowest first: defaults, ``--config`` file, ``--set`` (in order),
shorthand flags (``--device``, ``--topk``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from typing import Any, Callable

from vidprop.config import VidpropConfig, load_config
from vidprop.config_base import iter_fields
from vidprop.io.davis import RESOLUTIONS

__all__ = [
    "Shorthand",
    "SHORTHANDS",
    "add_config_options",
    "add_run_options",
    "add_engine_options",
    "config_from_args",
    "explicit_keys",
    "config_keys_help",
    "quiet_secondary_ranks",
    "print_failed",
    "print_summary",
    "split_and_overrides",
    "add_davis_options",
    "parse_sequences",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Shorthand:
    """A plain flag that sets one config key (``--device cuda`` = ``--set runtime.device=cuda``)."""

    flag: str
    key: str
    type: Callable[[str], Any] | None = str  # None: a switch that sets True
    metavar: str | None = None
    group: str = "config"  # "config" (every command), "run" (per-video outputs) or "engine" (many videos)
    also: tuple[str, ...] = ()  # further keys set to the same value


SHORTHANDS: tuple[Shorthand, ...] = (
    Shorthand("--device", "runtime.device", metavar="DEVICE"),
    Shorthand("--dtype", "runtime.dtype", metavar="DTYPE"),
    Shorthand("--seed", "features.dift.seed", int, metavar="N", also=("features.adm.seed",)),
    Shorthand("--backend", "features.backend", metavar="NAME"),
    Shorthand("--model", "features.dift.model_id", metavar="ID_OR_DIR"),
    Shorthand("--cache-dir", "features.cache.dir", metavar="DIR"),
    Shorthand("--short-side", "data.short_side", int, metavar="PIXELS"),
    Shorthand("--topk", "propagation.topk", int, metavar="K"),
    Shorthand("--num-shards", "runtime.num_shards", int, metavar="N"),
    Shorthand("--shard-index", "runtime.shard_index", int, metavar="I"),
    Shorthand("--overwrite", "runtime.overwrite", None, group="run"),
    Shorthand("--fail-fast", "runtime.fail_fast", None, group="run"),
    Shorthand("--overlay", "runtime.overlay", None, group="run"),
    Shorthand("--engine", "runtime.engine", metavar="NAME", group="engine"),
    Shorthand("--address", "runtime.ray.address", metavar="ADDRESS", group="engine"),
    Shorthand("--workers", "runtime.ray.workers", int, metavar="N", group="engine"),
    Shorthand("--gpus-per-worker", "runtime.ray.gpus_per_worker", float, metavar="N", group="engine"),
    Shorthand("--cpus-per-worker", "runtime.ray.cpus_per_worker", int, metavar="N", group="engine"),
    Shorthand("--memory-per-worker", "runtime.ray.memory_per_worker_gb", float, metavar="GIB", group="engine"),
    Shorthand("--max-tries", "runtime.ray.max_tries", int, metavar="N", group="engine"),
)


def _config_help() -> dict[str, str]:
    return {key: help_ for key, _, _, help_ in iter_fields(VidpropConfig)}


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def config_keys_help() -> str:
    """One line per config key (``key = default  help``), for ``--help`` epilogs."""
    lines = ["config keys (set with --set KEY=VALUE or in the --config YAML file):"]
    for key, _, default, help_ in iter_fields(VidpropConfig):
        lines.append(f"  {key} = {_yaml_text(default)}\n      {help_}")
    return "\n".join(lines)


def _yaml_text(value: Any) -> str:
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def _dest(shorthand: Shorthand) -> str:
    return "_sh_" + shorthand.flag.lstrip("-").replace("-", "_")


def _add_shorthands(group: argparse._ArgumentGroup, which: str, flags: tuple[str, ...] | None = None) -> None:
    fields = _config_help()
    for sh in SHORTHANDS:
        if sh.group != which or (flags is not None and sh.flag not in flags):
            continue
        equivalent = " and ".join(f"--set {key}=..." for key in (sh.key, *sh.also))
        help_ = _escape(f"{fields[sh.key]} (= {equivalent})")
        if sh.type is None:
            group.add_argument(sh.flag, dest=_dest(sh), action="store_const", const=True, default=None, help=help_)
        else:
            group.add_argument(sh.flag, dest=_dest(sh), type=sh.type, default=None, metavar=sh.metavar, help=help_)


def add_config_options(parser: argparse.ArgumentParser, set_help: str = "") -> None:
    """``--config``, ``--set`` and the config shorthands (device, dtype, seed, backend, ...)."""
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML preset, e.g. configs/davis2017_dift_sd.yaml (any subset of the keys listed below)",
    )
    group.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key, e.g. --set propagation.topk=10 (repeatable; value parsed as YAML)" + set_help,
    )
    _add_shorthands(group, "config")
    parser.epilog = config_keys_help()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def add_run_options(parser: argparse.ArgumentParser, flags: tuple[str, ...] | None = None) -> None:
    """Resume/failure/overlay switches of commands that write per-video outputs (``flags``: a subset)."""
    _add_shorthands(parser.add_argument_group("run control"), "run", flags)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--engine`` and the Ray engine's options, for commands that run many videos."""
    _add_shorthands(
        parser.add_argument_group("engine", "where the videos run (--engine ray: a Ray cluster; pip install 'vidprop[ray]')"),
        "engine",
    )


def config_from_args(args: argparse.Namespace):
    """The :class:`~vidprop.config.VidpropConfig` of parsed ``args`` (file, then --set, then flags).

    Raises:
        ConfigError: a Ray engine flag (``--workers``, ...) while the engine is not ``ray``.
    """
    from vidprop.errors import ConfigError

    overrides: list[Any] = list(getattr(args, "overrides", None) or [])
    ray_flags = []
    for sh in SHORTHANDS:
        value = getattr(args, _dest(sh), None)
        if value is not None:
            overrides.extend((key, value) for key in (sh.key, *sh.also))
            if sh.key.startswith("runtime.ray."):
                ray_flags.append(sh.flag)
    config = load_config(getattr(args, "config", None), overrides)
    if ray_flags and config.runtime.engine != "ray":
        raise ConfigError(f"{', '.join(ray_flags)} only apply to the Ray engine: add --engine ray", key="runtime.engine")
    return config


def explicit_keys(args: argparse.Namespace) -> set[str]:
    """The config keys set on the command line (``--set KEY=VALUE`` and shorthand flags), not by ``--config``."""
    from vidprop.config import parse_override

    keys = {parse_override(text)[0] for text in getattr(args, "overrides", None) or []}
    for sh in SHORTHANDS:
        if getattr(args, _dest(sh), None) is not None:
            keys.update((sh.key, *sh.also))
    return keys


def quiet_secondary_ranks() -> None:
    """Under torchrun, keep only rank 0's INFO logs and progress bars."""
    from vidprop.log import set_progress_enabled

    rank = os.environ.get("RANK")
    if rank not in (None, "", "0"):
        logging.getLogger("vidprop").setLevel(logging.WARNING)
        set_progress_enabled(False)


def print_failed(summary) -> int:
    """One line per failed video, on stdout; returns the frames of all outcomes."""
    for outcome in summary.failed:
        print(f"FAILED {outcome.name}: {outcome.error}")
    return sum(o.frames for o in summary.outcomes)


def print_summary(summary, out_dir) -> None:
    """One line per failed video and a total line, on stdout."""
    frames = print_failed(summary)
    print(
        f"{summary.count('done')} video(s) done ({frames} frames), {summary.count('skipped')} already complete, "
        f"{summary.count('failed')} failed -> {out_dir}"
    )


def split_and_overrides(args: argparse.Namespace, default: str = "val") -> str:
    """Separate a DAVIS split given as ``--set val`` (as in the official tool) from ``--set KEY=VALUE``.

    Removes the split from ``args.overrides`` and returns it (``args.split`` or ``default``
    when none was given).

    Raises:
        InputError: two different splits.
    """
    from vidprop.errors import ConfigError, InputError

    overrides = list(getattr(args, "overrides", None) or [])
    splits = [o for o in overrides if "=" not in o]
    for split in splits:
        if "." in split:
            raise ConfigError(f"--set {split}: a config override needs a value (--set {split}=VALUE)", key=split)
    args.overrides = [o for o in overrides if "=" in o]
    explicit = getattr(args, "split", None)
    chosen = set(splits) | ({explicit} if explicit else set())
    if len(chosen) > 1:
        raise InputError(f"several DAVIS splits given: {', '.join(sorted(chosen))} (give one)")
    return chosen.pop() if chosen else default


def add_davis_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--davis-root``, ``--split`` (or ``--set val``), ``--sequences``, ``--resolution``."""
    group = parser.add_argument_group("DAVIS")
    group.add_argument("--davis-root", metavar="ROOT", required=required, help="DAVIS folder with JPEGImages/, Annotations/, ImageSets/")
    group.add_argument("--split", default=None, help="split list ImageSets/2017/<split>.txt (default val; also accepted as --set val)")
    group.add_argument("--sequences", metavar="A,B", default=None, help="comma-separated sequences to run (default: the whole split)")
    group.add_argument("--resolution", default="480p", choices=RESOLUTIONS, help="DAVIS resolution folder (of frames and ground truth)")


def parse_sequences(text: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; None (option not given) -> None, the whole split.

    Raises:
        ConfigError: the option names no sequence (``""``, ``","``: an empty shell variable), which
            would otherwise run the whole split.
    """
    from vidprop.errors import ConfigError

    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ConfigError(f"{text!r} names no sequence; leave --sequences out for the whole split", key="--sequences")
    return names
