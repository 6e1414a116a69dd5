"""LabelPropagator: carries the first frame's labels forward, one frame per :meth:`step`.

The context of target frame t is a list of permanent frames (the first frame and every keyframe
added with :meth:`LabelPropagator.add_keyframe`, with their given labels) plus a window of the
last ``n_last_frames`` propagated frames before t (features and their soft labels, the raw output
of :meth:`step`). Each frame is L2-normalised once, when it enters. The context lives in slots
of a backend's store; the slots in use are always the first ones, permanent frames keep theirs,
and a recent frame reuses the slot of the oldest one once the window is full. A keyframe that
brings new objects adds label channels; the frames already in the context get 0 in them ("not
this object"), as XMem/Cutie treat objects that first appear in a later mask.

Three backends compute a step with the same semantics (the reference's kept set, ties included,
and its weights); :func:`_choose_backend` picks one:

- ``fused`` (:mod:`vidprop.propagation.fused`, numba): per target cell, only its in-radius context
  cells, with a running top-(k+1); CPU, float32.
- ``strips`` (:mod:`vidprop.propagation.strips`): matrix products over column strips, exact in rows;
  any device and dtype. The fastest on the CPU above ``FUSED_MAX_CHANNELS`` channels.
- ``torch`` (:mod:`vidprop.propagation.kernels`): matrix products over square blocks; any device
  and dtype; any radius within the memory budget.

The fused and strips backends return each target's k+1 best candidates ranked by cosine; the
affinities exp(cos / T), the tie check and the weights are computed here with torch, as the
reference does. Propagators of one video whose settings differ only in ``topk`` and ``temperature``
rank the same candidates; with a :class:`SharedCandidates` they rank them once per frame (the fused
backend).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vidprop.errors import ConfigError, ShapeError
from vidprop.propagation import fused
from vidprop.propagation.config import PropagationConfig
from vidprop.propagation.kernels import (BlockGrid, TilePlan, Workspace, from_blocks, normalize_cells,
                                         propagate_blocks, to_blocks)
from vidprop.propagation.strips import STRIP_WIDTH, StripPlan, propagate_strips

__all__ = ["LabelPropagator", "SharedCandidates", "labels_to_mask", "MAX_CHANNELS", "FUSED_MAX_CHANNELS"]

logger = logging.getLogger(__name__)

MAX_CHANNELS = 256  # masks are uint8 channel indices

# Above this many feature channels the strips backend's matrix products beat the fused kernel's
# vector loops (equal CPU time at 24 channels: tools/bench_propagation.py --crossover; see the README).
FUSED_MAX_CHANNELS = 24


@contextlib.contextmanager
def _one_torch_thread():
    """Run the enclosed torch operations on the calling thread alone, then restore the setting.

    The fused backend's torch work per frame is small (the affinities and weights of k+1
    candidates per target, copies into the context): an OpenMP parallel region costs more than it
    saves there, and on a busy machine each region waits for its slowest, descheduled thread.
    (torch's intra-op setting is the calling thread's OpenMP setting; vidprop's stages run on
    one thread.)
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Slots:
    """Which store slots hold the context: permanent frames and a window of recent frames.

    The slots in use are always ``0 .. used - 1``: a new frame takes slot ``used`` until the
    window is full, then a recent frame takes the oldest recent frame's slot. A permanent frame
    added later takes slot ``used`` too (the store grows to hold it).

    Attributes:
        window: n_last_frames, the most recent frames kept.
        permanent: slots of permanent frames, in order of arrival.
        recent: slots of recent frames, oldest first.
    """

    window: int
    permanent: list[int] = field(default_factory=list)
    recent: list[int] = field(default_factory=list)

    @property
    def used(self) -> int:
        """Slots in use (they are ``0 .. used - 1``)."""
        return len(self.permanent) + len(self.recent)

    @property
    def capacity(self) -> int:
        """Slots the store needs: the permanent frames plus a full window."""
        return len(self.permanent) + self.window

    def active(self) -> list[int]:
        """Context slots of the next step, permanent first."""
        return self.permanent + self.recent

    def add_permanent(self) -> int:
        """Slot for a new permanent frame (the store must have ``capacity`` slots afterwards)."""
        slot = self.used
        self.permanent.append(slot)
        return slot

    def next_recent(self) -> int | None:
        """Slot the next propagated frame is written to (None when the window is 0)."""
        if self.window == 0:
            return None
        if len(self.recent) < self.window:
            return self.used
        return self.recent[0]

    def push_recent(self, slot: int) -> None:
        """Record that ``slot`` (from :meth:`next_recent`) now holds the newest frame."""
        if len(self.recent) == self.window:
            self.recent.pop(0)
        self.recent.append(slot)


