#!/usr/bin/env python
"""Benchmark the Ray engine's overhead against the plain (local) run on the same videos, in one run.

Both modes run ``vidprop davis --no-score`` as a fresh subprocess on the same DAVIS sequences
(the first ``--frames`` frames of each, through symlinks), interleaved: plain, ray, plain, ray, ...

- plain: ``--engine local`` with ``OMP_NUM_THREADS=--threads``;
- ray: ``--engine ray --workers 1 --cpus-per-worker --threads`` on a local Ray instance that the
  command starts and stops itself, so the same compute runs with the same threads, and
  everything Ray adds is counted: starting Ray (GCS, raylet, agents), the actor process with its
  own imports and model, dispatch, and shutting Ray down.

CPU time is the user + system time of the command's whole process tree (the command, Ray's
daemons, its actors), sampled from /proc every 0.1 s (see :class:`TreeCPU`); the ratio is
ray / plain of the medians over repetitions. The ray run's log gives the dispatch order
(longest first); the masks of both modes are compared byte for byte.

Examples:
    python tools/bench_ray.py                                  # 13 sample sequences, 24 frames each
    python tools/bench_ray.py --frames 0 --reps 3              # every frame (934)
    python tools/bench_ray.py --frames 10,40,0                 # how the fixed cost amortises
    python tools/bench_ray.py --frames 0 --copies 2            # every frame, each sequence twice (1868)
    python tools/bench_ray.py --idle 60                        # Ray's background CPU per minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, str, float, str]]:
    """pid -> (ppid, start time, user + system CPU seconds, name) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                text = fh.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        name = text[text.index("(") + 1 : text.rindex(")")]
        table[int(entry)] = (int(fields[1]), fields[19], (int(fields[11]) + int(fields[12])) / _TICK, name)
    return table


