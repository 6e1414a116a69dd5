"""Windowed top-k affinity propagation by matrix products over column strips, exact in rows.

Cells are stored row-major with the context slots innermost: features ``(h, w, S, C)``, labels
``(h, w, S, K)``. The target grid is cut into strips of ``width`` columns (the last one may be
narrower). For a strip and one context row ``cy``, the targets that may see that row are the
strip's cells in rows ``cy - ry .. cy + ry``, a contiguous ``(n * width, C)`` matrix of the
strip's query, and the context cells they may see lie in columns ``x0 - rx .. x0 + width - 1 + rx``
of row ``cy``, with all slots: with every slot in use, one contiguous ``(columns * S, C)`` matrix
of the store. One matrix product per (strip, context row) computes these cosines, so the only
arithmetic spent outside the targets' neighbourhoods is the ``width - 1`` extra columns of each
strip's window: (width + 2 rx) / (2 rx + 1) times the needed arithmetic in the grid's interior
(1.10 at width 4 and radius 15, 1.088 over the DAVIS grid, against 1.66 for the 8x8 block windows
of :mod:`vidprop.propagation.kernels`).

The products of a strip are written to one buffer ``B[cy - (ty0 - ry), ty - (cy - ry), tx, dx, s]``
(or ``..., s, dx]`` while only some slots are in use, one product per slot), laid out so that,
for target ``(ty, tx)``, its in-radius cosines ``(dy, dx, s)``, ``cy = ty - ry + dy`` and
``cx = tx - rx + dx``, are one strided view with the same strides for every target. Entries
outside the grid are -inf (affinity 0, as the reference's neighbourhood mask makes them).

Selection (exact, as :mod:`vidprop.propagation.kernels`): per target, the chunk maxima over dx
(one chunk per (dy, slot)) bound the values: only the k+1 chunks with the largest maxima can hold
the k+1 largest cosines, so ``topk`` runs on those. The k+1 largest cosines give the reference's
kept set unless the (k+1)-th affinity equals the k-th; those rows take the full threshold over
every in-radius candidate (:func:`vidprop.propagation.engine.threshold_candidates` semantics).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

__all__ = ["STRIP_WIDTH", "StripPlan", "propagate_strips", "strip_bytes"]

# Strip width in cells: narrower strips spend less arithmetic outside the neighbourhoods, wider
# ones make larger matrix products. 4 was the fastest of 3, 4, 6, 8 for 640 channels at DIFT's
# DAVIS setting (tools/bench_propagation.py; see the README). Results do not depend on it.
STRIP_WIDTH = 4


def strip_bytes(rows: int, width: int, radius_y: int, radius_x: int, slots: int, itemsize: int = 4) -> int:
    """Bytes of the cosine buffer for ``rows`` target rows of one strip of ``width`` columns."""
    return (rows + 2 * radius_y) * (2 * radius_y + 1) * width * (width + 2 * radius_x) * slots * itemsize


class StripPlan:
    """How a grid is cut into strips and row chunks for one radius and slot capacity.

    Attributes:
        size: (h, w) grid.
        ry, rx: neighbourhood radius along rows / columns, clipped to the grid (radius 0 = whole frame).
        width: widest strip in cells (strips: (first column, width), as even as possible).
        rows: target rows per chunk (so that the cosine buffer fits ``budget_bytes``).
    """

    def __init__(self, size: tuple[int, int], radius: int, width: int, slots: int, budget_bytes: int,
                 itemsize: int = 4):
        h, w = size
        self.size = size
        self.itemsize = itemsize
        self.ry = min(radius, h - 1) if radius > 0 else h - 1
        self.rx = min(radius, w - 1) if radius > 0 else w - 1
        self.width = max(1, min(width, w))
        # strip_bytes is (rows + 2 ry) * unit: as many target rows as the budget allows, at least 1.
        unit = strip_bytes(1, self.width, self.ry, self.rx, slots, itemsize) // (1 + 2 * self.ry)
        self.rows = max(1, min(h, budget_bytes // unit - 2 * self.ry))
        # Balanced widths (no narrow last strip: small products are slower, and BLAS may round them
        # differently from the large products of the reference).
        n = -(-w // self.width)
        widths = [w // n + (i < w % n) for i in range(n)]
        self.strips = [(sum(widths[:i]), widths[i]) for i in range(n)]
        self.chunks = [(y0, min(h, y0 + self.rows)) for y0 in range(0, h, self.rows)]

    def fits(self, slots: int, budget_bytes: int) -> bool:
        """Whether one target row of a strip fits ``budget_bytes``."""
        return strip_bytes(1, self.width, self.ry, self.rx, slots, self.itemsize) <= budget_bytes


class _Buffer:
    """The cosine buffer of one (strip, chunk) and the strided view of each target's candidates."""

    def __init__(self, data: Tensor, chunk_rows: int, width: int, ry: int, rx: int, n_valid: int, full: bool):
        nw = width + 2 * rx
        self.full = full
        # B[cyi, tyr, tx, a, b] with (a, b) = (dx, s) when every slot is used, else (s, dx).
        shape = (chunk_rows + 2 * ry, 2 * ry + 1, width) + ((nw, n_valid) if full else (n_valid, nw))
        self.data = data.view(shape)
        s_cy, s_t, s_tx = self.data.stride()[:3]
        s_dx, s_s = (n_valid, 1) if full else (1, nw)
        self.s_dx, self.s_s, self.s_ty, self.s_dy = s_dx, s_s, s_cy, s_cy - s_t
        self.s_tx = s_tx + s_dx
        self.base = self.data.storage_offset() + 2 * ry * s_t  # as_strided offsets are absolute
        # candidates[ty', tx, dy, dx, s] of the chunk's targets (ty' = ty - ty0).
        self.candidates = self.data.as_strided((chunk_rows, width, 2 * ry + 1, 2 * rx + 1, n_valid),
                                               (self.s_ty, self.s_tx, self.s_dy, s_dx, s_s), self.base)


