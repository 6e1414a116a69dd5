"""Keyframes: masks given on later frames, objects that appear later, backward filling.

Engine tests compare :class:`LabelPropagator` with the dense reference, which implements the
keyframe semantics directly (permanent context frames, zero-padded new label channels).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import late_entry_cases
from test_propagation import BACKENDS, random_features, random_onehot
from vidprop.errors import MaskError, ShapeError
from vidprop.features.base import FeatureMap
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


# ---------------------------------------------------------------------------------------------
# Keyframes through a video: real DAVIS frames, weight-free Lab features at 128 pixels


SEQ = "car-shadow"


@pytest.fixture(scope="module")
def car(davis_root, tmp_path_factory) -> Path:
    """The first 10 frames of car-shadow (a folder of frames)."""
    import shutil

    out = tmp_path_factory.mktemp("car") / SEQ
    out.mkdir()
    for path in sorted((davis_root / "JPEGImages" / "480p" / SEQ).glob("*.jpg"))[:10]:
        shutil.copy2(path, out / path.name)
    return out


def gt(davis_root: Path, t: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(davis_root / "Annotations" / "480p" / SEQ / f"{t:05d}.png")).astype(np.uint8)


def split_ids(mask: np.ndarray, ids=(1, 2)) -> np.ndarray:
    """The car split at its median column into two objects (left ``ids[0]``, right ``ids[1]``)."""
    cols = np.nonzero(mask.any(axis=0))[0]
    cut = int(np.median(cols))
    out = np.zeros(mask.shape, np.uint8)
    out[:, :cut][mask[:, :cut] > 0] = ids[0]
    out[:, cut:][mask[:, cut:] > 0] = ids[1]
    return out


def lab_features(frames, short_side: int = 128):
    """(frame, feature map) of the lab preset's features at ``short_side`` pixels, in frame order."""
    from vidprop.config import load_config
    from vidprop.features.lab import LabExtractor
    from vidprop.io.resize import ResizePolicy

    extractor = LabExtractor(load_config(Path(__file__).resolve().parents[1] / "configs" / "davis2017_lab.yaml").features.lab)
    policy = ResizePolicy(short_side=short_side, multiple=32)
    for frame in frames:
        yield frame, FeatureMap(extractor.extract(policy(frame.image)[None])[0], extractor.stride)


def run(source, masks, backward=True, first_appearance=False, short_side=128, **prop) -> dict[int, np.ndarray]:
    """Every frame's ids, keyed by frame index (the order checked on the way)."""
    from vidprop.io.frames import open_source
    from vidprop.pipeline.keyframes import KeyframePropagation, as_keyframes, propagate_keyframes

    src = open_source(source) if isinstance(source, (str, Path)) else source
    names = src.names if isinstance(source, (str, Path)) else None
    size = src.size
    keyframes = as_keyframes(masks, size, names, first_appearance=first_appearance)
    cfg = PropagationConfig(topk=15, n_last_frames=28, radius=15, backward=backward, **prop)
    out = {}
    features = functools.partial(lab_features, short_side=short_side)
    for frame, ids in propagate_keyframes(KeyframePropagation(keyframes, cfg), src, features):
        assert frame.index == len(out) and ids.shape == size and ids.dtype == np.uint8
        out[frame.index] = ids
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_only_mask_on_a_later_frame(car, davis_root, tmp_path):
    """(1) The only mask on frame k: frames k.. equal a run on the video cut at k, frames before k
    are filled backwards (and left empty with backward: false)."""
    import shutil

    k = 4
    cut = tmp_path / "cut"
    cut.mkdir()
    for path in sorted(car.iterdir())[k:]:
        shutil.copy2(path, cut / path.name)
    mask = gt(davis_root, k)
    full = run(car, {"00004": mask})
    alone = run(cut, {"00004": mask})
    assert len(full) == 10 and len(alone) == 6
    for t in range(k, 10):
        np.testing.assert_array_equal(full[t], alone[t - k])
    np.testing.assert_array_equal(full[k], mask)
    for t in range(k):  # backwards: the car is found in every earlier frame
        assert set(np.unique(full[t])) == {0, 1}
        assert iou(full[t] == 1, gt(davis_root, t) == 1) > 0.6, t
    empty = run(car, {"00004": mask}, backward=False)
    for t in range(k):
        assert not empty[t].any()
    for t in range(k, 10):
        np.testing.assert_array_equal(empty[t], full[t])


