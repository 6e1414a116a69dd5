"""Keyframes: masks given on later frames, objects that appear later, backward filling.

Engine tests compare :class:`LabelPropagator` with the dense reference, which implements the
keyframe semantics directly (permanent context frames, zero-padded new label channels).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import late_entry_cases
from test_propagation import BACKENDS, random_features, random_onehot
from vidprop.errors import ShapeError
from vidprop.propagation import LabelPropagator, PropagationConfig
from vidprop.propagation.dense import DensePropagator
from vidprop.scoring import evaluate_folders

# ---------------------------------------------------------------------------------------------
# Engine


def soft_labels(seed: int, k: int, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) per-cell distributions (as a first-appearance keyframe merges them)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(k, *size, generator=gen).softmax(0)


# (kind, frame, K after it): the video's events after reset at frame 0 with K = 2.
EVENTS = [("key", 3, 3), ("key", 6, 3), ("soft", 8, 4), ("key", 11, 5)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_last,radius,topk", [(2, 2, 5), (0, 3, 7), (5, 0, 15)])
def test_keyframes_match_dense_reference(backend, n_last, radius, topk):
    grid = (9, 11)
    feats = random_features(5, 8, grid, 14)
    cfg = PropagationConfig(topk=topk, n_last_frames=n_last, radius=radius, block_size=4, backend=backend)
    fast, dense = LabelPropagator(cfg), DensePropagator(cfg)
    first = random_onehot(2, 2, grid)
    fast.reset(feats[0], first)
    dense.reset(feats[0], first)
    events = {t: (kind, k) for kind, t, k in EVENTS}
    k = 2
    for t in range(1, len(feats)):
        if t in events:
            kind, k = events[t]
            labels = random_onehot(t, k, grid) if kind == "key" else soft_labels(t, k, grid)
            torch.testing.assert_close(fast.predict(feats[t]), dense.predict(feats[t]), rtol=1e-5, atol=1e-6)
            fast.add_keyframe(feats[t], labels)
            dense.add_keyframe(feats[t], labels)
            assert fast.num_labels == k
            continue
        soft, ref = fast.step(feats[t]), dense.step(feats[t])
        assert soft.shape == (k, *grid)
        torch.testing.assert_close(soft, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(soft.sum(0), torch.ones(grid), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyframes_are_permanent_and_outside_the_window(backend):
    grid = (6, 7)
    feats = random_features(3, 8, grid, 10)
    prop = LabelPropagator(PropagationConfig(topk=4, n_last_frames=2, radius=2, backend=backend))
    prop.reset(feats[0], random_onehot(1, 2, grid))
    seen = []
    for t in range(1, 10):
        seen.append(prop.num_context)
        if t in (2, 5):
            prop.add_keyframe(feats[t], random_onehot(t, 2, grid))
        else:
            prop.step(feats[t])
    # 1 permanent + window growing to 2; each keyframe adds a permanent frame and leaves the window as it was
    assert seen == [1, 2, 3, 4, 4, 5, 5, 5, 5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_object_is_absent_from_earlier_context(backend):
    """An object introduced by a keyframe takes labels only from that keyframe's cells: where the
    target matches an earlier frame exactly and the keyframe not at all, its channel is 0."""
    grid = (5, 6)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, *grid, generator=gen), torch.randn(4, *grid, generator=gen)
    prop = LabelPropagator(PropagationConfig(topk=1, n_last_frames=1, radius=0, backend=backend))
    prop.reset(a, random_onehot(1, 2, grid))
    new = torch.zeros(3, *grid)
    new[2] = 1  # every cell of the keyframe is the new object
    prop.add_keyframe(b, new)
    soft_a = prop.step(a)  # each cell's best match is itself in frame 0
    assert soft_a.shape[0] == 3
    assert soft_a[2].abs().max() == 0
    soft_b = prop.step(b)
    torch.testing.assert_close(soft_b[2], torch.ones(grid))


def test_keyframe_errors():
    grid = (4, 5)
    feats = random_features(1, 6, grid, 3)
    prop = LabelPropagator(PropagationConfig(topk=3, radius=1))
    with pytest.raises(ShapeError, match="before reset"):
        prop.add_keyframe(feats[0], random_onehot(1, 2, grid))
    prop.reset(feats[0], random_onehot(1, 3, grid))
    with pytest.raises(ShapeError, match="channels are never removed"):
        prop.add_keyframe(feats[1], random_onehot(1, 2, grid))
    with pytest.raises(ShapeError, match="grid"):
        prop.add_keyframe(feats[1], random_onehot(1, 3, (4, 4)))
    with pytest.raises(ShapeError, match="summing to 1"):
        prop.add_keyframe(feats[1], 2 * random_onehot(1, 3, grid))
    with pytest.raises(ShapeError, match="channels"):
        prop.add_keyframe(feats[1][:3], random_onehot(1, 3, grid))
    assert prop.num_context == 1  # nothing was added by the failed calls
    prop.add_keyframe(feats[1], F.pad(random_onehot(1, 3, grid), (0, 0, 0, 0, 0, 1)))
    assert prop.num_labels == 4 and prop.num_context == 2


# ---------------------------------------------------------------------------------------------
# Scoring objects that enter late (generic scorer)

VOS_DATA = Path(__file__).resolve().parent / "data" / "scoring_vos_benchmark.json"


@pytest.fixture(scope="module")
def vos_expected() -> dict:
    """hkchengrex/vos-benchmark's numbers on tests/late_entry_cases.py (see the file's _about)."""
    return json.loads(VOS_DATA.read_text())


@pytest.fixture(scope="module")
def late_cases(davis_root, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("late")
    late_entry_cases.make_cases(davis_root, root / "gt", root / "pred")
    return root / "gt", root / "pred"


def _by_name(scores) -> dict:
    return {o.name: o for o in scores.objects}


def test_late_object_never_predicted_scores_zero(late_cases, vos_expected, tmp_path):
    """The issue's case: an object in frames 7-9 of 10, never predicted, scores 0 (it scored 0.75,
    and the video 0.875, when frames before it existed counted as perfect)."""
    gt, pred = late_cases
    scores = evaluate_folders(gt / "enter-unpredicted", pred / "enter-unpredicted", processes=1)
    objects = _by_name(scores)
    expected = vos_expected["issue_example"]
    for name in ("enter-unpredicted_1", "enter-unpredicted_2"):
        assert objects[name].j_mean == pytest.approx(expected[name]["J"], abs=1e-12)
        assert objects[name].f_mean == pytest.approx(expected[name]["F"], abs=1e-12)
    assert objects["enter-unpredicted_2"].frames == ("00008",)  # entry frame 7 is its given frame
    assert scores.j_and_f_mean == pytest.approx(expected["global"]["J&F"], abs=1e-12) == 0.5


def test_late_objects_match_vos_benchmark(late_cases, vos_expected, caplog):
    """Per object, equal to vos-benchmark on the video cut at the object's entry frame (vos-benchmark
    scores an object's entry frame; the semi-supervised protocol gives it, so it is not scored)."""
    gt, pred = late_cases
    with caplog.at_level(logging.WARNING, logger="vidprop.scoring.evaluate"):
        objects = _by_name(evaluate_folders(gt, pred, processes=1))
    expected = vos_expected["skip_first_last"]
    assert set(objects) == {name for name, v in expected.items() if v is not None}
    for name, want in expected.items():
        if want is None:  # enters on the last scored frame: nothing left to score
            assert name == "enter-tracked_6" and "6 (frame 00012)" in caplog.text
            continue
        seq = name.rsplit("_", 1)[0]
        entry = late_entry_cases.ENTRIES[seq][objects[name].object_id]
        assert objects[name].frames[0] == f"{max(entry, 0) + 1:05d}"
        assert objects[name].j_mean == pytest.approx(want["J"], abs=1e-12), name
        assert objects[name].f_mean == pytest.approx(want["F"], abs=1e-12), name


