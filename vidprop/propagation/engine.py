"""LabelPropagator: carries the first frame's labels forward, one frame per :meth:`step`.

The context of target frame t is the first frame (features and ground-truth one-hot labels,
always kept) plus the last ``n_last_frames`` frames before t (features and their soft labels,
the raw output of :meth:`step`). Each frame is L2-normalised once, when it enters; the context
is a ring buffer of ``1 + n_last_frames`` slots in the block layout of
:mod:`vidprop.propagation.kernels`, so a frame that leaves the context is overwritten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vidprop.errors import ShapeError
from vidprop.propagation.config import PropagationConfig
from vidprop.propagation.kernels import BlockGrid, TilePlan, from_blocks, normalize_cells, propagate_blocks, to_blocks

__all__ = ["LabelPropagator", "labels_to_mask", "MAX_CHANNELS"]

logger = logging.getLogger(__name__)

MAX_CHANNELS = 256  # masks are uint8 channel indices


@dataclass
class _Context:
    """Propagation state between steps.

    Attributes:
        grid: block tiling of the (h, w) feature grid.
        channels: C, feature channels.
        features: (nbr, nbc, S, M, C) normalised context features; slot 0 = first frame.
        labels: (nbr, nbc, S, M, K) context labels (one-hot for slot 0, soft otherwise).
        n_valid: filled slots (1 .. S).
        next_slot: ring slot that the next propagated frame overwrites (1 .. S-1).
        frames: frames seen so far, the first included.
        padding: (nbr, nbc, M, 1) bool, True for block cells past the grid edge.
        plan: the tiles of the grid and their neighbourhood masks.
    """

    grid: BlockGrid
    plan: TilePlan
    channels: int
    features: Tensor
    labels: Tensor
    padding: Tensor
    n_valid: int = 1
    next_slot: int = 1
    frames: int = 1

    @property
    def slots(self) -> int:
        return self.features.shape[2]


def _check_features(features: Tensor, what: str) -> None:
    if not isinstance(features, Tensor):
        raise ShapeError(f"{what}: expected a torch.Tensor of shape (C, h, w), got {type(features).__name__}")
    if features.dim() != 3:
        raise ShapeError(f"{what}: expected shape (C, h, w), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ShapeError(f"{what}: expected a floating-point tensor, got {features.dtype}")
    if min(features.shape) < 1:
        raise ShapeError(f"{what}: empty tensor of shape {tuple(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        bad = int((~torch.isfinite(features)).sum())
        raise ShapeError(f"{what}: {bad} NaN or infinite values (features must be finite)")


def _check_onehot(labels: Tensor, grid_size: tuple[int, int]) -> None:
    what = "first_labels"
    if not isinstance(labels, Tensor):
        raise ShapeError(f"{what}: expected a torch.Tensor of shape (K, h, w), got {type(labels).__name__}")
    if labels.dim() != 3:
        raise ShapeError(f"{what}: expected shape (K, h, w), got {tuple(labels.shape)}")
    if tuple(labels.shape[1:]) != grid_size:
        raise ShapeError(f"{what}: grid {tuple(labels.shape[1:])} differs from the first frame's feature grid {grid_size} "
                         "(resize the label map to the feature grid with NEAREST first)")
    if not 1 <= labels.shape[0] <= MAX_CHANNELS:
        raise ShapeError(f"{what}: {labels.shape[0]} label channels (expected 1 to {MAX_CHANNELS})")
    values = labels.float()
    binary = bool(((values == 0) | (values == 1)).all())
    if not binary or not bool((values.sum(dim=0) == 1).all()):
        raise ShapeError(f"{what}: not one-hot (every cell needs exactly one channel equal to 1, the others 0)")


class LabelPropagator:
    """Top-k affinity label propagation with the exact semantics of DINO/DIFT's DAVIS evaluation.

    Example:
        >>> prop = LabelPropagator(PropagationConfig())
        >>> prop.reset(first_features, first_labels)      # (C, h, w), (K, h, w) one-hot
        >>> soft = prop.step(features)                    # (K, h, w) for the next frame
        >>> mask = prop.to_mask(soft, stride=8, size=(480, 854))
    """

    def __init__(self, config: PropagationConfig | None = None):
        self.config = config or PropagationConfig()
        self._ctx: _Context | None = None

    @property
    def grid_size(self) -> tuple[int, int] | None:
        """(h, w) of the current video's feature grid, or None before :meth:`reset`."""
        return None if self._ctx is None else self._ctx.grid.size

    @property
    def num_context(self) -> int:
        """Frames the next :meth:`step` uses as context (first frame included); 0 before reset."""
        return 0 if self._ctx is None else self._ctx.n_valid

    @torch.inference_mode()
    def reset(self, first_features: Tensor, first_labels: Tensor) -> None:
        """Start a new video.

        Args:
            first_features: (C, h, w) float tensor, features of frame 0 (any device).
            first_labels: (K, h, w) one-hot float tensor at the same grid; channel 0 = background.

        Raises:
            ShapeError: bad shapes, non-finite features, or labels that are not one-hot.
        """
        _check_features(first_features, "first_features")
        grid_size = tuple(first_features.shape[1:])
        _check_onehot(first_labels, grid_size)
        cfg = self.config
        device = torch.device(cfg.device) if cfg.device is not None else first_features.device
        dtype = cfg.torch_dtype
        grid = BlockGrid(grid_size, cfg.block_size)
        nbr, nbc = grid.shape
        slots = 1 + cfg.n_last_frames
        channels, k = first_features.shape[0], first_labels.shape[0]
        self._ctx = None  # free the previous video's context before allocating
        # torch.empty leaves untouched slots unbacked until written (short videos pay little).
        features = torch.empty(nbr, nbc, slots, grid.cells, channels, device=device, dtype=dtype)
        labels = torch.empty(nbr, nbc, slots, grid.cells, k, device=device, dtype=dtype)
        features[:, :, 0] = to_blocks(normalize_cells(first_features.to(device=device, dtype=dtype)), grid)
        labels[:, :, 0] = to_blocks(first_labels.to(device=device, dtype=dtype).permute(1, 2, 0), grid)
        padding = to_blocks(torch.ones(*grid_size, 1, device=device, dtype=torch.bool), grid).logical_not_()
        self._ctx = _Context(grid=grid, plan=TilePlan(grid, cfg.radius, device), channels=channels, features=features, labels=labels, padding=padding)
        logger.debug("propagation reset: grid %s, %d channels, %d labels, %d context slots on %s/%s",
                     grid_size, channels, k, slots, device, dtype)

    @torch.inference_mode()
    def step(self, features: Tensor) -> Tensor:
        """Propagate labels to the next frame and add that frame to the context.

        Args:
            features: (C, h, w) float tensor of the next frame, same C and grid as the first.

        Returns:
            (K, h, w) soft labels (weights of each target cell sum to 1), on the state's device.

        Raises:
            ShapeError: no :meth:`reset` yet, mismatched channels or grid, non-finite values.
        """
        ctx = self._ctx
        if ctx is None:
            raise ShapeError("step() before reset(): call reset(first_features, first_labels) first")
        _check_features(features, "features")
        if features.shape[0] != ctx.channels:
            raise ShapeError(f"features: {features.shape[0]} channels, but the first frame has {ctx.channels}")
        if tuple(features.shape[1:]) != ctx.grid.size:
            raise ShapeError(f"features: grid {tuple(features.shape[1:])} differs from the first frame's {ctx.grid.size}")
        cfg = self.config
        query = to_blocks(normalize_cells(features.to(device=ctx.features.device, dtype=ctx.features.dtype)), ctx.grid)
        soft = propagate_blocks(
            query, ctx.features, ctx.labels, ctx.n_valid, ctx.plan,
            topk=cfg.topk, temperature=cfg.temperature,
            budget_bytes=cfg.memory_budget_mib * 2**20,
        )
        # Padding cells may be far from every grid cell (0/0); their labels must stay 0 in the context.
        soft.masked_fill_(ctx.padding, 0.0)
        if ctx.slots > 1:
            ctx.features[:, :, ctx.next_slot] = query
            ctx.labels[:, :, ctx.next_slot] = soft
            ctx.n_valid = min(ctx.slots, ctx.n_valid + 1)
            ctx.next_slot = ctx.next_slot % (ctx.slots - 1) + 1
        ctx.frames += 1
        return from_blocks(soft, ctx.grid).permute(2, 0, 1).contiguous()

    def to_mask(self, soft: Tensor, stride: int, size: tuple[int, int]) -> np.ndarray:
        """Channel map of one frame at the original frame size (see :func:`labels_to_mask`)."""
        return labels_to_mask(soft, stride, size)


