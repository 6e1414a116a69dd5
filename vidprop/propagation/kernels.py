"""Windowed top-k affinity propagation, computed in tiles of target cells (pure functions).

The grid (h, w) is cut into square blocks of ``block`` x ``block`` cells. Context frames are
stored block-major, ``(nbr, nbc, S, M, C)`` with ``M = block**2`` cells per block and ``S``
context slots, so that for one block, or a run of consecutive blocks of one block row, the
cells of all context frames form one contiguous ``(rows, C)`` matrix: a tile's window is
covered by a few large matrix products, without gathering copies.

For the tile of target cells in block (bi, bj), the window is the rectangle of blocks that
holds every context cell within ``radius`` of some target cell of the tile. Cells of the
window outside a target's own neighbourhood, and padding cells past the grid edge, get
affinity 0, exactly as the reference's neighbourhood mask makes them. Tiles of one block row
whose windows have the same shape form a run and are computed together.

Exactness: the reference keeps, per target, every cell whose affinity exp(cos / T) is >= the
k-th largest (ties kept) and normalises their sum to 1. Since exp(x / T) is monotone, the
top k+1 cosines give the kept set directly whenever the (k+1)-th affinity is strictly below
the k-th; otherwise (a tie, or distinct cosines whose float32 exp collide, or fewer than k
cells in the neighbourhood) the row takes the reference's full path over the whole window.
So only k+1 exponentials per target are needed on the common path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BlockGrid",
    "TilePlan",
    "normalize_cells",
    "to_blocks",
    "from_blocks",
    "propagate_blocks",
]

# Bytes of working memory per (target cell, candidate context cell) pair inside a tile:
# affinity (4), comparison mask (1), top-k and reduction scratch (headroom).
_BYTES_PER_PAIR = 12


@dataclass(frozen=True)
class BlockGrid:
    """How an (h, w) grid is tiled into square blocks.

    Attributes:
        size: (h, w) feature grid.
        block: block side in cells.
    """

    size: tuple[int, int]
    block: int

    @property
    def shape(self) -> tuple[int, int]:
        """(nbr, nbc): number of block rows and block columns."""
        h, w = self.size
        return -(-h // self.block), -(-w // self.block)

    @property
    def cells(self) -> int:
        """M: cells per block."""
        return self.block * self.block


class Workspace:
    """Scratch buffers reused across tiles and frames (grown on demand, never shrunk), so that a
    step allocates no large tensor: fresh allocations above glibc's mmap threshold cost page
    faults on every use."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A contiguous tensor of ``shape`` on ``like``'s device and dtype (contents undefined)."""
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = like.new_empty(numel)
        return buf[:numel].view(shape)


def normalize_cells(features: Tensor) -> Tensor:
    """L2-normalise each cell's feature vector (``F.normalize`` semantics, eps 1e-12).

    Args:
        features: (C, h, w) float tensor.

    Returns:
        (h, w, C) contiguous tensor, each cell of unit norm (or zero where the input is zero).
    """
    return F.normalize(features.permute(1, 2, 0).contiguous(), p=2.0, dim=-1)


def to_blocks(cells: Tensor, grid: BlockGrid) -> Tensor:
    """Rearrange (h, w, D) cells into (nbr, nbc, M, D) blocks, zero-padded past the grid edge."""
    h, w = grid.size
    nbr, nbc = grid.shape
    b = grid.block
    d = cells.shape[-1]
    padded = cells.new_zeros(nbr * b, nbc * b, d)
    padded[:h, :w] = cells
    return padded.view(nbr, b, nbc, b, d).permute(0, 2, 1, 3, 4).reshape(nbr, nbc, b * b, d)


def from_blocks(blocks: Tensor, grid: BlockGrid) -> Tensor:
    """Inverse of :func:`to_blocks`: (nbr, nbc, M, D) -> (h, w, D), padding dropped."""
    h, w = grid.size
    nbr, nbc = grid.shape
    b = grid.block
    d = blocks.shape[-1]
    return blocks.view(nbr, nbc, b, b, d).permute(0, 2, 1, 3, 4).reshape(nbr * b, nbc * b, d)[:h, :w]


