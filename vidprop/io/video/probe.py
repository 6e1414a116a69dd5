"""What a video file holds, learnt by decoding it once with FFmpeg (through PyAV).

Container frame counts are hints: an MP4/AVI index counts packets (a stream cut before its
first keyframe has packets that decode to nothing), Matroska/WebM often store no count, and
OpenCV estimates one from duration x fps (wrong for variable frame rate). So the count here
is the number of frames the decoder returns; every reader must yield exactly that many.
"""

from __future__ import annotations

import functools
import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidprop.errors import SourceError
from vidprop.io.video.orientation import Orientation, UnsupportedRotation

__all__ = ["VideoInfo", "probe_video", "frame_count_hint"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """The decoded facts of one video stream.

    Attributes:
        count: frames the decoder returns (exact).
        container_count: frame count stored in the container, or None when it stores none.
        coded_size: (H, W) of the decoded pictures, before the display transform.
        size: (H, W) as displayed (``orientation`` applied).
        orientation: display transform from the container's (or bitstream's) display matrix.
        corrupt_frames: indices of frames the decoder flagged as damaged (errors concealed,
            e.g. the last frame of a truncated file); they are read, with a warning.
        fps: average frame rate from the container, or None when unknown.
        stream_index: index of the video stream in the container.
    """

    count: int
    container_count: int | None
    coded_size: tuple[int, int]
    size: tuple[int, int]
    orientation: Orientation
    fps: float | None
    stream_index: int
    corrupt_frames: tuple[int, ...] = ()


def probe_video(path: str | Path) -> VideoInfo:
    """Decode ``path``'s first video stream once (no colour conversion) and describe it.

    Results are cached per file identity (path, size, modification time), so opening the
    same unchanged file twice decodes it once.

    Raises:
        SourceError: the file cannot be opened, has no video stream, its decoder reports an
            error, it has no decodable frame, its frame size changes mid-stream, or its display
            matrix rotates by an angle that is not a multiple of 90 degrees.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise SourceError(f"cannot read video file ({exc.strerror or exc})", path) from exc
    return _probe(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def frame_count_hint(path: str | Path) -> int | None:
    """The frame count that ``path``'s container states (or its duration x average frame rate),
    read from the header without decoding: a hint for ordering work (the Ray engine dispatches
    the longest videos first), never the count a reader yields (that is :func:`probe_video`'s).

    Returns:
        The hint, or None when the container states neither, or the file cannot be opened
        (the error is for whoever opens the video to report).
    """
    import av

    try:
        with av.open(str(path)) as container:
            streams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
            if not streams:
                return None
            stream = streams[0]
            if stream.frames:
                return int(stream.frames)
            rate = stream.average_rate or stream.guessed_rate
            if stream.duration and stream.time_base and rate:
                return max(1, round(float(stream.duration * stream.time_base * rate)))
            if container.duration and rate:
                return max(1, round(container.duration / av.time_base * float(rate)))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError):
        return None
    return None


def _display_matrix(frame) -> np.ndarray | None:
    for side_data in frame.side_data:
        if getattr(side_data.type, "name", str(side_data.type)).endswith("DISPLAYMATRIX"):
            return np.frombuffer(bytes(side_data), dtype=np.int32)[:9].copy()
    return None


@functools.lru_cache(maxsize=64)
def _probe(path_str: str, _size: int, _mtime_ns: int, _inode: int) -> VideoInfo:
    import av

    path = Path(path_str)
    try:
        container = av.open(path_str)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot decode video ({exc})", path) from exc
    with container:
        streams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
        if not streams:
            raise SourceError("cannot decode video (the file has no video stream)", path)
        stream = streams[0]
        if len(streams) > 1:
            logger.warning("%s: %d video streams; reading the first (stream #%d)", path, len(streams), stream.index)
        count, first, matrix, corrupt = _decode_all(container, stream, path)
        rate = stream.average_rate or stream.guessed_rate
        container_count = stream.frames or None
        sar = stream.sample_aspect_ratio
        stream_index = stream.index
    # Reading a PyAV frame's side data makes the frame and its side data reference each other, so
    # frame 0 (megabytes at high resolution) would wait for a full collection, rare in a process
    # holding torch. Now that the file is closed it is young garbage: collect the young generations.
    gc.collect(1)
    try:
        orientation = Orientation.from_display_matrix(matrix)
    except UnsupportedRotation as exc:
        raise SourceError(str(exc), path) from exc
    if corrupt:
        shown = ", ".join(map(str, corrupt[:10])) + (", ..." if len(corrupt) > 10 else "")
        logger.warning(
            "%s: the decoder concealed errors in %d of %d frames (frame %s): parts of them are invented, "
            "so their masks are unreliable",
            path, len(corrupt), count, shown,
        )
    if sar is not None and sar.numerator != sar.denominator and sar.numerator > 0:
        logger.warning(
            "%s: pixels are not square (sample aspect ratio %d:%d); frames keep their stored size %dx%d",
            path, sar.numerator, sar.denominator, first[1], first[0],
        )
    return VideoInfo(
        count=count,
        container_count=container_count,
        coded_size=first,
        size=orientation.displayed_size(first),
        orientation=orientation,
        fps=float(rate) if rate else None,
        stream_index=stream_index,
        corrupt_frames=tuple(corrupt),
    )


def _decode_all(container, stream, path: Path):
    """Decode every frame of ``stream``: (count, frame-0 (H, W), frame-0 display matrix, corrupt indices)."""
    import av

    count, corrupt, first, matrix = 0, [], None, None
    try:
        for frame in container.decode(stream):
            size = (frame.height, frame.width)
            if first is None:
                first, matrix = size, _display_matrix(frame)
            elif size != first:
                raise SourceError(
                    f"frame {count} is {size[0]}x{size[1]} but frame 0 is {first[0]}x{first[1]} "
                    "(videos whose frame size changes are not supported)",
                    path,
                )
            if frame.is_corrupt:
                corrupt.append(count)
            count += 1
    except av.error.FFmpegError as exc:
        raise SourceError(f"cannot decode frame {count} ({exc})", path) from exc
    if first is None:
        raise SourceError("cannot decode video (no decodable frames)", path)
    return count, first, matrix, corrupt


def clear_cache() -> None:
    """Forget cached probes (tests; a file rewritten within the same nanosecond and size)."""
    _probe.cache_clear()
