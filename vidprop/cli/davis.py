"""``vidprop davis``: run a DAVIS split into the official results layout, then score it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vidprop.cli.common import (
    add_config_options,
    add_davis_options,
    add_engine_options,
    add_run_options,
    config_from_args,
    parse_sequences,
    print_summary,
    quiet_secondary_ranks,
    split_and_overrides,
)

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Propagate the first-frame annotation of every sequence of a DAVIS split and write
OUT/<seq>/<frame>.png (the layout the official davis2017-evaluation reads), OUT/config.yaml,
then score them: OUT/global_results-<split>.csv and OUT/per-sequence_results-<split>.csv, and
the J&F table on stdout. Finished sequences are skipped when run again (--overwrite redoes them).
Under torchrun (or with --num-shards/--shard-index) the sequences are split between processes;
the process that finds every sequence complete scores, the others say that scoring waits."""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("davis", help="run and score a DAVIS split", description=DESCRIPTION)
    add_davis_options(parser)
    parser.add_argument("--out", metavar="DIR", required=True, help="results folder (OUT/<seq>/<frame>.png and the CSVs)")
    parser.add_argument("--no-score", action="store_true", help="only write the masks, do not score them")
    add_config_options(parser, set_help="; a value without '=' is the DAVIS split, as in the official tool (--set val)")
    add_run_options(parser)
    add_engine_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from vidprop.pipeline import run_davis

    quiet_secondary_ranks()
    split = split_and_overrides(args)
    config = config_from_args(args)
    out = Path(args.out)
    result = run_davis(
        args.davis_root,
        out,
        config,
        split=split,
        sequences=parse_sequences(args.sequences),
        resolution=args.resolution,
        score=not args.no_score,
    )
    print_summary(result.summary, out)
    if result.scores is not None:
        from vidprop.scoring import format_table

        print(format_table(result.scores))
        print(f"J&F-Mean: {result.scores.j_and_f_mean:.6f}")
        print(f"reports: {result.reports[0]} {result.reports[1]}")
    elif result.pending and not args.no_score:
        if result.summary.exit_code != 0:
            print(f"not scored: {len(result.summary.failed)} sequence(s) failed (fix them and run the command again)")
        else:
            print(f"scoring waits for {len(result.pending)} sequence(s) still running in other shards: {', '.join(result.pending)}")
    return result.summary.exit_code