@torch.inference_mode()
def labels_to_mask(soft: Tensor, stride: int, size: tuple[int, int]) -> np.ndarray:
    """Turn soft labels into a channel map as the reference does.

    Bilinear upsampling by ``stride`` (align_corners=False), each channel rescaled to [0, 1] by
    its own min and max where its max > 0, argmax over channels (first index on ties), then a
    PIL NEAREST resize to the original frame size.

    Args:
        soft: (K, h, w) float tensor of soft labels, K <= 256.
        stride: pixels per feature cell (the upsampling factor), >= 1.
        size: (H, W) original frame size.

    Returns:
        (H, W) uint8 array of channel indices (0 = background).

    Raises:
        ShapeError: bad shapes, K > 256, non-positive stride or size.
    """
    if not isinstance(soft, Tensor) or soft.dim() != 3 or not soft.is_floating_point():
        raise ShapeError(f"soft: expected a float tensor of shape (K, h, w), got {getattr(soft, 'shape', type(soft))}")
    if not 1 <= soft.shape[0] <= MAX_CHANNELS:
        raise ShapeError(f"soft: {soft.shape[0]} label channels (expected 1 to {MAX_CHANNELS})")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ShapeError(f"stride: expected a positive integer, got {stride!r}")
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size):
        raise ShapeError(f"size: expected (H, W) positive integers, got {size!r}")
    up = F.interpolate(soft[None], scale_factor=stride, mode="bilinear", align_corners=False,
                       recompute_scale_factor=False)[0]
    flat = up.flatten(1)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    shifted = up - lo[:, None, None]
    scaled = shifted / shifted.flatten(1).max(dim=1).values[:, None, None]
    up = torch.where((hi > 0)[:, None, None], scaled, up)
    index = up.max(dim=0).indices.to(torch.uint8).cpu().numpy()
    height, width = int(size[0]), int(size[1])
    return np.asarray(Image.fromarray(index).resize((width, height), Image.NEAREST))
