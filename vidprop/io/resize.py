"""Resize policy: turn a decoded frame into model input.

Matches DIFT's DAVIS evaluation (``read_frame`` in Tsingularity/dift ``eval_davis.py``, itself
from DINO's ``eval_video_segmentation.py``):

* the short side becomes ``short_side`` (480); the long side is scaled by the same factor and
  floored to a multiple of ``multiple`` (32), so 854x480 -> 832x480 (W x H) and the aspect
  ratio changes slightly (the reference does the same, it does not crop);
* bilinear resampling with **OpenCV** (``cv2.resize``, default ``INTER_LINEAR``) on the uint8
  image, as the reference does. PIL's bilinear filter is not the same: when downscaling it
  widens its support (antialiasing), and torch's ``interpolate`` works on floats without
  rounding to uint8 in between; either would change the features slightly;
* values: ``x / 255``, then ``(x - 0.5) / 0.5``, in float32, giving [-1, 1]. The same float32
  operations as the reference, so the tensors are bit-identical to its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vidprop.config_base import check
from vidprop.errors import ShapeError

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["ResizePolicy"]


@dataclass(frozen=True)
class ResizePolicy:
    """Short side to ``short_side`` pixels, long side floored to a multiple of ``multiple``.

    Attributes:
        short_side: target length of the shorter frame side, in pixels; a multiple of
            ``multiple`` so that both sides are.
        multiple: the long side is floored to a multiple of this (the UNet's total stride).
    """

    short_side: int = 480
    multiple: int = 32

    def __post_init__(self):
        check(isinstance(self.multiple, int) and self.multiple >= 1, "multiple", self.multiple, "an integer >= 1")
        check(isinstance(self.short_side, int) and self.short_side >= self.multiple, "short_side", self.short_side,
              f"an integer >= multiple ({self.multiple})")
        lower = self.short_side // self.multiple * self.multiple
        check(self.short_side % self.multiple == 0, "short_side", self.short_side,
              f"a multiple of multiple={self.multiple}, e.g. {lower} or {lower + self.multiple}")

    def target_size(self, size_hw: tuple[int, int]) -> tuple[int, int]:
        """Model input size (h, w) in pixels for an original frame size (H, W)."""
        height, width = int(size_hw[0]), int(size_hw[1])
        if height <= 0 or width <= 0:
            raise ShapeError(f"frame size must be positive, got {height}x{width} (HxW)")
        if height > width:
            return int(self.short_side * height / width) // self.multiple * self.multiple, self.short_side
        return self.short_side, int(self.short_side * width / height) // self.multiple * self.multiple

    def grid_size(self, size_hw: tuple[int, int], stride: int) -> tuple[int, int]:
        """Feature grid (h, w) in cells for an original frame size (H, W) and a feature stride."""
        height, width = self.target_size(size_hw)
        return height // stride, width // stride

    def __call__(self, image: "np.ndarray") -> "torch.Tensor":
        """Resize and scale one frame.

        Args:
            image: (H, W, 3) uint8 RGB array.

        Returns:
            (3, h, w) float32 tensor in [-1, 1], with (h, w) = ``target_size((H, W))``.
        """
        # Imported here: DataConfig validates through this class, and configs load without OpenCV or torch.
        import cv2
        import numpy as np
        import torch

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ShapeError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
        height, width = self.target_size(image.shape[:2])
        if (height, width) != image.shape[:2]:
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        # numpy, not torch: torch's intra-op thread pool called next to a video decoder's threads
        # ran these three element-wise ops ~10x slower on a 2-core machine (tools/bench_loader.py).
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        chw /= 255.0
        chw -= 0.5
        chw /= 0.5
        return torch.from_numpy(chw)