def _block_range(index: int, count: int, block: int, reach: int | None) -> tuple[int, int]:
    """Blocks [lo, hi) along one axis holding every cell within ``reach`` of block ``index``."""
    if reach is None:
        return 0, count
    span = math.ceil(reach / block)
    return max(0, index - span), min(count, index + span + 1)


def _axis_ok(grid_len: int, block: int, t_blk: int, lo: int, hi: int, reach: int | None, device) -> Tensor:
    """(block, hi - lo, block) bool: target offset a in block t_blk may see cell c of block lo + n.

    A cell past the grid edge (padding) is never allowed.
    """
    a = torch.arange(block, device=device)
    t = t_blk * block + a  # target coordinate
    c = (torch.arange(lo, hi, device=device)[:, None] * block + a[None, :])  # context coordinate (n, c)
    ok = (c < grid_len)[None].expand(block, -1, -1)
    if reach is not None:
        ok = ok & ((t[:, None, None] - c[None]).abs() <= reach)
    return ok


def _window_mask(grid: BlockGrid, bi: int, bj: int, rows: tuple[int, int], cols: tuple[int, int],
                 reach: int | None, device) -> Tensor:
    """(M, ni, nj, M) bool: target cell m of block (bi, bj) may see cell m' of window block (i, j)."""
    b = grid.block
    h, w = grid.size
    row_ok = _axis_ok(h, b, bi, rows[0], rows[1], reach, device)  # (ty, ni, cy)
    col_ok = _axis_ok(w, b, bj, cols[0], cols[1], reach, device)  # (tx, nj, cx)
    ni, nj = rows[1] - rows[0], cols[1] - cols[0]
    mask = row_ok[:, None, :, None, :, None] & col_ok[None, :, None, :, None, :]  # (ty, tx, ni, nj, cy, cx)
    return mask.reshape(b * b, ni, nj, b * b)


class _Run:
    """Consecutive tiles (bi, bj0), ..., (bi, bj0 + count - 1) of one block row whose windows
    have the same shape, so that they are computed together (fewer, larger operations).

    Attributes:
        bi, bj0, count: block row, first block column, number of tiles.
        rows: window block rows [lo, hi) (the same for every tile of the run).
        cols: window block columns [lo, hi) of the first tile; tile t's are shifted by t.
        bias: (M, ni, nj, 1, M) float, -inf where a target may not see a window cell, else 0.
    """

    def __init__(self, bi: int, bj0: int, count: int, rows: tuple[int, int], cols: tuple[int, int], bias: Tensor):
        self.bi, self.bj0, self.count = bi, bj0, count
        self.rows, self.cols, self.bias = rows, cols, bias

    def split(self, size: int) -> list["_Run"]:
        """Runs of at most ``size`` tiles covering this one."""
        return [_Run(self.bi, self.bj0 + t, min(size, self.count - t), self.rows,
                     (self.cols[0] + t, self.cols[1] + t), self.bias) for t in range(0, self.count, size)]


class TilePlan:
    """The tiles of one grid and radius, grouped into runs that share a window shape and mask.

    Build it once per video (it depends only on the grid, the radius, the device and the dtype).
    """

    def __init__(self, grid: BlockGrid, radius: int, device=None, dtype: torch.dtype = torch.float32):
        self.grid = grid
        self.radius = radius
        reach = radius if radius > 0 else None
        nbr, nbc = grid.shape
        masks: dict[tuple, Tensor] = {}
        self.runs: list[_Run] = []
        for bi in range(nbr):
            rows = _block_range(bi, nbr, grid.block, reach)
            previous = None
            for bj in range(nbc):
                cols = _block_range(bj, nbc, grid.block, reach)
                # The mask depends only on the window's position relative to the tile and on
                # whether it holds the (possibly partial) last block row / column.
                key = (rows[0] - bi, rows[1] - bi, cols[0] - bj, cols[1] - bj, rows[1] == nbr, cols[1] == nbc)
                if key == previous:
                    self.runs[-1].count += 1
                    continue
                if key not in masks:
                    inside = _window_mask(grid, bi, bj, rows, cols, reach, device)
                    masks[key] = torch.zeros(inside.shape, device=device, dtype=dtype).masked_fill_(
                        inside.logical_not_(), float("-inf")).unsqueeze(3)
                self.runs.append(_Run(bi, bj, 1, rows, cols, masks[key]))
                previous = key


