"""The features stage as the pipeline sees it: frames in, :class:`~vidprop.features.base.FeatureMap` s out.

:class:`FeatureStage` is the one object the pipeline talks to. Behind it are the backend and the
on-disk cache (:mod:`vidprop.features.cache`):

- what the backend computes (stride, channels, batch size, cache key) comes from its
  ``describe``, which loads no model;
- the model itself is built on the first cache miss, so a run over a warm cache never loads it;
- features come back as the cache stores them (rounded to its dtype), whether computed now or
  read, so a run gives the same result with a cold or a warm cache.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, TypeVar

import torch

from vidprop.device import dtype_name, resolve_device, torch_dtype
from vidprop.errors import ShapeError, VidpropError
from vidprop.features.base import FeatureExtractor, FeatureMap, FeatureSpec, create_extractor, describe_extractor
from vidprop.features.cache import FeatureCache, frame_digest
from vidprop.features.config import FeatureConfig

__all__ = ["FeatureStage", "batches"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class FeatureStage:
    """Features of frames, through the cache, with the model built only when a frame is missing.

    Args:
        config: the features section of the run's config (backend, its options, the cache).
        device: where the model runs and where feature maps are returned (a device name as in
            :func:`vidprop.device.resolve_device`, or a torch.device).
        dtype: the model's compute dtype (name or torch dtype).
        extractor: an already built extractor to use instead of building one from ``config``
            (its ``spec`` is used, and ``config.cache`` still applies).

    Attributes:
        spec: what the backend computes (:class:`~vidprop.features.base.FeatureSpec`), known
            without loading the model.
        cache: the :class:`~vidprop.features.cache.FeatureCache`, or None when
            ``config.cache.dir`` is null.

    Raises:
        ConfigError, ModelNotFoundError: from the backend's ``describe`` (bad option, no model).
    """

    def __init__(
        self,
        config: FeatureConfig | None = None,
        device: Any = "cpu",
        dtype: Any = "float32",
        extractor: FeatureExtractor | None = None,
    ):
        self.config = config if config is not None else FeatureConfig()
        self.device = resolve_device(device)
        self.dtype = torch_dtype(dtype_name(dtype))
        self._extractor = extractor
        self.spec: FeatureSpec = extractor.spec if extractor is not None else describe_extractor(self.config, dtype=self.dtype)
        cache = self.config.cache
        self.cache = None if cache.dir is None else FeatureCache(cache.dir, self.spec.cache_key, cache.dtype, self.spec.stride)

    @property
    def loaded(self) -> bool:
        """Whether the backend's model has been built."""
        return self._extractor is not None

    @property
    def extractor(self) -> FeatureExtractor:
        """The backend's extractor, built on first access (loading a model is expensive)."""
        if self._extractor is None:
            logger.info("feature backend %s on %s (%s)", self.spec.name, self.device, dtype_name(self.dtype))
            self._extractor = create_extractor(self.config, device=self.device, dtype=self.dtype)
            if self._extractor.spec != self.spec:  # describe() and the built model must agree
                raise VidpropError(f"backend {self.spec.name!r}: built {self._extractor.spec}, described {self.spec}")
        return self._extractor

    def extract(self, images: torch.Tensor) -> list[FeatureMap]:
        """Feature maps of a batch of frames, read from the cache where present.

        Args:
            images: (B, 3, H, W) float in [-1, 1] (the resized frames; any device).

        Returns:
            One :class:`FeatureMap` per frame: (C, h, w) float32 features on this stage's device.

        Raises:
            ShapeError: bad shape, or a frame size that is not a multiple of the stride.
        """
        if images.ndim != 4:
            raise ShapeError(f"images: expected a (B, 3, H, W) tensor, got {tuple(images.shape)}")
        if self.cache is None:
            features = list(self._compute(images).unbind(0))
        else:
            size = (int(images.shape[-2]), int(images.shape[-1]))
            digests = [frame_digest(image) for image in images]
            found: list[torch.Tensor | None] = [self.cache.get(d, size) for d in digests]
            missing = [i for i, f in enumerate(found) if f is None]
            if missing:
                computed = self._compute(images[missing])
                for i, f in zip(missing, computed):
                    found[i] = self.cache.put(digests[i], f, size)
            features = found  # type: ignore[assignment]
        return [FeatureMap(f.to(device=self.device, dtype=torch.float32), self.spec.stride) for f in features]

    def _compute(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.extractor.extract(images.to(self.device))

    def stream(self, items: Iterable[tuple[T, torch.Tensor]]) -> Iterator[tuple[T, FeatureMap]]:
        """Feature maps of a stream of frames, computed in batches (see :func:`batches`).

        Args:
            items: ``(frame, image)`` pairs in order; ``image`` is the frame's (3, H, W) model
                input (as :func:`vidprop.io.prefetch.prefetch` yields them); ``frame`` is passed
                through.

        Yields:
            ``(frame, feature map)`` in order.
        """
        for batch in batches(items, self.spec.frames_per_batch):
            frames, images = zip(*batch)
            yield from zip(frames, self.extract(torch.stack(images)))

    def stats(self) -> dict[str, int] | None:
        """The cache's {"hits", "misses", "corrupt"}, or None without a cache."""
        return None if self.cache is None else self.cache.stats()

    def log_stats(self) -> None:
        """Log the cache's hits and misses at INFO (nothing without a cache)."""
        if self.cache is not None:
            self.cache.log_stats()


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter), the first item alone.

    The first frame of a video is a batch of its own so that propagation can start without
    waiting for a full batch; at most one batch is held at a time.
    """
    batch: list[T] = []
    first = True
    for item in items:
        batch.append(item)
        if first or len(batch) >= max(1, size):
            yield batch
            batch, first = [], False
    if batch:
        yield batch
