#!/usr/bin/env python
"""One prepared GPU check (issue 14): tests, DIFT and propagation benchmarks, an end-to-end run.

Each step runs as a subprocess under its own timeout, so one failure or hang does not lose the
others; everything goes into ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``:

1. ``tests``: ``pytest -m gpu`` (propagation on CUDA equals CPU; features on CUDA equal CPU).
2. ``dift_sd``: ``tools/bench_dift.py`` on the full-size SD 2.1 architecture with random weights,
   ensemble 8: float32 with TF32 (the default on CUDA, ``runtime.tf32``) and bfloat16 UNet + VAE
   (``runtime.dtype``, ``features.dift.vae_dtype``) (frames/s, peak GPU memory);
   ``dift_sd_no_tf32``: float32 without TF32; ``dift_sd_compile``: bfloat16 UNet + VAE with
   ``torch.compile`` (``runtime.compile``; the warm-up frame pays the compilation), and its features
   against the same blocks run eagerly.
3. ``dift_adm``: ``tools/bench_dift.py --backend dift_adm``, ensemble 4, float32 (TF32) and bfloat16
   (frames/s, peak GPU memory, achieved TFLOP/s against bench_dift's matmul + conv FLOP count).
4. ``propagation``: ``tools/bench_propagation.py --sections dift --dift-variants torch --device cuda``.
5. ``e2e``: ``vidprop davis`` on 3 DAVIS sample sequences with a random-weight, full-size SD 2.1
   written here in the diffusers layout, bfloat16 UNet + VAE, TF32, the writer thread (frames/s;
   GPU utilisation sampled with nvidia-smi every 0.5 s while it runs, or ``torch.cuda.utilization``
   when nvidia-smi is missing).

Steps run in the order of ``STEP_ORDER`` (the most telling first) within ``--budget`` seconds (540 by
default): each step's timeout is capped by what is left, a step that no longer fits is skipped, and the
JSON and markdown are rewritten after every step, so a check stopped from outside keeps what it measured.

Nothing is downloaded: it needs only the project's own dependencies (``pip install -e ".[test]"``
with a CUDA build of torch). ``--device cpu --tiny`` runs the same steps at tiny sizes on the
CPU (the DIFT benchmarks are skipped there: the full-size architectures are too heavy for a smoke
test; the end-to-end run uses the tests' tiny SD model on the first 4 frames of each sequence) so CI can check the script itself.

    python tools/gpu_check.py --out runs/gpu_check                 # on the GPU machine, < 8 minutes
    python tools/gpu_check.py --device cpu --tiny --out /tmp/gc     # CI smoke test
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (step, backend, bench_dift options, timeout s): the DIFT benchmarks, full-size architectures with random weights
DIFT_STEPS = (
    ("dift_sd", "dift_sd", ["--ensemble", "8", "--dtypes", "float32,bfloat16", "--vae-dtype", "same"], 150),
    ("dift_sd_no_tf32", "dift_sd", ["--ensemble", "8", "--dtypes", "float32", "--no-tf32"], 90),
    ("dift_sd_compile", "dift_sd", ["--ensemble", "8", "--dtypes", "bfloat16", "--vae-dtype", "same", "--compile"], 240),
    ("dift_adm", "dift_adm", ["--ensemble", "4", "--dtypes", "float32,bfloat16"], 150),
)
# the end-to-end run's options beyond the preset: the fast settings the README's GPU target is about
E2E_SETTINGS = ("runtime.dtype=bfloat16", "features.dift.vae_dtype=bfloat16", "runtime.tf32=true")
SEQUENCES = ("blackswan", "camel", "dog")
TINY_FRAMES = 4  # frames per sequence of the --tiny end-to-end run


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class UtilSampler:
    """Samples GPU utilisation (%) every ``period`` seconds in a thread: nvidia-smi, else torch.cuda.utilization."""

    def __init__(self, device: str, period: float = 0.5):
        self.device, self.period, self.samples, self.method = device, period, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self) -> float | None:
        if shutil.which("nvidia-smi"):
            self.method = "nvidia-smi"
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=10)
            return float(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None
        import torch

        self.method = "torch.cuda.utilization"
        return float(torch.cuda.utilization(0))

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                value = self._read()
            except Exception as exc:  # noqa: BLE001 - no sampler on this machine: record why, stop sampling
                self.method = f"unavailable ({type(exc).__name__}: {exc})"
                return
            if value is not None:
                self.samples.append(value)

    def __enter__(self):
        if self.device.startswith("cuda"):
            self._thread.start()
        else:
            self.method = "not sampled (CPU run)"
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def summary(self) -> dict:
        s = self.samples
        return {"method": self.method, "samples": len(s), "mean_pct": sum(s) / len(s) if s else None,
                "max_pct": max(s) if s else None}


def run_step(name: str, cmd: list[str], timeout: float, log_dir: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` with a timeout; keep its output in ``log_dir/name.log``; never raise for the step's failure."""
    print(f"[gpu_check] {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    log = log_dir / f"{name}.log"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        status, rc, out, err = ("ok" if proc.returncode == 0 else "failed"), proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        status, rc = "timeout", None
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    wall = time.perf_counter() - start
    _atomic_write(log, f"$ {' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}")
    print(f"[gpu_check] {name}: {status} in {wall:.0f} s (log {log})", flush=True)
    return {"status": status, "returncode": rc, "wall_s": wall, "command": cmd, "log": str(log),
            "tail": (out + err)[-1500:] if status != "ok" else ""}


def _dift_summary(bench_json: Path) -> list[dict]:
    rows = []
    for r in json.loads(bench_json.read_text())["results"]:
        ours = r["vidprop"]
        row = {"backend": r["backend"] if "backend" in r else "dift_sd", "dtype": r["dtype"], "ensemble": r["ensemble"],
               "vae_dtype": r.get("vae_dtype"), "tf32": r.get("tf32"), "compile": r.get("compile"),
               "compile_max_rel_diff": r.get("compile_max_rel_diff"),
               "size": r["size"], "frames_per_s": 1.0 / ours["s_per_frame"], "peak_mib": ours.get("peak_mib"),
               "peak_method": ours.get("peak_method", "cuda max_memory_allocated" if r["device"].startswith("cuda") else None)}
        flops = r.get("flops_per_frame", {}).get("vidprop")
        row["tflops_per_frame"] = flops / 1e12 if flops else None
        row["achieved_tflop_s"] = flops / ours["s_per_frame"] / 1e12 if flops else None
        rows.append(row)
    return rows


def write_random_sd(path: Path, tiny: bool, seed: int = 0) -> Path:
    """A random-weight SD 2.1 in the diffusers layout: full-size UNet and VAE (bench_dift's configs), or the tests' tiny model.

    The text encoder is a 1-layer CLIP of SD 2.1's width (1024): only the empty prompt's embedding is
    used, and its values do not change the cost of the UNet.
    """
    if tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from sd_fixtures import build_tiny_sd

        return build_tiny_sd(path, seed)
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "tools"))
    from bench_dift import SD21_SCHEDULER, SD21_UNET, SD21_VAE, TEXT_DIM
    from sd_fixtures import _write_tokenizer_files

    torch.manual_seed(seed)
    UNet2DConditionModel(**SD21_UNET).save_pretrained(path / "unet")
    AutoencoderKL(**SD21_VAE).save_pretrained(path / "vae")
    DDIMScheduler(**SD21_SCHEDULER).save_pretrained(path / "scheduler")
    vocab, merges = _write_tokenizer_files(path / "tokenizer")
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    tokenizer.save_pretrained(path / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=16, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(path / "text_encoder")
    return path


def _count_frames(davis_root: Path, sequences) -> int:
    return sum(len(list((davis_root / "JPEGImages" / "480p" / s).glob("*.jpg"))) for s in sequences)


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['machine']}, torch {report['torch']}, device {report['device']}"
             f"{', tiny sizes' if report['tiny'] else ''})", "",
             f"Command: `{report['command']}`; load average before {report['load_average_before']}, after {report['load_average_after']}.", "",
             "| step | status | wall s |", "|---|---|---|"]
    lines += [f"| {name} | {s['status']} | {s.get('wall_s', 0):.0f} |" for name, s in report["steps"].items()]
    tests = report["steps"].get("tests", {})
    if tests.get("summary"):
        lines += ["", f"GPU tests: {tests['summary']}"]
    rows = [r for name, _, _, _ in DIFT_STEPS for r in report["steps"].get(name, {}).get("results", [])]
    if rows:
        lines += ["", "| backend | dtype | VAE dtype | TF32 | compiled | ensemble | size | frames/s | peak MiB | TFLOP/frame | achieved TFLOP/s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
        lines += [f"| {r['backend']} | {r['dtype']} | {r['vae_dtype'] or '-'} | {r['tf32']} | {r['compile']} | {r['ensemble']} | "
                  f"{r['size'][0]}x{r['size'][1]} | {r['frames_per_s']:.2f} | "
                  f"{fmt(r['peak_mib'], '.0f')} | {fmt(r['tflops_per_frame'], '.2f')} | {fmt(r['achieved_tflop_s'], '.1f')} |" for r in rows]
        lines += ["", *(f"Compiled features against eager ones ({r['dtype']}, same draws): max |diff| / max |eager| = "
                        f"{r['compile_max_rel_diff']:.2e}" for r in rows if r.get("compile_max_rel_diff") is not None)]
    prop = report["steps"].get("propagation", {}).get("results")
    if prop:
        lines += ["", f"Propagation ({report['device']}): `{json.dumps(prop)[:600]}`"]
    e2e = report["steps"].get("e2e", {})
    if e2e.get("frames_per_s") is not None:
        u = e2e["gpu_utilisation"]
        lines += ["", f"End to end: `vidprop davis` on {', '.join(e2e['sequences'])} ({e2e['frames']} frames, "
                  f"{', '.join(e2e['settings'])}): "
                  f"{e2e['frames_per_s']:.2f} frames/s including model load; GPU utilisation {u['method']}: "
                  f"mean {u['mean_pct']} %, max {u['max_pct']} % over {u['samples']} samples."]
    for name, s in report["steps"].items():
        if s["status"] not in ("ok", "skipped") and s.get("tail"):
            lines += ["", f"{name} ({s['status']}), last output:", "```", s["tail"], "```"]
        if s["status"] == "skipped":
            lines += ["", f"{name} skipped: {s['reason']}"]
    return "\n".join(lines) + "\n"


# The order steps run in: the most telling first, so a short time budget loses the least.
STEP_ORDER = ("tests", "dift_sd", "propagation", "e2e", "dift_sd_no_tf32", "dift_adm", "dift_sd_compile")


class Budget:
    """Seconds left for the whole check: each step's timeout is capped by it, and a step that would
    get less than ``MIN_STEP_S`` is skipped, so the check ends within ``--budget`` seconds."""

    MIN_STEP_S = 30.0

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def timeout(self, wanted: float) -> float | None:
        left = self.end - time.perf_counter() - 5.0  # margin to write the report
        return None if left < self.MIN_STEP_S else min(wanted, left)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (gpu_check.json, gpu_check.md, logs/)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (CI smoke test on the CPU)")
    p.add_argument("--davis-root", type=Path, default=REPO.parent / "shared" / "davis-sample")
    p.add_argument("--sequences", default=",".join(SEQUENCES), help="end-to-end sequences (default 3)")
    p.add_argument("--steps", default=",".join(STEP_ORDER), help=f"comma-separated steps to run (default all: {','.join(STEP_ORDER)})")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every step's timeout")
    p.add_argument("--budget", type=float, default=540.0,
                   help="seconds for the whole check (default 540): steps that no longer fit are skipped, and the "
                   "report is rewritten after every step, so a check stopped from outside keeps what it measured")
    args = p.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device (use --device cpu --tiny for the smoke test)", file=sys.stderr)
        return 2
    sequences = [s for s in args.sequences.split(",") if s]
    missing = [s for s in sequences if not (args.davis_root / "JPEGImages" / "480p" / s).is_dir()]
    if missing:
        print(f"gpu_check: {args.davis_root}: no JPEGImages/480p/ for {', '.join(missing)}", file=sys.stderr)
        return 2
    wanted = [s for s in args.steps.split(",") if s]
    unknown = [s for s in wanted if s not in STEP_ORDER]
    if unknown:
        print(f"gpu_check: unknown step(s) {', '.join(unknown)} (expected some of {', '.join(STEP_ORDER)})", file=sys.stderr)
        return 2
    out = args.out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    machine = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    report = {"machine": machine, "torch": torch.__version__, "device": args.device, "tiny": args.tiny,
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "load_average_before": [round(v, 2) for v in os.getloadavg()], "budget_s": args.budget, "steps": {}}
    budget = Budget(args.budget)
    runners = {"tests": _tests_step, "propagation": _propagation_step, "e2e": _e2e_step,
               **{d[0]: functools.partial(_dift_step, d) for d in DIFT_STEPS}}
    for name in STEP_ORDER:
        if name not in wanted:
            continue
        report["steps"][name] = runners[name](args, logs, budget, sequences)
        _save(out, report)
    print(markdown(report))
    return 0 if all(s["status"] in ("ok", "skipped") for s in report["steps"].values()) else 1


def _save(out: Path, report: dict) -> None:
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    _atomic_write(out / "gpu_check.json", json.dumps(report, indent=2))
    _atomic_write(out / "gpu_check.md", markdown(report))


def _over_budget(name: str) -> dict:  # noqa: ARG001 - the name is the caller's key
    return {"status": "skipped", "reason": "the time budget (--budget) is spent"}


def _tests_step(args, logs: Path, budget: Budget, sequences) -> dict:
    timeout = budget.timeout(240 * args.timeout_scale)
    if timeout is None:
        return _over_budget("tests")
    junit = logs / "gpu_tests.xml"
    s = run_step("tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}",
                           "tests/test_propagation.py", "tests/test_gpu_check.py"], timeout, logs)
    if junit.exists():
        import xml.etree.ElementTree as ET

        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        s["summary"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    if s["status"] == "failed" and s.get("summary", {}).get("tests", 0) == s.get("summary", {}).get("skipped", -1):
        s["status"] = "ok"  # pytest exits 5 when every selected test is deselected/skipped; the summary says so
    return s


def _dift_step(spec, args, logs: Path, budget: Budget, sequences) -> dict:
    name, backend, options, wanted_s = spec
    if args.tiny:
        return {"status": "skipped", "reason": "full-size architecture; not run with --tiny"}
    timeout = budget.timeout(wanted_s * args.timeout_scale)
    if timeout is None:
        return _over_budget(name)
    bench_json = logs / f"{name}.json"
    s = run_step(name, [sys.executable, "tools/bench_dift.py", "--backend", backend, "--device", args.device, *options,
                        "--frames", "8", "--skip-baseline", "--json", str(bench_json)], timeout, logs)
    if bench_json.exists():
        s["results"] = _dift_summary(bench_json)
    return s


def _propagation_step(args, logs: Path, budget: Budget, sequences) -> dict:
    timeout = budget.timeout(120 * args.timeout_scale)
    if timeout is None:
        return _over_budget("propagation")
    prop_json = logs / "propagation.json"
    size = ["--grid", "8x12", "--frames", "6", "--measure", "2", "--n-last-frames", "3", "--radius", "3",
            "--peak-repeat", "2"] if args.tiny else ["--frames", "31", "--measure", "2"]
    s = run_step("propagation", [sys.executable, "tools/bench_propagation.py", "--sections", "dift", "--dift-variants", "torch",
                                 "--repeat", "1" if args.tiny else "3", "--device", args.device, *size,
                                 "--json", str(prop_json)], timeout, logs)
    if prop_json.exists():
        s["results"] = json.loads(prop_json.read_text())
    return s


def _e2e_step(args, logs: Path, budget: Budget, sequences) -> dict:
    timeout = budget.timeout(180 * args.timeout_scale)
    if timeout is None:
        return _over_budget("e2e")
    out = args.out
    model = out / "random_sd21"
    start = time.perf_counter()
    if not (model / "unet").is_dir():
        write_random_sd(model, args.tiny)
    built = time.perf_counter() - start
    timeout = budget.timeout(timeout)  # writing the model took some of it
    if timeout is None:
        return _over_budget("e2e")
    run_out = out / "e2e_masks"
    davis_root = args.davis_root
    if args.tiny:  # the first frames of each sequence, copied under OUT (the tests' helper), keep the smoke test short
        from conftest import copy_short_sequence  # tests/ is on sys.path after write_random_sd

        davis_root = out / "davis_tiny"
        shutil.rmtree(davis_root, ignore_errors=True)
        for seq in sequences:
            copy_short_sequence(args.davis_root, davis_root, seq, TINY_FRAMES)
    cmd = [sys.executable, "-m", "vidprop", "davis", "--config", str(REPO / "configs" / "davis2017_dift_sd.yaml"),
           "--davis-root", str(davis_root), "--sequences", ",".join(sequences), "--out", str(run_out),
           "--device", args.device, "--set", f"features.dift.model_id={model}"]
    for setting in E2E_SETTINGS:
        cmd += ["--set", setting]
    if args.tiny:
        cmd += ["--short-side", "64", "--set", "features.dift.ensemble_size=1", "--set", "features.dift.up_ft_index=1"]
    with UtilSampler(args.device) as sampler:
        s = run_step("e2e", cmd, timeout, logs, env={"HF_HUB_OFFLINE": "1"})
    frames = _count_frames(davis_root, sequences)
    s.update(sequences=sequences, frames=frames, model_build_s=built, gpu_utilisation=sampler.summary(), settings=list(E2E_SETTINGS),
             frames_per_s=frames / s["wall_s"] if s["status"] == "ok" else None)
    return s


if __name__ == "__main__":
    raise SystemExit(main())
