"""Displayed orientation of a video: the container's display matrix as a rotation and a mirror.

Phones store portrait clips as landscape frames plus a display matrix (MP4 ``tkhd``, or an
H.264/HEVC display-orientation SEI) that players apply. The rules below are FFmpeg's
autorotate rules (``fftools`` ``insert_filter`` for ``ffmpeg``/``ffplay``), so frames come out
as ``ffplay`` shows them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Orientation", "UnsupportedRotation"]


class UnsupportedRotation(ValueError):
    """A display matrix rotating by an angle that is not a multiple of 90 degrees."""


@dataclass(frozen=True)
class Orientation:
    """A lossless rotation/mirror turning coded frames into displayed frames.

    Displayed = ``np.rot90(coded, k)`` (``k`` quarter turns counter-clockwise), then mirrored
    left-right when ``mirror``. The eight values cover every right-angle display matrix.
    """

    k: int = 0
    mirror: bool = False

    @property
    def is_identity(self) -> bool:
        return self.k == 0 and not self.mirror

    def displayed_size(self, coded_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) after the transform, from the coded (H, W)."""
        h, w = coded_size
        return (w, h) if self.k % 2 else (h, w)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The displayed (H', W', C) view of a coded (H, W, C) image (no copy; may have negative strides)."""
        if self.k:
            image = np.rot90(image, self.k)
        return image[:, ::-1] if self.mirror else image

    def __str__(self) -> str:
        turn = f"rotated {90 * self.k} degrees counter-clockwise" if self.k else "not rotated"
        return turn + (", mirrored" if self.mirror else "")

    @classmethod
    def from_display_matrix(cls, matrix: Sequence[int] | None) -> "Orientation":
        """The orientation of an FFmpeg ``AV_PKT_DATA_DISPLAYMATRIX`` (9 int32, 16.16 fixed point).

        ``None`` (no matrix) and singular matrices mean no transform, as in FFmpeg.

        Raises:
            UnsupportedRotation: the matrix rotates by an angle that is not a multiple of 90 degrees.
        """
        if matrix is None:
            return cls()
        m = [float(v) for v in matrix]
        scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
        if scale0 == 0.0 or scale1 == 0.0:
            return cls()
        # av_display_rotation_get() is the counter-clockwise angle; fftools' get_rotation() negates
        # and rounds it, then folds it into [0, 360).
        theta = float(-round(-math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))))
        theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
        if abs(theta - 90) < 1:  # "transpose=cclock_flip" (a plain transpose) or "transpose=clock"
            return cls(3, True) if m[3] > 0 else cls(3, False)
        if abs(theta - 180) < 1:  # "hflip" and/or "vflip"
            hflip, vflip = m[0] < 0, m[4] < 0
            return cls(2, hflip != vflip) if vflip else cls(0, hflip)
        if abs(theta - 270) < 1:  # "transpose=clock_flip" or "transpose=cclock"
            return cls(1, True) if m[3] < 0 else cls(1, False)
        if abs(theta) > 1:
            raise UnsupportedRotation(
                f"the display matrix rotates frames by {(360 - theta) % 360:g} degrees counter-clockwise; "
                "only multiples of 90 are supported"
            )
        return cls(2, True) if m[4] < 0 else cls()  # "vflip"
