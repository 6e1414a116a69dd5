"""Windowed top-k affinity propagation, computed in tiles of target cells (pure functions).

The grid (h, w) is cut into square blocks of ``block`` x ``block`` cells. Context frames are
stored block-major, ``(nbr, nbc, S, M, C)`` with ``M = block**2`` cells per block and ``S``
context slots, so that for one block, or a run of consecutive blocks of one block row, the
cells of all context frames form one contiguous ``(rows, C)`` matrix: a tile's window is
covered by a few large matrix products, without gathering copies.

For the tile of target cells in block (bi, bj), the window is the rectangle of blocks that
holds every context cell within ``radius`` of some target cell of the tile. Cells of the
window outside a target's own neighbourhood, and padding cells past the grid edge, get
affinity 0, exactly as the reference's neighbourhood mask makes them; top-k, the threshold
(ties at the k-th value kept) and the normalisation then follow the reference term by term.
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


class _Tile:
    """One tile of target cells (block (bi, bj)): its window of blocks and where it is masked.

    Attributes:
        rows, cols: window block ranges [lo, hi) along each axis.
        outside: (M, ni, nj, M) bool, True where the target may not see the window cell.
    """

    def __init__(self, rows: tuple[int, int], cols: tuple[int, int], outside: Tensor):
        self.rows, self.cols, self.outside = rows, cols, outside


class TilePlan:
    """The tiles of one grid and radius, with masks shared between tiles of the same shape.

    Build it once per video (it depends only on the grid, the radius and the device).
    """

    def __init__(self, grid: BlockGrid, radius: int, device=None):
        self.grid = grid
        self.radius = radius
        reach = radius if radius > 0 else None
        nbr, nbc = grid.shape
        masks: dict[tuple, Tensor] = {}
        self.tiles: list[tuple[int, int, _Tile]] = []
        for bi in range(nbr):
            rows = _block_range(bi, nbr, grid.block, reach)
            for bj in range(nbc):
                cols = _block_range(bj, nbc, grid.block, reach)
                # The mask depends only on the window's position relative to the tile and on
                # whether it holds the (possibly partial) last block row / column.
                key = (rows[0] - bi, rows[1] - bi, cols[0] - bj, cols[1] - bj, rows[1] == nbr, cols[1] == nbc)
                if key not in masks:
                    masks[key] = _window_mask(grid, bi, bj, rows, cols, reach, device).logical_not_()
                self.tiles.append((bi, bj, _Tile(rows, cols, masks[key])))


def _cosines(query: Tensor, store: Tensor, tile: _Tile, band: tuple[int, int], slots: tuple[int, int],
             full_slots: bool) -> Tensor:
    """Cosines of a tile's targets with window block rows ``band`` and context ``slots``.

    The candidates of a target are numbered in (block row, block column, slot, cell) order;
    they come in G groups of L consecutive candidates, one batched matrix product each.

    Returns:
        (G, M, L) tensor; cells outside each target's neighbourhood, and padding cells, are
        -inf (so that their affinity exp(-inf / T) is exactly 0, as in the reference).
    """
    m, c = query.shape
    j0, j1 = tile.cols
    s0, s1 = slots
    nr, nj, ns = band[1] - band[0], j1 - j0, s1 - s0
    cells = store.shape[3]
    outside = tile.outside[:, band[0] - tile.rows[0]: band[1] - tile.rows[0]]  # (M, nr, nj, cells)
    if full_slots:
        # Blocks j0..j1 of one block row with all their slots form one contiguous matrix.
        src = store[band[0]:band[1], j0:j1].reshape(nr, nj * ns * cells, c)
        out = torch.bmm(query.expand(nr, m, c), src.transpose(1, 2))
        out.view(nr, m, nj, ns, cells).masked_fill_(outside.permute(1, 0, 2, 3).unsqueeze(3), float("-inf"))
        return out
    out = query.new_empty(nr, nj, m, ns * cells)
    for r, i in enumerate(range(*band)):
        src = store[i, j0:j1, s0:s1].reshape(nj, ns * cells, c)
        torch.bmm(query.expand(nj, m, c), src.transpose(1, 2), out=out[r])
    out.view(nr, nj, m, ns, cells).masked_fill_(outside.permute(1, 2, 0, 3).unsqueeze(3), float("-inf"))
    return out.view(nr * nj, m, ns * cells)


def _rows(cosines: Tensor, rows: Tensor | None = None) -> Tensor:
    """(G, M, L) grouped cosines -> (R, G*L) full candidate rows (a copy) of targets ``rows``."""
    if rows is not None:
        cosines = cosines[:, rows]
    return cosines.permute(1, 0, 2).reshape(cosines.shape[1], -1)


def _affinities_(cosines: Tensor, temperature: float) -> Tensor:
    """In place: exp(cos / T), the reference's operations in its order (masked cells -> 0)."""
    return cosines.div_(temperature).exp_()


