"""``vidprop propagate``: propagate masks through a video, a folder of videos or a YouTube-VOS root."""

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
Propagate masks through a video and write one indexed PNG per frame, named like the input
frames (00000.png, ... for video files), with the masks' object ids and the first mask's
palette. A given mask is written as given on its frame. The effective config goes to
OUT/config.yaml.

SOURCE is a folder of frames (jpg/png), a video file (mp4, mov, avi, mkv, webm), a folder of
many videos (sub-folders of frames and/or video files), or a YouTube-VOS root (JPEGImages/,
Annotations/ with masks on the frames where objects first appear, optional meta.json; no
--mask/--masks then). One video takes --mask FILE, the mask of its first frame or of frame
--mask-frame NAME. For many videos give --masks DIR holding <video>.png (the first frame's mask)
or <video>/<frame>.png (masks of any frames, matched by name: keyframes). Frames before a
video's first mask are filled by propagating backwards (--set propagation.backward=false leaves
them empty); a later mask replaces the labels of its frame and may add objects. Each video's
masks go to OUT/<video>/. Finished videos are skipped when the command is run again."""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "propagate", help="propagate masks through a video (or a folder of videos, or a YouTube-VOS root)", description=DESCRIPTION
    )
    parser.add_argument("source", metavar="SOURCE", help="folder of frames, video file, or folder of videos")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--mask", metavar="FILE", help="mask of a single video (indexed or grayscale PNG of object ids), of its first frame unless --mask-frame")
    masks.add_argument("--masks", metavar="DIR", help="masks of many videos: DIR/<video>.png (first frame) or DIR/<video>/<frame>.png (any frames, by name)")
    parser.add_argument("--mask-frame", metavar="NAME", help="the frame --mask belongs to, by name (e.g. 00004); default: the first frame")
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
    jobs = find_videos(args.source, out, mask=args.mask, masks_dir=args.masks, mask_frame=args.mask_frame)
    summary = run_videos(jobs, config, config_dirs=[out])
    print_summary(summary, out)
    return summary.exit_code
