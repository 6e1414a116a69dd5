"""Mask I/O: indexed (palette) or grayscale PNGs of object ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vidprop.errors import MaskError

VOID_ID = 255


def read_label_image(path: str | Path) -> np.ndarray:
    """Read a palette ('P') or grayscale ('L') PNG of object ids.

    Returns:
        (H, W) uint8 array of object ids (255 = void).

    Raises:
        MaskError: missing, unreadable or truncated file, or an image in another mode (e.g. RGB).
    """
    path = Path(path)
    if not path.is_file():
        raise MaskError("mask file does not exist", path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode not in ("P", "L", "1", "I;16", "I"):
                raise MaskError(f"unsupported image mode {mode!r} (expected a palette 'P' or grayscale 'L' PNG of object ids)", path)
            arr = np.asarray(img)
    except MaskError:
        raise
    except Exception as exc:  # PIL raises several types for broken files
        raise MaskError(f"cannot read mask image ({exc})", path) from exc
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255:
            raise MaskError(f"object ids above 255 (max {int(arr.max())})", path)
        arr = arr.astype(np.uint8)
    return arr
