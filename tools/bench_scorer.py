#!/usr/bin/env python
"""Time vidprop's J&F scorer against the official DAVIS-2017 evaluation and vos-benchmark.

Every tool scores the same predictions, as a fresh process (start-up and imports included), with
the same number of processes; runs are interleaved and repeated, and the ratios use the medians
of the same run. The official tool has no parallelism, so it is also compared with vidprop on one
process. Example (fetch the baselines first; the official tool needs pandas, so give it a Python
that has it)::

    python tools/bench_scorer.py --davis-root ../shared/davis-sample \\
        --results ../shared/davis-predictions/osvos \\
        --official /work/ext/davis2017-evaluation --vos-benchmark /work/ext/vos-benchmark \\
        --baseline-python /work/ext/venv/bin/python --processes 2 --repeat 3

A baseline whose path is not given is skipped. Two vidprop timings are shown: the scorer alone
(``vidprop.scoring``: evaluate and table, no CSVs) and the whole ``vidprop evaluate`` command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The scorer alone: evaluate and table, no CSVs. With a 7th
# argument "torch", torch runs first: forking is then unsafe and the scorer works in threads.
SCORER_ONLY = """
import sys
if sys.argv[6:] == ["torch"]:
    import torch
    torch.ones(256, 256) @ torch.ones(256, 256)
from vidprop.scoring import evaluate_davis, format_table
root, results, split, processes, out = sys.argv[1:6]
scores = evaluate_davis(root, results, split, processes=int(processes))
print(format_table(scores))
print("J&F-Mean %.6f" % scores.j_and_f_mean)
"""


def _link_results(results: Path, dest: Path) -> Path:
    """A fresh results folder of symlinks (the baselines write their CSVs into it)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for seq in sorted(p for p in results.iterdir() if p.is_dir()):
        (dest / seq.name).symlink_to(seq.resolve(), target_is_directory=True)
    return dest


def _cpu_seconds() -> float:
    """User + system CPU time of this process's finished children (and their reaped workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (all threads and worker processes) and stdout of ``cmd``."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, cpu, proc.stdout


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis-root", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True, help="predictions: DIR/<seq>/<frame>.png")
    parser.add_argument("--set", dest="split", default="val")
    parser.add_argument("--official", type=Path, help="checkout of davisvideochallenge/davis2017-evaluation")
    parser.add_argument("--vos-benchmark", type=Path, help="checkout of hkchengrex/vos-benchmark")
    parser.add_argument("--baseline-python", default=sys.executable, help="Python that runs the baselines")
    parser.add_argument(
        "--extra-vidprop-python", help="also time the scorer under this Python (e.g. one with the optional zlib-ng)"
    )
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--threads", action="store_true", help="also time the scorer after torch has run (it then works in threads)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the timings here")
    args = parser.parse_args(argv)
    for name in ("davis_root", "results", "official", "vos_benchmark"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    work = Path(tempfile.mkdtemp(prefix="bench_scorer_"))
    p = args.processes
    tools: dict[str, callable] = {}

    def vidprop_scorer(processes: int, python: str = sys.executable, torch_first: bool = False):
        def run():
            out = work / f"vidprop-{processes}"
            extra = ["torch"] if torch_first else []
            cmd = [python, "-c", SCORER_ONLY, str(args.davis_root), str(args.results), args.split, str(processes), str(out)]
            return _run(cmd + extra, env=env)

        return run

    def vidprop_cli():
        cmd = [sys.executable, "-m", "vidprop", "-q", "evaluate", "--davis-root", str(args.davis_root), "--results", str(args.results)]
        return _run(cmd + ["--set", args.split, "--processes", str(p), "--out", str(work / "vidprop-cli")], env=env)

    tools[f"vidprop scorer ({p} proc)"] = vidprop_scorer(p)
    tools["vidprop scorer (1 proc)"] = vidprop_scorer(1)
    if args.threads:
        tools[f"vidprop scorer ({p} threads, torch loaded)"] = vidprop_scorer(p, torch_first=True)
        tools["vidprop scorer (1 thread, torch loaded)"] = vidprop_scorer(1, torch_first=True)
    tools[f"vidprop evaluate CLI ({p} proc)"] = vidprop_cli
    if args.extra_vidprop_python:
        tools[f"vidprop scorer ({p} proc, extra Python)"] = vidprop_scorer(p, args.extra_vidprop_python)
        tools["vidprop scorer (1 proc, extra Python)"] = vidprop_scorer(1, args.extra_vidprop_python)
    if args.official:
        def official():
            res = _link_results(args.results, work / "official")
            cmd = [args.baseline_python, str(args.official / "evaluation_method.py"), "--davis_path", str(args.davis_root)]
            return _run(cmd + ["--set", args.split, "--task", "semi-supervised", "--results_path", str(res)], cwd=args.official)

        tools["official (1 proc, its only mode)"] = official
    if args.vos_benchmark:
        def vos():
            res = _link_results(args.results, work / "vos")
            gt = args.davis_root / "Annotations" / "480p"
            return _run([args.baseline_python, str(args.vos_benchmark / "benchmark.py"), "-g", str(gt), "-m", str(res), "-n", str(p)], cwd=args.vos_benchmark)

        tools[f"vos-benchmark ({p} proc)"] = vos

    times: dict[str, list[float]] = {name: [] for name in tools}
    cpu_times: dict[str, list[float]] = {name: [] for name in tools}
    outputs: dict[str, str] = {}
    print(f"load avg at start {os.getloadavg()[0]:.1f}", flush=True)
    for r in range(args.repeat):
        for name, fn in tools.items():
            seconds, cpu, out = fn()
            times[name].append(seconds)
            cpu_times[name].append(cpu)
            outputs[name] = out
            print(f"[{r + 1}/{args.repeat}] {name:40s} {seconds:7.2f} s wall, {cpu:7.2f} s CPU", flush=True)

    median = {name: statistics.median(v) for name, v in times.items()}
    print(f"\nmachine: {_cpu_model()}, {os.cpu_count()} logical CPUs, load avg {os.getloadavg()[0]:.1f}; "
          f"{args.repeat} interleaved runs, medians (min); CPU = all threads and processes")
    for name in tools:
        print(f"  {name:40s} {median[name]:7.2f} s  ({min(times[name]):.2f}), CPU {statistics.median(cpu_times[name]):.2f} s")
    ratios = {}
    for name in tools:
        if name.startswith("vidprop"):
            continue
        ratios[name] = {}
        for ours in tools:
            # vos-benchmark runs on p processes: compare it with vidprop on p; the official tool
            # has one process only: compare it with every vidprop run, 1-process ones included.
            if ours.startswith("vidprop") and (name.startswith("official") or f"({p} proc" in ours):
                ratios[name][ours] = median[name] / median[ours]
                print(f"  {name} / {ours}: {median[name] / median[ours]:.1f}x")
    if "official (1 proc, its only mode)" in outputs:
        print("\nofficial tool output (check the numbers agree):")
        print("\n".join(outputs["official (1 proc, its only mode)"].splitlines()[-22:-16]))
    print("vidprop:", outputs[f"vidprop scorer ({p} proc)"].strip().splitlines()[-1])
    if args.json:
        record = {"times_s": times, "cpu_s": cpu_times, "median_s": median, "ratios": ratios, "processes": p}
        args.json.write_text(json.dumps(record, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
