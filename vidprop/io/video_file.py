"""A video file (mp4, mov, avi, mkv, webm) read with decord, or OpenCV when decord is missing.

decord has no wheels for some platforms (e.g. macOS arm64, aarch64 Linux), so the OpenCV
``VideoCapture`` backend gives the same output: RGB uint8 frames, the same count and names.
Pixel values may differ by a few levels between the two, since each has its own YUV->RGB
conversion. Which backend is used is logged once per process at INFO level.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from vidprop.errors import ConfigError, SourceError
from vidprop.io.frames import Frame, is_video_file, register_source

__all__ = ["VideoFileSource", "VIDEO_BACKENDS", "resolve_backend"]

logger = logging.getLogger(__name__)


class _DecordReader:
    """decord backend: frames come out as RGB; a new VideoReader per pass streams from the start."""

    name = "decord"

    def __init__(self, path: Path):
        import decord

        self._decord = decord
        self.path = path
        reader = self._open()
        self.count = len(reader)
        first = reader[0].asnumpy() if self.count else None
        self.size = None if first is None else (int(first.shape[0]), int(first.shape[1]))
        fps = reader.get_avg_fps()
        self.fps = float(fps) if fps and fps > 0 else None
        del reader

    def _open(self):
        return self._decord.VideoReader(str(self.path), ctx=self._decord.cpu(0))

    def frames(self) -> Iterator[np.ndarray]:
        reader = self._open()
        for _ in range(self.count):
            try:
                frame = reader.next()
            except StopIteration:
                return
            yield frame.asnumpy()


class _OpenCVReader:
    """OpenCV backend: frames converted BGR -> RGB, auto-rotation off to match decord."""

    name = "opencv"

    def __init__(self, path: Path):
        import cv2

        self._cv2 = cv2
        self.path = path
        cap = self._open()
        try:
            ok, first = cap.read()
            self.size = (int(first.shape[0]), int(first.shape[1])) if ok and first is not None else None
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and fps > 0 else None
            if count <= 0 and self.size is not None:
                # Some containers (webm, some mkv) do not store a frame count: count by grabbing.
                count = 1
                while cap.grab():
                    count += 1
            self.count = count if self.size is not None else 0
        finally:
            cap.release()

    def _open(self):
        cv2 = self._cv2
        cap = cv2.VideoCapture(str(self.path))
        if hasattr(cv2, "CAP_PROP_ORIENTATION_AUTO"):
            cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
        if not cap.isOpened():
            cap.release()
            raise RuntimeError("OpenCV VideoCapture could not open the file")
        return cap

    def frames(self) -> Iterator[np.ndarray]:
        cv2 = self._cv2
        cap = self._open()
        try:
            for _ in range(self.count):
                ok, frame = cap.read()
                if not ok or frame is None:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()


VIDEO_BACKENDS: dict[str, Callable[[Path], object]] = {"decord": _DecordReader, "opencv": _OpenCVReader}

_announced: set[str] = set()


def _decord_import_error() -> Exception | None:
    try:
        import decord  # noqa: F401
    except Exception as exc:  # ImportError, or OSError from a broken shared library
        return exc
    return None


def resolve_backend(backend: str | None = None) -> str:
    """The video backend to use: ``backend`` if given, else decord when importable, else opencv.

    Raises:
        ConfigError: unknown backend name, or decord requested but not importable.
    """
    if backend is not None:
        if backend not in VIDEO_BACKENDS:
            raise ConfigError(f"unknown video backend {backend!r} (expected one of {', '.join(VIDEO_BACKENDS)})", key="backend")
        if backend == "decord":
            error = _decord_import_error()
            if error is not None:
                raise ConfigError(f"decord is not importable ({error}); install decord or use backend='opencv'", key="backend")
        return backend
    error = _decord_import_error()
    if error is None:
        message = "reading videos with decord"
        chosen = "decord"
    else:
        message = f"decord is not importable ({error}); reading videos with OpenCV"
        chosen = "opencv"
    if message not in _announced:
        _announced.add(message)
        logger.info(message)
    return chosen


def _frame_names(count: int) -> list[str]:
    width = max(5, len(str(max(count - 1, 0))))
    return [f"{i:0{width}d}" for i in range(count)]


@register_source("video file", lambda p: p.is_file() and is_video_file(p))
class VideoFileSource:
    """Frames of a video file, decoded sequentially (never the whole video in memory).

    Opening reads the metadata and decodes the first frame, so an undecodable file fails
    here and not halfway through a run.

    Args:
        path: the video file.
        backend: "decord", "opencv", or None (decord when importable, else OpenCV).

    Attributes:
        path: the video file.
        name: the file stem.
        backend: the backend in use ("decord" or "opencv").
        names: zero-padded frame indices ("00000", "00001", ...).
        size: (H, W) of every frame.
        fps: frames per second from the container, or None when unknown.

    Raises:
        SourceError: missing file, a folder, or a file that cannot be decoded (or has no frames).
        ConfigError: unknown backend, or decord requested but not importable.
    """

    def __init__(self, path: str | Path, backend: str | None = None):
        path = Path(path)
        if not path.exists():
            raise SourceError("video file does not exist", path)
        if not path.is_file():
            raise SourceError("not a video file (it is a folder)", path)
        self.backend = resolve_backend(backend)
        logger.debug("%s: opening with %s", path, self.backend)
        try:
            reader = VIDEO_BACKENDS[self.backend](path)
        except Exception as exc:
            raise SourceError(f"cannot decode video with {self.backend} ({exc})", path) from exc
        if reader.count <= 0 or reader.size is None:
            raise SourceError(f"cannot decode video with {self.backend} (no decodable frames)", path)
        self._reader = reader
        self.path = path
        self.name = path.stem
        self.size = reader.size
        self.fps = reader.fps
        self.names = _frame_names(reader.count)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"VideoFileSource({str(self.path)!r}, frames={len(self)}, size={self.size}, backend={self.backend!r})"

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        try:
            for image in self._reader.frames():
                if image.shape[:2] != self.size:
                    raise SourceError(f"frame {index} is {image.shape[0]}x{image.shape[1]} but the video is {self.size[0]}x{self.size[1]}", self.path)
                yield Frame(index=index, name=self.names[index], size=self.size, image=np.ascontiguousarray(image))
                index += 1
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"cannot decode frame {index} with {self.backend} ({exc})", self.path) from exc
        if index < len(self.names):
            raise SourceError(f"video ended after {index} of {len(self.names)} frames (truncated or corrupt file?)", self.path)
