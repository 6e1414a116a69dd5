"""``vidprop propagate``: propagate first-frame masks through a video or a folder of videos."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vidprop.cli.common import (
    add_config_options,
    add_engine_options,
    add_run_options,
    config_from_args,
    print_summary,
    quiet_secondary_ranks,
)

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Propagate a first-frame mask through a video and write one indexed PNG per frame, named like
the input frames (00000.png, ... for video files), with the mask's object ids and palette. The
first mask itself is written as frame 0. The effective config goes to OUT/config.yaml.

SOURCE is a folder of frames (jpg/png), a video file (mp4, mov, avi, mkv, webm), or a folder of
many videos (sub-folders of frames and/or video files). For many videos give --masks DIR holding
<video>.png or <video>/<first frame>.png (e.g. a DAVIS Annotations/480p folder); each video's
masks go to OUT/<video>/. Finished videos are skipped when the command is run again."""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "propagate", help="propagate a first-frame mask through a video (or a folder of videos)", description=DESCRIPTION
    )
    parser.add_argument("source", metavar="SOURCE", help="folder of frames, video file, or folder of videos")
    masks = parser.add_mutually_exclusive_group(required=True)
    masks.add_argument("--mask", metavar="FILE", help="first-frame mask of a single video (indexed or grayscale PNG of object ids)")
    masks.add_argument("--masks", metavar="DIR", help="first-frame masks of many videos: DIR/<video>.png or DIR/<video>/<first>.png")
    parser.add_argument("--out", metavar="DIR", required=True, help="output folder for the masks (created if missing)")
    add_config_options(parser)
    add_run_options(parser)
    add_engine_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from vidprop.pipeline import find_videos, run_videos

    quiet_secondary_ranks()
    config = config_from_args(args)
    out = Path(args.out)
    jobs = find_videos(args.source, out, mask=args.mask, masks_dir=args.masks)
    summary = run_videos(jobs, config, config_dirs=[out])
    print_summary(summary, out)
    return summary.exit_code
