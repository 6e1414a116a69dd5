"""``vidprop sweep``: grid search over any config keys (DIFT's timestep x layer search), scored by J&F."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vidprop.cli.common import (
    add_config_options,
    add_davis_options,
    add_run_options,
    config_from_args,
    explicit_keys,
    parse_sequences,
    split_and_overrides,
)

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Run every point of a grid of settings and score it with J&F, doing the least work: each feature
setting is extracted once per frame, and one pass over a video's features feeds every propagation
setting. Axes are config keys with their values (--grid KEY=V1,V2,..., values parsed as YAML as in
--set, lists in brackets: --grid features.dift.up_ft_index=1,2,[1,2]); the grid is their product.

Data: a DAVIS split (--davis-root, scored as `vidprop davis` scores it), or your own videos:
SOURCE, a folder of videos (sub-folders of frames or video files), with --gt GT holding
GT/<video>/<frame>.png for every frame (scored as `vidprop evaluate --gt GT` scores it; the first
ground-truth mask is the first frame's).

Writes into --out: sweep.csv (a row per grid point: the varied keys, J&F-Mean, J-Mean, F-Mean,
J&F per sequence, seconds), best.yaml (the best point as a complete preset for --config), PNG plots
(J&F against t with a line per layer, heatmaps of pairs of axes; needs `pip install vidprop[plot]`)
and points/<point>/ with each point's masks. An interrupted sweep keeps its finished points:
run the same command again to continue (--overwrite redoes everything)."""

EXAMPLE = """\
example:
  vidprop sweep --davis-root DAVIS --split val --config configs/davis2017_dift_sd.yaml \\
      --grid features.dift.timestep=0,25,51,101,201,301 --grid features.dift.up_ft_index=1,2,3 \\
      --grid propagation.topk=5,10,15 --grid propagation.temperature=0.1,0.2 --out runs/sweep

"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("sweep", help="grid search over config keys, scored by J&F", description=DESCRIPTION + "\n\n" + EXAMPLE)
    parser.add_argument("source", metavar="SOURCE", nargs="?", default=None, help="generic mode: a folder of videos (with --gt)")
    parser.add_argument("--gt", metavar="DIR", default=None, help="generic mode: ground truth GT/<video>/<frame>.png of every frame")
    add_davis_options(parser, required=False)
    parser.add_argument(
        "--grid", metavar="KEY=V1,V2,...", action="append", default=[],
        help="a grid axis: a config key and its values (repeatable; the grid is the product of the axes)",
    )
    parser.add_argument("--out", metavar="DIR", required=True, help="sweep folder: sweep.csv, best.yaml, plots, points/")
    add_config_options(parser, set_help="; a value without '=' is the DAVIS split (--set val)")
    add_run_options(parser, flags=("--overwrite",))
    return parser


def _data(args: argparse.Namespace, split: str):
    from vidprop.errors import InputError
    from vidprop.sweep.data import DavisSweepData, FolderSweepData

    sequences = parse_sequences(args.sequences)
    if args.davis_root is not None:
        if args.source is not None or args.gt is not None:
            raise InputError("give either --davis-root ROOT, or SOURCE with --gt GT, not both")
        return DavisSweepData(args.davis_root, split=split, sequences=sequences, resolution=args.resolution)
    if args.source is None or args.gt is None:
        raise InputError("give the data: --davis-root ROOT (a DAVIS split), or SOURCE --gt GT (your own videos and ground truth)")
    return FolderSweepData(args.source, args.gt, sequences=sequences)


def run(args: argparse.Namespace) -> int:
    from vidprop.sweep import build_grid, run_sweep
    from vidprop.sweep.grid import format_value
    from vidprop.sweep.plots import INSTALL_HINT

    split = split_and_overrides(args)
    config = config_from_args(args)
    grid = build_grid(args.grid, config, fixed_keys=explicit_keys(args))
    data = _data(args, split)
    out = Path(args.out)
    result = run_sweep(grid, data, out, overwrite=config.runtime.overwrite)
    print(f"{len(result.results)} of {len(grid.points)} grid points scored ({result.resumed} from an earlier run) -> {result.csv}")
    ranked = sorted(result.results.values(), key=lambda r: (-r.j_and_f, r.index))
    for r in ranked[:5]:
        setting = ", ".join(f"{k}={format_value(v)}" for k, v in zip(grid.keys, grid.points[r.index].values))
        print(f"  J&F-Mean {r.j_and_f:.6f}  J {r.j_mean:.6f}  F {r.f_mean:.6f}  {setting}")
    if result.best_yaml is not None:
        print(f"best: {result.best_yaml}")
    if result.plots:
        print("plots: " + " ".join(str(p) for p in result.plots))
    else:
        from vidprop.sweep.plots import plots_available

        if not plots_available():
            print(f"no plots: matplotlib is not installed ({INSTALL_HINT})")
    return 0
