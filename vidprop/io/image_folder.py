"""A folder of image frames (jpg/jpeg/png), in natural order.

Frames are returned as they are displayed: an EXIF orientation (phone photos) is applied, as
image viewers, browsers and ``cv2.imread`` do, and 16-bit PNGs (medical, infrared and scientific
cameras) are scaled to 8 bits by the 16-bit range, ``round(v * 255 / 65535)``, the same for every
frame (no per-frame stretching, which would make brightness flicker).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from vidprop.errors import SourceError
from vidprop.io.frames import IMAGE_EXTENSIONS, Frame, is_image_file, natural_key, register_source

__all__ = ["ImageFolderSource", "list_frame_files", "read_image", "exif_orientation", "apply_orientation"]

logger = logging.getLogger(__name__)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> how the stored pixels become the displayed ones (PIL's exif_transpose).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8; 1 = as stored) of an opened, not yet decoded image.

    Only EXIF data found while opening is used (a JPEG's APP1 segment, a PNG's eXIf chunk before
    the pixels), so reading it never decodes pixels and a header check and a decode agree.
    """
    data = img.info.get("exif")
    if not data:
        return 1
    try:
        exif = Image.Exif()
        exif.load(data)
        value = int(exif.get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF: the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Stored (H, W, ...) pixels -> displayed pixels for an EXIF ``orientation`` (a contiguous copy
    unless it is 1). Orientations 5..8 swap height and width."""
    if orientation == 1:
        return array
    return np.ascontiguousarray(_ORIENT[orientation](array))


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC
_JPEG_END = b"\xff\xd9"  # the EOI marker


def _ends(path: Path) -> tuple[bytes, bytes]:
    """The first 26 and the last 12 bytes of a file (one open, two small reads)."""
    with open(path, "rb") as fh:
        head = fh.read(26)
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - len(_PNG_END)))
        return head, fh.read()


def _png_bit_depth(head: bytes) -> int | None:
    """Sample depth from a PNG's IHDR (the first chunk, in ``head``), or None for other files."""
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24]


def _ends_as_written(fmt: str | None, tail: bytes) -> bool:
    """Whether a file ends with its format's end marker (PNG IEND chunk, JPEG EOI); a truncated
    file (an interrupted copy or download) does not."""
    if fmt == "PNG":
        return tail.endswith(_PNG_END)
    if fmt in ("JPEG", "MPO"):
        return tail.endswith(_JPEG_END)
    return True


def _check_complete(path: Path, fmt: str | None, tail: bytes) -> None:
    """Raise :class:`SourceError` for a truncated frame: no end marker and the data does not decode.

    Files without the end marker are decoded in full before being refused, since some cameras
    append data after a JPEG's EOI marker.
    """
    if _ends_as_written(fmt, tail):
        return
    try:
        read_image(path)
    except SourceError as exc:
        raise SourceError(
            f"truncated or damaged image: it does not end with the {fmt} end marker and does not decode ({exc.message})",
            path,
        ) from None


def _header(path: Path) -> tuple[tuple[int, int], int, bool]:
    """Displayed (H, W), EXIF orientation and whether the file is a 16-bit PNG, without decoding
    pixels; a file that does not end with its format's end marker is decoded (see :func:`_check_complete`)."""
    try:
        with Image.open(path) as img:
            (width, height), orientation, fmt = img.size, exif_orientation(img), img.format
        head, tail = _ends(path)
    except Exception as exc:  # PIL raises several types for broken or foreign files
        raise SourceError(f"cannot read image header ({exc})", path) from exc
    _check_complete(path, fmt, tail)
    return ((width, height) if orientation >= 5 else (height, width)), orientation, _png_bit_depth(head) == 16


