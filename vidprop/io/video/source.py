"""A video file (mp4, mov, avi, mkv, webm) as a frame source, read by the configured backend."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from vidprop.errors import SourceError
from vidprop.io.frames import Frame, is_video_file, register_source
from vidprop.io.video.probe import probe_video
from vidprop.io.video.readers import resolve_backend

__all__ = ["VideoFileSource"]

logger = logging.getLogger(__name__)


def _frame_names(count: int) -> list[str]:
    width = max(5, len(str(max(count - 1, 0))))
    return [f"{i:0{width}d}" for i in range(count)]


class VideoFileSource:
    """Frames of a video file, decoded sequentially (never the whole video in memory).

    Opening decodes the file once without colour conversion (:func:`probe_video`): the frame
    count is what the decoder returns, so a variable-frame-rate file or a stream cut before a
    keyframe has its true count, and an undecodable file fails here rather than mid-run.
    Frames come out as players display them: the display matrix (phone rotation) is applied.

    Args:
        path: the video file.
        backend: "auto" (PyAV), "pyav", "decord" or "opencv" (``data.video_backend``).

    Attributes:
        path: the video file.
        name: the file stem.
        backend: the reader in use ("pyav", "decord" or "opencv").
        names: zero-padded frame indices ("00000", "00001", ...).
        size: (H, W) of every frame as displayed.
        fps: average frames per second from the container, or None when unknown.
        info: the :class:`~vidprop.io.video.probe.VideoInfo` of the file.

    Raises:
        SourceError: missing file, a folder, or a file that cannot be decoded (see
            :func:`probe_video`); while iterating, a decoder error or a reader that returns
            another number of frames than the decoder counted.
        ConfigError: unknown backend, or its package is not importable.
    """

    def __init__(self, path: str | Path, backend: str = "auto"):
        path = Path(path)
        if not path.exists():
            raise SourceError("video file does not exist", path)
        if not path.is_file():
            raise SourceError("not a video file (it is a folder)", path)
        spec = resolve_backend(backend)
        info = probe_video(path)
        try:
            self._reader = spec.factory(path, info)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"cannot decode video with {spec.name} ({exc})", path) from exc
        if info.container_count is not None and info.container_count != info.count:
            logger.warning(
                "%s: the container announces %d frames but %d decode (truncated file, or a stream cut before a "
                "keyframe); reading the %d decoded frames",
                path, info.container_count, info.count, info.count,
            )
        logger.debug("%s: %d frames of %dx%d (%s), %s", path, info.count, *info.size, info.orientation, spec.name)
        self.path = path
        self.name = path.stem
        self.backend = spec.name
        self.info = info
        self.size = info.size
        self.fps = info.fps
        self.names = _frame_names(info.count)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"VideoFileSource({str(self.path)!r}, frames={len(self)}, size={self.size}, backend={self.backend!r})"

    def __iter__(self) -> Iterator[Frame]:
        count, index = len(self.names), 0
        try:
            for image in self._reader.frames():
                if index == count:
                    raise SourceError(f"{self.backend} returns more than the {count} frames FFmpeg decodes", self.path)
                if image.shape[:2] != self.size:
                    raise SourceError(
                        f"{self.backend} returns frame {index} as {image.shape[0]}x{image.shape[1]} but the video "
                        f"displays at {self.size[0]}x{self.size[1]} ({self.info.orientation})",
                        self.path,
                    )
                yield Frame(index=index, name=self.names[index], size=self.size, image=np.ascontiguousarray(image))
                index += 1
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"cannot decode frame {index} with {self.backend} ({exc})", self.path) from exc
        if index < count:
            raise SourceError(f"{self.backend} returns {index} of the {count} frames FFmpeg decodes", self.path)


@register_source("video file", lambda p: p.is_file() and is_video_file(p))
def _open_video(path: Path, data=None) -> VideoFileSource:
    return VideoFileSource(path, backend="auto" if data is None else data.video_backend)
