"""The features stage as the pipeline sees it: frames in, :class:`~vidprop.features.base.FeatureMap` s out.

:class:`FeatureStage` is the one object the pipeline talks to. Behind it are the backend and the
on-disk cache (:mod:`vidprop.features.cache`):

- what the backend computes (stride, channels, batch size, cache key) comes from its
  ``describe``, which loads no model;
- the model itself is built on the first cache miss, so a run over a warm cache never loads it;
- features come back as the cache stores them (rounded to its dtype), whether computed now or
  read, so a run gives the same result with a cold or a warm cache; computed features are
  rounded on the device and stay there (only the copy written to the cache comes back to the host);
- frames go to the extractor as they come (on the CPU): the diffusion backends seed their noise
  from those pixels before uploading them, so nothing waits for the GPU to read a frame back;
- on CUDA the extractor runs with TF32 matrix products unless ``tf32=False``
  (:func:`vidprop.device.tf32_matmuls`), and its UNet blocks can be compiled (``compile=True``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import torch

from vidprop.device import dtype_name, resolve_device, tf32_matmuls, torch_dtype, upload
from vidprop.errors import ConfigError, ShapeError, VidpropError
from vidprop.features.base import FeatureExtractor, FeatureMap, FeatureSpec, create_extractor, describe_extractor, get_backend
from vidprop.features.cache import FeatureCache, frame_digest
from vidprop.features.config import FeatureConfig

__all__ = ["FeatureStage", "SharedFeatureStage", "batches", "shared_pass_key"]

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
        tf32: on CUDA, let the extractor's float32 matrix products use TF32 (``runtime.tf32``).
        compile: compile the extractor's model with ``torch.compile`` when it is built
            (``runtime.compile``; backends with a ``compile_model`` method).

    Attributes:
        spec: what the backend computes (:class:`~vidprop.features.base.FeatureSpec`), known
            without loading the model.
        cache: the :class:`~vidprop.features.cache.FeatureCache`, or None when
            ``config.cache.dir`` is null.

    Raises:
        ConfigError, ModelNotFoundError: from the backend's ``describe`` (bad option, no model);
            ConfigError (key ``runtime.compile``) for ``compile`` with a backend that has no model.
    """

    def __init__(
        self,
        config: FeatureConfig | None = None,
        device: Any = "cpu",
        dtype: Any = "float32",
        extractor: FeatureExtractor | None = None,
        tf32: bool = True,
        compile: bool = False,
    ):
        self.config = config if config is not None else FeatureConfig()
        self.device = resolve_device(device)
        self.dtype = torch_dtype(dtype_name(dtype))
        self.tf32 = tf32
        self.compile = compile
        if compile:
            factory = type(extractor) if extractor is not None else get_backend(self.config.backend).factory
            if not callable(getattr(factory, "compile_model", None)):
                raise ConfigError(f"feature backend {self.config.backend!r} has no model to compile: set it to false",
                                  key="runtime.compile")
        self._extractor = extractor
        self._reusable: FeatureExtractor | None = None
        self._compiled = False
        self.spec: FeatureSpec = extractor.spec if extractor is not None else describe_extractor(self.config, dtype=self.dtype)
        cache = self.config.cache
        self.cache = None if cache.dir is None else FeatureCache(cache.dir, self.spec.cache_key, cache.dtype, self.spec.stride)

    @property
    def loaded(self) -> bool:
        """Whether the backend's model has been built."""
        return self._extractor is not None

    def reuse(self, extractor: FeatureExtractor | None) -> None:
        """Offer an extractor (another setting's) whose loaded model this stage uses when it needs one,
        if its backend can serve this stage's setting with it (``reconfigure``, see
        :class:`~vidprop.features.base.Backend`); otherwise the offer is dropped before the model
        is built, so two models are never held at once."""
        self._reusable = extractor

    def handover(self) -> FeatureExtractor | None:
        """The extractor built, or else the one offered and not needed (a warm cache), or None: what
        to offer the next stage when this one is done."""
        return self._extractor if self._extractor is not None else self._reusable

    @property
    def extractor(self) -> FeatureExtractor:
        """The backend's extractor, built on first access (loading a model is expensive)."""
        if self._extractor is None:
            offered, self._reusable = self._reusable, None
            reconfigure = getattr(offered, "reconfigure", None)
            if reconfigure is not None:
                backend = get_backend(self.config.backend)
                self._extractor = reconfigure(getattr(self.config, backend.config_field), device=self.device, dtype=self.dtype)
            del offered, reconfigure
            if self._extractor is not None:
                logger.info("feature backend %s: the loaded model serves this setting too", self.spec.name)
            else:
                logger.info("feature backend %s on %s (%s)", self.spec.name, self.device, dtype_name(self.dtype))
                self._extractor = create_extractor(self.config, device=self.device, dtype=self.dtype)
            if self._extractor.spec != self.spec:  # describe() and the built model must agree
                raise VidpropError(f"backend {self.spec.name!r}: built {self._extractor.spec}, described {self.spec}")
        if self.compile and not self._compiled:
            self._extractor.compile_model()
            self._compiled = True
        return self._extractor

    def extract(self, images: torch.Tensor) -> list[FeatureMap]:
        """Feature maps of a batch of frames, read from the cache where present.

        Args:
            images: (B, 3, H, W) float in [-1, 1] (the resized frames; on the CPU, where they are
                decoded, is best: see the module doc).

        Returns:
            One :class:`FeatureMap` per frame: (C, h, w) float32 features on this stage's device.

        Raises:
            ShapeError: bad shape, or a frame size that is not a multiple of the stride.
        """
        if images.ndim != 4:
            raise ShapeError(f"images: expected a (B, 3, H, W) tensor, got {tuple(images.shape)}")
        [features] = _through_caches([self.cache], images, lambda missing: [self._compute(missing)])
        return [FeatureMap(upload(f, self.device, torch.float32), self.spec.stride) for f in features]

    def _compute(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), tf32_matmuls(self.device, self.tf32):
            return self.extractor.extract(images)

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


def _through_caches(
    caches: Sequence[FeatureCache | None], images: torch.Tensor, compute: Callable[[torch.Tensor], Sequence[torch.Tensor]]
) -> list[list[torch.Tensor]]:
    """Per setting (one cache each, or None), each frame's (C, h, w) features: read where cached,
    the frames missing from any cache computed by one ``compute`` call (which returns one
    (B', C, h, w) tensor per setting) and stored."""
    size = (int(images.shape[-2]), int(images.shape[-1]))
    digests = [frame_digest(image) for image in images] if any(c is not None for c in caches) else []
    found: list[list[torch.Tensor | None]] = [
        [None] * len(images) if cache is None else [cache.get(d, size) for d in digests] for cache in caches
    ]
    missing = sorted({i for per in found for i, f in enumerate(per) if f is None})
    if missing:
        computed = compute(images if len(missing) == len(images) else images[missing])
        for per, cache, features in zip(found, caches, computed):
            if cache is not None:
                # Rounded to the cache's dtype where computed, and kept there; one transfer brings
                # the copy to store (what a later read returns, so cold and warm runs agree).
                features = features.to(cache.dtype)
                stored = features.cpu()
            for j, i in enumerate(missing):
                if per[i] is None:
                    if cache is not None:
                        cache.put(digests[i], stored[j], size)
                    per[i] = features[j]
    return found  # type: ignore[return-value]


def shared_pass_key(config: FeatureConfig) -> FeatureConfig:
    """``config`` with its backend's shared option reset: settings with equal keys can share one
    model pass (:class:`SharedFeatureStage`); without a shared option, ``config`` itself."""
    backend = get_backend(config.backend)
    if backend.shared_option is None:
        return config
    section = getattr(config, backend.config_field)
    default = getattr(backend.config_class(), backend.shared_option)
    return dataclasses.replace(config, **{backend.config_field: dataclasses.replace(section, **{backend.shared_option: default})})


class SharedFeatureStage:
    """Several feature settings from one model pass per frame, each through its own cache entries.

    The settings may differ only in their backend's shared option (DIFT: ``up_ft_index``, so all
    up blocks at one timestep come from one UNet pass); each setting's features are exactly those
    of a :class:`FeatureStage` of that setting alone, stored under that setting's cache key, so a
    later single run reads them (and vice versa). The model is built on the first frame that a
    setting lacks in its cache.

    Args:
        configs: the feature settings (the ``features`` sections), at least one.
        device, dtype, tf32, compile: as for :class:`FeatureStage`.

    Attributes:
        specs: each setting's :class:`~vidprop.features.base.FeatureSpec` (no model loaded).

    Raises:
        ValueError: settings that differ in more than the shared option.
        ConfigError, ModelNotFoundError: from the backend's ``describe`` (e.g. an up block the
            UNet does not have), before any compute.
    """

    def __init__(self, configs: Sequence[FeatureConfig], device: Any = "cpu", dtype: Any = "float32", tf32: bool = True,
                 compile: bool = False):
        configs = list(configs)
        if not configs or any(shared_pass_key(c) != shared_pass_key(configs[0]) for c in configs):
            raise ValueError("settings that differ in more than their backend's shared option cannot share a pass")
        backend = get_backend(configs[0].backend)
        self.configs = configs
        self.specs = [describe_extractor(c, dtype=torch_dtype(dtype_name(dtype))) for c in configs]
        merged = dataclasses.replace(configs[0], cache=dataclasses.replace(configs[0].cache, dir=None))
        self._values = None
        if len(configs) > 1:
            section = backend.config_field
            self._values = [getattr(getattr(c, section), backend.shared_option) for c in configs]
            value = backend.factory.merge(self._values)
            merged = dataclasses.replace(merged, **{section: dataclasses.replace(getattr(merged, section), **{backend.shared_option: value})})
        # builds the model of the merged setting on first use
        self._stage = FeatureStage(merged, device, dtype, tf32=tf32, compile=compile)
        self.device = self._stage.device
        cache = configs[0].cache
        self.caches = [None if cache.dir is None else FeatureCache(cache.dir, s.cache_key, cache.dtype, s.stride) for s in self.specs]

    @property
    def loaded(self) -> bool:
        """Whether the model has been built."""
        return self._stage.loaded

    def reuse(self, extractor: FeatureExtractor | None) -> None:
        """Offer another pass's extractor, whose loaded model this pass uses if it can (see :meth:`FeatureStage.reuse`)."""
        self._stage.reuse(extractor)

    def handover(self) -> FeatureExtractor | None:
        """What to offer the next pass: see :meth:`FeatureStage.handover`."""
        return self._stage.handover()

    def _compute(self, images: torch.Tensor) -> Sequence[torch.Tensor]:
        with torch.inference_mode(), tf32_matmuls(self.device, self._stage.tf32):
            if self._values is None:
                return [self._stage.extractor.extract(images)]
            return self._stage.extractor.extract_shared(images, self._values)

    def extract(self, images: torch.Tensor) -> list[list[FeatureMap]]:
        """Per setting, one :class:`FeatureMap` per frame of ``images`` ((B, 3, H, W) in [-1, 1])."""
        if images.ndim != 4:
            raise ShapeError(f"images: expected a (B, 3, H, W) tensor, got {tuple(images.shape)}")
        per_setting = _through_caches(self.caches, images, self._compute)
        return [
            [FeatureMap(upload(f, self.device, torch.float32), spec.stride) for f in features]
            for features, spec in zip(per_setting, self.specs)
        ]

    def stream(self, items: Iterable[tuple[T, torch.Tensor]]) -> Iterator[tuple[T, list[FeatureMap]]]:
        """``(frame, [feature map of each setting])`` in order, batched as :meth:`FeatureStage.stream` does."""
        for batch in batches(items, self.specs[0].frames_per_batch):
            frames, images = zip(*batch)
            yield from zip(frames, (list(maps) for maps in zip(*self.extract(torch.stack(images)))))

    def log_stats(self) -> None:
        """Log each setting's cache hits and misses at INFO."""
        for cache in self.caches:
            if cache is not None:
                cache.log_stats()


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter); at most one batch is held at a time.

    The first frame shares its batch with the next ones: a frame's features do not depend on its
    batch, and a full batch keeps a GPU busy (a first frame alone would cost a whole UNet call).
    """
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= max(1, size):
            yield batch
            batch = []
    if batch:
        yield batch
