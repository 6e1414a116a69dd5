"""One video in memory: frames -> features -> label propagation -> masks.

Per frame: :class:`~vidprop.io.resize.ResizePolicy` (on the prefetch thread) -> extractor
(batched, through the feature cache when ``features.cache.dir`` is set) -> (C, h, w) features.
First frame: its mask -> channel map (:class:`~vidprop.io.masks.ObjectIds`) -> one-hot (K, h, w)
at the feature grid (nearest, as DIFT's ``read_seg``) -> ``LabelPropagator.reset``. Later frames:
``step`` -> ``to_mask`` (upsampling by the stride, argmax, nearest resize to (H, W)) -> original
object ids. The first frame's own mask is output frame 0, as DIFT's ``eval_davis.py`` writes it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator

import numpy as np
import torch

from vidprop.config import VidpropConfig
from vidprop.io.frames import Frame, FrameSource
from vidprop.io.masks import labels_to_onehot
from vidprop.io.prefetch import prefetch
from vidprop.pipeline.inputs import as_frame_source, as_label_mask
from vidprop.device import resolve_device, torch_dtype

__all__ = ["PropagatedFrame", "VideoPipeline", "propagate_video"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class PropagatedFrame:
    """One output frame.

    Attributes:
        name: the input frame's name (file stem, or zero-padded index for video files).
        index: 0-based frame index; 0 is the given first mask itself.
        mask: (H, W) uint8 array of the original object ids (0 = background) at the input size.
    """

    name: str
    index: int
    mask: np.ndarray


class VideoPipeline:
    """Propagates first-frame masks through videos; holds the feature extractor across videos.

    Args:
        config: the run's config (defaults: the paper's DAVIS setting with SD 2.1).
        extractor: an already built extractor to reuse (else built from ``config.features`` on
            first use, on ``config.runtime.device`` in ``config.runtime.dtype``).

    Example:
        >>> pipe = VideoPipeline(load_config("configs/davis2017_lab.yaml"))
        >>> for out in pipe.propagate("frames/", "frames/00000.png"):
        ...     use(out.name, out.mask)
    """

    def __init__(self, config: VidpropConfig | None = None, extractor: Any = None):
        self.config = config if config is not None else VidpropConfig()
        self.device = resolve_device(self.config.runtime.device)
        self.dtype = torch_dtype(self.config.runtime.dtype)
        self._extractor = extractor
        self._cached = None

    @property
    def extractor(self):
        """The feature extractor (built on first access; model loading is expensive)."""
        if self._extractor is None:
            from vidprop.features.base import create_extractor

            logger.info("feature backend %s on %s (%s)", self.config.features.backend, self.device, self.config.runtime.dtype)
            self._extractor = create_extractor(self.config.features, device=self.device, dtype=self.dtype)
        return self._extractor

    @property
    def cached(self):
        """The extractor behind the feature cache (the extractor itself when ``features.cache.dir`` is null)."""
        if self._cached is None:
            from vidprop.features.cache import cached_extractor

            self._cached = cached_extractor(self.extractor, self.config.features.cache)
        return self._cached

    def log_cache_stats(self) -> None:
        """Log the feature cache's hits and misses (if a cache is in use)."""
        log_stats = getattr(self._cached, "log_stats", None)
        if log_stats is not None:
            log_stats()

    def _propagation_config(self, n_last_frames: int | None):
        cfg = self.config.propagation
        changes: dict[str, Any] = {}
        if cfg.device is None:
            changes["device"] = str(self.device)
        if n_last_frames is not None and n_last_frames < cfg.n_last_frames:
            changes["n_last_frames"] = n_last_frames
        return dataclasses.replace(cfg, **changes) if changes else cfg

    def _features(self, video_id: str | None, frames: list[Frame], images: list[torch.Tensor]) -> list[torch.Tensor]:
        """(C, h, w) float32 features per frame on the device, through the cache when there is one."""
        batch = torch.stack(images).to(self.device)
        with torch.inference_mode():
            extract_frames = getattr(self.cached, "extract_frames", None)
            if video_id is not None and extract_frames is not None:
                feats = extract_frames(video_id, [f.name for f in frames], batch)
            else:
                feats = self.extractor.extract(batch)
        return list(feats.to(device=self.device, dtype=torch.float32).unbind(0))

    def _batch_frames(self) -> int:
        """Frames per extractor call: the backend's ``frames_per_batch`` hint (one UNet batch for DIFT)."""
        return int(getattr(self.extractor, "frames_per_batch", 1))

    def frames_with_features(self, source: FrameSource, video_id: str | None = None) -> Iterator[tuple[Frame, torch.Tensor]]:
        """Stream ``(frame, (C, h, w) features)`` pairs, extracting in batches on the device.

        A batch never holds more than one extractor batch of frames; features leave memory when
        the caller drops them.
        """
        data = self.config.data
        policy = data.resize_policy()
        batch_frames = max(1, self._batch_frames())
        stream = prefetch(source, policy, depth=data.prefetch)
        try:
            frames: list[Frame] = []
            images: list[torch.Tensor] = []
            for frame, image in stream:
                frames.append(frame)
                images.append(image)
                # the first frame alone: its features start propagation without waiting for a batch
                if len(frames) >= batch_frames or frame.index == 0:
                    yield from zip(frames, self._features(video_id, frames, images))
                    frames, images = [], []
            if frames:
                yield from zip(frames, self._features(video_id, frames, images))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def propagate_frames(
        self,
        frames_or_path: Any,
        first_mask: Any,
        video_id: str | None = None,
        n_last_frames: int | None = None,
    ) -> Iterator[tuple[Frame, PropagatedFrame]]:
        """Like :meth:`propagate` but also yields each input :class:`Frame` (for overlays)."""
        from vidprop.propagation import LabelPropagator

        source = as_frame_source(frames_or_path, self.config.data)
        label_mask = as_label_mask(first_mask, source.size)
        object_ids = label_mask.object_ids
        propagator = LabelPropagator(self._propagation_config(n_last_frames))
        stride = self.extractor.stride
        for frame, features in self.frames_with_features(source, video_id):
            with torch.inference_mode():
                if frame.index == 0:
                    grid = tuple(features.shape[-2:])
                    onehot = labels_to_onehot(object_ids.to_channels(label_mask.ids), object_ids.num_channels, grid)
                    propagator.reset(features, onehot.to(features.device))
                    ids = label_mask.ids
                else:
                    soft = propagator.step(features)
                    ids = object_ids.to_ids(propagator.to_mask(soft, stride, frame.size))
            del features
            yield frame, PropagatedFrame(name=frame.name, index=frame.index, mask=ids)

    def propagate(self, frames_or_path: Any, first_mask: Any, video_id: str | None = None) -> Iterator[PropagatedFrame]:
        """Propagate ``first_mask`` through a video, one frame at a time (writes no files).

        Args:
            frames_or_path: a folder of frames or a video file, a
                :class:`~vidprop.io.frames.FrameSource`, or an iterable of (H, W, 3) uint8 RGB arrays.
            first_mask: path to the first frame's indexed/grayscale PNG, or an (H, W) integer
                array of object ids (0 = background, 255 = void).
            video_id: key of this video in the feature cache (cache unused when None).

        Yields:
            :class:`PropagatedFrame` per input frame, in order, starting with the first mask.
            Stopping early is fine (the prefetch thread stops too).

        Raises:
            SourceError, MaskError: bad input (checked before any feature is computed).
        """
        for _, out in self.propagate_frames(frames_or_path, first_mask, video_id):
            yield out


def propagate_video(frames_or_path: Any, first_mask: Any, config: VidpropConfig | None = None) -> Iterator[PropagatedFrame]:
    """Propagate a first-frame mask through a video; see :meth:`VideoPipeline.propagate`.

    Builds a new extractor per call: to process many videos, make one :class:`VideoPipeline`.
    """
    return VideoPipeline(config).propagate(frames_or_path, first_mask)


