"""Sequences whose objects enter late: ground truth and predictions made from real DAVIS masks.

Imported by tests/test_keyframes.py and, from outside the repository, by the script that ran
hkchengrex/vos-benchmark to produce tests/data/scoring_vos_benchmark.json (so: numpy and Pillow
only). Deterministic: the tests regenerate the same files.

Each object is a real DAVIS object mask (one single-object sequence of the shared sample per
object) painted in the given frames; objects painted later cover earlier ones where they overlap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Where each object enters, for the comparison with vos-benchmark (which scores the entry frame;
# vidprop's scorer does not, so a late object's numbers come from a run on the video cut there).
# sequence: {object id: first ground-truth frame}
ENTRIES = {
    "enter-unpredicted": {1: 0, 2: 7},
    "enter-tracked": {1: 0, 4: 5, 6: 12},
    "two-late": {3: 2, 7: 4},
}
LENGTHS = {"enter-unpredicted": 10, "enter-tracked": 14, "two-late": 9}


def _mask(davis_root: Path, seq: str, t: int) -> np.ndarray:
    return np.asarray(Image.open(davis_root / "Annotations" / "480p" / seq / f"{t:05d}.png")) > 0


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = mask[max(-dy, 0): h - max(dy, 0), max(-dx, 0): w - max(dx, 0)]
    return out


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        inner = out.copy()
        inner[1:] &= out[:-1]
        inner[:-1] &= out[1:]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        out = inner
    return out


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    return ~_erode(~mask, steps)


def save_png(path: Path, ids: np.ndarray) -> None:
    """An indexed PNG of ids (DAVIS palette order does not matter to either scorer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8), mode="L").convert("P")
    image.putpalette([v for i in range(256) for v in (i * 37 % 256, i * 91 % 256, i * 53 % 256)])
    image.save(path)


def _paint(shape, layers) -> np.ndarray:
    """Object ids from (id, bool mask or None) layers, later layers on top."""
    out = np.zeros(shape, np.uint8)
    for k, mask in layers:
        if mask is not None:
            out[mask] = k
    return out


def frames(davis_root: Path, seq: str, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, prediction) id maps of frame ``t`` of case sequence ``seq``."""
    m = lambda name, i=t: _mask(davis_root, name, i)  # noqa: E731
    if seq == "enter-unpredicted":
        # The case: object 2 exists in frames 7-9 and is never predicted; object 1 is perfect.
        gt = _paint(m("car-shadow").shape, [(1, m("car-shadow")), (2, m("blackswan") if t >= 7 else None)])
        return gt, np.where(gt == 2, 0, gt).astype(np.uint8)
    if seq == "enter-tracked":
        # Object 4 enters at 5, leaves the ground truth at 10-11 (predicted again at 11: a false
        # positive), comes back at 12; object 6 enters on the last scored frame (12 of 0..13).
        dog = m("dog") if t >= 5 and t not in (10, 11) else None
        libby = m("libby") if t >= 12 else None
        gt = _paint((480, 854), [(1, m("drift-straight")), (4, dog), (6, libby)])
        pred_dog = None
        if t >= 5 and t != 10:
            pred_dog = _erode(m("dog"), 1 + t % 3) if dog is not None else _shift(m("dog", 9), 6, -4)
        pred = _paint((480, 854), [(1, _shift(m("drift-straight"), 4 * (t % 5 - 2), 7 * (t % 3 - 1))), (4, pred_dog), (6, libby)])
        return gt, pred
    if seq == "two-late":
        # No object in the first frame; objects 3 and 7 (non-contiguous ids) enter at 2 and 4.
        car = m("car-shadow") if t >= 2 else None
        swan = m("blackswan") if t >= 4 else None
        gt = _paint((480, 854), [(3, car), (7, swan)])
        pred = _paint((480, 854), [(3, _dilate(car, 1 + t % 2) if car is not None else None),
                                   (7, _shift(swan, 2 - t % 4, t % 3) if swan is not None else None)])
        return gt, pred
    raise ValueError(seq)


def make_sequence(davis_root: Path, seq: str, gt_dir: Path, pred_dir: Path, first: int = 0) -> None:
    """Write ``<dir>/<frame>.png`` of case sequence ``seq`` from frame ``first`` on (``first`` > 0:
    the video cut there, which is how vos-benchmark scores an object entering there as vidprop does)."""
    for t in range(first, LENGTHS[seq]):
        gt, pred = frames(davis_root, seq, t)
        save_png(gt_dir / f"{t:05d}.png", gt)
        save_png(pred_dir / f"{t:05d}.png", pred)


def make_cases(davis_root: Path, gt_root: Path, pred_root: Path) -> None:
    """Write ``<root>/<seq>/<frame>.png`` for every case sequence."""
    for seq in LENGTHS:
        make_sequence(davis_root, seq, gt_root / seq, pred_root / seq)
