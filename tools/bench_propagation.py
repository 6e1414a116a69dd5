#!/usr/bin/env python
"""Benchmark the propagation backends against today's engine, the dense reference and the machine.

Everything is measured in ONE run, with repetitions interleaved (variant A, B, C, A, B, C, ...), so
that the ratios hold on a shared machine even when absolute times drift. Each measurement runs in a
fresh subprocess on identical inputs and reports, for the last ``--measure`` frames (full context:
first frame + ``n_last_frames``): wall time per frame, the process's CPU time per frame (all its
threads, user + system) and its peak memory increase. The parent compares every frame's masks
between variants and prints the load average before and after each section.

Sections (``--sections``, default all):

- ``lab``: 9-channel CIE-Lab features (vidprop's ``lab`` backend, the ``davis2017_lab`` preset) of a
  real DAVIS sequence at 480x832 (60x104 cells), the DAVIS setting (topk 15, 28 past frames, radius
  15, T 0.2). Variants: ``baseline`` (today's engine before the fused kernel, loaded from git history
  at ``BASELINE_COMMIT``, outside the package), ``fused``, ``torch`` and ``dense`` (the reference).
- ``dift``: 640-channel features (the width of DIFT's SD up block 1; seeded smooth random fields) on
  the same grid and setting; variants ``baseline``, ``torch`` (square blocks) and ``strips`` (column
  strips, the default there), plus the machine's matmul peak: the best GFLOP/s of a 2048x640x4096
  float32 matmul at the same thread count, measured in the same run. The share of the peak counts
  only the arithmetic that cannot be avoided: 2 * C flops per (target, in-radius context cell)
  pair (179.4 GFLOP per frame at the DAVIS setting), not the arithmetic a backend computes; the
  time is the whole step (normalisation, propagation, context update, ``to_mask``).
- ``contention``: the ``lab`` section's ``fused`` variant, beside a competing busy-loop process
  started by this tool: on each of the last ``--contention-frames`` frames, the propagation step
  (``predict``) and ``to_mask`` at 1 and at 2 threads, alternating, in one process.

Examples:
    python tools/bench_propagation.py                          # all sections, 3 repetitions
    python tools/bench_propagation.py --sections lab --variants baseline,fused --repeat 5
    python tools/bench_propagation.py --sections dift --repeat 2
    python tools/bench_propagation.py --sections contention --contention-frames 12
    python tools/bench_propagation.py --crossover 9,32,64,128,256,640   # fused vs strips vs torch by channels
    python tools/bench_propagation.py --device cuda --sections lab,dift --variants torch --dift-variants torch
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The last commit of the engine before the fused kernel ("today's engine" of issue 14).
BASELINE_COMMIT = "36ecbbb1a1939904d261b9a26a060df0373b408e"


def load_baseline(where: Path) -> Path:
    """Write today's engine (engine.py + kernels.py at BASELINE_COMMIT) as package ``baseline_propagation``."""
    package = where / "baseline_propagation"
    package.mkdir(parents=True, exist_ok=True)
    for name in ("engine", "kernels"):
        try:
            text = subprocess.run(["git", "-C", str(REPO), "show", f"{BASELINE_COMMIT}:vidprop/propagation/{name}.py"],
                                  capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"cannot read the baseline engine from git history ({BASELINE_COMMIT[:10]}): {exc}; "
                             "run from a git clone of vidprop, or leave 'baseline' out of --variants")
        (package / f"{name}.py").write_text(text.replace("vidprop.propagation.kernels", "baseline_propagation.kernels"))
    (package / "__init__.py").write_text("from baseline_propagation.engine import LabelPropagator\n")
    return where


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _lab_inputs(args):
    """Lab features (C=9) of the first ``frames`` frames of a real sequence, and its first mask."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from vidprop.features import create_extractor

    root = Path(args.davis_root)
    seq = args.sequence
    paths = sorted((root / "JPEGImages" / "480p" / seq).glob("*.jpg"))[: args.frames]
    if len(paths) < args.frames:
        raise SystemExit(f"{root / 'JPEGImages/480p' / seq}: {len(paths)} frames, need --frames {args.frames}")
    h, w = args.grid
    size = (w * 8, h * 8)
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize(size, Image.BILINEAR)))
                          .permute(2, 0, 1).float() / 127.5 - 1.0 for p in paths])
    extractor = create_extractor("lab")
    feats = torch.cat([extractor.extract(images[i:i + 8]) for i in range(0, len(images), 8)])
    mask = np.asarray(Image.open(root / "Annotations" / "480p" / seq / "00000.png"))
    small = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST)).astype(np.int64)
    labels = F.one_hot(torch.from_numpy(small), int(small.max()) + 1).permute(2, 0, 1).float()
    return list(feats), labels


def _random_inputs(args):
    """Seeded, spatially smooth random (C, h, w) features per frame and an elliptic two-object mask."""
    import torch
    import torch.nn.functional as F

    h, w = args.grid
    gen = torch.Generator().manual_seed(args.seed)
    base = F.interpolate(torch.randn(1, args.channels, h // 4 + 1, w // 4 + 1, generator=gen), size=(h, w),
                         mode="bilinear", align_corners=False)[0]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    channel = torch.zeros(h, w, dtype=torch.long)
    for k in (1, 2):
        cy, cx = h * (0.3 + 0.4 * k / 3), w * k / 3
        channel[((ys - cy) / (h * 0.2)) ** 2 + ((xs - cx) / (w * 0.12)) ** 2 <= 1] = k
    labels = F.one_hot(channel, 3).permute(2, 0, 1).float()
    feats = [base + 0.3 * torch.randn(args.channels, h, w, generator=torch.Generator().manual_seed(args.seed * 1000 + t))
             for t in range(args.frames)]
    return feats, labels


def worker(args) -> None:
    import numpy as np
    import torch

    from vidprop.propagation import LabelPropagator, PropagationConfig
    from vidprop.propagation.dense import DensePropagator

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads or 2)
    if args.variant == "peak":
        a, b = torch.randn(2048, 640), torch.randn(4096, 640)
        out = torch.empty(2048, 4096)
        flops = 2 * 2048 * 640 * 4096
        wall = cpu = 0.0
        for _ in range(args.peak_repeat):
            start, used = time.perf_counter(), _cpu_seconds()
            torch.mm(a, b.T, out=out)
            wall = max(wall, flops / (time.perf_counter() - start) / 1e9)
            cpu = max(cpu, flops / max(_cpu_seconds() - used, 1e-9) / 1e9)
        print("RESULT " + json.dumps({"variant": "peak", "gflops": wall, "gflops_per_cpu_second": cpu,
                                      "threads": args.threads}), flush=True)
        return
    feats, labels = _lab_inputs(args) if args.source == "lab" else _random_inputs(args)
    cuda = args.device.startswith("cuda")
    cfg = PropagationConfig(topk=args.topk, n_last_frames=args.n_last_frames, radius=args.radius,
                            temperature=args.temperature,
                            backend=args.variant if args.variant in ("torch", "strips") else "auto",
                            threads=args.threads, device=None if args.variant == "dense" else args.device)
    if args.variant == "baseline":
        sys.path.insert(0, args.baseline_path)
        from baseline_propagation import LabelPropagator as Baseline

        prop = Baseline(cfg)
    elif args.variant == "dense":
        prop = DensePropagator(cfg)
    else:
        if args.variant in ("fused", "alternate"):
            cfg = dataclasses.replace(cfg, backend="fused")
        prop = LabelPropagator(cfg)
    h, w = args.grid
    size = (h * 8, w * 8)
    baseline_rss = _rss_kib("VmRSS")
    cleared = _reset_peak()
    prop.reset(feats[0], labels)
    masks, walls, cpus = [], [], []
    if args.variant == "alternate":
        # 1 and 2 threads on the same frames in one process (order 1,2,2,1,...): slow drifts of a
        # shared machine's load cancel out. predict() is step() without the context update.
        times: dict[int, list] = {1: [], 2: []}
        for t, f in enumerate(feats[1:], start=1):
            if t >= len(feats) - args.measure:
                for threads in ((1, 2) if t % 2 else (2, 1)):
                    prop.config = dataclasses.replace(prop.config, threads=threads)
                    start, cpu = time.perf_counter(), _cpu_seconds()
                    prop.to_mask(prop.predict(f), 8, size)
                    times[threads].append((time.perf_counter() - start, _cpu_seconds() - cpu))
            prop.config = dataclasses.replace(prop.config, threads=None)
            prop.step(f)
        print("RESULT " + json.dumps({
            "variant": "alternate",
            "seconds_per_frame_1": statistics.median(x[0] for x in times[1]),
            "seconds_per_frame_2": statistics.median(x[0] for x in times[2]),
            "cpu_seconds_per_frame_1": statistics.median(x[1] for x in times[1]),
            "cpu_seconds_per_frame_2": statistics.median(x[1] for x in times[2]),
            "all": times}), flush=True)
        np.save(args.out, np.zeros(1))
        return
    for f in feats[1:]:
        if cuda:
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), _cpu_seconds()
        soft = prop.step(f)
        mask = prop.to_mask(soft, 8, size)
        if cuda:
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds() - cpu)
        masks.append(mask)
    peak = _rss_kib("VmHWM") if cleared else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(args.out, np.stack(masks))
    n = args.measure
    print("RESULT " + json.dumps({
        "variant": args.variant, "threads": args.threads,
        "backend": getattr(prop, "backend", None),
        "seconds_per_frame": sum(walls[-n:]) / n, "cpu_seconds_per_frame": sum(cpus[-n:]) / n,
        "peak_increase_mib": (peak - (baseline_rss or 0)) / 1024,
        "cuda_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }), flush=True)


def _run(args, variant: str, out: Path | None, threads: int, source: str, channels: int, baseline: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--out", str(out), "--source", source,
           "--channels", str(channels), "--threads", str(threads), "--baseline-path", str(baseline)] + _forward(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{variant} ({source}, {channels} channels, {threads} threads) failed "
                     f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def _forward(args) -> list[str]:
    return ["--grid", f"{args.grid[0]}x{args.grid[1]}", "--frames", str(args.frames), "--measure", str(args.measure),
            "--topk", str(args.topk), "--n-last-frames", str(args.n_last_frames), "--radius", str(args.radius),
            "--temperature", str(args.temperature), "--seed", str(args.seed), "--davis-root", str(args.davis_root),
            "--sequence", args.sequence, "--peak-repeat", str(args.peak_repeat), "--device", args.device]


def in_radius_pairs(grid: tuple[int, int], radius: int, slots: int) -> int:
    """(target, context cell) pairs within the radius, over ``slots`` context frames."""
    h, w = grid
    rows = sum(min(y + radius, h - 1) - max(y - radius, 0) + 1 for y in range(h))
    cols = sum(min(x + radius, w - 1) - max(x - radius, 0) + 1 for x in range(w))
    return rows * cols * slots


def _load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def _section(args, name: str, plan: list[tuple[str, int, str, int]], baseline: Path, tmp: Path,
             repeat: int | None = None) -> dict:
    """Run (variant, threads, source, channels) entries ``repeat`` (default ``args.repeat``) times, interleaved."""
    repeat = repeat or args.repeat
    print(f"\n== {name}: {repeat} interleaved repetitions; {_load()}", flush=True)
    runs: dict[tuple, list[dict]] = {}
    masks: dict[tuple, Path] = {}
    for rep in range(repeat):
        for entry in plan:
            variant, threads, source, channels = entry
            out = tmp / f"{name}-{variant}-{threads}-{rep}.npy"
            result = _run(args, variant, out, threads, source, channels, baseline)
            runs.setdefault(entry, []).append(result)
            masks.setdefault(entry, out)
            if variant == "peak":
                print(f"  rep {rep}: peak matmul {result['gflops']:.1f} GFLOP/s, {result['gflops_per_cpu_second']:.1f} "
                      f"GFLOP per CPU second, at {threads} threads", flush=True)
            else:
                print(f"  rep {rep}: {variant:8s} {threads} thr: {result['seconds_per_frame']:.3f} s/frame wall, "
                      f"{result['cpu_seconds_per_frame']:.3f} s/frame CPU, peak +{result['peak_increase_mib']:.0f} MiB",
                      flush=True)
    print(f"   {_load()}", flush=True)
    summary = {}
    for entry, results in runs.items():
        key = f"{entry[0]}@{entry[1]}"
        if entry[0] == "peak":
            summary[key] = {k: max(r[k] for r in results) for k in ("gflops", "gflops_per_cpu_second")}
            continue
        summary[key] = {k: statistics.median(r[k] for r in results)
                        for k in ("seconds_per_frame", "cpu_seconds_per_frame", "peak_increase_mib")}
        summary[key]["all_seconds_per_frame"] = [r["seconds_per_frame"] for r in results]
    import numpy as np

    reference = next((e for e in plan if e[0] == "baseline"), None) or next((e for e in plan if e[0] != "peak"), None)
    if reference is not None:
        ref = np.load(masks[reference])
        for entry in plan:
            if entry[0] != "peak":
                other = np.load(masks[entry])
                summary[f"{entry[0]}@{entry[1]}"]["mask_pixels_differing_from_" + reference[0]] = int((other != ref).sum())
    summary["load_average_after"] = os.getloadavg()
    return summary


def _print_ratios(title: str, summary: dict, base: str) -> None:
    b = summary.get(base)
    if not b:
        return
    for key, r in summary.items():
        if key == base or not isinstance(r, dict) or "seconds_per_frame" not in r:
            continue
        diff = next((v for k, v in r.items() if k.startswith("mask_pixels")), None)
        print(f"  {title}: {key} {b['seconds_per_frame'] / r['seconds_per_frame']:.2f}x faster than {base} per frame "
              f"(median wall {r['seconds_per_frame']:.3f} vs {b['seconds_per_frame']:.3f} s; CPU "
              f"{r['cpu_seconds_per_frame']:.3f} vs {b['cpu_seconds_per_frame']:.3f} s); differing mask pixels: {diff}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="lab,dift,contention", help="comma-separated: lab, dift, contention")
    p.add_argument("--variants", default="baseline,fused,torch", help="lab section variants: baseline, fused, "
                                                                       "torch, dense (the reference: slow, 4.5 GB)")
    p.add_argument("--dift-variants", default="baseline,torch,strips",
                   help="dift section variants (besides the peak): baseline, torch, strips")
    p.add_argument("--contention-frames", type=int, default=8, help="frames timed at 1 and at 2 threads (contention)")
    p.add_argument("--crossover", help="comma-separated channel counts: fused vs strips vs torch only (random features)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions per section")
    p.add_argument("--threads", type=int, default=0, help="threads of the lab and dift sections (0 = the cores "
                                                          "this process may use)")
    p.add_argument("--dift-repeat", type=int, default=0, help="repetitions of the dift section (0 = --repeat)")
    p.add_argument("--dift-threads", type=int, default=0, help="threads of the dift section (0 = --threads)")
    p.add_argument("--grid", type=lambda t: tuple(int(v) for v in t.lower().split("x")), default=(60, 104))
    p.add_argument("--frames", type=int, default=31, help="frames including the first (31: 2 with full context)")
    p.add_argument("--measure", type=int, default=2, help="time the last N frames")
    p.add_argument("--topk", type=int, default=15)
    p.add_argument("--n-last-frames", type=int, default=28)
    p.add_argument("--radius", type=int, default=15)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--davis-root", type=Path, default=REPO.parent / "shared" / "davis-sample")
    p.add_argument("--sequence", default="cows", help="sequence of the lab section (needs --frames frames)")
    p.add_argument("--peak-repeat", type=int, default=10)
    p.add_argument("--device", default="cpu", help="device of the baseline and torch variants (e.g. cuda); the "
                                                   "dense reference runs on the CPU, the fused kernel only there")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--source", default="lab", help=argparse.SUPPRESS)
    p.add_argument("--channels", type=int, default=640, help=argparse.SUPPRESS)
    p.add_argument("--baseline-path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.variant = args.worker
        worker(args)
        return 0
    from vidprop.propagation.fused import default_threads

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("CUDA not available: GPU figures not measured")
            return 0

    threads = args.threads or default_threads()
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'unknown'})",
                     "python": platform.python_version(), "load_average_start": os.getloadavg(),
                     "threads": threads, "baseline_commit": BASELINE_COMMIT}
    print(f"{results['machine']}; {threads} threads; {_load()}", flush=True)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        baseline = load_baseline(tmp / "baseline")
        if args.crossover:
            for channels in (int(c) for c in args.crossover.split(",")):
                plan = [(v, threads, "random", channels) for v in ("fused", "strips", "torch")]
                results[f"crossover_{channels}"] = s = _section(args, f"crossover, {channels} channels", plan, baseline, tmp)
                _print_ratios(f"{channels} ch", s, f"torch@{threads}")
        if "lab" in sections:
            plan = [(v.strip(), threads, "lab", 9) for v in args.variants.split(",") if v.strip()]
            results["lab"] = s = _section(args, "lab (9 channels, real frames)", plan, baseline, tmp)
            _print_ratios("lab", s, f"baseline@{threads}")
        if "dift" in sections:
            dift_threads = args.dift_threads or threads
            plan = [("peak", dift_threads, "random", 640)]
            plan += [(v.strip(), dift_threads, "random", 640) for v in args.dift_variants.split(",") if v.strip()]
            results["dift"] = s = _section(args, "dift (640 channels)", plan, baseline, tmp, args.dift_repeat)
            _print_ratios("dift", s, f"baseline@{dift_threads}" if f"baseline@{dift_threads}" in s else f"torch@{dift_threads}")
            peak = s[f"peak@{dift_threads}"]["gflops"]
            peak_cpu = s[f"peak@{dift_threads}"]["gflops_per_cpu_second"]
            flops = 2 * 640 * in_radius_pairs(args.grid, args.radius, 1 + args.n_last_frames)
            print(f"  dift: peak {peak:.1f} GFLOP/s wall, {peak_cpu:.1f} GFLOP per CPU second; unavoidable "
                  f"arithmetic {flops / 1e9:.1f} GFLOP/frame")
            for key, r in s.items():
                if isinstance(r, dict) and "seconds_per_frame" in r:
                    r["share_of_peak"] = flops / 1e9 / peak / r["seconds_per_frame"]
                    r["share_of_peak_cpu"] = flops / 1e9 / peak_cpu / r["cpu_seconds_per_frame"]
                    print(f"  dift: {key} reaches {100 * r['share_of_peak_cpu']:.0f}% of the matmul peak by CPU time "
                          f"({100 * r['share_of_peak']:.0f}% by wall time, which a shared machine distorts)")
        if "contention" in sections:
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(1.0)
                print(f"\n== contention (a busy-loop process beside it): fused kernel at 1 and 2 threads on the "
                      f"same last {args.contention_frames} frames, alternating; {_load()}", flush=True)
                contention_args = argparse.Namespace(**{**vars(args), "measure": args.contention_frames})
                r = _run(contention_args, "alternate", tmp / "alternate.npy", 2, "lab", 9, baseline)
            finally:
                busy.kill()
                busy.wait()
            r["load_average_after"] = os.getloadavg()
            results["contention"] = r
            print(f"  contention: 2 threads {r['seconds_per_frame_1'] / r['seconds_per_frame_2']:.2f}x the speed of 1 "
                  f"thread (median wall {r['seconds_per_frame_2']:.3f} vs {r['seconds_per_frame_1']:.3f} s/frame; CPU "
                  f"{r['cpu_seconds_per_frame_2']:.3f} vs {r['cpu_seconds_per_frame_1']:.3f} s/frame); {_load()}")
    results["load_average_end"] = os.getloadavg()
    print(f"\n{_load()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
