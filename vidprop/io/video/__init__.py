"""Video files: the frame source, the decoding probe, the display orientation and the readers.

- :mod:`.source`: :class:`VideoFileSource`, the :class:`~vidprop.io.frames.FrameSource` of a file;
- :mod:`.probe`: :func:`probe_video`, one decoding pass giving the exact frame count, size and orientation
  (:func:`frame_count_hint`: the container's count, from the header alone);
- :mod:`.orientation`: :class:`Orientation`, FFmpeg's display-matrix rules as rotation + mirror;
- :mod:`.readers`: the registry of decoders behind ``data.video_backend`` (pyav, decord, opencv).

Nothing here imports PyAV, decord or OpenCV until a video is opened, and names load lazily (the
data config imports the reader registry without numpy).
"""

from vidprop.lazy import lazy_exports

_EXPORTS = {
    "AUTO_BACKEND": "readers",
    "BACKEND_CHOICES": "readers",
    "Orientation": "orientation",
    "VIDEO_BACKENDS": "readers",
    "VideoFileSource": "source",
    "VideoInfo": "probe",
    "frame_count_hint": "probe",
    "probe_video": "probe",
    "resolve_backend": "readers",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
