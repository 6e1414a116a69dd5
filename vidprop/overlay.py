"""Masks blended over their frames, for a person to look at (``--overlay``).

:class:`OverlayWriter` streams frames into ``<out>/overlay.mp4`` (OpenCV, mp4v) or into
``<out>/overlay/<frame>.png``. The mp4 is written to a temporary file (a name unique per
process, see :func:`~vidprop.io.atomic.temp_path`) and renamed when the video is finished, so
an interrupted run leaves no half-written overlay behind, and two runs writing into one folder
do not collide; temporaries of killed runs are removed when the next overlay starts there.
MPEG-4 needs an even width and height: frames of odd size are padded by repeating their last
row/column (never cropped), so every frame pixel is in the mp4.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np

from vidprop.io.atomic import remove_stale_temporaries, temp_path
from vidprop.io.masks import VOID_ID, davis_palette

__all__ = ["blend", "pad_to_even", "OverlayWriter", "OVERLAY_FORMATS"]

logger = logging.getLogger(__name__)

OVERLAY_FORMATS = ("mp4", "png")


def blend(image: np.ndarray, ids: np.ndarray, palette: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """Colour each object over ``image``.

    Args:
        image: (H, W, 3) uint8 RGB frame.
        ids: (H, W) uint8 object ids (0 = background, left as is; 255 = void, left as is).
        palette: (N, 3) uint8 colours indexed by id (None = DAVIS palette).
        alpha: opacity of the object colour in 0..1.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    colours = davis_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    if colours.shape[0] < 256:
        colours = np.concatenate([colours, davis_palette()[colours.shape[0] :]])
    objects = (ids != 0) & (ids != VOID_ID)
    out = image.astype(np.float32)
    out[objects] = (1.0 - alpha) * out[objects] + alpha * colours[ids[objects]].astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def pad_to_even(image: np.ndarray) -> np.ndarray:
    """(H, W, C) image padded to even H and W by repeating its last row/column (unchanged if even).

    MPEG-4 encoders (OpenCV's mp4v) need even sizes and would otherwise drop the odd row/column.
    """
    pad_h, pad_w = image.shape[0] % 2, image.shape[1] % 2
    if not (pad_h or pad_w):
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


class OverlayWriter:
    """Writes one video's overlay, frame by frame.

    Args:
        out_dir: the video's output folder.
        fmt: ``"mp4"`` (``out_dir/overlay.mp4``) or ``"png"`` (``out_dir/overlay/<name>.png``).
        palette: colours of the object ids (None = DAVIS palette).
        fps: frame rate of the mp4.
        alpha: opacity of the object colours.
    """

    def __init__(self, out_dir: str | os.PathLike, fmt: str = "mp4", palette: np.ndarray | None = None, fps: float = 24.0, alpha: float = 0.5):
        if fmt not in OVERLAY_FORMATS:
            raise ValueError(f"overlay format must be one of {OVERLAY_FORMATS}, got {fmt!r}")
        self.out_dir = Path(out_dir)
        self.fmt = fmt
        self.palette = palette
        self.fps = fps
        self.alpha = alpha
        self._writer = None
        self._tmp: Path | None = None
        self._png_started = False

    @property
    def path(self) -> Path:
        """The overlay's final path (a file for mp4, a folder for png)."""
        return self.out_dir / ("overlay.mp4" if self.fmt == "mp4" else "overlay")

    def add(self, image: np.ndarray, ids: np.ndarray, name: str) -> None:
        """Append one frame: (H, W, 3) uint8 RGB ``image`` with (H, W) uint8 ``ids``, named ``name``."""
        blended = blend(image, ids, self.palette, self.alpha)
        if self.fmt == "mp4" and self._open_video(blended.shape[:2]):
            self._writer.write(np.ascontiguousarray(pad_to_even(blended)[:, :, ::-1]))
        else:
            self._write_png(blended, name)

    def _open_video(self, size: tuple[int, int]) -> bool:
        if self._writer is not None:
            return True
        import cv2

        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        height, width = size[0] + size[0] % 2, size[1] + size[1] % 2
        if (height, width) != tuple(size):
            logger.info(
                "%s: frames are %dx%d (HxW); the mp4 overlay is padded to %dx%d (MPEG-4 needs even sizes)",
                self.path, size[0], size[1], height, width,
            )
        self._tmp = temp_path(self.path)
        writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
        if not writer.isOpened():
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
            logger.warning("%s: OpenCV cannot write mp4 here; writing the overlay as PNG frames instead", self._tmp)
            self.fmt = "png"
            return False
        self._writer = writer
        return True

    def _write_png(self, blended: np.ndarray, name: str) -> None:
        from PIL import Image

        from vidprop.io.atomic import atomic_save

        if not self._png_started:
            self._png_started = True
            remove_stale_temporaries(self.path)
        atomic_save(self.path / f"{name}.png", lambda tmp: Image.fromarray(blended).save(tmp, format="PNG"))

    def close(self) -> Path:
        """Finish the overlay (renames the mp4 into place). Returns its path."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop an unfinished mp4 (PNG frames already written stay)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
