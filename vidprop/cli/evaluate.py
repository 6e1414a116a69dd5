"""``vidprop evaluate``: DAVIS-2017 J&F of a folder of predicted masks."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vidprop.cli.common import parse_sequences
from vidprop.io.davis import RESOLUTIONS

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Score predicted masks with the DAVIS-2017 J&F measures. With --davis-root and --results the
numbers are those of the official semi-supervised evaluation (davis2017-evaluation), exactly;
with --gt and --pred any two folders of <seq>/<frame>.png are scored, objects being all the ids
found in them. Writes global_results-<set>.csv and per-sequence_results-<set>.csv (official
names and columns, 3 decimals) into --out, always recomputed, and prints a table.

Frame order: DAVIS parity mode sorts frame names as text, as the official tool does (10.png
before 2.png; a warning says when names are not zero-padded); generic mode sorts them naturally.
Missing sequences are an error that lists them all; after a run of some sequences only, score
those with --sequences A,B (or --skip-missing). 255 is void; binary 0/255 masks need --binary."""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help="score predicted masks (DAVIS J&F)", description=DESCRIPTION)
    davis = parser.add_argument_group("DAVIS parity mode")
    davis.add_argument("--davis-root", metavar="ROOT", help="DAVIS folder (ImageSets/2017, Annotations/<resolution>)")
    davis.add_argument("--results", metavar="DIR", help="predictions: DIR/<seq>/<frame>.png")
    davis.add_argument("--set", dest="split", default="val", metavar="SPLIT", help="split to score (default: val)")
    davis.add_argument("--sequences", metavar="A,B", help="score only these sequences of the split (comma-separated)")
    davis.add_argument(
        "--resolution", default="480p", choices=RESOLUTIONS, help="ground-truth resolution folder (predictions must have its size)"
    )
    generic = parser.add_argument_group("generic folders")
    generic.add_argument("--gt", metavar="DIR", help="ground truth: DIR/<seq>/<frame>.png")
    generic.add_argument("--pred", metavar="DIR", help="predictions with the same names as --gt")
    generic.add_argument(
        "--ignore-void", action="store_true", help="leave ground-truth void (255) pixels out of J and F (default: background)"
    )
    generic.add_argument(
        "--score-first-last", action="store_true",
        help="also score the first and the last frame, and the frame where each object first appears (its given frame)",
    )
    generic.add_argument(
        "--binary",
        action="store_true",
        help="binary masks (DAVIS-2016 style, 0/255 or 0/1): every non-zero pixel, 255 included, is the one object "
        "(default: 255 is void and ids are objects)",
    )
    parser.add_argument("--out", metavar="DIR", help="folder for the CSVs (default: the predictions folder, as the official tool)")
    parser.add_argument("--processes", type=int, metavar="N", help="worker processes (default: one per CPU core)")
    parser.add_argument(
        "--skip-missing", action="store_true", help="skip sequences without predictions (with a warning) instead of failing"
    )
    return parser


def _check_mode(args: argparse.Namespace) -> bool:
    """True for DAVIS parity mode; raises ConfigError on a mix of the two modes."""
    from vidprop.errors import ConfigError

    davis = args.davis_root is not None or args.results is not None
    generic = args.gt is not None or args.pred is not None
    if davis == generic:
        raise ConfigError("give either --davis-root ROOT --results DIR, or --gt DIR --pred DIR", key="evaluate")
    if davis and (args.davis_root is None or args.results is None):
        raise ConfigError("DAVIS mode needs both --davis-root and --results", key="--davis-root/--results")
    if generic and (args.gt is None or args.pred is None):
        raise ConfigError("generic mode needs both --gt and --pred", key="--gt/--pred")
    if generic and args.sequences:
        raise ConfigError("--sequences only applies to --davis-root/--results", key="--sequences")
    if generic and args.resolution != "480p":
        raise ConfigError("--resolution only applies to --davis-root/--results", key="--resolution")
    if davis and (args.ignore_void or args.score_first_last or args.binary):
        raise ConfigError(
            "--ignore-void, --score-first-last and --binary only apply to --gt/--pred (DAVIS parity mode follows the "
            "official tool)",
            key="--ignore-void/--score-first-last/--binary",
        )
    return davis


def _check_report_folder(args: argparse.Namespace, parity: bool, out: Path) -> None:
    """Refuse a report folder among the ground truth, before scoring (the predictions folder is
    the official tool's default place for the CSVs)."""
    from vidprop.io.outputs import check_output_locations

    if parity:
        root = Path(args.davis_root)
        truth = [("DAVIS ground truth", root / "Annotations" / args.resolution), ("DAVIS split lists", root / "ImageSets")]
    else:
        truth = [("ground-truth folder", args.gt)]
    check_output_locations([("report folder", out)], truth)


def run(args: argparse.Namespace) -> int:
    from vidprop.io.outputs import prepare_output_folder
    from vidprop.scoring import ScoringConfig, evaluate_davis, evaluate_folders, format_table, write_reports

    parity = _check_mode(args)
    out = Path(args.out if args.out is not None else (args.results if parity else args.pred))
    _check_report_folder(args, parity, out)
    config = ScoringConfig(
        ignore_void=args.ignore_void,
        processes=args.processes,
        on_missing_sequence="skip" if args.skip_missing else "error",
        skip_first_last=not args.score_first_last,
        binary=args.binary,
    )
    if parity:
        sequences = parse_sequences(args.sequences)
        scores = evaluate_davis(args.davis_root, args.results, args.split, sequences, config=config, resolution=args.resolution)
    else:
        scores = evaluate_folders(args.gt, args.pred, config=config)
    prepare_output_folder(out, "report folder")  # only now: bad input found by scoring leaves no folder
    global_csv, per_sequence_csv = write_reports(scores, out, args.split)
    print(format_table(scores), end="")
    logger.info("wrote %s and %s", global_csv, per_sequence_csv)
    return 0
