"""Shared fixtures.

Real data comes from ``../shared/davis-sample`` (override with ``$VIDPROP_DAVIS_ROOT``); tests
that need it are skipped, with the path in the reason, when it is absent. It is never copied
into the repository: fixtures copy the few frames they need into ``tmp_path``.

Markers: ``slow`` (run only with ``VIDPROP_SLOW=1``), ``gpu`` (skipped without CUDA).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


def _davis_sample_path() -> Path:
    env = os.environ.get("VIDPROP_DAVIS_ROOT")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "davis-sample").resolve()


def _osvos_path() -> Path:
    env = os.environ.get("VIDPROP_OSVOS_ROOT")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "davis-predictions" / "osvos").resolve()


def pytest_collection_modifyitems(config, items):
    slow_on = os.environ.get("VIDPROP_SLOW", "") not in ("", "0")
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        cuda = False
    for item in items:
        if "slow" in item.keywords and not slow_on:
            item.add_marker(pytest.mark.skip(reason="slow test: set VIDPROP_SLOW=1 to run it"))
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def davis_root() -> Path:
    """The shared DAVIS-2017 sample (13 single-object val sequences, every frame annotated)."""
    path = _davis_sample_path()
    if not (path / "JPEGImages" / "480p").is_dir():
        pytest.skip(f"DAVIS sample not found at {path} (set VIDPROP_DAVIS_ROOT to its location)")
    return path


@pytest.fixture(scope="session")
def osvos_root() -> Path:
    """Published OSVOS predictions for the shared DAVIS sample."""
    path = _osvos_path()
    if not path.is_dir():
        pytest.skip(f"OSVOS predictions not found at {path} (set VIDPROP_OSVOS_ROOT)")
    return path


def copy_short_sequence(davis_root: Path, dest: Path, name: str = "car-shadow", n: int = 8) -> Path:
    """Copy the first ``n`` frames and masks of sequence ``name`` into a DAVIS layout under ``dest``.

    Returns the new DAVIS root (with ``ImageSets/2017/val.txt`` listing ``name``).
    """
    for sub, ext in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
        src = davis_root / sub / "480p" / name
        out = dest / sub / "480p" / name
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(src.glob(f"*{ext}"))[:n]:
            shutil.copy2(path, out / path.name)
    sets = dest / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    existing = (sets / "val.txt").read_text().split() if (sets / "val.txt").exists() else []
    (sets / "val.txt").write_text("\n".join(existing + [name]) + "\n")
    return dest


@pytest.fixture
def short_sequence(davis_root, tmp_path):
    """Factory: ``short_sequence(name="car-shadow", n=8)`` -> a small DAVIS root in tmp_path."""

    def make(name: str = "car-shadow", n: int = 8) -> Path:
        return copy_short_sequence(davis_root, tmp_path / "davis", name, n)

    return make


@pytest.fixture
def multi_object_mask(davis_root) -> np.ndarray:
    """A realistic multi-object mask with non-contiguous ids and void.

    The first ``car-shadow`` mask's object is split at its median column into ids 1 (left)
    and 3 (right), and a 255 void band is painted on its boundary (as DAVIS does).
    Returns an (H, W) uint8 array.
    """
    from PIL import Image
    from scipy import ndimage

    mask = np.asarray(Image.open(davis_root / "Annotations" / "480p" / "car-shadow" / "00000.png")) > 0
    cols = np.nonzero(mask.any(axis=0))[0]
    split = int(np.median(cols))
    out = np.zeros(mask.shape, np.uint8)
    out[:, :split][mask[:, :split]] = 1
    out[:, split:][mask[:, split:]] = 3
    boundary = mask ^ ndimage.binary_erosion(mask, iterations=2)
    out[boundary] = 255
    return out


def write_mp4(frames, path: Path, fps: float = 24.0) -> Path:
    """Write (H, W, 3) uint8 RGB frames to an mp4 with OpenCV (mp4v). Returns ``path``."""
    import cv2

    frames = list(frames)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():  # pragma: no cover
        raise RuntimeError(f"OpenCV cannot write {path}")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


@pytest.fixture
def tiny_mp4(davis_root, tmp_path) -> Path:
    """An mp4 of the first 6 ``car-shadow`` frames, downscaled to 214x120, written with OpenCV."""
    import cv2
    from PIL import Image

    src = sorted((davis_root / "JPEGImages" / "480p" / "car-shadow").glob("*.jpg"))[:6]
    frames = [cv2.resize(np.asarray(Image.open(p).convert("RGB")), (214, 120), interpolation=cv2.INTER_AREA) for p in src]
    return write_mp4(frames, tmp_path / "car-shadow.mp4")


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A seeded tiny Stable Diffusion model saved in the diffusers folder layout (built once per run)."""
    from sd_fixtures import build_tiny_sd  # tests/sd_fixtures.py

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))
