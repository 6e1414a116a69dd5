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


@pytest.mark.gpu
def test_to_mask_and_the_deferred_finite_check_on_cuda():
    """The mask made on the GPU is the CPU's, pixel for pixel (DAVIS size), and non-finite features of a
    step surface at the next mask, naming the step."""
    import numpy as np

    from vidprop.errors import ShapeError
    from vidprop.propagation import LabelPropagator, PropagationConfig, labels_to_mask

    soft = torch.rand(4, 60, 107, generator=torch.Generator().manual_seed(0)) ** 3
    np.testing.assert_array_equal(labels_to_mask(soft.cuda(), 8, (480, 854)), labels_to_mask(soft, 8, (480, 854)))
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(16, 12, 14, generator=gen) for _ in range(3)]
    labels = torch.nn.functional.one_hot(torch.randint(0, 3, (12, 14), generator=gen), 3).permute(2, 0, 1).float()
    prop = LabelPropagator(PropagationConfig(topk=5, radius=3, device="cuda"))
    prop.reset(feats[0].cuda(), labels.cuda())
    prop.to_mask(prop.step(feats[1].cuda()), 8, (96, 112))
    bad = feats[2].clone()
    bad[0, 0, 0] = float("nan")
    soft = prop.step(bad.cuda())
    with pytest.raises(ShapeError, match=r"step 2 after reset\(\): 1 NaN"):
        prop.to_mask(soft, 8, (96, 112))


@pytest.mark.gpu
def test_feature_stage_on_cuda_keeps_computed_features_on_the_gpu_as_the_cache_stores_them(tiny_sd_dir, tmp_path):
    """A cold cache (computed on the GPU, rounded there) and a warm one (read, uploaded) give the same features;
    bfloat16 UNet + VAE stay close to float32 (TF32 on, the default). (Compiled blocks on CUDA: the
    dift_sd_compile step compares them with eager ones.)"""
    from vidprop.features import FeatureStage
    from vidprop.features.config import CacheConfig, DiftConfig, FeatureConfig

    images = torch.rand(3, 3, 64, 96, generator=torch.Generator().manual_seed(2)) * 2 - 1
    dift = DiftConfig(model_id=str(tiny_sd_dir), up_ft_index=1, ensemble_size=2)
    config = FeatureConfig(backend="dift_sd", dift=dift, cache=CacheConfig(dir=str(tmp_path / "cache")))
    cold = FeatureStage(config, device="cuda").extract(images)
    warm = FeatureStage(config, device="cuda").extract(images)
    for a, b in zip(cold, warm):
        assert a.features.device.type == "cuda"
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
    fast = FeatureConfig(backend="dift_sd", dift=DiftConfig(model_id=str(tiny_sd_dir), up_ft_index=1, ensemble_size=2,
                                                            vae_dtype="bfloat16"))
    half = FeatureStage(fast, device="cuda", dtype="bfloat16").extract(images)
    for a, b in zip(half, cold):
        assert (a.features - b.features).norm() / b.features.norm() < 0.05


@pytest.mark.gpu
def test_upload_is_exact():
    from vidprop.device import upload

    x = torch.randn(2, 3, 64, 96)
    y = upload(x, torch.device("cuda"), torch.bfloat16)
    assert y.device.type == "cuda" and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.cpu(), x.to(torch.bfloat16), rtol=0, atol=0)


def test_gpu_check_smoke_on_cpu(tmp_path, davis_root):
    out = tmp_path / "gc"
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out),
                           "--davis-root", str(davis_root),
                           "--sequences", "blackswan,dog,camel"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert set(steps) == {"tests", "dift_sd", "dift_sd_no_tf32", "dift_sd_compile", "dift_adm", "propagation", "e2e"}
    assert steps["tests"]["status"] == "ok" and steps["tests"]["summary"]["failures"] == 0
    assert all(steps[name]["status"] == "skipped" for name in ("dift_sd", "dift_sd_no_tf32", "dift_sd_compile", "dift_adm"))
    assert steps["propagation"]["status"] == "ok"
    torch_runs = [v for k, v in steps["propagation"]["results"]["dift"].items() if k.startswith("torch@")]
    assert torch_runs and all(r["seconds_per_frame"] > 0 for r in torch_runs)
    e2e = steps["e2e"]
    assert e2e["status"] == "ok" and e2e["sequences"] == ["blackswan", "dog", "camel"]
    assert "features.dift.vae_dtype=bfloat16" in e2e["settings"] and "runtime.dtype=bfloat16" in e2e["settings"]
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


def test_gpu_check_keeps_to_its_time_budget(tmp_path, davis_root):
    """A spent budget skips the remaining steps (saying why) and still writes the report; unknown steps are refused."""
    out = tmp_path / "gc"
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out),
                           "--davis-root", str(davis_root), "--budget", "10", "--steps", "tests,propagation"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert list(steps) == ["tests", "propagation"]
    assert all(s["status"] == "skipped" and "budget" in s["reason"] for s in steps.values())
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out),
                           "--davis-root", str(davis_root), "--steps", "tests,nope"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr
