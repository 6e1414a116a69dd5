"""The video readers (``data.video_backend``): one registry, three FFmpeg-based decoders.

Every reader yields (H, W, 3) uint8 RGB frames in displayed orientation and exactly
:attr:`VideoInfo.count` of them; :class:`~vidprop.io.video.source.VideoFileSource` checks
both. ``auto`` is PyAV, chosen with tools/bench_video.py (table in the README's "Data loading"
section): PyAV and OpenCV read every test file right and at about the same speed, decord
refuses two (it ignores mirrored display matrices and fills undecodable frames with copies of
their neighbours); PyAV holds the least memory, reports decoder errors (OpenCV's ``read()``
cannot tell them from the end of the file) and has wheels for every platform.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from vidprop.errors import ConfigError, SourceError

if TYPE_CHECKING:  # annotations only: DataConfig imports this registry, and configs load without numpy
    import numpy as np

    from vidprop.io.video.probe import VideoInfo

__all__ = ["AUTO_BACKEND", "BACKEND_CHOICES", "VIDEO_BACKENDS", "VideoReader", "ReaderSpec", "resolve_backend"]

logger = logging.getLogger(__name__)

CONFIG_KEY = "data.video_backend"


class VideoReader(Protocol):
    """A decoder of one video file. Constructed with the file and its :class:`VideoInfo`."""

    def frames(self) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 RGB frames in displayed orientation, in order, from the first."""
        ...


@dataclass(frozen=True)
class ReaderSpec:
    """A registered reader: its name, the module it needs, how to install that, its class."""

    name: str
    module: str
    install: str
    factory: Callable[[Path, VideoInfo], VideoReader]


VIDEO_BACKENDS: dict[str, ReaderSpec] = {}


def register_reader(name: str, module: str, install: str):
    """Class decorator registering a reader under ``name`` (needs ``module`` importable)."""

    def deco(cls):
        VIDEO_BACKENDS[name] = ReaderSpec(name, module, install, cls)
        return cls

    return deco


@register_reader("pyav", "av", "pip install av")
class PyAVReader:
    """PyAV (FFmpeg bindings with FFmpeg bundled in the wheel); applies the display transform."""

    def __init__(self, path: Path, info: VideoInfo):
        self.path, self.info = path, info

    def frames(self) -> Iterator[np.ndarray]:
        import av

        orientation = self.info.orientation
        with av.open(str(self.path)) as container:
            stream = container.streams[self.info.stream_index]
            for frame in container.decode(stream):
                yield orientation.apply(frame.to_ndarray(format="rgb24"))


@register_reader("opencv", "cv2", "pip install opencv-python-headless")
class OpenCVReader:
    """OpenCV's FFmpeg backend. Its own auto-rotation is off (it ignores mirrors); the probe's transform is applied."""

    def __init__(self, path: Path, info: VideoInfo):
        self.path, self.info = path, info

    def frames(self) -> Iterator[np.ndarray]:
        import cv2

        orientation = self.info.orientation
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        try:
            if hasattr(cv2, "CAP_PROP_ORIENTATION_AUTO"):
                cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
            if not cap.isOpened():
                raise RuntimeError("OpenCV's FFmpeg backend could not open the file")
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:  # end of file and decoder errors look the same here
                    return
                yield orientation.apply(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()


@register_reader(
    "decord",
    "decord",
    "pip install decord (x86-64 wheels only: none for ARM Linux or Apple silicon, where data.video_backend=pyav reads the same frames)",
)
class DecordReader:
    """decord: rotates by the container's display matrix itself, but ignores mirrors."""

    def __init__(self, path: Path, info: VideoInfo):
        if info.orientation.mirror:
            raise SourceError(
                f"the video's display matrix mirrors the picture ({info.orientation}), which decord ignores; "
                f"read it with {CONFIG_KEY}=pyav",
                path,
            )
        self.path, self.info = path, info

    def frames(self) -> Iterator[np.ndarray]:
        import decord

        reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
        if len(reader) != self.info.count:
            # decord counts packets and fills frames it cannot decode with copies of neighbours
            raise SourceError(
                f"decord indexes {len(reader)} frames but FFmpeg decodes {self.info.count}; "
                f"read this file with {CONFIG_KEY}=pyav",
                self.path,
            )
        for _ in range(len(reader)):
            yield reader.next().asnumpy()


AUTO_BACKEND = "pyav"  # measured with tools/bench_video.py: see the module docstring
BACKEND_CHOICES: tuple[str, ...] = ("auto", *VIDEO_BACKENDS)

_announced: set[str] = set()


def resolve_backend(backend: str = "auto") -> ReaderSpec:
    """The reader for ``backend`` ("auto", "pyav", "decord" or "opencv"), checked importable.

    Raises:
        ConfigError: unknown name, or the backend's package cannot be imported (the message
            names the backend and how to install it).
    """
    name = AUTO_BACKEND if backend == "auto" else backend
    spec = VIDEO_BACKENDS.get(name)
    if spec is None:
        raise ConfigError(f"unknown video backend {backend!r} (expected one of {', '.join(BACKEND_CHOICES)})", key=CONFIG_KEY)
    try:
        importlib.import_module(spec.module)
    except Exception as exc:  # ImportError, or OSError from a broken shared library
        raise ConfigError(
            f"video backend {name!r} needs the {spec.module!r} package, which cannot be imported ({exc}); "
            f"install it with: {spec.install}",
            key=CONFIG_KEY,
        ) from exc
    message = f"reading video files with {name}" + (" (data.video_backend=auto)" if backend == "auto" else "")
    if message not in _announced:
        _announced.add(message)
        logger.info(message)
    return spec