def test_backward_pass_without_random_access_is_the_same(car, davis_root):
    """A source read once (no ``read``) keeps the frames up to the first mask for the backward pass."""
    from vidprop.io.frames import open_source
    from vidprop.pipeline.inputs import ArrayFrameSource

    images = [frame.image for frame in open_source(car)]
    stream = ArrayFrameSource(iter(images))  # a generator: one pass, no random access
    assert not hasattr(stream, "read")
    expected = run(car, {"00003": gt(davis_root, 3)})
    got = run(stream, {3: gt(davis_root, 3)})
    for t in range(10):
        np.testing.assert_array_equal(got[t], expected[t])


SWAN_SIZE = (294, 231)  # (W, H) of the pasted swan crop: 0.7 of its 420x330 box


@pytest.fixture(scope="module")
def swan_enters(davis_root, tmp_path_factory) -> tuple[Path, dict[int, np.ndarray]]:
    """car-shadow's first 10 frames with the black swan (frames of its own video, at half size,
    bottom left, clear of the car) entering at frame 5: PNG frames and the swan's ground truth."""
    import cv2
    from PIL import Image

    out = tmp_path_factory.mktemp("swan") / "car-swan"
    out.mkdir()
    swan_gt = {}
    for t in range(10):
        image = np.array(Image.open(davis_root / "JPEGImages" / "480p" / SEQ / f"{t:05d}.jpg").convert("RGB"))
        if t >= 5:
            swan = np.array(Image.open(davis_root / "JPEGImages" / "480p" / "blackswan" / f"{t:05d}.jpg").convert("RGB"))
            mask = np.asarray(Image.open(davis_root / "Annotations" / "480p" / "blackswan" / f"{t:05d}.png")) > 0
            small = cv2.resize(swan[60:390, 120:540], SWAN_SIZE, interpolation=cv2.INTER_AREA)
            small_mask = cv2.resize(mask[60:390, 120:540].astype(np.uint8), SWAN_SIZE, interpolation=cv2.INTER_NEAREST) > 0
            region = image[480 - SWAN_SIZE[1]:, :SWAN_SIZE[0]]
            region[small_mask] = small[small_mask]
            placed = np.zeros(image.shape[:2], bool)
            placed[480 - SWAN_SIZE[1]:, :SWAN_SIZE[0]] = small_mask
            swan_gt[t] = placed
        Image.fromarray(image).save(out / f"{t:05d}.png")
    return out, swan_gt


def test_object_introduced_later(swan_enters, davis_root):
    """(2) An object first given on a later frame is tracked from there and absent before; ids are
    the original ones (3 and 7)."""
    frames, swan = swan_enters
    first = np.where(gt(davis_root, 0) > 0, 3, 0).astype(np.uint8)
    later = np.where(gt(davis_root, 5) > 0, 3, 0).astype(np.uint8)
    later[swan[5]] = 7
    out = run(frames, {"00000": first, "00005": later}, short_side=256)
    for t in range(5):
        assert set(np.unique(out[t])) == {0, 3}
    np.testing.assert_array_equal(out[5], later)
    for t in range(6, 10):
        assert set(np.unique(out[t])) == {0, 3, 7}
        assert iou(out[t] == 7, swan[t]) > 0.6, t
        assert iou(out[t] == 3, gt(davis_root, t) > 0) > 0.6, t
    # YouTube-VOS's first-appearance mask (the swan alone): the car is propagated through frame 5
    yt = run(frames, {"00000": first, "00005": np.where(swan[5], 7, 0).astype(np.uint8)}, first_appearance=True,
             short_side=256)
    for t in range(5):
        np.testing.assert_array_equal(yt[t], out[t])
    assert ((yt[5] == 7) == swan[5]).all()
    assert 0.6 < iou(yt[5] == 3, gt(davis_root, 5) > 0) < 1
    for t in range(6, 10):
        assert set(np.unique(yt[t])) == {0, 3, 7}
        assert iou(yt[t] == 7, swan[t]) > 0.6, t


def test_corrective_mask_replaces_labels_and_changes_later_frames(car, davis_root):
    """(3) A corrective mask on a later frame is written as given there and changes later frames
    (towards the truth: the car's ground truth of frame 5 given again)."""
    first = gt(davis_root, 0)
    plain = run(car, {"00000": first})
    corrected = run(car, {"00000": first, "00005": gt(davis_root, 5)})
    for t in range(5):
        np.testing.assert_array_equal(corrected[t], plain[t])
    np.testing.assert_array_equal(corrected[5], gt(davis_root, 5))
    assert not np.array_equal(plain[5], gt(davis_root, 5))
    before = [iou(plain[t] == 1, gt(davis_root, t) == 1) for t in range(6, 10)]
    after = [iou(corrected[t] == 1, gt(davis_root, t) == 1) for t in range(6, 10)]
    assert all(not np.array_equal(plain[t], corrected[t]) for t in range(6, 10))
    assert np.mean(after) > np.mean(before) + 0.005, (before, after)