def _products(query: Tensor, store: Tensor, buf: _Buffer, maxima: Tensor, x0: int, width: int, y0: int, y1: int,
              ry: int, rx: int, n_valid: int) -> None:
    """Fill ``buf`` with the cosines of strip ``x0`` targets in rows [y0, y1): one product per context row
    (and per slot while not every slot is in use); entries outside the grid -inf. Also fill ``maxima``
    (rows, width, 2 ry + 1, n_valid), each target's chunk maxima over dx, from each product while it
    is still in cache."""
    h, w, _, c = store.shape
    xa, xb = max(0, x0 - rx), min(w, x0 + width + rx)
    off = xa - (x0 - rx)
    ncols = xb - xa
    nw = width + 2 * rx
    data = buf.data
    if off > 0 or off + ncols < nw:
        # Window columns past the grid edge (edge strips only).
        cols = data if buf.full else data.transpose(3, 4)  # (..., dx, s)
        cols[:, :, :, :off].fill_(float("-inf"))
        cols[:, :, :, off + ncols:].fill_(float("-inf"))
    strip = query[:, x0:x0 + width].contiguous()  # (h, width, C)
    for cy in range(y0 - ry, y1 + ry):
        t_lo, t_hi = max(y0, cy - ry), min(y1, cy + ry + 1)
        cyi = cy - (y0 - ry)
        out = data[cyi, t_lo - (cy - ry): t_hi - (cy - ry)]  # (n, width, a, b)
        if cy < 0 or cy >= h:
            out.fill_(float("-inf"))
            _slab_maxima(buf, maxima, cyi, t_lo - (cy - ry), t_hi - (cy - ry), cy - ry - y0, ry, rx)
            continue
        targets = strip[t_lo:t_hi].view(-1, c)
        rows = out.shape[0] * width
        if buf.full:
            window = store[cy, xa:xb].view(-1, c)  # (ncols * S, C), contiguous
            torch.mm(targets, window.T, out=out.view(rows, -1)[:, off * n_valid:(off + ncols) * n_valid])
        else:
            for s in range(n_valid):
                torch.mm(targets, store[cy, xa:xb, s].T, out=out.view(rows, n_valid, nw)[:, s, off:off + ncols])
        _slab_maxima(buf, maxima, cyi, t_lo - (cy - ry), t_hi - (cy - ry), cy - ry - y0, ry, rx)


def _slab_maxima(buf: _Buffer, maxima: Tensor, cyi: int, a: int, b: int, shift: int, ry: int, rx: int) -> None:
    """Chunk maxima of targets ``tyr`` in [a, b) of context row ``cyi``: target row ``tyr + shift`` of the
    chunk, dy = 2 ry - tyr."""
    n_valid = maxima.shape[3]
    width = maxima.shape[1]
    s_t = buf.data.stride(1)
    src = buf.data.as_strided((b - a, width, 2 * rx + 1, n_valid), (s_t, buf.s_tx, buf.s_dx, buf.s_s),
                              buf.data.storage_offset() + cyi * buf.s_ty + a * s_t)
    m_ty, m_tx, m_dy, m_s = maxima.stride()
    dst = maxima.as_strided((b - a, width, n_valid), (m_ty - m_dy, m_tx, m_s),
                            maxima.storage_offset() + (a + shift) * m_ty + (2 * ry - a) * m_dy)
    _max_over(src, 2, dst)


