"""Propagation engine: equality with the dense reference, tie semantics, bounded-memory paths, errors."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidprop.config_base import from_dict
from vidprop.errors import ConfigError, ShapeError
from vidprop.propagation import LabelPropagator, PropagationConfig, labels_to_mask
from vidprop.propagation import engine, fused
from vidprop.propagation.dense import DensePropagator, dense_propagate, dense_to_mask, neighbourhood_mask
from vidprop.propagation.kernels import BlockGrid, TilePlan, normalize_cells, propagate_blocks, to_blocks

# Every backend must give the reference's results; 'fused' needs numba (a declared dependency).
BACKENDS = [pytest.param("fused", marks=pytest.mark.skipif(not fused.AVAILABLE, reason="numba not installed")), "torch",
            "strips"]


def random_features(seed: int, channels: int, size: tuple[int, int], frames: int, smooth: bool = True) -> list[torch.Tensor]:
    """Seeded (C, h, w) features per frame: a smooth field shared by all frames plus per-frame noise."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    base = torch.randn(1, channels, max(1, h // 3), max(1, w // 3), generator=gen)
    base = F.interpolate(base, size=size, mode="bilinear", align_corners=False)[0] if smooth else torch.zeros(channels, h, w)
    return [base + 0.5 * torch.randn(channels, h, w, generator=gen) for _ in range(frames)]