def _scale_16_to_8(array: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by the dtype's range: round(v * 255 / 65535) = round(v / 257), exactly."""
    return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _read_png16(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a 16-bit PNG (grey, grey+alpha, RGB or RGBA; alpha dropped).

    Pillow keeps only the high byte of 16-bit colour PNGs and clips 16-bit grey to white when
    converting, so OpenCV decodes these (libpng: a damaged file gives None, not a partial image).
    """
    import cv2

    array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)  # no EXIF rotation
    if array is None or array.dtype != np.uint16:
        raise SourceError("cannot decode 16-bit PNG (damaged or truncated file)", path)
    if array.ndim == 2:
        return np.repeat(_scale_16_to_8(array)[:, :, None], 3, axis=2)
    return np.ascontiguousarray(_scale_16_to_8(array[:, :, 2::-1]))  # BGR(A) -> RGB


def read_image(path: str | Path) -> np.ndarray:
    """Decode one image file to RGB, as displayed.

    PIL is used (not OpenCV) because it raises on truncated JPEGs/PNGs on every version,
    where some OpenCV versions return a partly grey image with only a warning. On the DAVIS
    JPEGs both give identical pixels (same libjpeg-turbo, same IDCT). 16-bit PNGs are decoded
    at full depth and scaled to 8 bits by the 16-bit range; an EXIF orientation is applied.

    Returns:
        (H, W, 3) uint8 RGB array in displayed orientation.

    Raises:
        SourceError: missing, unreadable or truncated file.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            orientation = exif_orientation(img)
            if img.format == "PNG" and _png_bit_depth(_ends(path)[0]) == 16:
                array = _read_png16(path)
            else:
                img.load()
                array = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except FileNotFoundError as exc:
        raise SourceError("image file does not exist", path) from exc
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"cannot decode image ({exc})", path) from exc
    return apply_orientation(array, orientation)


def list_frame_files(folder: str | Path) -> list[Path]:
    """The frame files of ``folder`` in natural order: jpg/jpeg/png files directly in it, hidden
    files skipped (macOS writes "._00000.jpg" resource forks next to real frames)."""
    return sorted(
        (p for p in Path(folder).iterdir() if not p.name.startswith(".") and p.is_file() and is_image_file(p)),
        key=lambda p: natural_key(p.name),
    )


def _images_not_read(folder: Path) -> list[str]:
    """Names of the files in ``folder`` that Pillow knows as images but that are not frames (BMP,
    TIFF, WebP, ...), in natural order."""
    known = Image.registered_extensions()
    return sorted(
        (p.name for p in folder.iterdir()
         if not p.name.startswith(".") and p.suffix.lower() in known and not is_image_file(p) and p.is_file()),
        key=natural_key,
    )


class ImageFolderSource:
    """Frames from a folder of jpg/jpeg/png files, sorted naturally (``frame2`` before ``frame10``).

    Opening reads every file's header and its last bytes (cheap: no pixel is decoded) to check
    that all frames have one size and that none is truncated (a PNG must end with its IEND
    chunk, a JPEG with its EOI marker; a file that does not is decoded in full, and refused if
    that fails). Damage inside a complete file (corrupt compressed data) is found only when the
    frame is decoded, while iterating.

    Args:
        path: the folder. Files with other extensions, hidden files and sub-folders are ignored.

    Attributes:
        path: the folder.
        name: the folder name (e.g. the DAVIS sequence name).
        files: frame files in order.
        names: file stems in order.
        size: (H, W) of every frame, as displayed (after the EXIF orientation).

    Raises:
        SourceError: missing path, not a folder, no images, two files with the same stem,
            an unreadable header, a truncated file, or frames of different sizes.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            raise SourceError("frame folder does not exist", path)
        if not path.is_dir():
            raise SourceError("not a folder (expected a folder of jpg/jpeg/png frames)", path)
        files = list_frame_files(path)
        if not files:
            raise SourceError(f"no image frames in folder (looked for {', '.join(IMAGE_EXTENSIONS)})", path)
        names = [p.stem for p in files]
        if len(set(names)) != len(names):
            seen: dict[str, Path] = {}
            for p in files:
                if p.stem in seen:
                    raise SourceError(f"two frames share the name {p.stem!r} ({seen[p.stem].name}, {p.name})", path)
                seen[p.stem] = p
        size, orientation, deep = _header(files[0])
        rotated, sixteen_bit = int(orientation != 1), int(deep)
        for p in files[1:]:
            other, orientation, deep = _header(p)
            rotated += orientation != 1
            sixteen_bit += deep
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
        other = _images_not_read(path)
        if other:  # a frame saved as BMP or TIFF among JPEGs would leave a gap without a word
            shown = ", ".join(other[:8]) + (f" and {len(other) - 8} more" if len(other) > 8 else "")
            logger.warning("%s: %d image file(s) in formats not read as frames (only %s), skipped: %s",
                           path, len(other), "/".join(IMAGE_EXTENSIONS), shown)
        if rotated:
            logger.info("%s: %d of %d frames carry an EXIF orientation; they are read as displayed (rotated/flipped)", path, rotated, len(files))
        if sixteen_bit:
            logger.info("%s: %d of %d frames are 16-bit PNGs; scaled to 8 bits by the 16-bit range (v * 255 / 65535)", path, sixteen_bit, len(files))

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


register_source("folder of images", Path.is_dir)(lambda path, data=None: ImageFolderSource(path))
