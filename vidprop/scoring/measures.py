"""The DAVIS measures: region similarity J, boundary F-measure F, and their per-object statistics.

Every function here gives bit-identical results to the official DAVIS-2017 evaluation
(davisvideochallenge/davis2017-evaluation, ``davis2017/metrics.py`` and ``utils.py``), but does the
work differently:

* The boundary map is the BSDS ``seg2bmap`` construction, computed only on the bounding box of the
  two masks plus a one-pixel margin (pixels outside it can never be boundary pixels).
* Boundary matching (official: ``cv2.dilate`` of each boundary map with ``skimage.morphology.disk(r)``,
  then counting the other map's pixels under the dilation) only needs the dilation *at boundary
  pixels*. The disk ``{dy^2 + dx^2 <= r^2}`` is an exact union of a few axis-aligned rectangles, so a
  summed-area table of one boundary map answers "is there a boundary pixel within the disk?" for
  every pixel of the other map with a handful of look-ups. Pixels that lie on both boundaries match
  trivially and are not looked up.

The one deliberate difference is in :func:`decay_bin_edges`: the official code stores the bin
edges as uint8, so they wrap around once a sequence has 256 or more scored frames (258 frames;
with NumPy 1, one more), and its Decay there is NaN or wrong; here they are plain integers, and
Decay is the same as the official one for every shorter sequence.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

__all__ = [
    "BOUNDARY_THRESHOLD",
    "boundary_radius",
    "disk_rectangles",
    "boundary_map",
    "region_similarity",
    "boundary_f_measure",
    "object_measures",
    "frame_measures",
    "decay_bin_edges",
    "sequence_statistics",
]

BOUNDARY_THRESHOLD = 0.008
"""Boundary matching tolerance as a fraction of the image diagonal (official ``bound_th``)."""


def boundary_radius(size_hw: tuple[int, int], bound_th: float = BOUNDARY_THRESHOLD) -> int:
    """Radius in pixels of the boundary-matching disk, as the official code computes it.

    Args:
        size_hw: image size (H, W).
        bound_th: a fraction of the image diagonal if < 1, else a radius in pixels.

    Returns:
        ``ceil(bound_th * sqrt(H^2 + W^2))`` (8 at 854x480), or ``bound_th`` itself if >= 1.
    """
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm(size_hw)))


@functools.lru_cache(maxsize=None)
def disk_rectangles(radius: int) -> tuple[tuple[int, int], ...]:
    """The disk ``{(dy, dx): dy^2 + dx^2 <= radius^2}`` as a union of centred rectangles.

    This is the footprint of ``skimage.morphology.disk(radius)``. Row ``dy`` of the disk spans
    ``|dx| <= floor(sqrt(r^2 - dy^2))``; that half-width only shrinks as ``|dy|`` grows, so each
    distinct half-width ``w`` gives one rectangle ``|dy| <= d, |dx| <= w`` (``d`` = last row that
    is at least ``w`` wide), and their union is the disk exactly.

    Returns:
        ``(half_height, half_width)`` pairs, largest area first.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    half_widths = [math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)]
    rects = {}
    for dy, w in enumerate(half_widths):
        rects[w] = dy  # rows are visited outwards, so the last row reaching width w wins
    return tuple(sorted(((d, w) for w, d in rects.items()), key=lambda r: -(2 * r[0] + 1) * (2 * r[1] + 1)))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask (BSDS ``seg2bmap``, as the official code).

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour;
    neighbours outside the image are ignored (the last row compares east only, the last column
    south only, the bottom-right pixel never is a boundary pixel). Boundaries therefore sit half a
    pixel towards the origin from the true segment edge.

    Args:
        mask: (H, W) array, non-zero = inside.

    Returns:
        (H, W) bool boundary map.
    """
    seg = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    out = np.zeros_like(seg)
    _boundary_codes(seg, out)
    return out.view(bool)


def _count_near(points: np.ndarray, table: np.ndarray, stride: int, radius: int) -> int:
    """How many ``points`` have a target pixel within the disk of ``radius``.

    Args:
        points: (M,) flat indices of the points in the integral ``table``'s frame (so that a point
            at padded position (y, x) is ``y * stride + x``); at least ``radius`` pixels from the
            frame's edges.
        table: flattened integral image (int32) of the target map, ``stride`` columns wide.
    """
    hits = 0
    for dy, dx in disk_rectangles(radius):
        top, bottom = points - dy * stride, points + (dy + 1) * stride
        inside = table.take(bottom + dx + 1) - table.take(top + dx + 1) - table.take(bottom - dx) + table.take(top - dx)
        found = inside > 0
        n = int(np.count_nonzero(found))
        if n:
            hits += n
            if n == len(points):
                break
            points = points[~found]  # keep looking only for the points not matched yet
    return hits


def _crop_box(union: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of the non-zero pixels of ``union`` grown by one pixel on every side
    (clipped to the image), or None if there are none.

    Boundary maps computed on this crop, or on any larger one, equal the full-image ones there,
    and there are no boundary pixels outside it: a pixel only looks at its east, south and
    south-east neighbours, and the crop's last row and column (unless they are the image's) hold
    no mask pixel.
    """
    rows = np.flatnonzero(union.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(union.any(axis=0))
    h, w = union.shape
    return (
        slice(max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, h)),
        slice(max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)),
    )


