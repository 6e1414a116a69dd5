"""A folder of image frames (jpg/jpeg/png), in natural order."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from vidprop.errors import SourceError
from vidprop.io.frames import IMAGE_EXTENSIONS, Frame, is_image_file, natural_key, register_source

__all__ = ["ImageFolderSource", "read_image"]

logger = logging.getLogger(__name__)


def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as exc:  # PIL raises several types for broken or foreign files
        raise SourceError(f"cannot read image header ({exc})", path) from exc
    return height, width


def read_image(path: str | Path) -> np.ndarray:
    """Decode one image file to RGB.

    PIL is used (not OpenCV) because it raises on truncated JPEGs/PNGs on every version,
    where some OpenCV versions return a partly grey image with only a warning. On the DAVIS
    JPEGs both give identical pixels (same libjpeg-turbo, same IDCT).

    Returns:
        (H, W, 3) uint8 RGB array.

    Raises:
        SourceError: missing, unreadable or truncated file.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "RGB":
                img = img.convert("RGB")
            return np.asarray(img)
    except FileNotFoundError as exc:
        raise SourceError("image file does not exist", path) from exc
    except Exception as exc:
        raise SourceError(f"cannot decode image ({exc})", path) from exc


@register_source("folder of images", Path.is_dir)
class ImageFolderSource:
    """Frames from a folder of jpg/jpeg/png files, sorted naturally (``frame2`` before ``frame10``).

    Opening reads every file's header (cheap) to check that all frames have one size; pixels
    are decoded only while iterating.

    Args:
        path: the folder. Files with other extensions, hidden files and sub-folders are ignored.

    Attributes:
        path: the folder.
        name: the folder name (e.g. the DAVIS sequence name).
        files: frame files in order.
        names: file stems in order.
        size: (H, W) of every frame.

    Raises:
        SourceError: missing path, not a folder, no images, two files with the same stem,
            an unreadable header, or frames of different sizes.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            raise SourceError("frame folder does not exist", path)
        if not path.is_dir():
            raise SourceError("not a folder (expected a folder of jpg/jpeg/png frames)", path)
        # Hidden files are skipped: macOS writes "._00000.jpg" resource forks next to real frames.
        files = sorted(
            (p for p in path.iterdir() if not p.name.startswith(".") and p.is_file() and is_image_file(p)),
            key=lambda p: natural_key(p.name),
        )
        if not files:
            raise SourceError(f"no image frames in folder (looked for {', '.join(IMAGE_EXTENSIONS)})", path)
        names = [p.stem for p in files]
        if len(set(names)) != len(names):
            seen: dict[str, Path] = {}
            for p in files:
                if p.stem in seen:
                    raise SourceError(f"two frames share the name {p.stem!r} ({seen[p.stem].name}, {p.name})", path)
                seen[p.stem] = p
        size = _header_size(files[0])
        for p in files[1:]:
            other = _header_size(p)
            if other != size:
                raise SourceError(
                    f"frames differ in size: {p.name} is {other[0]}x{other[1]} (HxW) but "
                    f"{files[0].name} is {size[0]}x{size[1]}; all frames of a video must have one size",
                    path,
                )
        self.path = path
        self.name = path.name
        self.files = files
        self.names = names
        self.size = size
        logger.debug("%s: %d frames of %dx%d", path, len(files), *size)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.path)!r}, frames={len(self)}, size={self.size})"

    def read(self, index: int) -> Frame:
        """Decode frame ``index`` (random access)."""
        path = self.files[index]
        image = read_image(path)
        if image.shape[:2] != self.size:  # a file replaced after opening
            raise SourceError(f"frame size changed since the folder was opened (expected {self.size}, got {image.shape[:2]})", path)
        return Frame(index=index if index >= 0 else len(self) + index, name=self.names[index], size=self.size, image=image)

    def __iter__(self) -> Iterator[Frame]:
        for index in range(len(self.files)):
            yield self.read(index)