def _max_over(src: Tensor, dim: int, out: Tensor) -> None:
    """``out = src.amax(dim)`` by halving ``maximum``s: on strided slabs torch's reduction kernels run
    about 5x slower than its elementwise ones."""
    n = src.shape[dim]
    while n > 2:
        half = (n + 1) // 2  # the halves overlap by one entry when n is odd
        src = torch.maximum(src.narrow(dim, 0, half), src.narrow(dim, n - half, half))
        n = half
    if n == 2:
        torch.maximum(src.select(dim, 0), src.select(dim, 1), out=out)
    else:
        out.copy_(src.select(dim, 0))


def _select(buf: _Buffer, maxima: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` largest candidates of each target of the chunk, sorted: values (T, count) and
    flat candidate positions (dy, dx, s) -> ((dy * (2rx+1) + dx) * n_valid + s) (T, count)."""
    cand = buf.candidates  # (R, W, DY, DX, NS)
    rows, width, n_dy, n_dx, n_s = cand.shape
    t = rows * width
    maxima = maxima.view(t, n_dy * n_s)  # chunk (dy, s): max over dx
    n_chunks = maxima.shape[1]
    if n_chunks <= count:
        values = cand.reshape(t, -1)  # a copy, in (dy, dx, s) order
        return values.topk(min(count, values.shape[1]), dim=1)
    chunk = maxima.topk(count, dim=1, sorted=False).indices  # (T, count): dy * n_s + s
    dy, s = chunk // n_s, chunk % n_s
    dev = chunk.device
    ty = torch.arange(rows, device=dev).repeat_interleave(width).view(t, 1)
    tx = torch.arange(width, device=dev).repeat(rows).view(t, 1)
    start = buf.base + ty * buf.s_ty + tx * buf.s_tx + dy * buf.s_dy + s * buf.s_s  # (T, count)
    offsets = start[..., None] + torch.arange(n_dx, device=dev) * buf.s_dx  # (T, count, DX)
    storage = buf.data.as_strided((buf.data.storage_offset() + buf.data.numel(),), (1,), 0)  # absolute offsets
    picked = storage[offsets.view(t, -1)]
    values, pos = picked.topk(count, dim=1)
    which, dx = pos // n_dx, pos % n_dx
    flat = (dy.gather(1, which) * n_dx + dx) * n_s + s.gather(1, which)
    return values, flat


def _label_index(flat: Tensor, y0: int, rows: int, x0: int, width: int, size: tuple[int, int], ry: int, rx: int,
                 n_slots: int, n_valid: int) -> Tensor:
    """Rows of the (h * w * S, K) label matrix of candidates ``flat`` ((dy * (2rx+1) + dx) * n_valid + s)
    of the chunk's targets (T, n); clamped into the grid for -inf candidates (weight 0)."""
    h, w = size
    n_dx = 2 * rx + 1
    t = flat.shape[0]
    dev = flat.device
    ty = (torch.arange(rows, device=dev) + y0).repeat_interleave(width).view(t, 1)
    tx = (torch.arange(width, device=dev) + x0).repeat(rows).view(t, 1)
    s = flat % n_valid
    rest = flat // n_valid
    cy = (ty - ry + rest // n_dx).clamp_(0, h - 1)
    cx = (tx - rx + rest % n_dx).clamp_(0, w - 1)
    return (cy * w + cx) * n_slots + s


def _threshold_ties(buf: _Buffer, ties: Tensor, y0: int, x0: int, width: int, size: tuple[int, int], ry: int,
                    rx: int, n_slots: int, n_valid: int, labels: Tensor, topk: int, temperature: float,
                    threshold_candidates) -> Tensor:
    """The full threshold for the chunk's targets ``ties`` (flat ``ty' * width + tx``) over every in-radius candidate."""
    h, w = size
    n_dx = 2 * rx + 1
    cos = buf.candidates[ties // width, ties % width].flatten(1)  # (R, DY * DX * NS) copy
    every = torch.arange(cos.shape[1], device=cos.device)
    cell, s = every // n_valid, every % n_valid
    cy = (ties // width + y0)[:, None] - ry + cell // n_dx
    cx = (ties % width + x0)[:, None] - rx + cell % n_dx
    inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
    index = torch.where(inside, (cy * w + cx) * n_slots + s, -1)
    return threshold_candidates(cos.masked_fill_(~inside, float("-inf")), index, labels, topk, temperature)


def propagate_strips(query: Tensor, store: Tensor, labels: Tensor, n_valid: int, plan: StripPlan, *, topk: int,
                     temperature: float, workspaces: list, weights_from_top, threshold_candidates) -> Tensor:
    """Soft labels of one target frame.

    Strips are handed out one at a time to ``len(workspaces)`` workers: the calling thread plus
    Python threads, each running torch on one thread (torch releases the GIL in its kernels). No
    OpenMP region spans workers, so a worker the OS deschedules on a busy machine holds up only its
    own strip. Results do not depend on the number of workers (each strip's arithmetic is the same).

    Args:
        query: (h, w, C) normalised target cells.
        store: (h, w, S, C) contiguous normalised context cells; slots [0, n_valid) are used.
        labels: (h, w, S, K) contiguous context labels.
        n_valid: filled context slots.
        plan: :class:`StripPlan` of the grid and radius.
        topk, temperature: the reference's k and T.
        workspaces: one scratch-buffer holder per worker (``take(name, shape, like)``), at least one.
        weights_from_top, threshold_candidates: the engine's weighting from the k+1 best candidates
            and full-threshold fallback (see :mod:`vidprop.propagation.engine`).

    Returns:
        (h, w, K) soft labels.
    """
    assert store.is_contiguous() and labels.is_contiguous()
    out = query.new_empty(*plan.size, labels.shape[-1])
    args = (query, store, labels, n_valid, plan, topk, temperature, out, weights_from_top, threshold_candidates)
    workers = min(len(workspaces), len(plan.strips))
    if workers <= 1:
        for strip in plan.strips:
            _strip(strip, workspaces[0], *args)
        return out
    pending = iter(plan.strips)
    lock = threading.Lock()
    inference = torch.is_inference_mode_enabled()
    before = torch.get_num_threads()

    def work(workspace) -> None:
        # Grad and inference modes are per thread: take the caller's (``out`` may be an inference tensor).
        with torch.inference_mode(inference), torch.no_grad():
            torch.set_num_threads(1)
            while True:
                with lock:
                    strip = next(pending, None)
                if strip is None:
                    return
                _strip(strip, workspace, *args)

    try:
        with ThreadPoolExecutor(workers - 1) as pool:
            helpers = [pool.submit(work, ws) for ws in workspaces[1:workers]]
            work(workspaces[0])
            for helper in helpers:
                helper.result()
    finally:
        torch.set_num_threads(before)  # torch keeps the last setting for threads created later
    return out


def _strip(strip: tuple[int, int], workspace, query: Tensor, store: Tensor, labels: Tensor, n_valid: int,
           plan: StripPlan, topk: int, temperature: float, out: Tensor, weights_from_top, threshold_candidates) -> None:
    """Soft labels of one strip's targets, written to ``out`` (h, w, K)."""
    x0, width = strip
    h, w, n_slots, c = store.shape
    k_ch = labels.shape[-1]
    full = n_valid == n_slots
    ry, rx = plan.ry, plan.rx
    flat_labels = labels.view(-1, k_ch)
    count = topk + 1
    for y0, y1 in plan.chunks:
        rows = y1 - y0
        shape = (rows + 2 * ry, 2 * ry + 1, width, width + 2 * rx, n_valid)
        buf = _Buffer(workspace.take("strips", shape, store), rows, width, ry, rx, n_valid, full)
        maxima = workspace.take("maxima", (rows, width, 2 * ry + 1, n_valid), store)
        _products(query, store, buf, maxima, x0, width, y0, y1, ry, rx, n_valid)
        values, flat = _select(buf, maxima, count)
        if values.shape[1] < count:
            pad = count - values.shape[1]
            values = torch.cat([values, values.new_full((values.shape[0], pad), float("-inf"))], 1)
            flat = torch.cat([flat, flat[:, :1].expand(-1, pad)], 1)
        index = _label_index(flat, y0, rows, x0, width, (h, w), ry, rx, n_slots, n_valid)
        soft, ties = weights_from_top(values, index, flat_labels, topk, temperature)
        if ties.numel():
            soft[ties] = _threshold_ties(buf, ties, y0, x0, width, (h, w), ry, rx, n_slots, n_valid, flat_labels,
                                         topk, temperature, threshold_candidates)
        out[y0:y1, x0:x0 + width] = soft.view(rows, width, k_ch)
