"""Keyframes: masks given on later frames, objects that appear later, backward filling.

Engine tests compare :class:`LabelPropagator` with the dense reference, which implements the
keyframe semantics directly (permanent context frames, zero-padded new label channels).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidprop.errors import ShapeError
from vidprop.propagation import LabelPropagator, PropagationConfig
from vidprop.propagation.dense import DensePropagator
from test_propagation import BACKENDS, random_features, random_onehot

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
