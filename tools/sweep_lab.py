"""Sweep the weight-free Lab backend's settings by DAVIS J&F.

Each grid point runs the whole pipeline (``vidprop.pipeline.run_davis`` with
``features.backend=lab``) on a DAVIS root and scores it with the official-parity scorer.
Results go to ``<out>/sweep.json`` and a table on stdout, best first.

Examples::

    python tools/sweep_lab.py --davis ../shared/davis-sample --out /tmp/sweep_lab \\
        --grid stride=8,16 --grid texture=true,false --grid bias=0.5,1,2 --grid positional_weight=0,1
    python tools/sweep_lab.py --davis ../shared/davis-sample --out /tmp/sweep_lab --sequences car-shadow,dog \\
        --set propagation.topk=10

On a CPU shared with other jobs, run with ``OMP_NUM_THREADS=1`` (oversubscribed OpenMP threads made
propagation ~20x slower here) and ``--set scoring.processes=1``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidprop.config import load_config  # noqa: E402
from vidprop.log import set_progress_enabled, set_verbosity  # noqa: E402
from vidprop.pipeline import run_davis  # noqa: E402


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["stride=8,16", "texture=true"]`` -> {"stride": [8, 16], "texture": [True]} (values parsed as YAML)."""
    grid: dict[str, list] = {}
    for item in items:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"--grid {item!r}: expected KEY=V1,V2,...")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "davis-sample")
    parser.add_argument("--out", type=Path, required=True, help="results folder (one sub-folder per grid point)")
    parser.add_argument("--grid", action="append", default=[], help="features.lab option and values, e.g. stride=8,16 (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="other config override, e.g. propagation.topk=10 (repeatable)")
    parser.add_argument("--sequences", default=None, help="comma-separated subset of the split")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 avoids OpenMP oversubscription on a busy machine; also set OMP_NUM_THREADS=1)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    set_verbosity(logging.WARNING)
    set_progress_enabled(False)
    grid = parse_grid(args.grid) or {"stride": [8]}
    sequences = args.sequences.split(",") if args.sequences else None
    rows = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        name = "_".join(f"{k}-{v}" for k, v in point.items())
        overrides = ["features.backend=lab", *(f"features.lab.{k}={json.dumps(v)}" for k, v in point.items()), *args.set]
        config = load_config(overrides=overrides)
        t0 = time.perf_counter()
        run = run_davis(args.davis, args.out / name, config, split=args.split, sequences=sequences)
        scores = run.scores
        row = {**point, "j_and_f": scores.j_and_f_mean, "j": scores.j_mean, "f": scores.f_mean,
               "seconds": time.perf_counter() - t0, "overrides": overrides}
        rows.append(row)
        print(f"{name}: J&F {row['j_and_f']:.4f} (J {row['j']:.4f}, F {row['f']:.4f}) in {row['seconds']:.0f} s", flush=True)
    rows.sort(key=lambda r: -r["j_and_f"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps({"davis": str(args.davis), "sequences": sequences, "rows": rows}, indent=2))
    print("\nbest first:")
    for row in rows:
        print("  " + ", ".join(f"{k}={row[k]}" for k in grid) + f": J&F {row['j_and_f']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
