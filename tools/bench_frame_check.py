"""Benchmark the up-front check of a frame folder: what opening an image folder costs.

Opening a folder (:class:`vidprop.io.image_folder.ImageFolderSource`) reads every frame's header
and its last bytes (the PNG IEND chunk / JPEG EOI marker), so that a truncated frame in the
middle of a folder is refused before any mask is written. This compares, on one DAVIS sequence:

* ``headers``: the image headers alone (size and EXIF orientation; the check before the end
  markers were added) - the baseline;
* ``open``: ``ImageFolderSource(folder)``, headers plus end markers (what vidprop does);
* ``draft``: a reduced-size JPEG decode of every frame (libjpeg DCT scaling, 1/8 size), the
  cheapest full read of the compressed data;
* ``decode``: a full decode of every frame (:func:`~vidprop.io.image_folder.read_image`).

Repetitions are interleaved (one of each per round) so load changes hit every variant alike;
the median counts. Files are in the page cache after the first round (a warm-up round is
discarded). Wall time and the thread's CPU time are printed, with ratios to ``headers``
measured in the same run. Run from the repository root:

    python tools/bench_frame_check.py --davis-root ../shared/davis-sample --sequence cows
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from PIL import Image  # noqa: E402

from vidprop.io.image_folder import ImageFolderSource, exif_orientation, read_image  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis-root", type=Path, default=REPO_ROOT.parent / "shared" / "davis-sample",
                        help="DAVIS root (default: ../shared/davis-sample next to the repository)")
    parser.add_argument("--sequence", default="cows", help="sequence under JPEGImages/480p (default: cows)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds after one warm-up (default: 7)")
    return parser.parse_args(argv)


def headers(folder: Path) -> None:
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as img:
            img.size, exif_orientation(img)


def open_folder(folder: Path) -> None:
    ImageFolderSource(folder)


def draft(folder: Path) -> None:
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as img:
            img.draft("RGB", (img.size[0] // 8, img.size[1] // 8))
            img.load()


def decode(folder: Path) -> None:
    for path in sorted(folder.glob("*.jpg")):
        read_image(path)


VARIANTS = {"headers": headers, "open": open_folder, "draft": draft, "decode": decode}


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = args.davis_root / "JPEGImages" / "480p" / args.sequence
    frames = len(list(folder.glob("*.jpg")))
    print(f"{folder}: {frames} frames; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds + 1):
        for name, fn in VARIANTS.items():
            wall, cpu = time.perf_counter(), time.thread_time()
            fn(folder)
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            if round_:
                times[name].append((wall, cpu))
    base_wall = statistics.median(w for w, _ in times["headers"])
    base_cpu = statistics.median(c for _, c in times["headers"])
    print(f"{'variant':8s} {'wall ms':>9s} {'cpu ms':>9s} {'ms/frame':>9s} {'wall ratio':>11s} {'cpu ratio':>10s}")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:8s} {wall * 1e3:9.1f} {cpu * 1e3:9.1f} {wall * 1e3 / frames:9.3f} {wall / base_wall:11.2f} {cpu / base_cpu:10.2f}")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
