#!/usr/bin/env python
"""Benchmark the propagation engine against the dense reference, in the same run.

Each variant runs in a fresh subprocess on identical synthetic inputs (seeded, spatially smooth
random features, an elliptic first-frame mask). The subprocess measures:

- time per frame: wall time of ``step`` + ``to_mask`` for the last ``--measure`` frames, whose
  context is full (first frame + ``n_last_frames``);
- peak memory: the process's resident-set high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs`` after setup) minus its resident set after setup (imports, input
  generator, first frame). It counts everything the variant allocates: context, affinities,
  temporaries. Without ``clear_refs`` it falls back to ``ru_maxrss`` (same baseline).
- on CUDA (``--device cuda``): frames per second after ``torch.cuda.synchronize`` and
  ``torch.cuda.max_memory_allocated``.

The parent compares the soft labels and masks of every frame between variants.

Examples:
    python tools/bench_propagation.py                       # DAVIS setting, 60x104 grid, fast vs dense
    python tools/bench_propagation.py --grid 60x144 --variants fast   # the `shooting` grid, 29 context frames
    python tools/bench_propagation.py --device cuda --variants fast   # GPU frames per second
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def _inputs(args):
    """Deterministic generator of (C, h, w) features per frame and the first frame's one-hot labels."""
    import torch
    import torch.nn.functional as F

    h, w = args.grid
    gen = torch.Generator().manual_seed(args.seed)
    base = F.interpolate(torch.randn(1, args.channels, h // 4 + 1, w // 4 + 1, generator=gen), size=(h, w),
                         mode="bilinear", align_corners=False)[0]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    channel = torch.zeros(h, w, dtype=torch.long)
    for k in range(1, args.objects + 1):
        cy, cx = h * (0.3 + 0.4 * k / (args.objects + 1)), w * k / (args.objects + 1)
        channel[((ys - cy) / (h * 0.2)) ** 2 + ((xs - cx) / (w * 0.12)) ** 2 <= 1] = k
    labels = F.one_hot(channel, args.objects + 1).permute(2, 0, 1).float()

    def features(t: int):
        g = torch.Generator().manual_seed(args.seed * 1000 + t)
        return base + 0.3 * torch.randn(args.channels, h, w, generator=g)

    return features, labels


def worker(args) -> None:
    import numpy as np
    import torch

    from vidprop.propagation import LabelPropagator, PropagationConfig
    from vidprop.propagation.dense import DensePropagator

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    features, labels = _inputs(args)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cfg = PropagationConfig(topk=args.topk, n_last_frames=args.n_last_frames, radius=args.radius,
                            temperature=args.temperature, memory_budget_mib=args.budget_mib,
                            block_size=args.block_size, device=args.device)
    prop = {"fast": LabelPropagator, "dense": DensePropagator}[args.variant](cfg)
    first = features(0).to(device)
    labels = labels.to(device)
    h, w = args.grid
    size = (h * args.stride, w * args.stride + 22)  # an original width that is not a multiple of the stride
    baseline = _rss_kib("VmRSS")
    cleared = _reset_peak()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    prop.reset(first, labels)
    softs, masks, times = [], [], []
    for t in range(1, args.frames):
        f = features(t).to(device)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        soft = prop.step(f)
        mask = prop.to_mask(soft, args.stride, size)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        softs.append(soft.float().cpu().numpy())
        masks.append(mask)
    peak = _rss_kib("VmHWM") if cleared else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.savez(args.out, soft=np.stack(softs), mask=np.stack(masks))
    measured = times[-args.measure:]
    result = {
        "variant": args.variant,
        "device": str(device),
        "seconds_per_frame": sum(measured) / len(measured),
        "frames_per_second": len(measured) / sum(measured),
        "all_step_seconds": times,
        "peak_rss_mib": peak / 1024,
        "peak_increase_mib": (peak - baseline) / 1024,
        "peak_method": "VmHWM after clear_refs" if cleared else "ru_maxrss",
        "threads": torch.get_num_threads(),
    }
    if cuda:
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_device"] = torch.cuda.get_device_name(device)
    print("RESULT " + json.dumps(result), flush=True)


def run_variant(args, variant: str, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--out", str(out)] + _forward(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"variant {variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def _forward(args) -> list[str]:
    return ["--grid", f"{args.grid[0]}x{args.grid[1]}", "--channels", str(args.channels), "--objects", str(args.objects),
            "--frames", str(args.frames), "--measure", str(args.measure), "--topk", str(args.topk),
            "--n-last-frames", str(args.n_last_frames), "--radius", str(args.radius),
            "--temperature", str(args.temperature), "--stride", str(args.stride), "--budget-mib", str(args.budget_mib),
            "--block-size", str(args.block_size), "--device", args.device, "--seed", str(args.seed),
            "--threads", str(args.threads)]


def _grid(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="fast,dense", help="comma-separated: fast, dense (default both)")
    p.add_argument("--grid", type=_grid, default=(60, 104), help="feature grid HxW (default 60x104 = 480x832 / 8)")
    p.add_argument("--channels", type=int, default=640)
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--frames", type=int, default=31, help="frames including the first (default 31: 2 with full context)")
    p.add_argument("--measure", type=int, default=2, help="time the last N frames")
    p.add_argument("--topk", type=int, default=15)
    p.add_argument("--n-last-frames", type=int, default=28)
    p.add_argument("--radius", type=int, default=15)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--budget-mib", type=int, default=256)
    p.add_argument("--block-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads in each variant (default: torch's default). On a machine busy with other "
                        "work, 1 avoids OpenMP threads spin-waiting for descheduled peers")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.variant = args.worker
        worker(args)
        return 0
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("CUDA not available: GPU frames per second not measured")
            return 0
    import numpy as np

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {}
        for v in variants:
            out = Path(tmp) / f"{v}.npz"
            results[v] = run_variant(args, v, out)
            outputs[v] = np.load(out)
            r = results[v]
            print(f"{v:6s} {r['device']}: {r['seconds_per_frame']:.3f} s/frame ({r['frames_per_second']:.2f} fps), "
                  f"peak +{r['peak_increase_mib']:.0f} MiB (process peak {r['peak_rss_mib']:.0f} MiB, {r['peak_method']})",
                  flush=True)
        summary = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                   "load_average": os.getloadavg(),
                   "grid": args.grid, "channels": args.channels, "frames": args.frames, "results": results}
        if "fast" in outputs and "dense" in outputs:
            a, b = outputs["fast"], outputs["dense"]
            soft_diff = float(np.abs(a["soft"] - b["soft"]).max())
            mask_diff = int((a["mask"] != b["mask"]).sum())
            speed = results["dense"]["seconds_per_frame"] / results["fast"]["seconds_per_frame"]
            memory = results["dense"]["peak_increase_mib"] / results["fast"]["peak_increase_mib"]
            summary.update(speedup=speed, memory_ratio=memory, max_soft_diff=soft_diff, differing_mask_pixels=mask_diff)
            print(f"fast vs dense: {speed:.1f}x faster per frame, {memory:.1f}x less peak memory; "
                  f"max |soft diff| {soft_diff:.2e}, differing mask pixels {mask_diff} of {a['mask'].size}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