def _chunks(tile: _Tile, n_valid: int, cells: int, max_candidates: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Split a tile's window into (row band range, slot range) chunks of <= max_candidates per target."""
    i0, i1 = tile.rows
    nj = tile.cols[1] - tile.cols[0]
    per_row_slot = nj * cells
    if (i1 - i0) * n_valid * per_row_slot <= max_candidates:
        return [((i0, i1), (0, n_valid))]
    rows_per = max_candidates // (n_valid * per_row_slot)
    if rows_per >= 1:
        return [((i, min(i1, i + rows_per)), (0, n_valid)) for i in range(i0, i1, rows_per)]
    slots_per = max(1, max_candidates // per_row_slot)
    return [((i, i + 1), (s, min(n_valid, s + slots_per))) for i in range(i0, i1) for s in range(0, n_valid, slots_per)]


def _window_labels(labels: Tensor, tile: _Tile, band: tuple[int, int], slots: tuple[int, int]) -> Tensor:
    """(candidates, K) labels of the window cells, in the order of :func:`_cosines`."""
    j0, j1 = tile.cols
    return labels[band[0]:band[1], j0:j1, slots[0]:slots[1]].reshape(-1, labels.shape[-1])


def _label_rows(labels: Tensor, tile: _Tile, slots: tuple[int, int], index: Tensor) -> Tensor:
    """Labels (..., K) of window candidates given by flat ``index`` into :func:`_cosines`' order."""
    _, nbc, n_slots, cells, k = labels.shape
    j0, j1 = tile.cols
    ns = slots[1] - slots[0]
    cell = index % cells
    rest = index // cells
    slot = rest % ns + slots[0]
    rest = rest // ns
    col = rest % (j1 - j0) + j0
    row = rest // (j1 - j0) + tile.rows[0]
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


def _top_candidates(cosines: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` largest cosines of each target over all groups, sorted, with flat candidate ids.

    Two stages: the top ``count`` of each group, then of their union (exact for values).
    """
    g, m, length = cosines.shape
    values, index = cosines.topk(min(count, length), dim=2)
    if g == 1:
        return values[0], index[0]
    index = index + torch.arange(g, device=index.device).view(g, 1, 1) * length
    values = values.permute(1, 0, 2).reshape(m, -1)
    index = index.permute(1, 0, 2).reshape(m, -1)
    values, pick = values.topk(count, dim=1)
    return values, index.gather(1, pick)


def _propagate_tile(query: Tensor, store: Tensor, labels: Tensor, tile: _Tile, n_valid: int, topk: int,
                    temperature: float, max_candidates: int) -> Tensor:
    """Soft labels (M, K) of one tile of target cells."""
    cells = store.shape[3]
    full = n_valid == store.shape[2]
    chunks = _chunks(tile, n_valid, cells, max_candidates)
    if len(chunks) > 1:
        return _propagate_tile_chunked(query, store, labels, tile, chunks, full, topk, temperature)
    band, slots = chunks[0]
    cos = _cosines(query, store, tile, band, slots, full)
    if cos.shape[0] * cos.shape[2] <= topk:
        return _threshold_rows(_rows(cos), _window_labels(labels, tile, band, slots), topk, temperature)
    # exp(x / T) is monotone, so the k largest cosines are the k largest affinities, unless the
    # (k+1)-th affinity equals the k-th (a tie, a float collapse, or a masked 0): the reference then
    # keeps every tied cell, so such rows take the full path.
    values, index = _top_candidates(cos, topk + 1)
    aff = _affinities_(values, temperature)
    exact = aff[:, topk] < aff[:, topk - 1]
    weights = aff[:, :topk]
    weights = weights / weights.sum(dim=1, keepdim=True)
    soft = (weights.unsqueeze(1) @ _label_rows(labels, tile, slots, index[:, :topk])).squeeze(1)
    if not bool(exact.all()):
        rows = (~exact).nonzero().squeeze(1)
        soft[rows] = _threshold_rows(_rows(cos, rows), _window_labels(labels, tile, band, slots), topk, temperature)
    return soft


def _propagate_tile_chunked(query: Tensor, store: Tensor, labels: Tensor, tile: _Tile, chunks, full: bool,
                            topk: int, temperature: float) -> Tensor:
    """:func:`_propagate_tile` for windows larger than the budget, chunk by chunk, in two passes.

    Pass 1 finds each target's k-th largest affinity with a running top-k (the k-th value of a
    union is the k-th value of its parts' top-k values); pass 2 recomputes each chunk and sums
    the kept affinities and their labels. Affinities are normalised at the end (num / den).
    """
    m = query.shape[0]
    n_valid = chunks[-1][1][1]

    def affinities(band, slots):
        return _affinities_(_rows(_cosines(query, store, tile, band, slots, full and slots == (0, n_valid))), temperature)

    best = None
    for band, slots in chunks:
        aff = affinities(band, slots)
        part = aff.topk(min(topk, aff.shape[1]), dim=1, sorted=False).values
        best = part if best is None else torch.cat([best, part], dim=1)
        best = best.topk(min(topk, best.shape[1]), dim=1, sorted=False).values
    kth = best.min(dim=1, keepdim=True).values
    num = query.new_zeros(m, labels.shape[-1])
    den = query.new_zeros(m, 1)
    for band, slots in chunks:
        aff = affinities(band, slots)
        aff.masked_fill_(aff < kth, 0.0)
        num += aff @ _window_labels(labels, tile, band, slots)
        den += aff.sum(dim=1, keepdim=True)
    return num / den


def propagate_blocks(query: Tensor, store: Tensor, labels: Tensor, n_valid: int, plan: TilePlan, *,
                     topk: int, temperature: float, budget_bytes: int) -> Tensor:
    """Propagate context labels to one target frame, tile by tile.

    Args:
        query: (nbr, nbc, M, C) normalised target features in blocks (:func:`to_blocks`).
        store: (nbr, nbc, S, M, C) normalised context features; slots [0, n_valid) are used.
        labels: (nbr, nbc, S, M, K) context labels (one-hot or soft) in the same layout.
        n_valid: number of filled context slots (slot 0 = first frame).
        plan: the tiles of the grid and neighbourhood radius (:class:`TilePlan`).
        topk: cells kept per target over all context frames (ties at the k-th value kept).
        temperature: affinity = exp(cosine / temperature).
        budget_bytes: working memory allowed for one tile's affinities.

    Returns:
        (nbr, nbc, M, K) soft labels of the target cells (padding cells hold garbage).
    """
    nbr, nbc = plan.grid.shape
    m, k_ch = plan.grid.cells, labels.shape[-1]
    max_candidates = max(1, budget_bytes // (m * _BYTES_PER_PAIR + 4 * k_ch))
    out = query.new_empty(nbr, nbc, m, k_ch)
    for bi, bj, tile in plan.tiles:
        out[bi, bj] = _propagate_tile(query[bi, bj], store, labels, tile, n_valid, topk, temperature, max_candidates)
    return out
