"""Video files: the frame source, the decoding probe, the display orientation and the readers.

- :mod:`.source`: :class:`VideoFileSource`, the :class:`~vidprop.io.frames.FrameSource` of a file;
- :mod:`.probe`: :func:`probe_video`, one decoding pass giving the exact frame count, size and orientation;
- :mod:`.orientation`: :class:`Orientation`, FFmpeg's display-matrix rules as rotation + mirror;
- :mod:`.readers`: the registry of decoders behind ``data.video_backend`` (pyav, decord, opencv).

Nothing here imports PyAV, decord or OpenCV until a video is opened.
"""

from vidprop.io.video.orientation import Orientation
from vidprop.io.video.probe import VideoInfo, probe_video
from vidprop.io.video.readers import AUTO_BACKEND, BACKEND_CHOICES, VIDEO_BACKENDS, resolve_backend
from vidprop.io.video.source import VideoFileSource

__all__ = [
    "AUTO_BACKEND",
    "BACKEND_CHOICES",
    "Orientation",
    "VIDEO_BACKENDS",
    "VideoFileSource",
    "VideoInfo",
    "probe_video",
    "resolve_backend",
]