def test_a_keyframe_that_drops_an_object_warns(car, davis_root, caplog):
    from vidprop.pipeline.keyframes import as_keyframes

    two = split_ids(gt(davis_root, 0))
    with caplog.at_level(logging.WARNING, logger="vidprop.pipeline.keyframes"):
        kf = as_keyframes({0: two, 5: np.where(two == 2, 0, two).astype(np.uint8)}, two.shape, video="car")
    assert "car: the mask of frame 00005 has no object 2" in caplog.text
    assert kf.object_ids.ids == (1, 2) and [k.new_ids for k in kf.frames] == [(1, 2), ()]


def test_masks_that_match_no_frame_are_errors(car, davis_root):
    from vidprop.errors import MaskError
    from vidprop.io.frames import open_source
    from vidprop.pipeline.keyframes import as_keyframes

    src = open_source(car)
    mask = gt(davis_root, 0)
    with pytest.raises(MaskError, match=r"a mask is given for frame '00012', but car-shadow has no frame of that name \(10 frames: 00000, 00001, 00002, \.\.\., 00009\)"):
        as_keyframes({"00012": mask}, src.size, src.names, 10, video="car-shadow")
    with pytest.raises(MaskError, match="frame index 10, but car-shadow has 10 frames"):
        as_keyframes({10: mask}, src.size, src.names, 10, video="car-shadow")
    with pytest.raises(MaskError, match="two masks for frame 00002"):
        as_keyframes({2: mask, "00002": mask}, src.size, src.names, 10, video="car-shadow")
    with pytest.raises(MaskError, match="has no object"):
        as_keyframes({0: mask, 3: np.zeros_like(mask)}, src.size, src.names, 10, video="car-shadow")
    with pytest.raises(MaskError, match="does not match the frame size"):
        as_keyframes({0: mask[:-1]}, src.size, src.names, 10, video="car-shadow")
    with pytest.raises(MaskError, match="every one of the 10 frames of car-shadow has a mask: nothing would be propagated"):
        as_keyframes({t: mask for t in range(10)}, src.size, src.names, 10, video="car-shadow")


# ---------------------------------------------------------------------------------------------
# The YouTube-VOS layout


def make_youtube_vos(davis_root: Path, swan_enters, root: Path, meta: bool = True) -> tuple[Path, Path]:
    """A YouTube-VOS root of 2 videos and 3 objects, one entering late, and its dense ground truth.

    ``car``: car-shadow frames 0-9, object 1 (the car), given on frame 0. ``car-swan``: the
    composite of :func:`swan_enters`, objects 1 (the car, given on frame 0) and 2 (the swan,
    entering at frame 5; its mask holds the swan alone, as YouTube-VOS's do).

    Returns:
        (root, ground truth root ``<gt>/<video>/<frame>.png`` of every frame).
    """
    import shutil

    frames, swan = swan_enters
    gt_root = root.parent / (root.name + "-gt")
    for video in ("car", "car-swan"):
        (root / "JPEGImages" / video).mkdir(parents=True)
        for t in range(10):
            if video == "car":
                shutil.copy2(davis_root / "JPEGImages" / "480p" / SEQ / f"{t:05d}.jpg", root / "JPEGImages" / video / f"{t:05d}.jpg")
            else:
                from PIL import Image

                Image.open(frames / f"{t:05d}.png").save(root / "JPEGImages" / video / f"{t:05d}.jpg", quality=95)
            ids = (gt(davis_root, t) > 0).astype(np.uint8)
            if video == "car-swan" and t >= 5:
                ids[swan[t]] = 2
            late_entry_cases.save_png(gt_root / video / f"{t:05d}.png", ids)
            if t == 0:
                late_entry_cases.save_png(root / "Annotations" / video / "00000.png", ids)
            if video == "car-swan" and t == 5:
                late_entry_cases.save_png(root / "Annotations" / video / "00005.png", np.where(ids == 2, 2, 0))
    if meta:
        frames_of = [f"{t:05d}" for t in range(10)]
        (root / "meta.json").write_text(json.dumps({"videos": {
            "car": {"objects": {"1": {"category": "car", "frames": frames_of}}},
            "car-swan": {"objects": {"1": {"category": "car", "frames": frames_of},
                                     "2": {"category": "bird", "frames": frames_of[5:]}}},
        }}))
    return root, gt_root


