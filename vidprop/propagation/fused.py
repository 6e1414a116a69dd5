"""Fused window top-k on the CPU, compiled with numba (optional: :data:`AVAILABLE`).

For each target cell, the kernel walks only the context cells within ``radius`` of it (in every
context slot given), computes their cosines and keeps a running top ``kk`` (values in descending
order, with flat cell ids). Nothing of size (targets x candidates) is materialised.

Loop order: for one grid row of targets, one context offset (slot, dy, dx) at a time, the cosines
of all the row's targets with their shifted context cells form one vector loop over contiguous
cells (features are stored channel-major, ``(S, C, h, w)``); a vectorised count of the values
above each target's current k+1-th decides whether the scalar insertion runs at all.

Each cosine is a chain of fused multiply-adds over the channels in channel order, the same for
every pair and in :func:`window_candidates`: identical cells give identical cosines, so exact ties
stay ties for the caller's tie check.

The kernel only ranks cosines. Affinities (exp(cos / T)), the tie check and the weights are
computed by the caller with torch, as the reference does (see :mod:`vidprop.propagation.engine`).

Threads: one parallel region per frame. Grid rows are handed out one at a time from a shared
counter to ``threads`` workers (the calling thread and a pool of Python threads running the
compiled code without the GIL). A worker that the OS deschedules (a busy machine) delays only
the row it holds, and idle workers block instead of spinning, so more threads are never slower
than one. numba's own threading layers (static schedules, spinning OpenMP barriers, GNU OpenMP
not fork-safe) are not used.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # numba is a declared dependency; without it the engine uses the torch path
    import numba
except ImportError:  # pragma: no cover - exercised only on installs without numba
    numba = None

__all__ = ["AVAILABLE", "window_topk", "window_candidates", "default_threads"]

AVAILABLE = numba is not None


def default_threads() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _workers(count: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``count`` threads (grown on demand, never shrunk)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < count:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="vidprop-propagation")
            _pool_size = count
        return _pool


if AVAILABLE:
    # 'contract' alone: a * b + c may become one fused multiply-add, nothing is reassociated. Each
    # cosine is then a chain of FMAs in channel order, which is how the GEMM kernels of the dense
    # reference and of the torch backend sum short dot products (bitwise equal at 6 to 32 channels
    # on x86-64 MKL), so near-ties at the last bit resolve the same way.
    _jit = numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"contract"})

    @_jit
    def _shifted_cosines(query, store, s, y, yy, dx, xa, xb, acc):
        # acc[i] = cos(target (y, xa + i), context (s, yy, xa + i + dx)), summed in channel order.
        # 1-D views indexed from 0 let LLVM vectorise across the row's targets.
        n = xb - xa
        for c in range(query.shape[0]):
            qr = query[c, y, xa:xb]
            sr = store[s, c, yy, xa + dx:xb + dx]
            if c == 0:
                for i in range(n):
                    acc[i] = qr[i] * sr[i]
            else:
                for i in range(n):
                    acc[i] += qr[i] * sr[i]

    @_jit
    def _row_topk(query, store, slots, ry, rx, y, kk, vals, idx, thr, acc):
        # Running top-kk of the targets of grid row y over their windows: one context offset
        # (slot, dy, dx) at a time, vectorised across the row's targets. thr[x] = vals[x, kk-1].
        _, h, w = query.shape
        vals[:] = -np.inf
        idx[:] = -1
        thr[:] = -np.inf
        last = kk - 1
        for si in range(slots.shape[0]):
            s = slots[si]
            for yy in range(max(0, y - ry), min(h, y + ry + 1)):
                for dx in range(-rx, rx + 1):
                    xa, xb = max(0, -dx), min(w, w - dx)
                    if xa >= xb:
                        continue
                    n = xb - xa
                    _shifted_cosines(query, store, s, y, yy, dx, xa, xb, acc)
                    t = thr[xa:xb]
                    above = 0
                    for i in range(n):
                        above += acc[i] > t[i]
                    if above == 0:
                        continue
                    base = (s * h + yy) * w + dx
                    for i in range(n):
                        v = acc[i]
                        if v > t[i]:
                            x = xa + i
                            p = last
                            while p > 0 and vals[x, p - 1] < v:
                                vals[x, p] = vals[x, p - 1]
                                idx[x, p] = idx[x, p - 1]
                                p -= 1
                            vals[x, p] = v
                            idx[x, p] = base + x
                            t[i] = vals[x, last]

    @_jit
    def _rows_topk(query, store, slots, ry, rx, y0, y1, kk, out_val, out_idx):
        _, h, w = query.shape
        acc = np.empty(w, dtype=np.float32)
        thr = np.empty(w, dtype=np.float32)
        for y in range(y0, y1):
            _row_topk(query, store, slots, ry, rx, y, kk, out_val[y * w:(y + 1) * w], out_idx[y * w:(y + 1) * w],
                      thr, acc)

    @_jit
    def _window_candidates(query, store, slots, ry, rx, targets, out_cos, out_idx):
        channels, h, w = query.shape
        for r in range(targets.shape[0]):
            y, x = targets[r] // w, targets[r] % w
            n = 0
            for si in range(slots.shape[0]):
                s = slots[si]
                for yy in range(max(0, y - ry), min(h, y + ry + 1)):
                    for xx in range(max(0, x - rx), min(w, x + rx + 1)):
                        v = query[0, y, x] * store[s, 0, yy, xx]
                        for c in range(1, channels):
                            v += query[c, y, x] * store[s, c, yy, xx]
                        out_cos[r, n] = v
                        out_idx[r, n] = (s * h + yy) * w + xx
                        n += 1
            for j in range(n, out_cos.shape[1]):
                out_cos[r, j] = -np.inf
                out_idx[r, j] = -1


def _reaches(radius: int, h: int, w: int) -> tuple[int, int]:
    return (h, w) if radius == 0 else (radius, radius)


def window_topk(query: np.ndarray, store: np.ndarray, slots: np.ndarray, radius: int, kk: int,
                out_val: np.ndarray, out_idx: np.ndarray, threads: int = 1) -> None:
    """Top ``kk`` cosines of each target cell among the context cells within ``radius``.

    Args:
        query: (C, h, w) float32 C-contiguous, L2-normalised target features.
        store: (S, C, h, w) float32 C-contiguous, L2-normalised context features.
        slots: (n,) int64, the slots of ``store`` that form the context (any order, any subset).
        radius: neighbourhood radius in cells (both offsets <= radius); 0 = the whole frame.
        kk: values kept per target (k + 1 for the tie check).
        out_val: (h*w, kk) float32, written: cosines in descending order, -inf past the number
            of candidates.
        out_idx: (h*w, kk) int64, written: flat ids ``(slot * h + y) * w + x`` of those cells, -1 past it.
        threads: workers (the calling thread included).
    """
    _, h, w = query.shape
    ry, rx = _reaches(radius, h, w)
    threads = max(1, min(int(threads), h))
    if threads == 1:
        _rows_topk(query, store, slots, ry, rx, 0, h, kk, out_val, out_idx)
        return
    rows = itertools.count()  # next() on a count is atomic under the GIL

    def work() -> None:
        while (y := next(rows)) < h:
            _rows_topk(query, store, slots, ry, rx, y, y + 1, kk, out_val, out_idx)

    helpers = [_workers(threads - 1).submit(work) for _ in range(threads - 1)]
    work()
    for future in helpers:
        future.result()


def window_candidates(query: np.ndarray, store: np.ndarray, slots: np.ndarray, radius: int,
                      targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every in-radius cosine of some target cells (for the tie fallback), equal to the kernel's values.

    Args:
        query, store, slots, radius: as in :func:`window_topk`.
        targets: (R,) int64 flat target ids ``y * w + x``.

    Returns:
        (R, N) float32 cosines and (R, N) int64 flat cell ids; N is the largest window of the
        grid; shorter rows are padded with -inf and -1.
    """
    _, h, w = query.shape
    ry, rx = _reaches(radius, h, w)
    n = slots.shape[0] * min(h, 2 * ry + 1) * min(w, 2 * rx + 1)
    cos = np.empty((targets.shape[0], n), dtype=np.float32)
    idx = np.empty((targets.shape[0], n), dtype=np.int64)
    _window_candidates(query, store, slots, ry, rx, targets, cos, idx)
    return cos, idx
