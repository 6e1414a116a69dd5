"""tools/gpu_check.py: the CPU smoke run (CI) and the gpu-marked feature test it runs on CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.gpu
def test_dift_sd_features_on_cuda_equal_cpu(tiny_sd_dir, davis_root):
    """The same frames, seed and model give the same DIFT features on CUDA as on the CPU (float32, to tolerance)."""
    import numpy as np
    from PIL import Image

    from vidprop.features import create_extractor

    paths = sorted((davis_root / "JPEGImages" / "480p" / "dog").glob("*.jpg"))[:3]
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((96, 64))))
                          .permute(2, 0, 1).float() / 127.5 - 1 for p in paths])
    kw = dict(model_id=str(tiny_sd_dir), up_ft_index=1, ensemble_size=2)
    cpu = create_extractor("dift_sd", device="cpu", **kw).extract(images)
    cuda = create_extractor("dift_sd", device="cuda", **kw).extract(images)
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-3, atol=1e-3)


def test_gpu_check_smoke_on_cpu(tmp_path, davis_root):
    out = tmp_path / "gc"
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out),
                           "--davis-root", str(davis_root),
                           "--sequences", "blackswan,dog,camel"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert set(steps) == {"tests", "dift_sd", "dift_adm", "propagation", "e2e"}
    assert steps["tests"]["status"] == "ok" and steps["tests"]["summary"]["failures"] == 0
    assert steps["dift_sd"]["status"] == steps["dift_adm"]["status"] == "skipped"
    assert steps["propagation"]["status"] == "ok"
    torch_runs = [v for k, v in steps["propagation"]["results"]["dift"].items() if k.startswith("torch@")]
    assert torch_runs and all(r["seconds_per_frame"] > 0 for r in torch_runs)
    e2e = steps["e2e"]
    assert e2e["status"] == "ok" and e2e["sequences"] == ["blackswan", "dog", "camel"]
    assert e2e["frames"] == 3 * 4  # --tiny: the first 4 frames of each sequence
    assert e2e["frames_per_s"] > 0
    for seq in e2e["sequences"]:  # every frame of every sequence has a mask
        assert len(list((out / "e2e_masks" / seq).glob("*.png"))) == 4
    md = (out / "gpu_check.md").read_text()
    assert "| propagation | ok |" in md and "| e2e | ok |" in md and "frames/s" in md


def test_gpu_check_refuses_cuda_without_cuda_and_unknown_sequences(tmp_path, davis_root):
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--out", str(tmp_path / "a")],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(tmp_path / "b"),
                           "--davis-root", str(davis_root), "--sequences", "nope"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr
