"""One extractor pass serving several feature settings: DIFT's up blocks at one timestep from one UNet pass.

Settings that differ only in ``features.dift.up_ft_index`` are computed by one extractor that
captures the union of their blocks (:meth:`~vidprop.features.dift_sd.DiftExtractor.extract_layers`),
and each setting gets its blocks combined exactly as its own extractor would combine them.
Every setting has its own feature-cache entries, under the key its own extractor has, so a
later single run of one setting reads what the sweep stored (and vice versa).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, Sequence

import torch

__all__ = ["SharedFeatures", "MERGEABLE_KEYS", "shared_pass_key"]

logger = logging.getLogger(__name__)

# backend -> the option whose values one pass of that backend can serve together
MERGEABLE_KEYS: dict[str, str] = {"dift_sd": "up_ft_index"}


def _layers(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def shared_pass_key(config: Any) -> Any:
    """``config`` with the options that one pass serves together reset (settings with equal keys share a pass)."""
    from vidprop.propagation import PropagationConfig

    config = config.replace(propagation=PropagationConfig())
    field = MERGEABLE_KEYS.get(config.features.backend)
    if field is None:
        return config
    section = getattr(config.features, _section(config))
    return config.replace(features=dataclasses.replace(config.features, **{_section(config): dataclasses.replace(section, **{field: 0})}))


def _section(config: Any) -> str:
    from vidprop.features.base import get_backend

    return get_backend(config.features.backend).config_field


class SharedFeatures:
    """Features of several settings (configs that share :func:`shared_pass_key`) from one extractor pass.

    Args:
        settings: distinct feature settings, each a complete config.
    """

    def __init__(self, settings: Sequence[Any]):
        from vidprop.device import resolve_device, torch_dtype

        self.settings = list(settings)
        base = self.settings[0]
        self.device = resolve_device(base.runtime.device)
        self.dtype = torch_dtype(base.runtime.dtype)
        self.field = MERGEABLE_KEYS.get(base.features.backend) if len(self.settings) > 1 else None
        if len(self.settings) > 1 and self.field is None:
            raise ValueError("settings of a backend without shared passes cannot share one")
        if self.field is not None:
            union: list[int] = []
            for config in self.settings:
                union.extend(i for i in _layers(self._value(config)) if i not in union)
            section = _section(base)
            merged = dataclasses.replace(getattr(base.features, section), **{self.field: tuple(sorted(union))})
            self.features_config = dataclasses.replace(base.features, **{section: merged})
        else:
            self.features_config = base.features
        self._extractor = None
        self._specs = None
        self._caches = None

    def _value(self, config: Any):
        return getattr(getattr(config.features, _section(config)), self.field)

    @property
    def extractor(self):
        """The extractor of the pass (built on first use; model loading is expensive)."""
        if self._extractor is None:
            from vidprop.features.base import create_extractor

            self._extractor = create_extractor(self.features_config, device=self.device, dtype=self.dtype)
        return self._extractor

    @property
    def specs(self):
        """Each setting's :class:`~vidprop.features.base.FeatureSpec`, as its own extractor has it (no model loaded)."""
        if self._specs is None:
            from vidprop.features.base import describe_extractor

            self._specs = [describe_extractor(c.features, dtype=self.dtype) for c in self.settings]
        return self._specs

    def strides(self) -> list[int]:
        """Pixels per feature cell of each setting."""
        return [spec.stride for spec in self.specs]

    @property
    def caches(self):
        """One :class:`~vidprop.features.cache.FeatureCache` per setting (None without ``features.cache.dir``)."""
        if self._caches is None:
            from vidprop.features.cache import FeatureCache

            cache = self.settings[0].features.cache
            if cache.dir is None:
                self._caches = [None] * len(self.settings)
            else:
                self._caches = [FeatureCache(cache.dir, spec.cache_key, cache.dtype, spec.stride) for spec in self.specs]
        return self._caches

    def _compute(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.field is None:
            return [self.extractor.extract(images)]
        layers = self.extractor.extract_layers(images)
        return [self.extractor.combine(layers, _layers(self._value(c))) for c in self.settings]

    def _batch(self, images: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per setting, (C, h, w) float32 features of each frame of the batch, on the device."""
        from vidprop.features.cache import frame_digest

        batch = torch.stack(images)
        size = (int(batch.shape[-2]), int(batch.shape[-1]))
        with torch.inference_mode():
            digests = [frame_digest(image) for image in images] if any(c is not None for c in self.caches) else []
            found = [[None] * len(images) if c is None else [c.get(d, size) for d in digests] for c in self.caches]
            missing = sorted({i for per in found for i, f in enumerate(per) if f is None})
            if missing:
                computed = self._compute(batch[missing].to(self.device))
                for per, cache, feats in zip(found, self.caches, computed):
                    for j, i in enumerate(missing):
                        if per[i] is None:
                            per[i] = feats[j] if cache is None else cache.put(digests[i], feats[j], size)
            return [[f.to(device=self.device, dtype=torch.float32) for f in per] for per in found]

    def stream(self, source: Any) -> Iterator[tuple[Any, list[torch.Tensor]]]:
        """``(frame, [features of each setting])`` per frame, in order; batching as the video pipeline does."""
        from vidprop.features.stage import batches
        from vidprop.io.prefetch import prefetch

        data = self.settings[0].data
        stream = prefetch(source, data.resize_policy(), depth=data.prefetch)
        try:
            for batch in batches(stream, self.specs[0].frames_per_batch):
                frames, images = zip(*batch)
                yield from zip(frames, zip(*self._batch(list(images))))
        finally:
            stream.close()

    def log_cache_stats(self) -> None:
        for cache in self._caches or ():
            if cache is not None:
                cache.log_stats()
