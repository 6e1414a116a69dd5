"""The streaming core: one video in memory, frames -> features -> label propagation -> masks.

Per frame: :class:`~vidprop.io.resize.ResizePolicy` (on the prefetch thread) ->
:class:`~vidprop.features.stage.FeatureStage` (batched, through the feature cache) ->
:class:`~vidprop.features.base.FeatureMap`. :class:`MaskPropagation` carries a first mask
through those feature maps: the first frame's mask -> channel map
(:class:`~vidprop.io.masks.ObjectIds`) -> one-hot (K, h, w) at the feature grid (nearest, as
DIFT's ``read_seg``) -> ``LabelPropagator.reset``; later frames: ``step`` -> ``to_mask``
(upsampling by the stride, argmax, nearest resize to (H, W)) -> original object ids. The first
frame's own mask is output frame 0, as DIFT's ``eval_davis.py`` writes it.

One pass over a video's features can feed several :class:`MaskPropagation` s (e.g. one per
propagation setting of a sweep): iterate :meth:`VideoPipeline.frames_with_features` once and
call each one's :meth:`MaskPropagation.step`. Files are the job runner's business
(:mod:`vidprop.pipeline.jobs`); nothing here writes any.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator

import numpy as np
import torch

from vidprop.config import VidpropConfig
from vidprop.device import resolve_device
from vidprop.errors import MaskError
from vidprop.features.base import FeatureMap
from vidprop.features.stage import FeatureStage
from vidprop.io.frames import Frame
from vidprop.io.masks import LabelMask, labels_to_onehot
from vidprop.io.prefetch import prefetch
from vidprop.pipeline.inputs import VideoInput, open_video
from vidprop.propagation.config import PropagationConfig

__all__ = ["PropagatedFrame", "MaskPropagation", "VideoPipeline", "propagate_video"]

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


class MaskPropagation:
    """One first-frame mask carried through one video's feature maps with one propagation setting.

    Args:
        mask: the first frame's mask (checked, of the frames' size).
        config: the propagation setting.

    Feed it every frame of the video in order, starting with frame 0.
    """

    def __init__(self, mask: LabelMask, config: PropagationConfig):
        from vidprop.propagation import LabelPropagator

        self.mask = mask
        self.propagator = LabelPropagator(config)

    def step(self, frame: Frame, fmap: FeatureMap) -> PropagatedFrame:
        """The mask of ``frame`` (frame 0: the first mask itself, and the propagation starts there).

        Args:
            frame: the input frame (its index, name and original size are used).
            fmap: its feature map.
        """
        object_ids = self.mask.object_ids
        with torch.inference_mode():
            if frame.index == 0:
                channels = object_ids.to_channels(self.mask.ids)
                onehot = labels_to_onehot(channels, object_ids.num_channels, fmap.grid_size)
                self.propagator.reset(fmap.features, onehot.to(fmap.features.device))
                ids = self.mask.ids
            else:
                soft = self.propagator.step(fmap.features)
                ids = object_ids.to_ids(self.propagator.to_mask(soft, fmap.stride, frame.size))
        return PropagatedFrame(name=frame.name, index=frame.index, mask=ids)


class VideoPipeline:
    """Propagates first-frame masks through videos; holds the feature stage (and its model) across videos.

    Args:
        config: the run's config (defaults: the paper's DAVIS setting with SD 2.1).
        extractor: an already built extractor to use (else built from ``config.features`` on the
            first feature-cache miss, on ``config.runtime.device`` in ``config.runtime.dtype``).

    Example:
        >>> pipe = VideoPipeline(load_config("configs/davis2017_lab.yaml"))
        >>> for out in pipe.propagate("frames/", "frames/00000.png"):
        ...     use(out.name, out.mask)
    """

    def __init__(self, config: VidpropConfig | None = None, extractor: Any = None):
        self.config = config if config is not None else VidpropConfig()
        self.device = resolve_device(self.config.runtime.device)
        self._extractor = extractor
        self._features: FeatureStage | None = None

    def with_config(self, config: VidpropConfig) -> "VideoPipeline":
        """A pipeline for ``config`` that shares this one's feature stage (and model) when the
        feature settings, device and dtype are the same."""
        if config == self.config:
            return self
        other = VideoPipeline(config, extractor=self._extractor)
        same = (config.features, config.runtime.device, config.runtime.dtype) == (
            self.config.features, self.config.runtime.device, self.config.runtime.dtype
        )
        if same:
            other._features = self._features
        return other

    @property
    def features(self) -> FeatureStage:
        """The feature stage (described on first use; its model is built on the first cache miss)."""
        if self._features is None:
            self._features = FeatureStage(self.config.features, self.device, self.config.runtime.dtype, extractor=self._extractor)
        return self._features

    @property
    def extractor(self):
        """The feature extractor (its model is built on first access)."""
        return self.features.extractor

    def log_cache_stats(self) -> None:
        """Log the feature cache's hits and misses (if a cache is in use)."""
        if self._features is not None:
            self._features.log_stats()

    def propagation_config(self, n_last_frames: int | None = None) -> PropagationConfig:
        """``config.propagation`` on this pipeline's device, its recent-frame window capped at ``n_last_frames``."""
        cfg = self.config.propagation
        changes: dict[str, Any] = {}
        if cfg.device is None:
            changes["device"] = str(self.device)
        if n_last_frames is not None and n_last_frames < cfg.n_last_frames:
            changes["n_last_frames"] = n_last_frames
        return dataclasses.replace(cfg, **changes) if changes else cfg

    def frames_with_features(self, video: Any) -> Iterator[tuple[Frame, FeatureMap]]:
        """One pass over a video's features: ``(frame, feature map)`` in order.

        Frames are decoded and resized ahead on a background thread, and features are computed
        in the backend's batches (see :meth:`~vidprop.features.stage.FeatureStage.stream`).

        Args:
            video: a :class:`~vidprop.pipeline.inputs.VideoInput` or anything
                :func:`~vidprop.pipeline.inputs.as_frame_source` accepts.
        """
        source = open_video(video, data=self.config.data).source
        data = self.config.data
        stream = prefetch(source, data.resize_policy(), depth=data.prefetch)
        try:
            yield from self.features.stream(stream)
        finally:
            stream.close()

    def propagate_frames(
        self, video: Any, first_mask: Any = None, n_last_frames: int | None = None
    ) -> Iterator[tuple[Frame, PropagatedFrame]]:
        """Like :meth:`propagate` but also yields each input :class:`~vidprop.io.frames.Frame` (for overlays).

        Args:
            video: a :class:`~vidprop.pipeline.inputs.VideoInput` with a mask, or the frames
                (then ``first_mask`` is required).
            n_last_frames: cap of the recent-frame window for this video (None = the config's).
        """
        opened = open_video(video, first_mask, self.config.data)
        if opened.mask is None:
            raise MaskError("no first-frame mask given")
        propagation = MaskPropagation(opened.mask, self.propagation_config(n_last_frames))
        for frame, fmap in self.frames_with_features(opened):
            yield frame, propagation.step(frame, fmap)

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

    Builds a new pipeline per call: to process many videos, make one :class:`VideoPipeline`.
    """
    return VideoPipeline(config).propagate(frames_or_path, first_mask)
