"""A video's inputs, opened and checked once: frames (paths, frame sources, arrays) and its masks.

:func:`open_video` is the one place where the pipeline opens and checks what it is given, before any
compute: the frame source (:func:`as_frame_source`) and the masks, matched to their frames and
checked against the frames' size (:func:`~vidprop.pipeline.keyframes.as_keyframes`,
:func:`as_label_mask`). Every entry point goes through it: :class:`~vidprop.pipeline.stream.VideoPipeline`
for arrays and paths, and :func:`~vidprop.pipeline.jobs.run_job` for each job of a batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from vidprop.errors import MaskError, SourceError
from vidprop.io.frames import Frame, FrameSource, open_source
from vidprop.io.masks import LabelMask, ObjectIds, no_object_message, read_mask, warn_suspicious_objects
from vidprop.pipeline.keyframes import Keyframes, as_keyframes

if TYPE_CHECKING:
    from vidprop.io.config import DataConfig

__all__ = ["VideoInput", "open_video", "ArrayFrameSource", "as_frame_source", "as_label_mask"]


@dataclass(frozen=True, eq=False)
class VideoInput:
    """One video's opened and checked inputs.

    Attributes:
        source: the frames (:class:`~vidprop.io.frames.FrameSource`), opened (names and size known).
        keyframes: its masks, matched to their frames and checked; None when only features are
            wanted (``vidprop extract``).
    """

    source: FrameSource
    keyframes: Keyframes | None = None

    @property
    def mask(self) -> LabelMask | None:
        """The earliest given mask (its palette is the outputs'), or None."""
        return None if self.keyframes is None else self.keyframes.first.mask


def _known(value):
    """``value()``, or None where a stream does not know it up front."""
    try:
        return value()
    except (SourceError, TypeError):
        return None


def open_video(
    frames_or_path: Any,
    first_mask: Any = None,
    data: DataConfig | None = None,
    *,
    first_appearance: bool = False,
    name: str | None = None,
) -> VideoInput:
    """Open and check a video's inputs (cheap: file headers and the mask PNGs; no frame is
    decoded for image folders).

    Args:
        frames_or_path: see :func:`as_frame_source`.
        first_mask: one mask for the first frame (see :func:`as_label_mask`), or keyframes: a
            mapping from frame index (int) or frame name (str) to a mask; None for no mask.
        data: the data-stage config used to open paths (video reader; None for defaults).
        first_appearance: later masks give only the objects they show (the YouTube-VOS
            layout), instead of replacing every label of their frame.
        name: the video's name for messages (default: the source's path).

    Raises:
        SourceError: a missing, empty or undecodable source.
        MaskError: a mask that cannot be read, does not match the frames' size, has no object,
            or is keyed by a frame name or index the video does not have.
    """
    if isinstance(frames_or_path, VideoInput):
        if first_mask is not None:
            raise MaskError("the first mask was given twice (in the VideoInput and as first_mask)")
        return frames_or_path
    source = as_frame_source(frames_or_path, data)
    if first_mask is None:
        return VideoInput(source)
    keyframes = as_keyframes(
        first_mask, source.size, _known(lambda: source.names), _known(lambda: len(source)),
        first_appearance=first_appearance, video=name or str(getattr(source, "path", "the video")),
    )
    return VideoInput(source, keyframes)


class ArrayFrameSource:
    """A :class:`~vidprop.io.frames.FrameSource` over (H, W, 3) uint8 RGB arrays.

    Frames are named by their zero-padded index (``"00000"``), like video files. ``frames`` may be
    any iterable (a generator streams); ``size`` is read from the first frame.
    """

    def __init__(self, frames: Iterable[np.ndarray], name: str = "arrays"):
        self.path = Path(name)
        self._iter = iter(frames)
        try:
            self._first = _check_frame_array(next(self._iter), 0)
        except StopIteration:
            raise SourceError("no frames given (empty iterable)", name) from None
        self.size: tuple[int, int] = tuple(self._first.shape[:2])  # type: ignore[assignment]
        self._len = len(frames) if hasattr(frames, "__len__") else None  # type: ignore[arg-type]
        self._used = False

    @property
    def names(self) -> list[str]:
        """Frame names ``"00000"``, ... (known up front only for a sized collection of frames).

        Raises:
            SourceError: the frames are a stream (an iterator or generator) of unknown length.
        """
        if self._len is None:
            raise SourceError("the frame names of a stream are known only while reading it (pass a list to know them up front)", self.path)
        return [f"{i:05d}" for i in range(self._len)]

    def __len__(self) -> int:
        """The number of frames.

        Raises:
            SourceError: the frames are a stream (an iterator or generator) of unknown length.
        """
        if self._len is None:
            raise _UnknownLength("the number of frames of a stream is unknown until it ends (pass a list to know it up front)", self.path)
        return self._len

    def __iter__(self) -> Iterator[Frame]:
        """The frames, in order; an iterable of arrays is read once.

        Raises:
            SourceError: a second pass, a frame that is not (H, W, 3) uint8, or of another size.
        """
        if self._used:
            raise SourceError("frames given as an iterable can be read once (pass a path or a list to read them again)", self.path)
        self._used = True
        image, index = self._first, 0
        while True:
            if image.shape[:2] != self.size:
                raise SourceError(f"frame {index} has size {image.shape[:2]}, expected {self.size} like frame 0", self.path)
            yield Frame(index=index, name=f"{index:05d}", size=self.size, image=image)
            try:
                image = _check_frame_array(next(self._iter), index + 1)
            except StopIteration:
                return
            index += 1


class _UnknownLength(SourceError, TypeError):
    """len() of a stream: a SourceError, and a TypeError as Python's sizing protocol expects
    (``list(stream)`` and ``operator.length_hint`` then treat the stream as unsized)."""


def _check_frame_array(image: Any, index: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SourceError(f"frame {index}: expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
    return image


def as_frame_source(frames_or_path: Any, data: DataConfig | None = None) -> FrameSource:
    """A path (folder of frames or video file), a FrameSource, or an iterable of (H, W, 3) uint8 arrays.

    ``data`` (the data-stage config, None for defaults) is used to open paths.
    """
    if isinstance(frames_or_path, (str, os.PathLike)):
        return open_source(frames_or_path, data)
    if isinstance(frames_or_path, FrameSource):
        return frames_or_path
    if isinstance(frames_or_path, np.ndarray) and frames_or_path.ndim == 4:
        return ArrayFrameSource(list(frames_or_path))
    if isinstance(frames_or_path, Iterable):
        return ArrayFrameSource(frames_or_path)
    raise SourceError(f"expected a path, a FrameSource or an iterable of frames, got {type(frames_or_path).__name__}")


def as_label_mask(first_mask: Any, size: tuple[int, int]) -> LabelMask:
    """A path to an indexed/grayscale PNG or an (H, W) integer array of object ids (255 = void).

    Raises:
        MaskError: wrong size, no object, unsupported dtype or image mode.
    """
    if isinstance(first_mask, LabelMask):
        ids, palette, where = first_mask.ids, first_mask.palette, None
    elif isinstance(first_mask, (str, os.PathLike)):
        return read_mask(first_mask, expected_size=size)
    else:
        ids, palette, where = np.asarray(first_mask), None, "first_mask"
    if ids.ndim != 2 or not (np.issubdtype(ids.dtype, np.integer) or ids.dtype == bool):
        raise MaskError(f"expected an (H, W) integer array of object ids, got {ids.dtype} {ids.shape}", where)
    if ids.min(initial=0) < 0 or ids.max(initial=0) > 255:
        raise MaskError(f"object ids must be in 0..255 (got {ids.min()}..{ids.max()})", where)
    if tuple(ids.shape) != tuple(size):
        raise MaskError(f"mask size {tuple(ids.shape)} does not match the frame size {tuple(size)} (H, W)", where)
    ids = ids.astype(np.uint8)
    object_ids = ObjectIds.from_mask(ids)
    if object_ids.num_channels < 2:
        raise MaskError(no_object_message(ids), where)
    if where is not None:  # a LabelMask was checked when it was read
        warn_suspicious_objects(ids, where)
    return LabelMask(ids=ids, object_ids=object_ids, palette=palette)


