"""Frames and frame sources: one streaming interface over image folders and video files.

A :class:`FrameSource` knows its frame count, frame names and frame size up front (read
cheaply when it is opened) and decodes frames one at a time, in order, when iterated, so a
whole video is never held in memory. :func:`open_source` picks the source for a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Protocol, runtime_checkable

import numpy as np

from vidprop.errors import SourceError

if TYPE_CHECKING:
    from vidprop.io.config import DataConfig

__all__ = [
    "Frame",
    "FrameSource",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "natural_key",
    "is_video_file",
    "is_image_file",
    "open_source",
    "register_source",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".avi", ".mkv", ".webm")


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame.

    Attributes:
        index: 0-based position in its source.
        name: file stem for image folders ("00000" for DAVIS), zero-padded index for videos.
        size: original (H, W) in pixels.
        image: (H, W, 3) uint8 RGB array.
    """

    index: int
    name: str
    size: tuple[int, int]
    image: np.ndarray


@runtime_checkable
class FrameSource(Protocol):
    """A sequence of frames of one size, streamed in order.

    Attributes:
        path: the folder or video file.
        size: (H, W) of every frame.
        names: frame names in order (unique; used to name outputs).
    """

    path: Path
    size: tuple[int, int]
    names: list[str]

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Frame]: ...


_NUMBER = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``frame2`` < ``frame10``.

    Text parts compare case-insensitively; the exact name breaks ties, so the order is total
    (``frame02`` and ``frame2`` keep a fixed order).
    """
    parts = _NUMBER.split(name)
    # re.split with one capturing group alternates text, number, text, ...: even positions are
    # always text and odd positions numbers, so tuples never compare a str with an int.
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return (key, name)


def is_video_file(path: str | Path) -> bool:
    """Whether ``path`` has a video extension (case-insensitive; the file need not exist)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has an image extension (jpg, jpeg, png; case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# Registry of path kinds -> source factory, checked in order by open_source().
_SOURCES: list[tuple[str, Callable[[Path], bool], Callable[..., FrameSource]]] = []


def register_source(kind: str, accepts: Callable[[Path], bool]):
    """Decorator registering ``factory(path, data)`` for paths where ``accepts(path)`` is true.

    ``data`` is the run's :class:`~vidprop.io.config.DataConfig`, or None for its defaults.
    """

    def deco(factory):
        _SOURCES.append((kind, accepts, factory))
        return factory

    return deco


def _ensure_registered() -> None:
    # The sources register themselves on import; importing here avoids an import cycle.
    from vidprop.io import image_folder  # noqa: F401
    from vidprop.io.video import source  # noqa: F401


def open_source(path: str | Path, data: DataConfig | None = None) -> FrameSource:
    """Open a folder of images or a video file as a :class:`FrameSource`.

    Args:
        path: a folder of jpg/jpeg/png frames, or a video file (mp4, mov, avi, mkv, webm).
        data: the data-stage config (``video_backend`` picks the video reader); None for defaults.

    Raises:
        SourceError: the path does not exist or is neither a folder nor a video file, or the
            source itself rejects it (empty folder, mixed frame sizes, undecodable video).
    """
    path = Path(path)
    if not path.exists():
        raise SourceError("input path does not exist", path)
    _ensure_registered()
    for _kind, accepts, factory in _SOURCES:
        if accepts(path):
            return factory(path, data)
    kinds = ", ".join(kind for kind, _, _ in _SOURCES)
    raise SourceError(
        f"not a folder of images or a video file (expected one of: {kinds}; "
        f"video extensions {', '.join(VIDEO_EXTENSIONS)})",
        path,
    )