class TreeCPU(threading.Thread):
    """Samples the CPU time of a process and all its descendants, also after they are reparented.

    ``getrusage(RUSAGE_CHILDREN)`` cannot do this for Ray: its raylet does not wait for its
    workers, so their CPU time never reaches the parent's account. Each process's last sample is
    at most ``interval`` before it exits, which bounds what is missed.
    """

    def __init__(self, root: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.cpu: dict[tuple[int, str], float] = {}
        self.names: dict[tuple[int, str], str] = {}
        self.done = threading.Event()

    def sample(self) -> None:
        table = _proc_table()
        known = {pid for pid, start in self.cpu if pid in table and table[pid][1] == start}
        tree, frontier = set(), [self.root, *known]
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            pid = frontier.pop()
            if pid in tree or pid not in table:
                continue
            tree.add(pid)
            frontier.extend(children.get(pid, ()))
        for pid in tree:
            _, start, cpu, name = table[pid]
            self.cpu[(pid, start)] = max(cpu, self.cpu.get((pid, start), 0.0))
            self.names[(pid, start)] = "the command" if pid == self.root else name

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def total(self) -> float:
        return sum(self.cpu.values())

    def by_name(self) -> dict[str, float]:
        """CPU seconds per process name (Ray names its processes: raylet, gcs_server, ray::VideoActor, ...)."""
        out: dict[str, float] = {}
        for key, cpu in self.cpu.items():
            out[self.names[key]] = out.get(self.names[key], 0.0) + cpu
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _small_root(davis_root: Path, dest: Path, sequences: list[str], frames: int, copies: int = 1) -> list[str]:
    """A DAVIS root of symlinks to the first ``frames`` frames (0 = all) of each sequence, each
    ``copies`` times (``<seq>``, ``<seq>-2``, ...: a larger job of the same videos). Returns its sequences."""
    names = []
    for seq in sequences:
        for copy in range(1, copies + 1):
            name = seq if copy == 1 else f"{seq}-{copy}"
            names.append(name)
            for sub, pattern in (("JPEGImages", "*.jpg"), ("Annotations", "*.png")):
                out = dest / sub / "480p" / name
                out.mkdir(parents=True)
                files = sorted((davis_root / sub / "480p" / seq).glob(pattern))
                for f in files[:frames] if frames else files:
                    (out / f.name).symlink_to(f.resolve())
    (dest / "ImageSets" / "2017").mkdir(parents=True)
    (dest / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return names


def _run(mode: str, root: Path, out: Path, args) -> dict:
    cmd = [
        sys.executable, "-m", "vidprop", "--verbose", "davis", "--davis-root", str(root), "--out", str(out), "--no-score",
        "--config", str(REPO / "configs" / "davis2017_lab.yaml"), "--short-side", str(args.short_side), "--device", "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if mode == "ray":
        cmd += ["--engine", "ray", "--workers", "1", "--cpus-per-worker", str(args.threads)]
    usage0, wall0 = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    sampler = TreeCPU(proc.pid)
    sampler.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - wall0
    sampler.done.set()
    sampler.join()
    rusage = _children_cpu() - usage0
    cpu = sampler.total()
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed ({proc.returncode}):\n{stderr[-3000:]}")
    order = re.search(r"dispatch order: (.*)", stderr)
    # rusage_s: exact, but only for the processes their parents waited for (all of them in plain mode)
    return {"mode": mode, "wall_s": wall, "cpu_s": cpu, "rusage_s": rusage, "processes": len(sampler.cpu),
            "cpu_by_process": sampler.by_name(),
            "order": order.group(1) if order else None}


def _same_masks(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    return files == sorted(p.relative_to(b) for p in b.rglob("*.png")) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files
    )


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


_IDLE = """
import sys, time
import ray
from vidprop.engines.ray_engine import start_local_ray
start_local_ray()
actor = ray.remote(num_cpus=1)(type("Idle", (), {"ready": lambda self: True})).remote()
ray.get(actor.ready.remote())
time.sleep(float(sys.argv[1]))
ray.shutdown()
"""


def _bench_idle(seconds: float, reps: int) -> dict:
    """CPU of a local Ray instance with one idle actor, held 0 s and ``seconds`` s (interleaved):
    Ray's background cost per second of wall time, whatever the job does."""
    cpu: dict[float, list[float]] = {0.0: [], seconds: []}
    for rep in range(reps):
        for held in (0.0, seconds):
            proc = subprocess.Popen([sys.executable, "-c", _IDLE, str(held)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
            sampler = TreeCPU(proc.pid)
            sampler.start()
            proc.wait()
            sampler.done.set()
            sampler.join()
            cpu[held].append(sampler.total())
            print(f"  rep {rep} Ray held {held:5.0f} s: cpu {sampler.total():6.2f} s  "
                  + ", ".join(f"{n} {c:.2f}" for n, c in sampler.by_name().items()), flush=True)
    start, held = _median(cpu[0.0]), _median(cpu[seconds])
    per_s = (held - start) / seconds
    print(f"  Ray started and stopped: {start:.2f} s CPU; held {seconds:.0f} s: {held:.2f} s CPU -> "
          f"{per_s * 60:.2f} s CPU per minute held ({100 * per_s:.1f}% of a core); load average {os.getloadavg()}")
    return {"seconds": seconds, "start_stop_cpu_s": start, "held_cpu_s": held, "background_cpu_per_s": per_s}


def _bench_size(args, sequences: list[str], size: int, tmp: Path) -> dict:
    """Interleaved repetitions of both modes on the first ``size`` frames (0 = all) of each sequence."""
    root = tmp / f"davis-{size}"
    names = _small_root(args.davis_root, root, sequences, size, args.copies)
    frames = sum(len(list((root / "JPEGImages" / "480p" / s).iterdir())) for s in names)
    print(f"{len(names)} sequences, {frames} frames, short side {args.short_side}, {args.threads} thread(s); "
          f"load average before: {os.getloadavg()}", flush=True)
    results = []
    for rep in range(args.reps):
        for mode in ("plain", "ray"):
            result = _run(mode, root, tmp / f"{mode}-{size}-{rep}", args)
            result["rep"] = rep
            results.append(result)
            print(f"  rep {rep} {mode:5s}: wall {result['wall_s']:7.2f} s  cpu {result['cpu_s']:7.2f} s "
                  f"({result['processes']} processes; waited-for rusage {result['rusage_s']:.2f} s)", flush=True)
    same = _same_masks(tmp / f"plain-{size}-0", tmp / f"ray-{size}-0")
    med = {m: {k: _median([r[k] for r in results if r["mode"] == m]) for k in ("wall_s", "cpu_s")} for m in ("plain", "ray")}
    summary = {
        "frames_per_sequence": size, "videos": len(names), "frames": frames, "median": med,
        "overhead_cpu_s": med["ray"]["cpu_s"] - med["plain"]["cpu_s"],
        "cpu_ratio": med["ray"]["cpu_s"] / med["plain"]["cpu_s"],
        "wall_ratio": med["ray"]["wall_s"] / med["plain"]["wall_s"],
        "masks_identical": same,
        "dispatch_order": next(r["order"] for r in results if r["mode"] == "ray"),
        "load_average_after": os.getloadavg(),
        "runs": results,
    }
    print(f"  median cpu: plain {med['plain']['cpu_s']:.2f} s, ray {med['ray']['cpu_s']:.2f} s -> ratio {summary['cpu_ratio']:.3f} "
          f"(+{summary['overhead_cpu_s']:.2f} s)")
    print(f"  median wall: plain {med['plain']['wall_s']:.2f} s, ray {med['ray']['wall_s']:.2f} s -> ratio {summary['wall_ratio']:.3f}")
    last_ray = [r for r in results if r["mode"] == "ray"][-1]["cpu_by_process"]
    print("  ray run's CPU by process: " + ", ".join(f"{name} {cpu:.1f} s" for name, cpu in last_ray.items()))
    print(f"  masks identical: {same}; dispatch order (frames): {summary['dispatch_order']}")
    print(f"  load average after: {summary['load_average_after']}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--davis-root", type=Path, default=REPO.parent / "shared" / "davis-sample")
    parser.add_argument("--sequences", default=None, help="comma-separated (default: the split's val list)")
    parser.add_argument("--frames", default="24",
                        help="first N frames of each sequence (0 = all); several sizes comma-separated (10,40,0) "
                             "show how the fixed cost amortises")
    parser.add_argument("--copies", type=int, default=1, help="run each sequence this many times (as <seq>-2, ...)")
    parser.add_argument("--short-side", type=int, default=224, help="data.short_side (a multiple of 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the plain run and of the Ray actor")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions of each mode")
    parser.add_argument("--idle", type=float, default=0.0,
                        help="instead: Ray's own cost, a local instance with one idle actor held this many seconds vs 0")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not Path("/proc/self/stat").exists():
        raise SystemExit("needs Linux /proc to count the CPU time of Ray's processes")
    if args.idle:
        summary = _bench_idle(args.idle, args.reps)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        return 0
    sequences = args.sequences.split(",") if args.sequences else (args.davis_root / "ImageSets" / "2017" / "val.txt").read_text().split()
    sizes = [int(n) for n in args.frames.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        sizes_done = [_bench_size(args, sequences, size, Path(tmp)) for size in sizes]
    summary = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "sequences": len(sequences), "copies": args.copies, "short_side": args.short_side, "threads": args.threads, "reps": args.reps,
        "sizes": sizes_done,
    }
    print("videos | frames | plain CPU s | ray CPU s | overhead CPU s | CPU ratio | wall ratio | masks identical")
    for r in sizes_done:
        print(f"{r['videos']:6d} | {r['frames']:6d} | {r['median']['plain']['cpu_s']:11.2f} | {r['median']['ray']['cpu_s']:9.2f} | "
              f"{r['overhead_cpu_s']:14.2f} | {r['cpu_ratio']:9.3f} | {r['wall_ratio']:10.3f} | {r['masks_identical']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if all(r["masks_identical"] for r in sizes_done) else 1


if __name__ == "__main__":
    sys.exit(main())
