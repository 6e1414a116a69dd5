#!/usr/bin/env python
"""Time ``vidprop sweep`` against the equivalent separate ``vidprop davis`` runs, in one run.

The baseline is what a user did before the sweep existed: one ``vidprop davis`` command per grid
point. Both sides run as fresh processes (start-up and imports included) on the same sequences
with the Lab preset; the sweep's folder and every baseline folder are new each repetition (no
resume, no feature cache). Repetitions are interleaved (the order alternates), and the report
gives wall time and the children's CPU time (user + sys) of each side, their ratios, and the load
average before and after. Every sweep row is checked against its separate run (J&F-Mean printed
to 6 decimals, and the masks byte for byte). Example (the README's figures)::

    python tools/bench_sweep.py --davis-root ../shared/davis-sample --repeat 1

``--frames N`` copies only the first N frames of each sequence into a temporary DAVIS root and
``--short-side`` sets ``data.short_side`` (for quick runs; the README says which were used).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "configs" / "davis2017_lab.yaml"
DEFAULT_SEQUENCES = "blackswan,car-shadow,drift-straight,libby"
DEFAULT_GRID = ("propagation.topk=5,10,15,20", "propagation.temperature=0.05,0.1,0.2")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    cpu0, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, cpu, proc.stdout


def _small_root(davis_root: Path, sequences: list[str], frames: int, dest: Path) -> Path:
    for seq in sequences:
        for sub, ext in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
            out = dest / sub / "480p" / seq
            out.mkdir(parents=True, exist_ok=True)
            for path in sorted((davis_root / sub / "480p" / seq).glob(f"*{ext}"))[:frames]:
                shutil.copy2(path, out / path.name)
    (dest / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (dest / "ImageSets" / "2017" / "val.txt").write_text("\n".join(sequences) + "\n")
    return dest


def _axes(grid: list[str]) -> list[tuple[str, list[str]]]:
    return [(key, values.split(",")) for key, _, values in (g.partition("=") for g in grid)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis-root", type=Path, default=REPO.parent / "shared" / "davis-sample")
    parser.add_argument("--sequences", default=DEFAULT_SEQUENCES, help=f"comma-separated (default {DEFAULT_SEQUENCES})")
    parser.add_argument("--grid", action="append", default=None, help="a sweep axis (repeatable; default: 4 topk x 3 temperatures)")
    parser.add_argument("--frames", type=int, default=None, help="use only the first N frames of each sequence")
    parser.add_argument("--short-side", type=int, default=None, help="data.short_side for both sides (default: the preset's 480)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads of every process (default 1: a busy shared machine)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    grid = args.grid or list(DEFAULT_GRID)
    sequences = args.sequences.split(",")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_sweep_"))
    root = args.davis_root if args.frames is None else _small_root(args.davis_root, sequences, args.frames, work / "davis")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "VIDPROP_VERBOSITY": "WARNING"}
    vidprop = [sys.executable, "-m", "vidprop"]
    common = ["--davis-root", str(root), "--sequences", args.sequences, "--config", str(LAB), "--device", "cpu"]
    if args.short_side is not None:
        common += ["--set", f"data.short_side={args.short_side}"]
    axes = _axes(grid)
    points = list(itertools.product(*(values for _, values in axes)))
    load_before = os.getloadavg()
    runs: list[dict] = []
    checked = 0
    for rep in range(args.repeat):
        sides = ["sweep", "separate"] if rep % 2 == 0 else ["separate", "sweep"]
        timing: dict[str, tuple[float, float]] = {}
        separate_jf: dict[tuple, float] = {}
        for side in sides:
            if side == "sweep":
                out = work / f"sweep-{rep}"
                cmd = [*vidprop, "sweep", *common, "--out", str(out), *itertools.chain(*(("--grid", g) for g in grid))]
                timing[side] = _run(cmd, env)[:2]
            else:
                wall = cpu = 0.0
                for values in points:
                    out = work / (f"separate-{rep}-" + "_".join(values))
                    sets = list(itertools.chain(*(("--set", f"{k}={v}") for (k, _), v in zip(axes, values))))
                    w, c, text = _run([*vidprop, "davis", *common, *sets, "--out", str(out)], env)
                    wall, cpu = wall + w, cpu + c
                    separate_jf[values] = float(re.search(r"J&F-Mean: ([0-9.]+)", text).group(1))
                timing[side] = (wall, cpu)
        with open(work / f"sweep-{rep}" / "sweep.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            values = tuple(row[k] for k, _ in axes)
            if round(float(row["J&F-Mean"]), 6) != separate_jf[values]:
                raise SystemExit(f"sweep row {values} J&F {row['J&F-Mean']} != separate run {separate_jf[values]}")
            point = next(p for p in (work / f"sweep-{rep}" / "points").iterdir() if p.name.startswith(
                "_".join(f"{k.rsplit('.', 1)[-1]}-{v}" for (k, _), v in zip(axes, values)) + "-"))
            separate = work / (f"separate-{rep}-" + "_".join(values))
            for seq in sequences:
                for png in (separate / seq).glob("*.png"):
                    if png.read_bytes() != (point / seq / png.name).read_bytes():
                        raise SystemExit(f"mask {png} differs from the sweep's {point / seq / png.name}")
            checked += 1
        runs.append({"order": sides, "sweep": timing["sweep"], "separate": timing["separate"]})
        print(f"rep {rep}: sweep {timing['sweep'][0]:.1f} s wall / {timing['sweep'][1]:.1f} s CPU; "
              f"{len(points)} separate runs {timing['separate'][0]:.1f} s / {timing['separate'][1]:.1f} s", flush=True)
    load_after = os.getloadavg()
    wall_ratio = sum(r["separate"][0] for r in runs) / sum(r["sweep"][0] for r in runs)
    cpu_ratio = sum(r["separate"][1] for r in runs) / sum(r["sweep"][1] for r in runs)
    frames = sum(len(list((root / "JPEGImages" / "480p" / s).glob("*.jpg"))) for s in sequences)
    summary = {
        "grid": grid, "points": len(points), "sequences": sequences, "frames": frames,
        "short_side": args.short_side or 480, "threads": args.threads, "runs": runs,
        "ratio_wall": wall_ratio, "ratio_cpu": cpu_ratio, "rows_checked": checked,
        "load_average_before": load_before, "load_average_after": load_after,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    print(json.dumps(summary, indent=2))
    print(f"sweep is {wall_ratio:.2f}x faster (wall) and uses {cpu_ratio:.2f}x less CPU than {len(points)} separate "
          f"`vidprop davis` runs; {checked} rows equal to their separate runs (J&F and masks); "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
