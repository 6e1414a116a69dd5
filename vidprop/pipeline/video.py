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
from vidprop.device import resolve_device
from vidprop.features.base import FeatureMap
from vidprop.features.stage import FeatureStage

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
        self._given_extractor = extractor
        self._features: FeatureStage | None = None

    @property
    def features(self) -> FeatureStage:
        """The feature stage (described on first use; its model is built on the first cache miss)."""
        if self._features is None:
            self._features = FeatureStage(
                self.config.features, self.device, self.config.runtime.dtype, extractor=self._given_extractor
            )
        return self._features

    @property
    def extractor(self):
        """The feature extractor (its model is built on first access)."""
        return self.features.extractor

    def log_cache_stats(self) -> None:
        """Log the feature cache's hits and misses (if a cache is in use)."""
        if self._features is not None:
            self._features.log_stats()

    def _propagation_config(self, n_last_frames: int | None):
        cfg = self.config.propagation
        changes: dict[str, Any] = {}
        if cfg.device is None:
            changes["device"] = str(self.device)
        if n_last_frames is not None and n_last_frames < cfg.n_last_frames:
            changes["n_last_frames"] = n_last_frames
        return dataclasses.replace(cfg, **changes) if changes else cfg

    def frames_with_features(self, source: FrameSource) -> Iterator[tuple[Frame, FeatureMap]]:
        """Stream ``(frame, feature map)`` pairs: frames decoded and resized ahead on a thread,
        features in the backend's batches (see :meth:`FeatureStage.stream`)."""
        data = self.config.data
        stream = prefetch(source, data.resize_policy(), depth=data.prefetch)
        try:
            yield from self.features.stream(stream)
        finally:
            stream.close()

    def propagate_frames(
        self,
        frames_or_path: Any,
        first_mask: Any,
        n_last_frames: int | None = None,
    ) -> Iterator[tuple[Frame, PropagatedFrame]]:
        """Like :meth:`propagate` but also yields each input :class:`Frame` (for overlays)."""
        from vidprop.propagation import LabelPropagator

        source = as_frame_source(frames_or_path, self.config.data)
        label_mask = as_label_mask(first_mask, source.size)
        object_ids = label_mask.object_ids
        propagator = LabelPropagator(self._propagation_config(n_last_frames))
        for frame, fmap in self.frames_with_features(source):
            features = fmap.features
            with torch.inference_mode():
                if frame.index == 0:
                    onehot = labels_to_onehot(object_ids.to_channels(label_mask.ids), object_ids.num_channels, fmap.grid_size)
                    propagator.reset(features, onehot.to(features.device))
                    ids = label_mask.ids
                else:
                    soft = propagator.step(features)
                    ids = object_ids.to_ids(propagator.to_mask(soft, fmap.stride, frame.size))
            del features, fmap
            yield frame, PropagatedFrame(name=frame.name, index=frame.index, mask=ids)

    def propagate(self, frames_or_path: Any, first_mask: Any) -> Iterator[PropagatedFrame]:
        """Propagate ``first_mask`` through a video, one frame at a time (writes no files).

        Args:
            frames_or_path: a folder of frames or a video file, a
                :class:`~vidprop.io.frames.FrameSource`, or an iterable of (H, W, 3) uint8 RGB arrays.
            first_mask: path to the first frame's indexed/grayscale PNG, or an (H, W) integer
                array of object ids (0 = background, 255 = void).

        Yields:
            :class:`PropagatedFrame` per input frame, in order, starting with the first mask.
            Stopping early is fine (the prefetch thread stops too).

        Raises:
            SourceError, MaskError: bad input (checked before any feature is computed).
        """
        for _, out in self.propagate_frames(frames_or_path, first_mask):
            yield out


def propagate_video(frames_or_path: Any, first_mask: Any, config: VidpropConfig | None = None) -> Iterator[PropagatedFrame]:
    """Propagate a first-frame mask through a video; see :meth:`VideoPipeline.propagate`.

    Builds a new extractor per call: to process many videos, make one :class:`VideoPipeline`.
    """
    return VideoPipeline(config).propagate(frames_or_path, first_mask)