def random_onehot(seed: int, k: int, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) one-hot labels made of blobs (channel 0 = background)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    scores = F.interpolate(torch.randn(1, k, max(1, h // 3), max(1, w // 3), generator=gen), size=size, mode="bilinear",
                           align_corners=False)[0]
    scores[0] += 0.5  # more background than objects
    return F.one_hot(scores.argmax(0), k).permute(2, 0, 1).float()


def run_both(cfg: PropagationConfig, feats: list[torch.Tensor], labels: torch.Tensor, stride: int, size: tuple[int, int]):
    """Run the engine and the dense reference side by side; yield (soft, dense soft, mask, dense mask)."""
    fast, dense = LabelPropagator(cfg), DensePropagator(cfg)
    fast.reset(feats[0], labels)
    dense.reset(feats[0], labels)
    for f in feats[1:]:
        a, b = fast.step(f), dense.step(f)
        yield a, b, fast.to_mask(a, stride, size), dense.to_mask(b, stride, size)


# (grid, C, K, topk, n_last_frames, radius, block_size, frames)
SETTINGS = [
    ((12, 16), 16, 2, 15, 4, 0, 8, 7),     # no neighbourhood restriction
    ((13, 17), 16, 3, 5, 3, 2, 4, 9),      # grid not divisible by the block size; context longer than n_last
    ((9, 11), 8, 4, 30, 6, 3, 3, 5),       # context shorter than n_last_frames
    ((20, 23), 32, 5, 15, 7, 5, 8, 6),     # DAVIS-like radius/block ratio
    ((6, 7), 4, 2, 100, 2, 1, 2, 5),       # topk larger than the window: every neighbour kept
    ((10, 14), 8, 1, 3, 2, 3, 5, 4),       # K = 1 (background only)
    ((11, 9), 12, 3, 1, 0, 2, 4, 5),       # topk 1; first frame only (n_last_frames 0)
    ((16, 21), 24, 3, 15, 28, 15, 8, 5),   # DIFT's setting on a small grid (radius covers the frame)
    ((15, 15), 8, 2, 7, 3, 4, 1, 5),       # block size 1
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid,channels,k,topk,n_last,radius,block,frames", SETTINGS)
def test_matches_dense_reference(grid, channels, k, topk, n_last, radius, block, frames, backend):
    cfg = PropagationConfig(topk=topk, n_last_frames=n_last, radius=radius, temperature=0.2, block_size=block,
                            backend=backend)
    feats = random_features(hash((grid, channels, topk)) % 1000, channels, grid, frames)
    labels = random_onehot(k * 7 + topk, k, grid)
    size = (grid[0] * 8 - 3, grid[1] * 8 + 5)
    for soft, ref, mask, ref_mask in run_both(cfg, feats, labels, 8, size):
        assert soft.shape == (k, *grid) and soft.dtype == torch.float32
        torch.testing.assert_close(soft, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(soft.sum(0), torch.ones(grid), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(mask, ref_mask)
        assert mask.shape == size and mask.dtype == np.uint8


def test_results_do_not_depend_on_block_size():
    grid, feats = (14, 19), random_features(3, 16, (14, 19), 6)
    labels = random_onehot(4, 3, grid)
    outs = []
    for block in (1, 3, 8, 20):
        prop = LabelPropagator(PropagationConfig(topk=9, n_last_frames=3, radius=4, block_size=block))
        prop.reset(feats[0], labels)
        outs.append(torch.stack([prop.step(f) for f in feats[1:]]))
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_features_keep_every_tied_neighbour(backend):
    """All affinities equal: the k-th value ties with every window cell, and the reference keeps them all,
    so each target gets the plain mean of the labels in its (2r+1)^2 window over all context frames."""
    grid, radius = (10, 12), 2
    feats = [torch.ones(4, *grid)] * 2
    labels = random_onehot(1, 3, grid)
    prop = LabelPropagator(PropagationConfig(topk=3, n_last_frames=2, radius=radius, block_size=4, backend=backend))
    prop.reset(feats[0], labels)
    soft = prop.step(feats[1])
    window = 2 * radius + 1
    ones = torch.ones(1, 1, window, window)
    counts = F.conv2d(torch.ones(1, 1, *grid), ones, padding=radius)[0, 0]
    expected = F.conv2d(labels[:, None], ones, padding=radius)[:, 0] / counts
    torch.testing.assert_close(soft, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_quantised_features_with_many_ties_match_dense(backend):
    """Features from a handful of distinct vectors: exact ties at the k-th affinity everywhere."""
    grid = (13, 15)
    gen = torch.Generator().manual_seed(5)
    palette = torch.randn(4, 8, generator=gen)
    feats = [palette[torch.randint(0, 4, grid, generator=gen)].permute(2, 0, 1).contiguous() for _ in range(6)]
    labels = random_onehot(2, 3, grid)
    cfg = PropagationConfig(topk=10, n_last_frames=3, radius=3, block_size=4, backend=backend)
    for soft, ref, mask, ref_mask in run_both(cfg, feats, labels, 4, (52, 60)):
        torch.testing.assert_close(soft, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(mask, ref_mask)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_collapse_of_exp_is_a_tie(backend):
    """Distinct cosines whose exp(cos / T) round to the same float32 are ties, as in the reference.

    Context cells hold (a, sqrt(1 - a^2)) with a few-ulp-apart small a; the target is (1, 0), so the
    cosines are the a's. Ranking by cosine alone would keep exactly topk cells; the reference keeps the
    whole collapsed run.
    """
    grid, topk, temperature = (6, 8), 5, 0.2
    n = grid[0] * grid[1]
    a = torch.tensor(0.01, dtype=torch.float32) + torch.arange(n, dtype=torch.float32) * 1e-9
    context = torch.stack([a, torch.sqrt(1 - a * a)]).view(2, *grid)
    target = torch.zeros(2, *grid)
    target[0] = 1
    # Precondition: after normalisation the top cosines are distinct, yet their affinities collapse.
    cos = normalize_cells(context)[..., 0].flatten().sort(descending=True).values
    aff = torch.exp(cos / temperature)
    assert cos[topk - 1] > cos[topk] and aff[topk - 1] == aff[topk]
    labels = F.one_hot((torch.arange(n) % 3).view(grid), 3).permute(2, 0, 1).float()
    cfg = PropagationConfig(topk=topk, n_last_frames=1, radius=0, temperature=temperature, block_size=4,
                            backend=backend)
    soft, ref, mask, ref_mask = next(run_both(cfg, [context, target], labels, 2, (12, 16)))
    torch.testing.assert_close(soft, ref, rtol=1e-5, atol=1e-6)
    kept = int((aff >= aff[topk - 1]).sum())
    assert kept > topk  # the collapsed run is longer than k: ties must be kept
    np.testing.assert_array_equal(mask, ref_mask)


@pytest.mark.parametrize("budget_bytes", [20_000, 200_000])
def test_chunked_windows_match_single_pass(budget_bytes):
    """Budgets below one tile's window split it by slots or block rows (two passes), or split runs of tiles."""
    grid = BlockGrid((13, 18), 4)
    feats = random_features(8, 16, grid.size, 7)
    labels = random_onehot(9, 3, grid.size)
    store = torch.stack([to_blocks(normalize_cells(f), grid) for f in feats[:6]], 2).contiguous()
    soft = torch.stack([to_blocks(F.softmax(torch.randn(*grid.size, 3), -1), grid) for _ in range(5)], 2)
    label_store = torch.cat([to_blocks(labels.permute(1, 2, 0), grid)[:, :, None], soft], 2).contiguous()
    query = to_blocks(normalize_cells(feats[6]), grid)
    padding = to_blocks(torch.ones(*grid.size, 1, dtype=torch.bool), grid).logical_not_()
    for radius in (0, 3):
        plan = TilePlan(grid, radius)
        for n_valid in (4, 6):
            args = dict(topk=11, temperature=0.2, padding=padding)
            single = propagate_blocks(query, store, label_store, n_valid, plan, budget_bytes=2**30, **args)
            chunked = propagate_blocks(query, store, label_store, n_valid, plan, budget_bytes=budget_bytes, **args)
            torch.testing.assert_close(chunked, single, rtol=1e-5, atol=1e-6)


def _car_shadow(davis_root, count: int, stride: int):
    """Colour features pooled from the first ``count`` real DAVIS frames of car-shadow, its first mask, and
    the labels at the feature grid."""
    from PIL import Image

    seq = "car-shadow"
    frames = sorted((davis_root / "JPEGImages" / "480p" / seq).glob("*.jpg"))[:count]
    mask0 = np.asarray(Image.open(davis_root / "Annotations" / "480p" / seq / "00000.png"))
    feats = []
    for path in frames:
        rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
        pooled = F.avg_pool2d(rgb[None], stride)[0]
        feats.append(torch.cat([pooled, pooled - pooled.mean((1, 2), keepdim=True)]))
    grid = tuple(feats[0].shape[1:])
    small = np.array(Image.fromarray((mask0 > 0).astype(np.uint8)).resize((grid[1], grid[0]), Image.NEAREST))
    labels = F.one_hot(torch.from_numpy(small).long(), 2).permute(2, 0, 1).float()
    return feats, mask0, labels


def test_strip_shapes_give_identical_masks_on_real_frames(davis_root):
    """The strips kernel's tiling (strip width, target rows per chunk, all or some slots in use) changes
    nothing: soft labels to float rounding and masks identical, equal to the dense reference's.

    Many cells of these colour features are near-identical, so the kept sets hinge on the last bit
    of the cosines: every product here has at least 4 rows and 12 columns, where (x86-64, MKL) the
    cosines are bitwise those of the reference's one large product, as at the DAVIS setting."""
    from vidprop.propagation.engine import threshold_candidates, weights_from_top
    from vidprop.propagation.kernels import Workspace
    from vidprop.propagation.strips import StripPlan, propagate_strips, strip_bytes

    feats, mask0, labels = _car_shadow(davis_root, 5, 16)
    grid = tuple(feats[0].shape[1:])
    cells = [normalize_cells(f) for f in feats]
    n_slots, radius, topk = 4, 10, 15
    store = torch.zeros(*grid, n_slots, cells[0].shape[-1])
    label_store = torch.zeros(*grid, n_slots, 2)
    for s in range(n_slots):
        store[:, :, s] = cells[s]
        label_store[:, :, s] = F.softmax(torch.randn(*grid, 2, generator=torch.Generator().manual_seed(s)), -1) \
            if s else labels.permute(1, 2, 0)
    query = cells[4]
    for n_valid in (2, 4):  # some slots (one product per slot), every slot (one product per row)
        ref = dense_propagate(query.flatten(0, 1), store[:, :, :n_valid].permute(2, 0, 1, 3).flatten(0, 2),
                              label_store[:, :, :n_valid].permute(2, 0, 1, 3).flatten(0, 2), grid, topk=topk,
                              radius=radius, temperature=0.2).view(*grid, 2)
        ref_mask = dense_to_mask(ref.permute(2, 0, 1), 16, mask0.shape)
        for width in (5, 8, grid[1]):
            for rows in (12, grid[0]):
                plan = StripPlan(grid, radius, width, n_valid, strip_bytes(rows, width, radius, radius, n_valid))
                assert plan.rows == rows and len(plan.strips) == -(-grid[1] // width)
                soft = propagate_strips(query, store, label_store, n_valid, plan, topk=topk, temperature=0.2,
                                        workspaces=[Workspace() for _ in range(1 + width % 2)],
                                        weights_from_top=weights_from_top,
                                        threshold_candidates=threshold_candidates)
                torch.testing.assert_close(soft, ref, rtol=1e-5, atol=1e-6)
                np.testing.assert_array_equal(labels_to_mask(soft.permute(2, 0, 1), 16, mask0.shape), ref_mask)


def test_tie_rows_found_once_per_frame_equal_tie_rows_found_per_run():
    """The GPU's order (every run first, then one read of which rows tie, those runs' cosines recomputed)
    gives the CPU's result bit for bit, on features with ties at the k-th value everywhere and on ones without."""
    grid = BlockGrid((13, 18), 4)
    gen = torch.Generator().manual_seed(5)
    palette = torch.randn(4, 16, generator=gen)
    tied = [palette[torch.randint(0, 4, grid.size, generator=gen)].permute(2, 0, 1).contiguous() for _ in range(7)]
    for feats in (tied, random_features(8, 16, grid.size, 7)):
        labels = random_onehot(9, 3, grid.size)
        store = torch.stack([to_blocks(normalize_cells(f), grid) for f in feats[:6]], 2).contiguous()
        soft = torch.stack([to_blocks(F.softmax(torch.randn(*grid.size, 3, generator=gen), -1), grid) for _ in range(5)], 2)
        label_store = torch.cat([to_blocks(labels.permute(1, 2, 0), grid)[:, :, None], soft], 2).contiguous()
        query = to_blocks(normalize_cells(feats[6]), grid)
        padding = to_blocks(torch.ones(*grid.size, 1, dtype=torch.bool), grid).logical_not_()
        for radius, budget in ((0, 2**30), (3, 2**30), (3, 200_000)):
            args = dict(topk=11, temperature=0.2, padding=padding, budget_bytes=budget)
            plan = TilePlan(grid, radius)
            now = propagate_blocks(query, store, label_store, 6, plan, defer_ties=False, **args)
            later = propagate_blocks(query, store, label_store, 6, plan, defer_ties=True, **args)
            torch.testing.assert_close(later, now, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_frames_match_dense(davis_root, backend):
    """Colour features pooled from real DAVIS frames (many near-identical cells), first real mask."""
    stride = 16
    feats, mask0, labels = _car_shadow(davis_root, 5, stride)
    cfg = PropagationConfig(topk=15, n_last_frames=2, radius=4, temperature=0.2, backend=backend)
    masks = []
    for soft, ref, mask, ref_mask in run_both(cfg, feats, labels, stride, mask0.shape):
        torch.testing.assert_close(soft, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(mask, ref_mask)
        masks.append(mask)
    assert all(m.shape == mask0.shape and m.max() == 1 for m in masks)


@pytest.mark.parametrize("backend", BACKENDS)
def test_context_is_first_frame_plus_last_frames(backend):
    grid = (8, 9)
    feats = random_features(11, 8, grid, 8)
    prop = LabelPropagator(PropagationConfig(topk=4, n_last_frames=3, radius=2, backend=backend))
    prop.reset(feats[0], random_onehot(3, 2, grid))
    seen = []
    for f in feats[1:]:
        seen.append(prop.num_context)
        prop.step(f)
    assert seen == [1, 2, 3, 4, 4, 4, 4]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("radius", [1, 3, 6])
def test_radius_edge_is_inclusive(backend, radius):
    """A context cell at offset exactly (radius, radius) is seen, one at radius + 1 in either axis is not.

    Every cell holds a distinct random direction except three copies of the target's own vector:
    at (y + r, x + r) with label 1, at (y + r + 1, x) with label 2 and at (y, x - r - 1) with label 3.
    With topk 1 the target must take label 1 alone.
    """
    grid, y, x = (2 * radius + 6, 2 * radius + 8), radius + 1, radius + 2
    gen = torch.Generator().manual_seed(radius)
    context = torch.randn(16, *grid, generator=gen)
    vec = torch.randn(16, generator=gen) * 10
    target = torch.randn(16, *grid, generator=gen)
    target[:, y, x] = vec
    channel = torch.zeros(grid, dtype=torch.long)
    for (cy, cx), k in (((y + radius, x + radius), 1), ((y + radius + 1, x), 2), ((y, x - radius - 1), 3)):
        context[:, cy, cx] = vec
        channel[cy, cx] = k
    labels = F.one_hot(channel, 4).permute(2, 0, 1).float()
    cfg = PropagationConfig(topk=1, n_last_frames=0, radius=radius, block_size=4, backend=backend)
    soft, ref, _, _ = next(run_both(cfg, [context, target], labels, 4, (grid[0] * 4, grid[1] * 4)))
    torch.testing.assert_close(soft[:, y, x], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(soft, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid,radius,n_last", [((2, 3), 0, 0), ((3, 2), 1, 1), ((1, 1), 2, 2), ((4, 5), 1, 0)])
def test_fewer_candidates_than_k_keeps_every_neighbour(backend, grid, radius, n_last):
    """Windows smaller than topk: every in-radius cell of every context frame is kept, weighted by
    exp(cos / T) (computed here directly from the definition)."""
    topk, temperature = 15, 0.5
    feats = random_features(21, 5, grid, 3)
    labels = random_onehot(22, 3, grid)
    prop = LabelPropagator(PropagationConfig(topk=topk, n_last_frames=n_last, radius=radius, temperature=temperature,
                                             block_size=2, backend=backend))
    prop.reset(feats[0], labels)
    context = [(normalize_cells(feats[0]), labels.permute(1, 2, 0))]
    h, w = grid
    reach = radius if radius > 0 else max(grid)
    for f in feats[1:]:
        soft = prop.step(f)
        query = normalize_cells(f)
        expected = torch.zeros(h, w, labels.shape[0])
        for y in range(h):
            for x in range(w):
                num, den = 0.0, 0.0
                for cells, lab in context:
                    win = cells[max(0, y - reach): y + reach + 1, max(0, x - reach): x + reach + 1].reshape(-1, 5)
                    aff = torch.exp(win @ query[y, x] / temperature)
                    num = num + aff @ lab[max(0, y - reach): y + reach + 1, max(0, x - reach): x + reach + 1].reshape(-1, 3)
                    den = den + aff.sum()
                expected[y, x] = num / den
        torch.testing.assert_close(soft, expected.permute(2, 0, 1), rtol=1e-5, atol=1e-6)
        if n_last:
            context = [context[0], *context[1:][-(n_last - 1):]] if n_last > 1 else [context[0]]
            context.append((query, soft.permute(1, 2, 0)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_frame_only_context(backend):
    """n_last_frames 0: every step sees the first frame alone, so a frame's result does not depend on
    the frames before it, and equals one dense step from the first frame."""
    grid = (9, 13)
    feats = random_features(31, 8, grid, 4)
    labels = random_onehot(32, 3, grid)
    cfg = PropagationConfig(topk=6, n_last_frames=0, radius=3, backend=backend)
    prop = LabelPropagator(cfg)
    prop.reset(feats[0], labels)
    first = prop.step(feats[3])
    prop.step(feats[1])
    prop.step(feats[2])
    assert prop.num_context == 1
    torch.testing.assert_close(prop.step(feats[3]), first, rtol=0, atol=0)
    ref = dense_propagate(normalize_cells(feats[3]).flatten(0, 1), normalize_cells(feats[0]).flatten(0, 1),
                          labels.flatten(1).T, grid, topk=6, radius=3, temperature=cfg.temperature)
    torch.testing.assert_close(first, ref.T.reshape(3, *grid), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not fused.AVAILABLE, reason="numba not installed")
def test_backends_and_thread_counts_agree():
    """The fused kernel and the torch backend give the same masks; the fused kernel's result does
    not depend on its thread count (bitwise)."""
    grid = (23, 31)
    feats = random_features(41, 9, grid, 8)
    labels = random_onehot(42, 3, grid)
    outs = {}
    for backend, threads in (("torch", None), ("fused", 1), ("fused", 3)):
        prop = LabelPropagator(PropagationConfig(topk=15, n_last_frames=4, radius=5, backend=backend, threads=threads))
        prop.reset(feats[0], labels)
        assert prop.backend == backend
        outs[backend, threads] = torch.stack([prop.step(f) for f in feats[1:]])
    torch.testing.assert_close(outs["fused", 3], outs["fused", 1], rtol=0, atol=0)
    # threads is read at every step: changing it between frames changes nothing in the results
    prop = LabelPropagator(PropagationConfig(topk=15, n_last_frames=4, radius=5, backend="fused", threads=2))
    prop.reset(feats[0], labels)
    switched = []
    for i, f in enumerate(feats[1:]):
        prop.config = dataclasses.replace(prop.config, threads=1 + i % 3)
        switched.append(prop.step(f))
    torch.testing.assert_close(torch.stack(switched), outs["fused", 1], rtol=0, atol=0)
    torch.testing.assert_close(outs["fused", 1], outs["torch", None], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs["fused", 1], outs["torch", None]):
        np.testing.assert_array_equal(labels_to_mask(a, 8, (184, 248)), labels_to_mask(b, 8, (184, 248)))


def test_strips_thread_counts_agree_bitwise():
    """The strips backend's workers take whole strips: results do not depend on their number, which
    may change between frames (config.threads is read at every step)."""
    grid = (23, 31)
    feats = random_features(43, 40, grid, 6)
    labels = random_onehot(44, 3, grid)
    outs = {}
    for threads in (1, 3):
        prop = LabelPropagator(PropagationConfig(topk=15, n_last_frames=3, radius=5, backend="strips", threads=threads))
        prop.reset(feats[0], labels)
        outs[threads] = torch.stack([prop.step(f) for f in feats[1:]])
    torch.testing.assert_close(outs[3], outs[1], rtol=0, atol=0)
    prop = LabelPropagator(PropagationConfig(topk=15, n_last_frames=3, radius=5, backend="strips", threads=2))
    prop.reset(feats[0], labels)
    switched = []
    for i, f in enumerate(feats[1:]):
        prop.config = dataclasses.replace(prop.config, threads=1 + i % 3)
        switched.append(prop.step(f))
    torch.testing.assert_close(torch.stack(switched), outs[1], rtol=0, atol=0)
    assert torch.get_num_threads() >= 1


def test_auto_backend_choice():
    grid = (6, 7)
    labels = random_onehot(1, 2, grid)
    for channels, dtype, expected in ((9, None, "fused"), (24, None, "fused"), (25, None, "strips"), (640, None, "strips"),
                                      (9, "float64", "strips")):
        prop = LabelPropagator(PropagationConfig(topk=3, radius=2, dtype=dtype))
        prop.reset(torch.randn(channels, *grid), labels)
        assert prop.backend == (expected if fused.AVAILABLE or expected != "fused" else "strips")
    # a whole-frame window on a large grid does not fit a strip row in the budget: torch
    prop = LabelPropagator(PropagationConfig(topk=3, radius=0, memory_budget_mib=16))
    prop.reset(torch.randn(640, 60, 104), random_onehot(1, 2, (60, 104)))
    assert prop.backend == "torch"


def test_auto_without_numba_warns_once_and_keeps_results(monkeypatch, caplog):
    # A broken or missing numba install must not make runs silently several times slower.
    grid = (6, 7)
    feats = random_features(3, 9, grid, 2)
    labels = random_onehot(2, 2, grid)
    expected = LabelPropagator(PropagationConfig(topk=3, radius=2, backend="strips"))
    expected.reset(feats[0], labels)
    monkeypatch.setattr(fused, "AVAILABLE", False)
    engine._warn_no_numba.cache_clear()
    outs = []
    with caplog.at_level(logging.WARNING, logger="vidprop.propagation.engine"):
        for _ in range(2):
            prop = LabelPropagator(PropagationConfig(topk=3, radius=2))
            prop.reset(feats[0], labels)
            assert prop.backend == "strips"
            outs.append(prop.step(feats[1]))
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1 == len(caplog.records)
    assert "numba is not installed" in caplog.records[0].message
    torch.testing.assert_close(outs[0], expected.step(feats[1]), rtol=0, atol=0)
    engine._warn_no_numba.cache_clear()


def test_strips_backend_refuses_a_window_over_the_budget():
    prop = LabelPropagator(PropagationConfig(topk=3, radius=0, memory_budget_mib=16, backend="strips"))
    with pytest.raises(ConfigError, match="memory_budget_mib"):
        prop.reset(torch.randn(4, 60, 104), random_onehot(1, 2, (60, 104)))


@pytest.mark.skipif(not fused.AVAILABLE, reason="numba not installed")
def test_fused_backend_refuses_what_it_cannot_run():
    prop = LabelPropagator(PropagationConfig(topk=3, radius=2, dtype="float64", backend="fused"))
    with pytest.raises(ConfigError, match="float32"):
        prop.reset(torch.randn(4, 6, 7), random_onehot(1, 2, (6, 7)))


def test_dtype_and_device_follow_config():
    grid = (7, 8)
    feats = random_features(12, 8, grid, 3)
    labels = random_onehot(4, 2, grid)
    prop = LabelPropagator(PropagationConfig(topk=5, n_last_frames=2, radius=2))
    prop.reset(feats[0].double(), labels.double())
    out32 = prop.step(feats[1].double())
    assert out32.dtype == torch.float32 and out32.device.type == "cpu"
    prop64 = LabelPropagator(PropagationConfig(topk=5, n_last_frames=2, radius=2, dtype="float64"))
    prop64.reset(feats[0], labels)
    out64 = prop64.step(feats[1])
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "strips"])
def test_cuda_matches_cpu_dense(backend):
    grid = (20, 23)
    feats = random_features(13, 32, grid, 6)
    labels = random_onehot(5, 3, grid)
    cfg = PropagationConfig(topk=15, n_last_frames=3, radius=5, backend=backend)
    fast, dense = LabelPropagator(dataclasses.replace(cfg, device="cuda")), DensePropagator(cfg)
    fast.reset(feats[0], labels)
    dense.reset(feats[0], labels)
    for f in feats[1:]:
        soft, ref = fast.step(f), dense.step(f)
        assert soft.device.type == "cuda"
        torch.testing.assert_close(soft.cpu(), ref, rtol=1e-4, atol=1e-5)


# --- to_mask -------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,grid,stride,size", [(1, (5, 7), 8, (40, 56)), (2, (6, 9), 8, (45, 77)),
                                                (3, (10, 13), 4, (41, 50)), (5, (7, 7), 16, (100, 130))])
def test_to_mask_matches_reference(k, grid, stride, size):
    gen = torch.Generator().manual_seed(k)
    soft = torch.rand(k, *grid, generator=gen) ** 3
    np.testing.assert_array_equal(labels_to_mask(soft, stride, size), dense_to_mask(soft.clone(), stride, size))


def test_to_mask_special_channels_match_reference():
    """An all-zero channel (left as is) and a constant positive one (0/0 = NaN in the reference's norm_mask)."""
    soft = torch.rand(4, 6, 8)
    soft[1] = 0
    soft[2] = 0.25
    np.testing.assert_array_equal(labels_to_mask(soft, 8, (48, 64)), dense_to_mask(soft.clone(), 8, (48, 64)))
    soft[2] = 0.1
    soft[3] = 0
    np.testing.assert_array_equal(labels_to_mask(soft, 8, (50, 60)), dense_to_mask(soft.clone(), 8, (50, 60)))


def test_to_mask_nearest_resize_is_pils_at_every_size():
    """The device-side NEAREST resize takes PIL's pixel mapping, which is not floor((x + 0.5) * in / out)
    at every size: DAVIS 480p (60x107 cells x 8 -> 480x856 -> 480x854), up- and downscaling, odd sizes."""
    from PIL import Image

    from vidprop.propagation.engine import pil_nearest_indices

    rng = np.random.default_rng(0)
    sizes = [((480, 856), (480, 854)), ((96, 104), (100, 99)), ((8, 8), (41, 3))]
    sizes += [(tuple(rng.integers(1, 200, 2)), tuple(rng.integers(1, 500, 2))) for _ in range(300)]
    closed_form_differs = 0
    for (hi, wi), (ho, wo) in sizes:
        index = rng.integers(0, 256, (hi, wi), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(index).resize((wo, ho), Image.NEAREST))
        np.testing.assert_array_equal(index[pil_nearest_indices(hi, ho)][:, pil_nearest_indices(wi, wo)], expected)
        naive = np.minimum(np.floor((np.arange(wo) + 0.5) * (wi / wo)).astype(np.int64), wi - 1)
        closed_form_differs += not np.array_equal(naive, pil_nearest_indices(wi, wo))
    assert closed_form_differs > 0  # why the mapping is asked of PIL
    soft = torch.rand(3, 60, 107, generator=torch.Generator().manual_seed(1)) ** 3
    np.testing.assert_array_equal(labels_to_mask(soft, 8, (480, 854)), dense_to_mask(soft.clone(), 8, (480, 854)))


def test_deferred_finite_check_raises_at_the_next_mask(monkeypatch):
    """On a GPU step() does not wait to check its features: the next to_mask reads the check with the
    mask and raises, naming the step (the CPU runs the same code here, with the deferral forced)."""
    from vidprop.propagation import engine

    grid, stride, size = (6, 7), 8, (48, 56)
    feats = random_features(2, 8, grid, 4)
    labels = random_onehot(2, 3, grid)
    cfg = PropagationConfig(topk=3, radius=2, backend="torch")
    immediate = LabelPropagator(cfg)
    immediate.reset(feats[0], labels)
    expected = [immediate.to_mask(immediate.step(f), stride, size) for f in feats[1:]]
    monkeypatch.setattr(engine, "_defers_checks", lambda device: True)
    prop = LabelPropagator(cfg)
    prop.reset(feats[0], labels)
    for f, mask in zip(feats[1:], expected):  # clean features: the same masks
        np.testing.assert_array_equal(prop.to_mask(prop.step(f), stride, size), mask)
    prop.reset(feats[0], labels)
    prop.step(feats[1])
    bad = feats[2].clone()
    bad[0, 1, 1], bad[3, 2, 2] = float("nan"), float("inf")
    soft = prop.step(bad)  # no wait, no error yet
    prop.step(feats[3])
    with pytest.raises(ShapeError, match=r"step 2 after reset\(\): 2 NaN or infinite"):
        prop.to_mask(soft, stride, size)
    prop.to_mask(soft, stride, size)  # reported once
    prop.predict(bad)
    with pytest.raises(ShapeError, match=r"step 4 after reset\(\): 2 NaN"):
        prop.check_finite()
    with pytest.raises(ShapeError, match="NaN or infinite"):  # keyframes are checked at once
        prop.add_keyframe(bad, labels)


def test_to_mask_places_objects_at_the_right_pixels():
    soft = torch.zeros(3, 6, 8)
    soft[0] = 1
    soft[:, 1:3, 1:3] = torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    soft[:, 4:6, 5:8] = torch.tensor([0.1, 0.0, 0.9])[:, None, None]
    mask = LabelPropagator().to_mask(soft, 8, (48, 64))
    assert mask.dtype == np.uint8 and mask.shape == (48, 64)
    assert (mask[12:20, 12:20] == 1).all() and (mask[40:48, 48:64] == 2).all()
    assert (mask[:4] == 0).all() and (mask[:, :4] == 0).all()
    assert set(np.unique(mask)) == {0, 1, 2}


def test_neighbourhood_mask_counts():
    mask = neighbourhood_mask((5, 6), 1)
    assert mask.shape == (30, 30) and torch.equal(mask, mask.T)
    assert mask.sum(1).view(5, 6)[0, 0] == 4 and mask.sum(1).view(5, 6)[2, 2] == 9


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("topk", 0), ("topk", 2.5), ("n_last_frames", -1), ("radius", -2),
                                         ("temperature", 0.0), ("temperature", -0.1), ("temperature", 0.005),
                                         ("temperature", math.nan), ("memory_budget_mib", 1), ("block_size", 0),
                                         ("dtype", "float16"), ("device", "gpu7"), ("backend", "numba"),
                                         ("threads", 0), ("threads", 1.5)])
def test_bad_config_values(field, value):
    with pytest.raises(ConfigError) as info:
        PropagationConfig(**{field: value})
    assert info.value.key == field and repr(value) in str(info.value)


def test_config_defaults_are_dift_davis_and_every_field_has_help():
    cfg = PropagationConfig()
    assert (cfg.topk, cfg.n_last_frames, cfg.radius, cfg.temperature) == (15, 28, 15, 0.2)
    assert all(f.metadata.get("help") for f in dataclasses.fields(PropagationConfig))
    assert from_dict(PropagationConfig, {"topk": 5, "radius": 0}) == PropagationConfig(topk=5, radius=0)
    with pytest.raises(ConfigError, match="propagation.topk"):
        from_dict(PropagationConfig, {"topk": 0}, prefix="propagation.")


def test_bad_inputs_raise_shape_errors():
    grid = (6, 7)
    feats = random_features(1, 8, grid, 2)
    labels = random_onehot(1, 2, grid)
    prop = LabelPropagator(PropagationConfig(topk=3, radius=2))
    with pytest.raises(ShapeError, match="before reset"):
        prop.step(feats[1])
    with pytest.raises(ShapeError, match="grid"):
        prop.reset(feats[0], random_onehot(1, 2, (6, 8)))
    with pytest.raises(ShapeError, match="one-hot"):
        prop.reset(feats[0], labels * 0.5)
    two_hot = labels.clone()
    two_hot[:, 0, 0] = 1
    with pytest.raises(ShapeError, match="one-hot"):
        prop.reset(feats[0], two_hot)
    with pytest.raises(ShapeError, match=r"\(C, h, w\)"):
        prop.reset(feats[0][0], labels)
    nan = feats[0].clone()
    nan[3, 2, 1] = float("nan")
    with pytest.raises(ShapeError, match="NaN"):
        prop.reset(nan, labels)
    prop.reset(feats[0], labels)
    with pytest.raises(ShapeError, match="channels"):
        prop.step(feats[1][:5])
    with pytest.raises(ShapeError, match="grid"):
        prop.step(feats[1][:, :5])
    bad = feats[1].clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ShapeError, match="NaN or infinite"):
        prop.step(bad)
    prop.step(feats[1])  # the failed calls left the state intact
    with pytest.raises(ShapeError, match="stride"):
        prop.to_mask(torch.rand(2, *grid), 0, (48, 56))
    with pytest.raises(ShapeError, match="size"):
        prop.to_mask(torch.rand(2, *grid), 8, (48,))
    with pytest.raises(ShapeError, match="label channels"):
        prop.to_mask(torch.rand(300, 2, 2), 8, (16, 16))


def _lab_frames(davis_root, seq: str, n: int, quantise: bool):
    """Lab features of the first ``n`` real frames at 128 x 224 and the first mask on their grid;
    ``quantise`` rounds the features so that many cells are equal (ties at the k-th value)."""
    from PIL import Image

    from vidprop.features import LabConfig, create_extractor

    extractor = create_extractor(LabConfig())
    frames = sorted((davis_root / "JPEGImages" / "480p" / seq).glob("*.jpg"))[:n]
    images = torch.stack([
        torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((224, 128), Image.BILINEAR))).permute(2, 0, 1).float() / 127.5 - 1
        for p in frames
    ])
    feats = list(extractor.extract(images).unbind(0))
    if quantise:
        feats = [f.mul(4).round().div(4) for f in feats]
    grid = tuple(feats[0].shape[1:])
    mask0 = np.asarray(Image.open(davis_root / "Annotations" / "480p" / seq / "00000.png"))
    small = np.array(Image.fromarray((mask0 > 0).astype(np.uint8)).resize((grid[1], grid[0]), Image.NEAREST))
    return feats, F.one_hot(torch.from_numpy(small).long(), 2).permute(2, 0, 1).float()


@pytest.mark.skipif(not fused.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("quantise", [False, True])
def test_shared_candidates_give_each_setting_its_separate_result_bit_for_bit(davis_root, monkeypatch, quantise):
    # what vidprop sweep does for settings differing in topk and temperature: rank each frame's candidates once
    from vidprop.propagation import SharedCandidates

    feats, labels = _lab_frames(davis_root, "dog", 8, quantise)
    base = PropagationConfig(n_last_frames=3, radius=6, backend="fused")
    settings = [dict(topk=3, temperature=0.05), dict(topk=20, temperature=0.1), dict(topk=10, temperature=0.2),
                dict(topk=10, temperature=0.05), dict(topk=5, temperature=0.2, radius=3)]  # the last: other context
    configs = [dataclasses.replace(base, **s) for s in settings]

    def run(config, shared=None):
        prop = LabelPropagator(config, shared)
        prop.reset(feats[0], labels)
        return prop

    separate = [[p.step(f) for f in feats[1:]] for p in (run(c) for c in configs)]
    tied = []
    original = fused.window_candidates
    monkeypatch.setattr(fused, "window_candidates", lambda *a: tied.append(len(a[-1])) or original(*a))
    shared = SharedCandidates()
    props = [run(c, shared) for c in configs]
    for i, f in enumerate(feats[1:]):
        for j, prop in enumerate(props):  # in lockstep, as the sweep steps them
            assert torch.equal(prop.step(f), separate[j][i]), (settings[j], i)
    steps = len(feats) - 1
    # per frame: the 4 settings with radius 6 rank once (3 reuse it), radius 3 ranks its own
    assert (shared.computed, shared.reused) == (2 * steps, 3 * steps)
    assert len({bytes(s[-1].numpy()) for s in separate}) == len(settings)  # the settings give different labels
    # targets resolved by the tie fallback (real Lab cells tie now and then; quantised ones everywhere)
    assert sum(tied) > (1000 if quantise else 0)
