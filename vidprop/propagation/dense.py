"""Dense reference implementation of the propagation (tests and benchmarks only).

It materialises the full (h*w) x (N*h*w) affinity between the target frame and all N context
frames, as DINO's ``label_propagation`` does, and follows the reference's operations one by
one: exp(cos / T), multiplication by the 0/1 neighbourhood mask, top-k over all context cells
of all frames, zeroing of entries below the k-th value (ties kept), normalisation by the
column sum, weighted sum of the context labels. The only changes are in layout: targets are
rows here (the reference transposes to make them columns), the mask is built without Python
loops and broadcast over frames instead of repeated, and each frame is L2-normalised once,
when it enters the context, with the same function as the engine (the reference normalises
a frame again at every step; the result is the same up to the memory layout of the reduction).

Memory: about 5 * N * (h*w)**2 bytes per step (4.5 GB of affinity at DIFT's DAVIS setting),
so use it on small grids, or at most once per benchmark.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vidprop.propagation.config import PropagationConfig
from vidprop.propagation.kernels import normalize_cells

__all__ = ["neighbourhood_mask", "dense_propagate", "dense_to_mask", "DensePropagator"]


def neighbourhood_mask(size: tuple[int, int], radius: int, device=None) -> Tensor:
    """(h*w, h*w) float 0/1 mask: entry [target, source] is 1 when both offsets are <= radius."""
    h, w = size
    ys = torch.arange(h, device=device).repeat_interleave(w)
    xs = torch.arange(w, device=device).repeat(h)
    near = ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)
    return near.float()


def dense_propagate(target: Tensor, context: Tensor, labels: Tensor, size: tuple[int, int], *, topk: int,
                    radius: int, temperature: float) -> Tensor:
    """Soft labels of one target frame from its context, densely.

    Args:
        target: (h*w, C) L2-normalised target features.
        context: (N*h*w, C) L2-normalised context features, frame after frame.
        labels: (N*h*w, K) context labels in the same order.
        size: (h, w) feature grid.
        topk: kept entries per target (ties at the k-th value kept).
        radius: neighbourhood radius in cells (0 = no restriction).
        temperature: affinity temperature.

    Returns:
        (h*w, K) soft labels.
    """
    hw = target.shape[0]
    n = context.shape[0] // hw
    aff = torch.exp(target @ context.T / temperature)  # (targets, N * sources)
    if radius > 0:
        aff.view(hw, n, hw).mul_(neighbourhood_mask(size, radius, aff.device).to(aff.dtype)[:, None, :])
    kth = torch.topk(aff, k=topk, dim=1).values.min(dim=1, keepdim=True).values
    aff[aff < kth] = 0
    aff /= aff.sum(dim=1, keepdim=True)
    return aff @ labels


def dense_to_mask(soft: Tensor, stride: int, size: tuple[int, int]) -> np.ndarray:
    """The reference's upsampling, per-channel min/max normalisation, argmax and NEAREST resize.

    Args:
        soft: (K, h, w) soft labels.
        stride: upsampling factor.
        size: (H, W) original frame size.

    Returns:
        (H, W) uint8 channel map.
    """
    up = F.interpolate(soft[None], scale_factor=stride, mode="bilinear", align_corners=False,
                       recompute_scale_factor=False)[0]
    for c in range(up.shape[0]):
        channel = up[c]
        if channel.max() > 0:
            channel = channel - channel.min()
            up[c] = channel / channel.max()
    index = torch.max(up, dim=0).indices
    index = index.cpu().numpy().astype(np.uint8)
    return np.array(Image.fromarray(index).resize((size[1], size[0]), 0))


class DensePropagator:
    """Same interface as :class:`~vidprop.propagation.LabelPropagator`, computed densely.

    The context is the permanent frames (the first frame, then each keyframe) plus a queue of
    the last ``n_last_frames`` propagated frames, kept as (normalised features, labels) pairs
    in the reference's order. A keyframe with new label channels pads every stored frame's
    labels with zeros in them.
    """

    def __init__(self, config: PropagationConfig | None = None):
        self.config = config or PropagationConfig()

    @torch.inference_mode()
    def reset(self, first_features: Tensor, first_labels: Tensor) -> None:
        """(C, h, w) features and (K, h, w) one-hot labels of frame 0."""
        dtype = self.config.torch_dtype
        self._size = tuple(first_features.shape[1:])
        self._permanent = [(self._cells(first_features.to(dtype)), first_labels.to(dtype).flatten(1).T)]
        self._queue: deque = deque(maxlen=self.config.n_last_frames)

    @staticmethod
    def _cells(features: Tensor) -> Tensor:
        return normalize_cells(features).flatten(0, 1)  # (h*w, C)

    def _propagate(self, target: Tensor) -> Tensor:
        cfg = self.config
        pairs = [*self._permanent, *self._queue]
        hw = target.shape[0]
        n = len(pairs)
        return dense_propagate(
            target, torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]), self._size,
            topk=min(cfg.topk, n * hw), radius=cfg.radius, temperature=cfg.temperature,
        )

    @torch.inference_mode()
    def step(self, features: Tensor) -> Tensor:
        """(C, h, w) features of the next frame -> (K, h, w) soft labels."""
        target = self._cells(features.to(self.config.torch_dtype))
        soft = self._propagate(target)
        if self.config.n_last_frames > 0:
            self._queue.append((target, soft))
        return soft.T.reshape(-1, *self._size)

    @torch.inference_mode()
    def predict(self, features: Tensor) -> Tensor:
        """(C, h, w) features -> (K, h, w) soft labels, the context unchanged."""
        return self._propagate(self._cells(features.to(self.config.torch_dtype))).T.reshape(-1, *self._size)

    @torch.inference_mode()
    def add_keyframe(self, features: Tensor, labels: Tensor) -> None:
        """A permanent context frame with given (K', h, w) labels, K' >= K."""
        dtype = self.config.torch_dtype
        k = labels.shape[0]

        def padded(pair):
            cells, lab = pair
            return cells, F.pad(lab, (0, k - lab.shape[1]))

        self._permanent = [padded(p) for p in self._permanent]
        self._queue = deque((padded(p) for p in self._queue), maxlen=self.config.n_last_frames)
        self._permanent.append((self._cells(features.to(dtype)), labels.to(dtype).flatten(1).T))

    def to_mask(self, soft: Tensor, stride: int, size: tuple[int, int]) -> np.ndarray:
        """See :func:`dense_to_mask`."""
        return dense_to_mask(soft.clone(), stride, size)