def _f_from_counts(n_pred: int, n_gt: int, pred_matched: int, gt_matched: int) -> float:
    """Boundary F from boundary pixel counts, with the official empty-boundary cases."""
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = pred_matched / float(n_pred)
        recall = gt_matched / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def _boundary_codes(codes: np.ndarray, out: np.ndarray) -> None:
    """:func:`boundary_map` of every bit plane of the uint8 map ``codes`` at once, into ``out``
    (bit b of ``out`` is the boundary map of bit b of ``codes``)."""
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        return
    core = codes[:-1, :-1]
    inner = out[:-1, :-1]
    np.bitwise_xor(core, codes[:-1, 1:], out=inner)
    inner |= core ^ codes[1:, :-1]
    inner |= core ^ codes[1:, 1:]
    np.bitwise_xor(codes[-1, :-1], codes[-1, 1:], out=out[-1, :-1])
    np.bitwise_xor(codes[:-1, -1], codes[1:, -1], out=out[:-1, -1])


def _crop_measures(gt: np.ndarray, pred: np.ndarray, radius: int) -> tuple[float, float]:
    """J and F of one object from its masks cropped as :func:`_crop_box` says.

    Args:
        gt, pred: (h, w) bool crops of the ground-truth and predicted masks.
    """
    # Bit 0: ground truth, bit 1: prediction; one pass then serves both masks.
    codes = gt.view(np.uint8) | (pred.view(np.uint8) << 1)
    union = np.count_nonzero(codes)
    if union == 0:
        return 1.0, 1.0
    j = np.count_nonzero(codes == 3) / union
    # Boundary codes inside a zero frame of width `radius`, so that the disk look-ups of
    # _count_near never leave the table.
    h, w = codes.shape
    padded = np.zeros((h + 2 * radius, w + 2 * radius), dtype=np.uint8)
    _boundary_codes(codes, padded[radius : radius + h, radius : radius + w])
    flat = padded.ravel()
    pb_only = np.flatnonzero(flat == 2)
    gb_only = np.flatnonzero(flat == 1)
    both = np.count_nonzero(flat) - len(pb_only) - len(gb_only)
    n_gt, n_pred = len(gb_only) + both, len(pb_only) + both
    if n_gt == 0 or n_pred == 0:
        return j, _f_from_counts(n_pred, n_gt, 0, 0)
    # A pixel on both boundaries matches itself; only the others need looking up.
    stride = w + 2 * radius + 1  # integral tables have one extra row and column
    pred_matched, gt_matched = both, both
    if len(pb_only):
        table = cv2.integral(padded & 1, sdepth=cv2.CV_32S).ravel()
        pred_matched += _count_near(pb_only + pb_only // (stride - 1), table, stride, radius)
    if len(gb_only):
        table = cv2.integral(padded >> 1, sdepth=cv2.CV_32S).ravel()
        gt_matched += _count_near(gb_only + gb_only // (stride - 1), table, stride, radius)
    return j, _f_from_counts(n_pred, n_gt, pred_matched, gt_matched)


def object_measures(gt: np.ndarray, pred: np.ndarray, radius: int, void: np.ndarray | None = None) -> tuple[float, float]:
    """J and F of one object in one frame.

    Args:
        gt: (H, W) bool ground-truth mask of the object.
        pred: (H, W) bool predicted mask of the object.
        radius: boundary matching radius in pixels (see :func:`boundary_radius`).
        void: optional (H, W) bool mask of pixels that are not scored (removed from both masks
            before J and before the boundary maps, as the official code does with void pixels).

    Returns:
        (J, F) as Python floats in [0, 1]; an empty union gives J = 1, two empty boundaries F = 1.
    """
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if void is not None:
        keep = ~np.asarray(void, dtype=bool)
        gt, pred = gt & keep, pred & keep
    box = _crop_box(gt | pred)
    if box is None:
        return 1.0, 1.0
    return _crop_measures(gt[box], pred[box], radius)


def frame_measures(
    gt: np.ndarray, pred: np.ndarray, object_ids, radius: int, void: np.ndarray | None = None
) -> tuple[list[float], list[float]]:
    """J and F of several objects in one frame of label maps.

    Args:
        gt, pred: (H, W) uint8 maps of object ids.
        object_ids: the ids to score.
        radius: boundary matching radius in pixels.
        void: optional (H, W) bool mask of pixels left out of both measures.

    Returns:
        (J values, F values), one per id, in order.
    """
    box = _crop_box(np.bitwise_or(gt, pred))
    if box is None:
        return [1.0] * len(object_ids), [1.0] * len(object_ids)
    g, p = gt[box], pred[box]
    keep = None if void is None else ~void[box]
    js, fs = [], []
    for k in object_ids:
        gk, pk = g == k, p == k
        if keep is not None:
            gk &= keep
            pk &= keep
        j, f = _crop_measures(gk, pk, radius)
        js.append(j)
        fs.append(f)
    return js, fs


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """Region similarity J (intersection over union) of two binary (H, W) masks; 1 if both are empty."""
    return object_measures(np.asarray(gt, bool), np.asarray(pred, bool), 0, void)[0]


def boundary_f_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUNDARY_THRESHOLD
) -> float:
    """Boundary F-measure of two binary (H, W) masks, matched within :func:`boundary_radius`."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    return object_measures(gt, pred, boundary_radius(gt.shape, bound_th), void)[1]


def decay_bin_edges(n: int) -> np.ndarray:
    """Edges of the official 4-bin split of ``n`` per-frame values (int64; no uint8 wrap-around).

    Bin ``i`` is ``values[edges[i] : edges[i + 1] + 1]`` (neighbouring bins share their edge value).
    """
    return (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)


def sequence_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, Recall and Decay of one object's per-frame J or F values.

    Args:
        values: (T,) float per-frame values (T >= 1).

    Returns:
        (mean, recall = fraction of frames > 0.5, decay = mean of the first bin minus mean of the
        last bin of the 4-bin split of :func:`decay_bin_edges`).
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(np.mean(values))
    recall = float(np.mean(values > 0.5))
    edges = decay_bin_edges(len(values))
    decay = float(np.mean(values[edges[0] : edges[1] + 1]) - np.mean(values[edges[3] : edges[4] + 1]))
    return mean, recall, decay