def test_late_objects_without_skipping_match_vos_benchmark(late_cases, vos_expected):
    """Every frame scored (unsupervised protocol): from each object's first appearance on, as vos-benchmark."""
    gt, pred = late_cases
    scores = evaluate_folders(gt, pred, processes=1, skip_first_last=False)
    objects = _by_name(scores)
    expected = dict(vos_expected["no_skip"])
    glob = expected.pop("global")
    assert set(objects) == set(expected)
    for name, want in expected.items():
        assert objects[name].j_mean == pytest.approx(want["J"], abs=1e-12), name
        assert objects[name].f_mean == pytest.approx(want["F"], abs=1e-12), name
    assert scores.j_mean == pytest.approx(glob["J"], abs=1e-12)
    assert scores.f_mean == pytest.approx(glob["F"], abs=1e-12)


def test_predictions_before_an_object_enters_do_not_count(tmp_path):
    """Frames before an object's first ground truth are not its frames, predicted or not; an id
    only ever predicted is scored on every scored frame (0 where predicted, 1 elsewhere)."""
    h, w = 40, 60
    square = np.zeros((h, w), bool)
    square[10:30, 20:40] = True
    other = np.zeros((h, w), bool)
    other[5:15, 5:15] = True
    for t in range(8):
        gt = np.where(square, 1, 0).astype(np.uint8)
        if t >= 4:
            gt[other] = 2
        pred = gt.copy()
        if t in (1, 2):
            pred[other] = 2  # object 2 predicted before it exists
        if t == 5:
            pred[0:3, 0:3] = 9  # an id that never exists
        late_entry_cases.save_png(tmp_path / "gt" / "s" / f"{t:05d}.png", gt)
        late_entry_cases.save_png(tmp_path / "pred" / "s" / f"{t:05d}.png", pred)
    objects = _by_name(evaluate_folders(tmp_path / "gt", tmp_path / "pred", processes=1))
    assert objects["s_2"].frames == ("00005", "00006") and objects["s_2"].j_mean == 1.0
    assert objects["s_1"].frames == tuple(f"{t:05d}" for t in range(1, 7)) and objects["s_1"].j_mean == 1.0
    assert objects["s_9"].frames == objects["s_1"].frames
    assert objects["s_9"].j_mean == pytest.approx(5 / 6)
