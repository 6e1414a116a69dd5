"""``vidprop extract``: fill the feature cache for a source or a DAVIS split (e.g. before sweeps)."""

from __future__ import annotations

import argparse
import logging

from vidprop.cli.common import (
    add_config_options,
    add_davis_options,
    add_engine_options,
    add_run_options,
    config_from_args,
    parse_sequences,
    print_failed,
    quiet_secondary_ranks,
    split_and_overrides,
)

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Compute the features of every frame of SOURCE (a video, a folder of frames or a folder of
videos) or of a DAVIS split (--davis-root) and store them in the feature cache
(--cache-dir DIR, i.e. features.cache.dir). Later propagate/davis runs with the same feature
settings and cache folder read them instead of recomputing. Frames already cached are skipped."""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("extract", help="fill the feature cache for a source or a DAVIS split", description=DESCRIPTION)
    parser.add_argument("source", metavar="SOURCE", nargs="?", default=None, help="video, folder of frames or folder of videos")
    add_davis_options(parser, required=False)
    add_config_options(parser, set_help="; a value without '=' is the DAVIS split (--set val)")
    add_run_options(parser, flags=("--fail-fast",))
    add_engine_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from vidprop.errors import InputError
    from vidprop.pipeline import extract

    quiet_secondary_ranks()
    split = split_and_overrides(args)
    config = config_from_args(args)
    if (args.source is None) == (args.davis_root is None):
        raise InputError("give either SOURCE or --davis-root ROOT")
    summary = extract(
        args.source,
        config,
        davis_root=args.davis_root,
        split=split,
        sequences=parse_sequences(args.sequences),
        resolution=args.resolution,
    )
    frames = print_failed(summary)
    print(f"{summary.count('done')} video(s), {frames} frames in the cache {config.features.cache.dir}; {summary.count('failed')} failed")
    return summary.exit_code