def test_youtube_vos_layout_is_read_and_checked(davis_root, swan_enters, tmp_path):
    from vidprop.errors import SourceError
    from vidprop.io.youtube_vos import is_youtube_vos, read_youtube_vos

    root, _ = make_youtube_vos(davis_root, swan_enters, tmp_path / "ytvos")
    assert is_youtube_vos(root) and not is_youtube_vos(davis_root)
    videos = read_youtube_vos(root)
    assert [v.name for v in videos] == ["car", "car-swan"]
    assert list(videos[1].masks) == ["00000", "00005"] and videos[1].frames == root / "JPEGImages" / "car-swan"

    meta = json.loads((root / "meta.json").read_text())
    meta["videos"]["car-swan"]["objects"]["2"]["frames"] = ["00006", "00007"]
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SourceError, match="object 2 of video 'car-swan' first appears on frame 00006, but its first mask is 00005.png"):
        read_youtube_vos(root)
    meta["videos"]["car-swan"]["objects"].pop("2")
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SourceError, match=r"lists objects \[1\] for video 'car-swan', but its masks hold objects \[1, 2\]"):
        read_youtube_vos(root)
    (root / "meta.json").unlink()
    assert len(read_youtube_vos(root)) == 2  # meta.json is optional

    (root / "Annotations" / "car" / "00000.png").rename(root / "Annotations" / "car" / "00012.png")
    with pytest.raises(SourceError, match=r"mask 00012.png of video 'car' matches no frame of JPEGImages/car \(10 frames: 00000"):
        read_youtube_vos(root)
    (root / "Annotations" / "car" / "00012.png").unlink()
    with pytest.raises(SourceError, match=r"1 video\(s\) have no masks in Annotations/<video>/: car"):
        read_youtube_vos(root)


# ---------------------------------------------------------------------------------------------
# The pipeline: streaming API, CLI, YouTube-VOS end to end, scored

LAB = str(Path(__file__).resolve().parents[1] / "configs" / "davis2017_lab.yaml")
FAST = ["--config", LAB, "--device", "cpu", "--short-side", "128"]


def lab_pipeline(*overrides: str):
    from vidprop.config import load_config
    from vidprop.pipeline import VideoPipeline

    return VideoPipeline(load_config(LAB, ["data.short_side=128", "runtime.device=cpu", *overrides]))


def test_streaming_api_accepts_keyframes(car, davis_root, tmp_path):
    """``first_mask`` may map frame names or indices to masks; frames come out in order, from 0."""
    from vidprop.io.masks import write_mask

    mask4 = gt(davis_root, 4)
    write_mask(tmp_path / "00004.png", mask4)
    pipe = lab_pipeline()
    by_name = list(pipe.propagate(car, {"00004": tmp_path / "00004.png"}))
    assert [o.index for o in by_name] == list(range(10)) and [o.name for o in by_name] == [f"{t:05d}" for t in range(10)]
    np.testing.assert_array_equal(by_name[4].mask, mask4)
    assert all(o.mask.any() for o in by_name)
    expected = run(car, {"00004": mask4})  # the same engine, driven directly (tests above)
    by_index = list(lab_pipeline().propagate(car, {4: mask4}))
    for t in range(10):
        np.testing.assert_array_equal(by_name[t].mask, by_index[t].mask)
    # arrays from a generator (one pass, no random access): the same masks
    from vidprop.io.frames import open_source

    images = (f.image for f in open_source(car))
    streamed = list(lab_pipeline().propagate(images, {4: mask4}))
    for t in range(10):
        np.testing.assert_array_equal(streamed[t].mask, by_name[t].mask)
    with pytest.raises(MaskError, match="cannot be matched by name"):
        list(lab_pipeline().propagate((f.image for f in open_source(car)), {"00004": mask4}))
    assert expected[4].shape == mask4.shape