def _cosines(query: Tensor, store: Tensor, run: _Run, band: tuple[int, int], slots: tuple[int, int],
             full_slots: bool, workspace: Workspace) -> Tensor:
    """Cosines of a run's targets with window block rows ``band`` and context ``slots``.

    The candidates of a target are numbered in (block row, block column, slot, cell) order;
    they come in G groups of L consecutive candidates, one batched matrix product per group.
    The neighbourhood mask enters each product as a 0 / -inf bias (``baddbmm``), built once per
    run and shared by its tiles, instead of a masked fill over the whole output.

    Args:
        query: (nbr, nbc, M, C) normalised target blocks.
        store: (nbr, nbc, S, M, C) contiguous context store.

    Returns:
        (G, T, M, L) tensor (a view of ``workspace``) for the run's T tiles; cells outside each
        target's neighbourhood, and padding cells, are -inf (exp(-inf / T) = 0, as in the reference).
    """
    n_tiles = run.count
    targets = query[run.bi, run.bj0: run.bj0 + n_tiles]  # (T, M, C)
    m, c = targets.shape[1:]
    j0, j1 = run.cols
    s0, s1 = slots
    nr, nj, ns = band[1] - band[0], j1 - j0, s1 - s0
    cells = store.shape[3]
    small = run.bias[:, band[0] - run.rows[0]: band[1] - run.rows[0]]  # (M, nr, nj, 1, cells)
    row_step, col_step, slot_step = store.stride(0), store.stride(1), store.stride(2)

    def windows(i: int, j: int, length: int) -> Tensor:
        # (T, length, C): for tile t, the `length` rows of the store that start at block (i, j + t), slot s0.
        offset = store.storage_offset() + i * row_step + j * col_step + s0 * slot_step
        return store.as_strided((n_tiles, length, c), (col_step, c, 1), offset)

    bias = workspace.take("bias", (m, nr, nj, ns, cells), targets)
    bias.copy_(small.expand(m, nr, nj, ns, cells))
    if full_slots:
        # Blocks j0..j1 of one block row with all their slots form one contiguous matrix.
        out = workspace.take("cosines", (nr, n_tiles, m, nj * ns * cells), targets)
        for r, i in enumerate(range(*band)):
            torch.baddbmm(bias[:, r].reshape(1, m, -1), targets, windows(i, j0, nj * ns * cells).transpose(1, 2),
                          out=out[r])
        return out
    out = workspace.take("cosines", (nr, nj, n_tiles, m, ns * cells), targets)
    for r, i in enumerate(range(*band)):
        for col in range(nj):
            torch.baddbmm(bias[:, r, col].reshape(1, m, -1), targets, windows(i, j0 + col, ns * cells).transpose(1, 2),
                          out=out[r, col])
    return out.view(nr * nj, n_tiles, m, ns * cells)


def _rows(cosines: Tensor, tile: int, rows: Tensor | None = None) -> Tensor:
    """(G, T, M, L) grouped cosines -> (R, G*L) full candidate rows (a copy) of one tile's ``rows``."""
    part = cosines[:, tile] if rows is None else cosines[:, tile, rows]
    return part.permute(1, 0, 2).reshape(part.shape[1], -1)


def _affinities_(cosines: Tensor, temperature: float) -> Tensor:
    """In place: exp(cos / T), the reference's operations in its order (masked cells -> 0)."""
    return cosines.div_(temperature).exp_()


