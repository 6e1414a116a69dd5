"""What :func:`~vidprop.pipeline.propagate_video` accepts: paths, frame sources, arrays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from vidprop.errors import MaskError, SourceError
from vidprop.io.frames import Frame, FrameSource, open_source
from vidprop.io.masks import LabelMask, ObjectIds, no_object_message, read_mask, warn_suspicious_objects

if TYPE_CHECKING:
    from vidprop.io.config import DataConfig

__all__ = ["ArrayFrameSource", "as_frame_source", "as_label_mask"]


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
        if self._len is None:
            raise TypeError("frame names of a streamed iterable are known only while iterating")
        return [f"{i:05d}" for i in range(self._len)]

    def __len__(self) -> int:
        if self._len is None:
            raise TypeError("length of a streamed iterable is unknown")
        return self._len

    def __iter__(self) -> Iterator[Frame]:
        if self._used:
            raise RuntimeError("an ArrayFrameSource can be iterated once")
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