def test_cli_mask_on_a_later_frame(car, davis_root, tmp_path, capsys):
    """``--mask FILE --mask-frame NAME`` and ``--masks DIR/<video>/<frame>.png`` (the issue's case:
    its mask was applied to frame 0 before) put the mask on its frame and fill the frames before."""
    from vidprop import cli
    from vidprop.io.masks import read_label_image, write_mask

    write_mask(tmp_path / "m.png", gt(davis_root, 4))
    out = tmp_path / "one"
    assert cli.main(["propagate", str(car), "--mask", str(tmp_path / "m.png"), "--mask-frame", "00004", "--out", str(out), *FAST]) == 0
    written = {t: read_label_image(out / f"{t:05d}.png") for t in range(10)}
    np.testing.assert_array_equal(written[4], gt(davis_root, 4))
    assert all(written[t].any() for t in range(4))

    videos, masks = tmp_path / "videos", tmp_path / "masks"
    videos.mkdir()
    (videos / SEQ).symlink_to(car, target_is_directory=True)
    (masks / SEQ).mkdir(parents=True)
    write_mask(masks / SEQ / "00004.png", gt(davis_root, 4))
    assert cli.main(["propagate", str(videos), "--masks", str(masks), "--out", str(tmp_path / "many"), *FAST]) == 0
    for t in range(10):
        np.testing.assert_array_equal(read_label_image(tmp_path / "many" / SEQ / f"{t:05d}.png"), written[t])

    empty = tmp_path / "empty"
    args = ["propagate", str(car), "--mask", str(tmp_path / "m.png"), "--mask-frame", "00004", "--out", str(empty), *FAST]
    assert cli.main([*args, "--set", "propagation.backward=false"]) == 0
    assert not any(read_label_image(empty / f"{t:05d}.png").any() for t in range(4))
    for t in range(4, 10):
        np.testing.assert_array_equal(read_label_image(empty / f"{t:05d}.png"), written[t])


def test_cli_mask_matching_no_frame_exits_2(car, davis_root, tmp_path, capsys, caplog):
    """(4) A mask whose name matches no frame: exit 2, the message names the mask and the frames."""
    from vidprop import cli
    from vidprop.io.masks import write_mask

    write_mask(tmp_path / "m.png", gt(davis_root, 0))
    rc = cli.main(["propagate", str(car), "--mask", str(tmp_path / "m.png"), "--mask-frame", "00012", "--out", str(tmp_path / "a"), *FAST])
    assert rc == 2
    text = capsys.readouterr().err + caplog.text
    assert "m.png is given for frame '00012'" in text and "(10 frames: 00000, 00001, 00002, ..., 00009)" in text
    videos, masks = tmp_path / "videos", tmp_path / "masks"
    videos.mkdir()
    (videos / SEQ).symlink_to(car, target_is_directory=True)
    write_mask(masks / SEQ / "frame4.png", gt(davis_root, 4))
    caplog.clear()
    rc = cli.main(["propagate", str(videos), "--masks", str(masks), "--out", str(tmp_path / "b"), *FAST])
    assert rc == 2
    text = capsys.readouterr().err + caplog.text
    assert "frame4.png is given for frame 'frame4', but car-shadow has no frame of that name" in text
    assert not list((tmp_path / "b").rglob("*.png"))  # nothing written


def test_youtube_vos_layout_end_to_end_and_scored(davis_root, swan_enters, tmp_path, capsys):
    """2 videos, 3 objects, one entering late: ``vidprop propagate ROOT`` writes every frame, and the
    generic scorer scores each object from the frame after it enters."""
    from vidprop import cli
    from vidprop.io.masks import read_label_image
    from vidprop.scoring import evaluate_folders

    root, gt_root = make_youtube_vos(davis_root, swan_enters, tmp_path / "ytvos")
    out = tmp_path / "out"
    assert cli.main(["propagate", str(root), "--out", str(out), *FAST[:-1], "256"]) == 0
    for video in ("car", "car-swan"):
        assert sorted(p.stem for p in (out / video).glob("*.png")) == [f"{t:05d}" for t in range(10)]
    swan = read_label_image(out / "car-swan" / "00005.png")
    given = read_label_image(root / "Annotations" / "car-swan" / "00005.png")
    assert ((swan == 2) == (given == 2)).all() and (swan == 1).sum() > 1000  # the car propagated there
    assert not any((read_label_image(out / "car-swan" / f"{t:05d}.png") == 2).any() for t in range(5))
    scores = evaluate_folders(gt_root, out, processes=1)
    objects = {o.name: o for o in scores.objects}
    assert sorted(objects) == ["car-swan_1", "car-swan_2", "car_1"]
    assert objects["car-swan_2"].frames == ("00006", "00007", "00008")
    assert objects["car_1"].frames[0] == "00001"
    assert scores.j_and_f_mean > 0.6 and objects["car-swan_2"].j_mean > 0.5
    assert cli.main(["evaluate", "--gt", str(gt_root), "--pred", str(out)]) == 0
    assert "car-swan_2" in capsys.readouterr().out
