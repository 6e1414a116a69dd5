"""The streaming core: one video in memory, frames -> features -> label propagation -> masks.

Per frame: :class:`~vidprop.io.resize.ResizePolicy` (on the prefetch thread) ->
:class:`~vidprop.features.stage.FeatureStage` (batched, through the feature cache) ->
:class:`~vidprop.features.base.FeatureMap`. A video's masks (keyframes, see
:mod:`vidprop.pipeline.keyframes`) are carried through those feature maps: the first given
mask -> channel map (:class:`~vidprop.io.masks.ObjectIds`) -> one-hot (K, h, w) at the feature
grid (nearest, as DIFT's ``read_seg``) -> ``LabelPropagator.reset``; later frames: ``step`` ->
``to_mask`` (upsampling by the stride, argmax, nearest resize to (H, W)) -> original object ids;
later masks enter the context as keyframes. A given mask is its frame's output, as DIFT's
``eval_davis.py`` writes the first one. Frames before the first given mask are filled by a
backward pass first (``propagation.backward``), then every frame is yielded in order.

One pass over a video's features can feed several :class:`MaskPropagation` s (e.g. one per
propagation setting of a sweep) when the first mask is on frame 0: iterate
:meth:`VideoPipeline.frames_with_features` once and call each one's :meth:`MaskPropagation.step`.
Files are the job runner's business (:mod:`vidprop.pipeline.jobs`); nothing here writes any.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator

import numpy as np

from vidprop.config import VidpropConfig
from vidprop.device import resolve_device
from vidprop.errors import MaskError
from vidprop.features.base import FeatureMap
from vidprop.features.stage import FeatureStage
from vidprop.io.frames import Frame
from vidprop.io.masks import LabelMask
from vidprop.io.prefetch import prefetch
from vidprop.pipeline.inputs import VideoInput, open_video
from vidprop.pipeline.keyframes import KeyframePropagation, Keyframes, as_keyframes, propagate_keyframes
from vidprop.propagation.config import PropagationConfig

__all__ = ["PropagatedFrame", "MaskPropagation", "VideoPipeline", "propagate_video"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class PropagatedFrame:
    """One output frame.

    Attributes:
        name: the input frame's name (file stem, or zero-padded index for video files).
        index: 0-based frame index.
        mask: (H, W) uint8 array of the original object ids (0 = background) at the input size.
    """

    name: str
    index: int
    mask: np.ndarray


class MaskPropagation:
    """A video's masks carried through its feature maps in one forward pass, with one propagation setting.

    Args:
        masks: the first frame's mask (checked, of the frames' size), or the video's keyframes.
        config: the propagation setting.
        shared: one :class:`~vidprop.propagation.SharedCandidates` for the propagations of a
            video that differ only in ``topk`` and ``temperature`` (each frame's candidates are
            then ranked once for all of them), or None.

    Feed it every frame of the video in order, starting with frame 0. Frames before the first
    keyframe are empty (background) with ``backward: false``; with backward filling they need
    the backward pass of :meth:`VideoPipeline.propagate_frames`, so feeding them here is an error.
    """

    def __init__(self, masks: LabelMask | Keyframes, config: PropagationConfig, shared: Any = None):
        if isinstance(masks, LabelMask):
            masks = as_keyframes(masks, masks.size)
        self.keyframes = masks
        self.propagation = KeyframePropagation(masks, config, shared)

    def step(self, frame: Frame, fmap: FeatureMap) -> PropagatedFrame:
        """The mask of ``frame``: a given mask itself (propagation starts at the first), else propagated.

        Args:
            frame: the input frame (its index, name and original size are used).
            fmap: its feature map.

        Raises:
            MaskError: a frame before the first mask while ``propagation.backward`` is on.
        """
        propagation = self.propagation
        if frame.index < propagation.start:
            if propagation.needs_backward:
                raise MaskError(
                    f"frame {frame.name} comes before the first mask (frame {self.keyframes.first.name}): filling it "
                    "needs a backward pass (VideoPipeline.propagate_frames), or set propagation.backward: false"
                )
            ids = propagation.empty(frame)
        else:
            ids = propagation.step(frame, fmap)
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
        same = _feature_runtime(config) == _feature_runtime(self.config)
        if same:
            other._features = self._features
        return other

    @property
    def features(self) -> FeatureStage:
        """The feature stage (described on first use; its model is built on the first cache miss)."""
        if self._features is None:
            rt = self.config.runtime
            self._features = FeatureStage(self.config.features, self.device, rt.dtype, extractor=self._extractor,
                                          tf32=rt.tf32, compile=rt.compile)
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
        yield from self._features_of(open_video(video, data=self.config.data).source)

    def _features_of(self, frames: Iterable[Frame]) -> Iterator[tuple[Frame, FeatureMap]]:
        """``(frame, feature map)`` of any iterable of frames, in its order."""
        data = self.config.data
        stream = prefetch(frames, data.resize_policy(), depth=data.prefetch)
        try:
            yield from self.features.stream(stream)
        finally:
            stream.close()

    def propagate_frames(
        self, video: Any, first_mask: Any = None, n_last_frames: int | None = None
    ) -> Iterator[tuple[Frame, PropagatedFrame]]:
        """Like :meth:`propagate` but also yields each input :class:`~vidprop.io.frames.Frame` (for overlays).

        Args:
            video: a :class:`~vidprop.pipeline.inputs.VideoInput` with masks, or the frames
                (then ``first_mask`` is required).
            first_mask: as in :meth:`propagate`.
            n_last_frames: cap of the recent-frame window for this video (None = the config's).
        """
        opened = open_video(video, first_mask, self.config.data)
        if opened.keyframes is None:
            raise MaskError("no mask given")
        propagation = KeyframePropagation(opened.keyframes, self.propagation_config(n_last_frames))
        for frame, ids in propagate_keyframes(propagation, opened.source, self._features_of):
            yield frame, PropagatedFrame(name=frame.name, index=frame.index, mask=ids)

    def propagate(self, frames_or_path: Any, first_mask: Any) -> Iterator[PropagatedFrame]:
        """Propagate a video's masks through it, one frame at a time (writes no files).

        Args:
            frames_or_path: a folder of frames or a video file, a
                :class:`~vidprop.io.frames.FrameSource`, or an iterable of (H, W, 3) uint8 RGB arrays.
            first_mask: the first frame's mask: a path to an indexed/grayscale PNG, or an (H, W)
                integer array of object ids (0 = background, 255 = void); or keyframes: a mapping
                from frame index (int) or frame name (str) to such a mask, e.g.
                ``{"00004": "masks/00004.png"}`` or ``{0: mask0, 30: correction}`` (see
                :mod:`vidprop.pipeline.keyframes`).

        Yields:
            :class:`PropagatedFrame` per input frame, in order, from frame 0 (frames before the
            first mask come first: their backward pass runs before anything is yielded).
            Stopping early is fine (the prefetch thread stops too).

        Raises:
            SourceError, MaskError: bad input (checked before any feature is computed), e.g. a
                mask keyed by a frame name the video does not have.
        """
        for _, out in self.propagate_frames(frames_or_path, first_mask):
            yield out


def _feature_runtime(config: VidpropConfig) -> tuple:
    """What a feature stage is built from: two configs that agree here can share one (and its model)."""
    rt = config.runtime
    return config.features, rt.device, rt.dtype, rt.tf32, rt.compile


def propagate_video(frames_or_path: Any, first_mask: Any, config: VidpropConfig | None = None) -> Iterator[PropagatedFrame]:
    """Propagate a video's masks (a first-frame mask, or keyframes) through it; see :meth:`VideoPipeline.propagate`.

    Builds a new pipeline per call: to process many videos, make one :class:`VideoPipeline`.
    """
    return VideoPipeline(config).propagate(frames_or_path, first_mask)