def _grown(tensor: Tensor, dim: int, size: int, zero: bool) -> Tensor:
    """``tensor`` enlarged along ``dim`` to ``size`` (new entries 0 if ``zero``, else undefined)."""
    shape = list(tensor.shape)
    old, shape[dim] = shape[dim], size
    out = (tensor.new_zeros if zero else tensor.new_empty)(shape)
    out.narrow(dim, 0, old).copy_(tensor)
    return out


class _Store:
    """Growth shared by the backends: ``features`` and ``labels`` hold slots along ``slot_dim``
    and label channels along their last dimension."""

    slot_dim: int
    features: Tensor
    labels: Tensor

    @property
    def slots(self) -> int:
        return self.features.shape[self.slot_dim]

    @property
    def channels(self) -> int:
        return self.labels.shape[-1]

    def reserve(self, slots: int, k: int) -> None:
        """Make room for ``slots`` slots and ``k`` label channels (new channels are 0 in every slot).

        Slots grow by a quarter at least, so that many keyframes cost few copies.
        """
        if slots > self.slots:
            size = max(slots, self.slots + max(4, self.slots // 4))
            self.features = _grown(self.features, self.slot_dim, size, zero=False)
            self.labels = _grown(self.labels, self.slot_dim, size, zero=False)
        if k > self.channels:
            self.labels = _grown(self.labels, self.labels.dim() - 1, k, zero=True)


class _TorchBackend(_Store):
    """Block layout of :mod:`vidprop.propagation.kernels`: features (nbr, nbc, S, M, C), labels
    (nbr, nbc, S, M, K); any device and dtype. The active slots must be the first n of the store."""

    name = "torch"
    slot_dim = 2

    def __init__(self, cfg: PropagationConfig, grid_size: tuple[int, int], slots: int, channels: int, k: int,
                 device: torch.device, dtype: torch.dtype, shared: "SharedCandidates | None" = None):
        self.cfg = cfg  # (``shared`` is for the fused backend: its tiles rank and aggregate in one go)
        self.grid = BlockGrid(grid_size, cfg.block_size)
        nbr, nbc = self.grid.shape
        m = self.grid.cells
        # torch.empty leaves untouched slots unbacked until written (short videos pay little).
        self.features = torch.empty(nbr, nbc, slots, m, channels, device=device, dtype=dtype)
        self.labels = torch.empty(nbr, nbc, slots, m, k, device=device, dtype=dtype)
        self.padding = to_blocks(torch.ones(*grid_size, 1, device=device, dtype=torch.bool), self.grid).logical_not_()
        self.plan = TilePlan(self.grid, cfg.radius, device, dtype)
        self.workspace = Workspace()

    def store(self, slot: int, cells: Tensor, labels: Tensor) -> None:
        """Write normalised cells (h, w, C) and labels (h, w, K) into ``slot``."""
        self.features[:, :, slot] = to_blocks(cells, self.grid)
        self.labels[:, :, slot] = to_blocks(labels, self.grid)

    def step(self, cells: Tensor, active: list[int]) -> Tensor:
        """Normalised query cells (h, w, C) -> soft labels (h, w, K)."""
        n_valid = len(active)
        assert sorted(active) == list(range(n_valid))  # the set of slots matters, not their order
        cfg = self.cfg
        soft = propagate_blocks(to_blocks(cells, self.grid), self.features, self.labels, n_valid, self.plan,
                                topk=cfg.topk, temperature=cfg.temperature,
                                budget_bytes=cfg.memory_budget_mib * 2**20, padding=self.padding,
                                workspace=self.workspace)
        return from_blocks(soft, self.grid)


class _StripsBackend(_Store):
    """Row-major layout of :mod:`vidprop.propagation.strips`: features (h, w, S, C), labels (h, w, S, K);
    any device and dtype. The active slots must be the first n of the store."""

    name = "strips"
    slot_dim = 2

    def __init__(self, cfg: PropagationConfig, grid_size: tuple[int, int], slots: int, channels: int, k: int,
                 device: torch.device, dtype: torch.dtype, shared: "SharedCandidates | None" = None):
        self.cfg = cfg  # (``shared`` is for the fused backend)
        self.size = grid_size
        self.features = torch.empty(*grid_size, slots, channels, device=device, dtype=dtype)
        self.labels = torch.empty(*grid_size, slots, k, device=device, dtype=dtype)
        self.threads = 1  # workers on the CPU (set before each step by LabelPropagator)
        self.workspaces: list[Workspace] = []

    def store(self, slot: int, cells: Tensor, labels: Tensor) -> None:
        """Write normalised cells (h, w, C) and labels (h, w, K) into ``slot``."""
        self.features[:, :, slot] = cells
        self.labels[:, :, slot] = labels

    def reserve(self, slots: int, k: int) -> None:
        # Exactly ``slots``: one product per context row needs every slot of the store in use.
        if slots > self.slots:
            self.features = _grown(self.features, self.slot_dim, slots, zero=False)
            self.labels = _grown(self.labels, self.slot_dim, slots, zero=False)
        super().reserve(slots, k)

    def step(self, cells: Tensor, active: list[int]) -> Tensor:
        """Normalised query cells (h, w, C) -> soft labels (h, w, K)."""
        n_valid = len(active)
        assert sorted(active) == list(range(n_valid))  # the set of slots matters, not their order
        cfg = self.cfg
        plan = _strip_plan(cfg, self.size, n_valid, self.features.dtype)
        workers = self.threads if self.features.device.type == "cpu" else 1
        self.workspaces += [Workspace() for _ in range(workers - len(self.workspaces))]
        return propagate_strips(cells, self.features, self.labels, n_valid, plan, topk=cfg.topk,
                                temperature=cfg.temperature, workspaces=self.workspaces[:workers],
                                weights_from_top=weights_from_top, threshold_candidates=threshold_candidates)


class _FusedBackend(_Store):
    """Cell layout of :mod:`vidprop.propagation.fused`: features (S, C, h, w), labels (S, h*w, K); CPU, float32."""

    name = "fused"
    slot_dim = 0

    def __init__(self, cfg: PropagationConfig, grid_size: tuple[int, int], slots: int, channels: int, k: int,
                 device: torch.device, dtype: torch.dtype, shared: "SharedCandidates | None" = None):
        self.cfg = cfg
        self.size = grid_size
        h, w = grid_size
        self.features = torch.empty(slots, channels, h, w, dtype=dtype)
        self.labels = torch.empty(slots, h * w, k, dtype=dtype)
        self.threads = cfg.threads or fused.default_threads()
        self.shared = shared
        if shared is None:
            self.values = np.empty((h * w, cfg.topk + 1), dtype=np.float32)
            self.index = np.empty((h * w, cfg.topk + 1), dtype=np.int64)

    def store(self, slot: int, cells: Tensor, labels: Tensor) -> None:
        """Write normalised cells (h, w, C) and labels (h, w, K) into ``slot``."""
        self.features[slot] = cells.permute(2, 0, 1)
        self.labels[slot] = labels.reshape(-1, labels.shape[-1])

    def step(self, cells: Tensor, active: list[int]) -> Tensor:
        """Normalised query cells (h, w, C) -> soft labels (h, w, K)."""
        cfg = self.cfg
        query = cells.permute(2, 0, 1).contiguous().numpy()
        slots = np.asarray(active, dtype=np.int64)
        store = self.features.numpy()
        if self.shared is None:
            fused.window_topk(query, store, slots, cfg.radius, cfg.topk + 1, self.values, self.index, self.threads)
            values, index = self.values, self.index
        else:
            values, index = self.shared.top(query, store, slots, cfg.radius, cfg.topk + 1, self.threads)
        labels = self.labels.view(-1, self.labels.shape[-1])
        soft, ties = weights_from_top(torch.from_numpy(values), torch.from_numpy(index), labels,
                                      cfg.topk, cfg.temperature)
        if ties.numel():
            cos, index = fused.window_candidates(query, store, slots, cfg.radius, ties.numpy())
            soft[ties] = threshold_candidates(torch.from_numpy(cos), torch.from_numpy(index), labels, cfg.topk,
                                              cfg.temperature)
        return soft.view(*self.size, -1)


class SharedCandidates:
    """Each frame's ranked candidates, computed once for several propagators of one video.

    Propagators stepping through the same frames with the same features, ``n_last_frames`` and
    ``radius`` hold the same context features and so the same cosines; only their labels (which
    follow their own predictions), ``topk`` and ``temperature`` differ. The fused kernel's
    top-kk list is a prefix of one ranking (cosine descending, equal cosines in the order the
    kernel visits them; :func:`~vidprop.propagation.fused.window_topk`), so a setting's top-(k+1)
    is the first k+1 entries of the top-(max k + 1). Give one instance to each
    :class:`LabelPropagator` of the group (each reserves its ``topk``); the labels, weights and
    tie fallback stay each propagator's own.

    A propagator reuses the last ranking only when its query, context slots and the context
    features of those slots are bitwise the ones it was computed from (checked at every step);
    otherwise it ranks anew and keeps that. Results are those of separate propagators whatever
    the grouping or the order of calls. Only the ``fused`` backend uses it; ``torch`` and ``strips`` ignore it.

    Attributes:
        kk: entries ranked per target (the largest reserved ``topk`` + 1).
        computed, reused: rankings computed and served again (counters, for tests and logs).
        seconds: wall time spent computing rankings (to share it out among the group).
    """

    def __init__(self) -> None:
        self.kk = 1
        self.computed = 0
        self.reused = 0
        self.seconds = 0.0
        self._last: tuple | None = None

    def reserve(self, topk: int) -> None:
        """Make the rankings long enough for a propagator with this ``topk``."""
        self.kk = max(self.kk, int(topk) + 1)

    def top(self, query: np.ndarray, store: np.ndarray, slots: np.ndarray, radius: int, kk: int,
            threads: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``kk`` entries of each target's ranking: what :func:`fused.window_topk` writes
        for these arguments, as new C-contiguous (h*w, kk) float32 and int64 arrays."""
        last = self._last
        if not (last is not None and last[3] == radius and last[4].shape[1] >= kk and _same_bits(last[0], query)
                and np.array_equal(last[1], slots) and all(_same_bits(c, store[s]) for c, s in zip(last[2], slots))):
            start = time.perf_counter()
            width = max(self.kk, kk)
            values = np.empty((query.shape[1] * query.shape[2], width), dtype=np.float32)
            index = np.empty(values.shape, dtype=np.int64)
            fused.window_topk(query, store, slots, radius, width, values, index, threads)
            # copies: the caller's store changes after its step
            last = self._last = (query.copy(), slots.copy(), store[slots], radius, values, index)
            self.computed += 1
            self.seconds += time.perf_counter() - start
        else:
            self.reused += 1
        return np.ascontiguousarray(last[4][:, :kk]), np.ascontiguousarray(last[5][:, :kk])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def weights_from_top(values: Tensor, index: Tensor, labels: Tensor, topk: int, temperature: float) -> tuple[Tensor, Tensor]:
    """Soft labels from each target's k+1 largest cosines, and the targets that need the full threshold.

    exp(x / T) is monotone, so the k largest cosines are the k largest affinities, unless the
    (k+1)-th affinity equals the k-th in float32 (a tie, distinct cosines whose exp collide, or
    fewer than k candidates): the reference then keeps every cell tied with the k-th, so those
    rows are returned in ``ties`` for :func:`threshold_candidates`.

    Args:
        values: (R, k+1) cosines in descending order (-inf where a target has fewer candidates).
        index: (R, k+1) int64 rows of ``labels`` of those candidates.
        labels: (N, K) context labels.

    Returns:
        (R, K) soft labels (the rows listed in ``ties`` are garbage) and (n,) int64 ``ties``.
    """
    aff = values.div(temperature).exp_()  # the reference's operations: exp(cos / T)
    exact = aff[:, topk] < aff[:, topk - 1]
    weights = aff[:, :topk]
    weights = weights / weights.sum(dim=1, keepdim=True)
    soft = (weights.unsqueeze(1) @ labels[index[:, :topk]]).squeeze(1)
    return soft, (~exact).nonzero().squeeze(1)


def threshold_candidates(cosines: Tensor, index: Tensor, labels: Tensor, topk: int, temperature: float) -> Tensor:
    """The reference's steps on every in-radius candidate of some targets: affinities, k-th value
    (padding -inf is a masked 0, as in the reference), zero below it, normalise, average.

    Args:
        cosines: (R, N) float cosines, -inf past each row's candidates (used as scratch).
        index: (R, N) int64 rows of ``labels``, -1 past each row's candidates.
        labels: (N', K) context labels.

    Returns:
        (R, K) soft labels.
    """
    aff = cosines.div_(temperature).exp_()
    kth = aff.topk(min(topk, aff.shape[1]), dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    aff.masked_fill_(aff < kth, 0.0)
    weights = aff / aff.sum(dim=1, keepdim=True)
    return (weights.unsqueeze(1) @ labels[index.clamp(min=0)]).squeeze(1)


_BACKENDS = {"torch": _TorchBackend, "fused": _FusedBackend, "strips": _StripsBackend}


def _strip_plan(cfg: PropagationConfig, grid_size: tuple[int, int], slots: int, dtype: torch.dtype) -> StripPlan:
    return StripPlan(grid_size, cfg.radius, STRIP_WIDTH, slots, cfg.memory_budget_mib * 2**20,
                     torch.empty((), dtype=dtype).element_size())


def _choose_backend(cfg: PropagationConfig, device: torch.device, dtype: torch.dtype, channels: int,
                    grid_size: tuple[int, int]) -> str:
    """The backend named by ``cfg.backend``; for 'auto', the faster one that can run.

    'auto' on the CPU: ``fused`` up to ``FUSED_MAX_CHANNELS`` channels (float32), else ``strips``
    where one target row of a strip fits the memory budget (a radius small against the grid),
    else ``torch``. On other devices ``torch`` (the strips backend is not measured there yet).
    """
    slots = 1 + cfg.n_last_frames
    strips_fit = _strip_plan(cfg, grid_size, slots, dtype).fits(slots, cfg.memory_budget_mib * 2**20)
    fits = device.type == "cpu" and dtype == torch.float32
    if cfg.backend == "fused":
        if not fused.AVAILABLE:
            raise ConfigError("invalid value 'fused' (numba is not installed: pip install numba, or use 'auto')",
                              key="propagation.backend")
        if not fits:
            raise ConfigError(f"invalid value 'fused' (the fused kernel runs on the CPU in float32, this run "
                              f"uses {device} {dtype}: use 'auto' or 'torch')", key="propagation.backend")
        return "fused"
    if cfg.backend == "strips" and not strips_fit:
        raise ConfigError(f"invalid value 'strips' (one strip row at grid {grid_size} and radius {cfg.radius} needs more "
                          f"than memory_budget_mib {cfg.memory_budget_mib}: raise it, or use 'auto' or 'torch')",
                          key="propagation.backend")
    if cfg.backend in ("torch", "strips"):
        return cfg.backend
    if fits and channels <= FUSED_MAX_CHANNELS:
        if fused.AVAILABLE:
            return "fused"
        _warn_no_numba()
    return "strips" if device.type == "cpu" and strips_fit else "torch"


@functools.cache
def _warn_no_numba() -> None:
    logger.warning("numba is not installed: propagation falls back to the matrix-product backends, several times "
                   "slower for features of up to %d channels (same results); pip install numba", FUSED_MAX_CHANNELS)


def _check_features(features: Tensor, what: str, finite: bool = True) -> None:
    """Shape and dtype checks of a (C, h, w) feature tensor; ``finite``: also check its values now."""
    if not isinstance(features, Tensor):
        raise ShapeError(f"{what}: expected a torch.Tensor of shape (C, h, w), got {type(features).__name__}")
    if features.dim() != 3:
        raise ShapeError(f"{what}: expected shape (C, h, w), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ShapeError(f"{what}: expected a floating-point tensor, got {features.dtype}")
    if min(features.shape) < 1:
        raise ShapeError(f"{what}: empty tensor of shape {tuple(features.shape)}")
    if finite and not bool(torch.isfinite(features).all()):
        bad = int((~torch.isfinite(features)).sum())
        raise ShapeError(f"{what}: {bad} NaN or infinite values (features must be finite)")


def _defers_checks(device: torch.device) -> bool:
    """Whether :meth:`LabelPropagator.step` defers its finite check to the next ``to_mask`` on ``device``.

    Reading a value computed on a GPU makes the host wait for the GPU's queue to drain; on the CPU
    the check costs no wait, so it stays immediate there.
    """
    return device.type != "cpu"


class _FiniteLedger:
    """Non-finite feature values seen by steps whose check was deferred, kept on the device.

    Per step, a few device operations and no host-device synchronisation: the count of bad values
    and the first step (counted from :meth:`LabelPropagator.reset`) that had any. They are read
    with the next mask's transfer (:func:`labels_to_mask`), so the check costs no extra wait.
    """

    def __init__(self, device: torch.device):
        self.counts = torch.zeros(2, dtype=torch.int64, device=device)  # [bad values, first bad step + 1]
        self.pending = False

    def add(self, features: Tensor, step: int) -> None:
        bad = (~torch.isfinite(features)).sum()
        first = torch.where((self.counts[1] == 0) & (bad > 0), step + 1, self.counts[1])
        self.counts = torch.stack([self.counts[0] + bad, first])
        self.pending = True

    def raise_if_bad(self, counts: np.ndarray) -> None:
        """Raise for ``counts`` (the host copy of :attr:`counts`); the ledger starts over."""
        self.counts = torch.zeros_like(self.counts)
        self.pending = False
        bad, first = int(counts[0]), int(counts[1])
        if bad:
            raise ShapeError(f"features of step {first - 1} after reset(): {bad} NaN or infinite values in the steps since the "
                             "last mask (features must be finite)")


# A keyframe's soft labels (first-appearance masks merge propagated labels) sum to 1 up to rounding.
_SUM_TOLERANCE = 1e-4


def _check_labels(labels: Tensor, grid_size: tuple[int, int], what: str, min_channels: int, onehot: bool) -> None:
    if not isinstance(labels, Tensor):
        raise ShapeError(f"{what}: expected a torch.Tensor of shape (K, h, w), got {type(labels).__name__}")
    if labels.dim() != 3:
        raise ShapeError(f"{what}: expected shape (K, h, w), got {tuple(labels.shape)}")
    if tuple(labels.shape[1:]) != grid_size:
        raise ShapeError(f"{what}: grid {tuple(labels.shape[1:])} differs from the first frame's feature grid {grid_size} "
                         "(resize the label map to the feature grid with NEAREST first)")
    if not max(1, min_channels) <= labels.shape[0] <= MAX_CHANNELS:
        fewer = f" (the context already has {min_channels}: channels are never removed)" if min_channels > 1 else ""
        raise ShapeError(f"{what}: {labels.shape[0]} label channels (expected {max(1, min_channels)} to {MAX_CHANNELS}){fewer}")
    values = labels.float()
    if onehot:
        binary = bool(((values == 0) | (values == 1)).all())
        if not binary or not bool((values.sum(dim=0) == 1).all()):
            raise ShapeError(f"{what}: not one-hot (every cell needs exactly one channel equal to 1, the others 0)")
    elif not bool(torch.isfinite(values).all()) or bool((values < 0).any()) or \
            float((values.sum(dim=0) - 1).abs().max()) > _SUM_TOLERANCE:
        raise ShapeError(f"{what}: not a label distribution (every cell needs values >= 0 summing to 1)")


class LabelPropagator:
    """Top-k affinity label propagation with the exact semantics of DINO/DIFT's DAVIS evaluation.

    Keyframes (masks given on later frames) extend it: :meth:`add_keyframe` puts a frame with
    given labels into the context permanently, as the first frame is, and may add channels for
    new objects.

    Example:
        >>> prop = LabelPropagator(PropagationConfig())
        >>> prop.reset(first_features, first_labels)      # (C, h, w), (K, h, w) one-hot
        >>> soft = prop.step(features)                    # (K, h, w) for the next frame
        >>> mask = prop.to_mask(soft, stride=8, size=(480, 854))
        >>> prop.add_keyframe(features_t, labels_t)       # a mask given at a later frame t

    Args:
        config: the propagation setting.
        shared: one :class:`SharedCandidates` given to every propagator of a group that steps
            through the same video (several settings in one pass: ``vidprop sweep``), or None.
    """

    def __init__(self, config: PropagationConfig | None = None, shared: SharedCandidates | None = None):
        self.config = config or PropagationConfig()
        self.shared = shared
        if shared is not None:
            shared.reserve(self.config.topk)
        self._backend = None
        self._slots: _Slots | None = None
        self._size: tuple[int, int] | None = None
        self._channels = 0
        self._ledger: _FiniteLedger | None = None
        self._steps = 0

    @property
    def grid_size(self) -> tuple[int, int] | None:
        """(h, w) of the current video's feature grid, or None before :meth:`reset`."""
        return self._size

    @property
    def num_context(self) -> int:
        """Frames the next :meth:`step` uses as context (permanent frames included); 0 before reset."""
        return 0 if self._slots is None else len(self._slots.active())

    @property
    def num_labels(self) -> int:
        """K, label channels of the current video (background included); 0 before reset."""
        return 0 if self._backend is None else self._backend.channels

    @property
    def backend(self) -> str | None:
        """Name of the backend of the current video ('fused', 'strips' or 'torch'), None before reset."""
        return None if self._backend is None else self._backend.name

    @torch.inference_mode()
    def reset(self, first_features: Tensor, first_labels: Tensor) -> None:
        """Start a new video.

        Args:
            first_features: (C, h, w) float tensor, features of frame 0 (any device).
            first_labels: (K, h, w) one-hot float tensor at the same grid; channel 0 = background.

        Raises:
            ShapeError: bad shapes, non-finite features, or labels that are not one-hot.
            ConfigError: ``backend: fused`` where it cannot run (numba missing, not CPU float32).
        """
        _check_features(first_features, "first_features")
        grid_size = tuple(first_features.shape[1:])
        _check_labels(first_labels, grid_size, "first_labels", 1, onehot=True)
        cfg = self.config
        device = torch.device(cfg.device) if cfg.device is not None else first_features.device
        dtype = cfg.torch_dtype
        channels, k = first_features.shape[0], first_labels.shape[0]
        name = _choose_backend(cfg, device, dtype, channels, grid_size)
        self._backend = None  # free the previous video's context before allocating
        slots = _Slots(window=cfg.n_last_frames)
        backend = _BACKENDS[name](cfg, grid_size, 1 + slots.window, channels, k, device, dtype, self.shared)
        cells = normalize_cells(first_features.to(device=device, dtype=dtype))
        backend.store(slots.add_permanent(), cells, first_labels.to(device=device, dtype=dtype).permute(1, 2, 0))
        self._backend, self._slots, self._size, self._channels = backend, slots, grid_size, channels
        self._ledger = _FiniteLedger(device) if _defers_checks(device) else None
        self._steps = 0
        logger.debug("propagation reset: grid %s, %d channels, %d labels, %d context slots on %s/%s, %s backend",
                     grid_size, channels, k, backend.slots, device, dtype, name)

    def _target(self, features: Tensor, what: str, defer: bool = True) -> Tensor:
        """Checked, normalised (h, w, C) cells of a frame of the current video.

        The finite check is deferred to the next :meth:`to_mask` when ``defer`` and the device
        defers checks (see :class:`_FiniteLedger`), else done now.
        """
        if self._backend is None:
            raise ShapeError(f"{what} before reset(): call reset(first_features, first_labels) first")
        deferred = defer and self._ledger is not None
        _check_features(features, "features", finite=not deferred)
        if features.shape[0] != self._channels:
            raise ShapeError(f"features: {features.shape[0]} channels, but the first frame has {self._channels}")
        if tuple(features.shape[1:]) != self._size:
            raise ShapeError(f"features: grid {tuple(features.shape[1:])} differs from the first frame's {self._size}")
        store = self._backend.features
        self._steps += 1
        if deferred:
            self._ledger.add(features, self._steps)
        return normalize_cells(features.to(device=store.device, dtype=store.dtype))

    def _threads(self):
        """Thread settings of one step: the fused and strips backends' workers (``config.threads``, read
        at every step, so it may change between frames) and one torch thread around them."""
        if self._backend is None or self._backend.name not in ("fused", "strips"):
            return contextlib.nullcontext()
        self._backend.threads = self.config.threads or fused.default_threads()
        return _one_torch_thread()

    @torch.inference_mode()
    def step(self, features: Tensor) -> Tensor:
        """Propagate labels to the next frame and add that frame to the context.

        Args:
            features: (C, h, w) float tensor of the next frame, same C and grid as the first.

        Returns:
            (K, h, w) soft labels (weights of each target cell sum to 1), on the state's device.

        Raises:
            ShapeError: no :meth:`reset` yet, mismatched channels or grid, non-finite values. On a
                GPU the finite check does not make the host wait: it is read with the next
                :meth:`to_mask`'s transfer (or :meth:`check_finite`), which raises then, naming
                the step; the frame has entered the context by then, so start the video over.
        """
        with self._threads():
            cells = self._target(features, "step()")
            backend, slots = self._backend, self._slots
            soft = backend.step(cells, slots.active())
            slot = slots.next_recent()
            if slot is not None:
                backend.store(slot, cells, soft)
                slots.push_recent(slot)
            return soft.permute(2, 0, 1).contiguous()

    @torch.inference_mode()
    def predict(self, features: Tensor) -> Tensor:
        """The soft labels :meth:`step` would return, without adding the frame to the context.

        Used for a frame whose mask is given for some objects only (a first-appearance mask):
        the propagated labels of the others are merged with it, then the frame goes to
        :meth:`add_keyframe`. Arguments, result and errors as :meth:`step`.
        """
        with self._threads():
            cells = self._target(features, "predict()")
            return self._backend.step(cells, self._slots.active()).permute(2, 0, 1).contiguous()

    @torch.inference_mode()
    def add_keyframe(self, features: Tensor, labels: Tensor) -> None:
        """Add a frame with given labels to the context permanently (a keyframe).

        The frame stays in the context of every later step, like the first frame; it does not
        enter the window of recent frames. Use it instead of :meth:`step` for a frame whose mask
        is given: the mask replaces the propagated labels there.

        Args:
            features: (C, h, w) float tensor of the frame, same C and grid as the first.
            labels: (K', h, w) float tensor at the same grid, K' >= K: one-hot for an annotated
                frame (or, for a first-appearance mask, per-cell distributions summing to 1).
                Channels K..K'-1 are new objects; every frame already in the context counts as
                0 in them ("not this object"), and later steps return K' channels.

        Raises:
            ShapeError: no :meth:`reset` yet, mismatched channels or grid, non-finite features,
                fewer than K channels, or labels that are not distributions.
        """
        with self._threads():
            cells = self._target(features, "add_keyframe()", defer=False)
            _check_labels(labels, self._size, "labels", self.num_labels, onehot=False)
            backend, slots = self._backend, self._slots
            slot = slots.add_permanent()
            backend.reserve(slots.capacity, labels.shape[0])
            backend.store(slot, cells, labels.to(device=backend.labels.device, dtype=backend.labels.dtype).permute(1, 2, 0))
        logger.debug("keyframe added: %d permanent frames, %d labels", len(slots.permanent), labels.shape[0])

    def to_mask(self, soft: Tensor, stride: int, size: tuple[int, int]) -> np.ndarray:
        """Channel map of one frame at the original frame size (see :func:`labels_to_mask`).

        Raises:
            ShapeError: bad arguments; or non-finite features in a step whose check was deferred
                (GPU), read in the same transfer as the mask.
        """
        _check_mask_args(soft, stride, size)
        ledger = self._ledger if self._ledger is not None and self._ledger.pending else None
        mask, counts = _labels_to_mask(soft, stride, (int(size[0]), int(size[1])), None if ledger is None else ledger.counts)
        if ledger is not None:
            ledger.raise_if_bad(counts)
        return mask

    def check_finite(self) -> None:
        """Raise now for non-finite features of steps whose check was deferred (GPU; see :meth:`step`).

        :meth:`to_mask` does this with the mask's transfer; call this when a step's labels are
        used without :meth:`to_mask`.

        Raises:
            ShapeError: naming the first such step and the count of bad values.
        """
        if self._ledger is not None and self._ledger.pending:
            self._ledger.raise_if_bad(self._ledger.counts.cpu().numpy())


@torch.inference_mode()
def labels_to_mask(soft: Tensor, stride: int, size: tuple[int, int]) -> np.ndarray:
    """Turn soft labels into a channel map as the reference does.

    Bilinear upsampling by ``stride`` (align_corners=False), each channel rescaled to [0, 1] by
    its own min and max where its max > 0, argmax over channels (first index on ties), then a
    NEAREST resize to the original frame size with PIL's pixel mapping (:func:`pil_nearest_indices`).
    Everything runs on ``soft``'s device; one (H, W) uint8 array comes back.

    Args:
        soft: (K, h, w) float tensor of soft labels, K <= 256.
        stride: pixels per feature cell (the upsampling factor), >= 1.
        size: (H, W) original frame size.

    Returns:
        (H, W) uint8 array of channel indices (0 = background).

    Raises:
        ShapeError: bad shapes, K > 256, non-positive stride or size.
    """
    _check_mask_args(soft, stride, size)
    return _labels_to_mask(soft, stride, (int(size[0]), int(size[1])))[0]


def _check_mask_args(soft: Tensor, stride: int, size: tuple[int, int]) -> None:
    if not isinstance(soft, Tensor) or soft.dim() != 3 or not soft.is_floating_point():
        raise ShapeError(f"soft: expected a float tensor of shape (K, h, w), got {getattr(soft, 'shape', type(soft))}")
    if not 1 <= soft.shape[0] <= MAX_CHANNELS:
        raise ShapeError(f"soft: {soft.shape[0]} label channels (expected 1 to {MAX_CHANNELS})")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ShapeError(f"stride: expected a positive integer, got {stride!r}")
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size):
        raise ShapeError(f"size: expected (H, W) positive integers, got {size!r}")


@functools.lru_cache(maxsize=256)
def pil_nearest_indices(in_len: int, out_len: int) -> np.ndarray:
    """Source index of each output pixel along one axis of PIL's NEAREST resize from ``in_len`` to ``out_len``.

    Asked of PIL itself (a ramp of indices, resized), so it is PIL's own arithmetic whatever its
    version: the reference resizes its masks with ``Image.resize(..., NEAREST)``, whose mapping
    (an incremental float sum) is not exactly ``floor((x + 0.5) * in / out)`` at every size.
    The mapping along one axis does not depend on the other axis.

    Returns:
        (out_len,) int64 array of indices in ``0 .. in_len - 1``.
    """
    ramp = Image.fromarray(np.arange(in_len, dtype=np.int32)[None, :])  # mode "I": 32-bit values
    index = np.asarray(ramp.resize((out_len, 1), Image.NEAREST), dtype=np.int64)[0].copy()
    index.flags.writeable = False  # shared by the cache
    return index


@functools.lru_cache(maxsize=64)
def _nearest_index(in_len: int, out_len: int, device: torch.device) -> Tensor:
    return torch.tensor(pil_nearest_indices(in_len, out_len), device=device)


def _labels_to_mask(soft: Tensor, stride: int, size: tuple[int, int], extra: Tensor | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The mask, and the host copy of ``extra`` (an int64 device tensor) read in the same transfer."""
    with _one_torch_thread() if soft.device.type == "cpu" else contextlib.nullcontext():
        up = F.interpolate(soft[None], scale_factor=stride, mode="bilinear", align_corners=False,
                           recompute_scale_factor=False)[0]
        flat = up.flatten(1)
        lo = flat.min(dim=1).values
        hi = flat.max(dim=1).values
        shifted = up - lo[:, None, None]
        scaled = shifted / shifted.flatten(1).max(dim=1).values[:, None, None]
        up = torch.where((hi > 0)[:, None, None], scaled, up)
        index = up.max(dim=0).indices.to(torch.uint8)
        (h, w), device = index.shape, index.device
        if h != size[0]:
            index = index.index_select(0, _nearest_index(h, size[0], device))
        if w != size[1]:
            index = index.index_select(1, _nearest_index(w, size[1], device))
        if extra is None:
            return index.cpu().numpy(), None
        both = torch.cat([index.reshape(-1), extra.to(device, torch.int64).reshape(-1).view(torch.uint8)]).cpu().numpy()
        cut = size[0] * size[1]
        return both[:cut].reshape(size), both[cut:].view(np.int64)