def _chunks(run: _Run, n_valid: int, cells: int, max_candidates: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Split a tile's window into (row band range, slot range) chunks of <= max_candidates per target."""
    i0, i1 = run.rows
    nj = run.cols[1] - run.cols[0]
    per_row_slot = nj * cells
    if (i1 - i0) * n_valid * per_row_slot <= max_candidates:
        return [((i0, i1), (0, n_valid))]
    rows_per = max_candidates // (n_valid * per_row_slot)
    if rows_per >= 1:
        return [((i, min(i1, i + rows_per)), (0, n_valid)) for i in range(i0, i1, rows_per)]
    slots_per = max(1, max_candidates // per_row_slot)
    return [((i, i + 1), (s, min(n_valid, s + slots_per))) for i in range(i0, i1) for s in range(0, n_valid, slots_per)]


def _window_labels(labels: Tensor, run: _Run, tile: int, band: tuple[int, int], slots: tuple[int, int]) -> Tensor:
    """(candidates, K) labels of one tile's window cells, in the order of :func:`_cosines`."""
    j0, j1 = run.cols
    return labels[band[0]:band[1], j0 + tile: j1 + tile, slots[0]:slots[1]].reshape(-1, labels.shape[-1])


def _label_rows(labels: Tensor, run: _Run, slots: tuple[int, int], index: Tensor) -> Tensor:
    """Labels (T, M, n, K) of window candidates given by flat ``index`` (T, M, n) in :func:`_cosines`' order."""
    _, nbc, n_slots, cells, k = labels.shape
    j0, j1 = run.cols
    ns = slots[1] - slots[0]
    cell = index % cells
    rest = index // cells
    slot = rest % ns + slots[0]
    rest = rest // ns
    col = rest % (j1 - j0) + j0 + torch.arange(run.count, device=index.device).view(-1, 1, 1)
    row = rest // (j1 - j0) + run.rows[0]
    return labels.view(-1, k)[((row * nbc + col) * n_slots + slot) * cells + cell]


def _threshold_rows(cosines: Tensor, window_labels: Tensor, topk: int, temperature: float) -> Tensor:
    """The reference's steps on full rows: affinities, k-th value, zero below it, normalise, sum.

    Args:
        cosines: (R, N) masked cosines (-inf outside the neighbourhood), a scratch copy.
        window_labels: (N, K) labels of the candidates.

    Returns:
        (R, K) soft labels.
    """
    aff = _affinities_(cosines, temperature)
    kth = aff.topk(min(topk, aff.shape[1]), dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    aff.masked_fill_(aff < kth, 0.0)
    return (aff / aff.sum(dim=1, keepdim=True)) @ window_labels


def _top_candidates(cosines: Tensor, count: int, chunk: int) -> tuple[Tensor, Tensor]:
    """The ``count`` largest of (G, T, M, L) cosines per target, sorted, with flat candidate ids.

    Chunk-maximum prefilter: each target's candidates are cut into chunks of ``chunk`` (one block
    of one slot); only the ``count`` chunks with the largest maxima can hold the ``count`` largest
    values (if a value's chunk is not among them, ``count`` other chunks hold a value at least as
    large), so ``topk`` runs on those chunks alone. Exact for the values; among equal values the
    ids may differ, which only matters for rows whose k-th and (k+1)-th values tie, and those
    take the full threshold path. Returns (T, M, count) values and ids (``g * L + position``).
    """
    g, n_tiles, m, length = cosines.shape
    n_chunks = length // chunk
    if g * n_chunks <= count:
        values, index = cosines.permute(1, 2, 0, 3).reshape(n_tiles, m, -1).topk(min(count, g * length), dim=2)
        return values, index
    maxima = cosines.view(g, n_tiles, m, n_chunks, chunk).amax(dim=4)  # (G, T, M, n_chunks)
    best = maxima.permute(1, 2, 0, 3).reshape(n_tiles, m, g * n_chunks).topk(count, dim=2, sorted=False).indices
    group, within = best // n_chunks, best % n_chunks
    tile = torch.arange(n_tiles, device=best.device).view(-1, 1, 1)
    target = torch.arange(m, device=best.device).view(1, -1, 1)
    start = ((group * n_tiles + tile) * m + target) * length + within * chunk  # (T, M, count) flat offsets
    offsets = start[..., None] + torch.arange(chunk, device=best.device)  # (T, M, count, chunk)
    picked = cosines.reshape(-1)[offsets.view(n_tiles, m, -1)]
    values, pos = picked.topk(count, dim=2)
    which = pos // chunk
    ids = (group.gather(2, which) * length + within.gather(2, which) * chunk + pos % chunk)
    return values, ids


def _propagate_run(query: Tensor, store: Tensor, labels: Tensor, run: _Run, n_valid: int, topk: int,
                   temperature: float, padding: Tensor, workspace: Workspace,
                   defer_ties: bool = False) -> tuple[Tensor, Tensor | None]:
    """Soft labels (T, M, K) of a run of tiles whose windows fit the budget in one pass.

    With ``defer_ties`` the rows that need the full threshold path are not redone here: the
    (T, M) bool ``exact`` (False for those rows) is returned with the soft labels, and the caller
    redoes them with :func:`_redo_ties` (reading ``exact`` makes the host wait for a GPU). Else
    they are redone now and None is returned.
    """
    full = n_valid == store.shape[2]
    band, slots = run.rows, (0, n_valid)
    cos = _cosines(query, store, run, band, slots, full, workspace)
    groups, n_tiles, _, length = cos.shape
    if groups * length <= topk:
        return torch.stack([_threshold_rows(_rows(cos, t), _window_labels(labels, run, t, band, slots), topk, temperature)
                            for t in range(n_tiles)]), None
    # exp(x / T) is monotone, so the k largest cosines are the k largest affinities, unless the
    # (k+1)-th affinity equals the k-th (a tie, a float collapse, or a masked 0): the reference then
    # keeps every tied cell, so such rows take the full path. Padding targets are discarded anyway.
    values, index = _top_candidates(cos, topk + 1, store.shape[3])
    aff = _affinities_(values, temperature)
    exact = (aff[..., topk] < aff[..., topk - 1]) | padding[run.bi, run.bj0: run.bj0 + n_tiles, :, 0]
    weights = aff[..., :topk]
    weights = weights / weights.sum(dim=-1, keepdim=True)
    soft = (weights.unsqueeze(-2) @ _label_rows(labels, run, slots, index[..., :topk])).squeeze(-2)
    if defer_ties:
        return soft, exact
    if not bool(exact.all()):
        _threshold_ties(cos, labels, run, band, slots, topk, temperature, exact, soft)
    return soft, None


def _threshold_ties(cos: Tensor, labels: Tensor, run: _Run, band: tuple[int, int], slots: tuple[int, int], topk: int,
                    temperature: float, exact: Tensor, soft: Tensor) -> None:
    """In place: the rows of ``soft`` (T, M, K) where ``exact`` (T, M) is False, by the full threshold path."""
    for t in (~exact).any(dim=1).nonzero().flatten().tolist():
        rows = (~exact[t]).nonzero().squeeze(1)
        soft[t, rows] = _threshold_rows(_rows(cos, t, rows), _window_labels(labels, run, t, band, slots),
                                        topk, temperature)


def _redo_ties(query: Tensor, store: Tensor, labels: Tensor, n_valid: int, topk: int, temperature: float,
               workspace: Workspace, pending: list[tuple[_Run, Tensor]], out: Tensor) -> None:
    """The deferred tie rows of a frame: one host read for all runs, then each run that has any
    recomputes its cosines (the same products as before) and redoes those rows in ``out``."""
    needs = torch.stack([exact.logical_not().any() for _, exact in pending]).tolist()
    full = n_valid == store.shape[2]
    for (run, exact), need in zip(pending, needs):
        if need:
            cos = _cosines(query, store, run, run.rows, (0, n_valid), full, workspace)
            _threshold_ties(cos, labels, run, run.rows, (0, n_valid), topk, temperature, exact,
                            out[run.bi, run.bj0: run.bj0 + run.count])


def _propagate_tile_chunked(query: Tensor, store: Tensor, labels: Tensor, run: _Run, n_valid: int, topk: int,
                            temperature: float, max_candidates: int, workspace: Workspace) -> Tensor:
    """Soft labels (1, M, K) of a single tile whose window exceeds the budget: chunk by chunk, two passes.

    Pass 1 finds each target's k-th largest affinity with a running top-k (the k-th value of a
    union is the k-th value of its parts' top-k values); pass 2 recomputes each chunk and sums
    the kept affinities and their labels. Affinities are normalised at the end (num / den).
    """
    full = n_valid == store.shape[2]
    chunks = _chunks(run, n_valid, store.shape[3], max_candidates)

    def affinities(band, slots):
        cos = _cosines(query, store, run, band, slots, full and slots == (0, n_valid), workspace)
        return _affinities_(_rows(cos, 0), temperature)

    best = None
    for band, slots in chunks:
        aff = affinities(band, slots)
        part = aff.topk(min(topk, aff.shape[1]), dim=1, sorted=False).values
        best = part if best is None else torch.cat([best, part], dim=1)
        best = best.topk(min(topk, best.shape[1]), dim=1, sorted=False).values
    kth = best.min(dim=1, keepdim=True).values
    num = query.new_zeros(query.shape[2], labels.shape[-1])
    den = query.new_zeros(query.shape[2], 1)
    for band, slots in chunks:
        aff = affinities(band, slots)
        aff.masked_fill_(aff < kth, 0.0)
        num += aff @ _window_labels(labels, run, 0, band, slots)
        den += aff.sum(dim=1, keepdim=True)
    return (num / den)[None]


def propagate_blocks(query: Tensor, store: Tensor, labels: Tensor, n_valid: int, plan: TilePlan, *,
                     topk: int, temperature: float, budget_bytes: int, padding: Tensor,
                     workspace: Workspace | None = None, defer_ties: bool | None = None) -> Tensor:
    """Propagate context labels to one target frame, a run of tiles at a time.

    Args:
        query: (nbr, nbc, M, C) normalised target features in blocks (:func:`to_blocks`).
        store: (nbr, nbc, S, M, C) contiguous normalised context features; slots [0, n_valid) are used.
        labels: (nbr, nbc, S, M, K) contiguous context labels (one-hot or soft) in the same layout.
        n_valid: number of filled context slots (slot 0 = first frame).
        plan: the tiles of the grid and neighbourhood radius (:class:`TilePlan`).
        topk: cells kept per target over all context frames (ties at the k-th value kept).
        temperature: affinity = exp(cosine / temperature).
        budget_bytes: working memory allowed for the affinities computed at once.
        padding: (nbr, nbc, M, 1) bool, True for block cells past the grid edge.
        workspace: scratch buffers to reuse across calls (a fresh one if None).
        defer_ties: find the rows that need the full threshold path (ties at the k-th value) with
            one host read per frame, after every run, and recompute those runs' cosines, instead of
            one read per run while its cosines are at hand. Default: on off the CPU, where each
            read makes the host wait for the device; ties are rare, so recomputing is cheap.

    Returns:
        (nbr, nbc, M, K) soft labels of the target cells; 0 at padding cells.
    """
    assert store.is_contiguous() and labels.is_contiguous()
    workspace = workspace or Workspace()
    nbr, nbc = plan.grid.shape
    m, k_ch = plan.grid.cells, labels.shape[-1]
    cells = store.shape[3]
    max_candidates = max(1, budget_bytes // (m * _BYTES_PER_PAIR + 4 * k_ch))  # per target cell
    out = query.new_empty(nbr, nbc, m, k_ch)
    defer = query.device.type != "cpu" if defer_ties is None else defer_ties
    pending: list[tuple[_Run, Tensor]] = []
    for run in plan.runs:
        per_tile = (run.rows[1] - run.rows[0]) * (run.cols[1] - run.cols[0]) * n_valid * cells
        if per_tile > max_candidates:
            for part in run.split(1):
                out[part.bi, part.bj0: part.bj0 + 1] = _propagate_tile_chunked(
                    query, store, labels, part, n_valid, topk, temperature, max_candidates, workspace)
            continue
        for part in run.split(max_candidates // per_tile):
            soft, exact = _propagate_run(query, store, labels, part, n_valid, topk, temperature, padding, workspace, defer)
            out[part.bi, part.bj0: part.bj0 + part.count] = soft
            if exact is not None:
                pending.append((part, exact))
    if pending:
        _redo_ties(query, store, labels, n_valid, topk, temperature, workspace, pending, out)
    # Padding cells may be far from every grid cell (0/0); their labels must stay 0 in the context.
    return out.masked_fill_(padding, 0.0)
