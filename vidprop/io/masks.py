"""Mask I/O: indexed (palette) or grayscale PNGs of object ids, and label tensors.

Object ids in a mask may be non-contiguous (1, 3, 7); 0 is background and 255
(:data:`VOID_ID`) is the DAVIS "void" label (not scored, never propagated). Propagation works
on label *channels* 0..K-1 (channel 0 = background); :class:`ObjectIds` maps between channels
and the original ids so that outputs carry the ids of the input mask.

Mask files must be lossless PNGs: JPEG compression rings along every edge and turns a
two-valued mask into dozens of ids. Like frames, masks are read in displayed orientation (a PNG
``eXIf`` orientation is applied; masks drawn in an editor over a rotated photo match its frame).
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vidprop.errors import MaskError, ShapeError
from vidprop.io.atomic import atomic_save
from vidprop.io.frames import natural_key
from vidprop.io.image_folder import apply_orientation, exif_orientation

if TYPE_CHECKING:
    import torch

__all__ = [
    "VOID_ID",
    "ObjectIds",
    "LabelMask",
    "davis_palette",
    "read_label_image",
    "check_mask_file",
    "list_mask_files",
    "read_mask",
    "write_mask",
    "labels_to_onehot",
    "onehot_to_labels",
    "suspicious_objects",
    "warn_suspicious_objects",
]

logger = logging.getLogger(__name__)

VOID_ID = 255

_LABEL_MODES = ("P", "L", "1", "I;16", "I")


def _as_numpy(array) -> np.ndarray:
    """A numpy view of an array or a torch tensor (torch is imported only by callers that use it)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


_NOT_PNG = (
    "masks must be lossless PNG files (indexed or grayscale, pixel value = object id), got a {fmt} file; "
    "save the mask as PNG"
)
_NOT_LOSSLESS = {
    fmt: "masks must be lossless PNG files, got a {fmt} file: lossy compression adds stray object ids along "
    "every edge (a white-on-black JPEG mask reads as dozens of objects); save the mask as PNG (indexed or "
    "grayscale, pixel value = object id), or pass an (H, W) integer array in Python"
    for fmt in ("JPEG", "MPO", "JPEG2000", "WEBP", "AVIF", "HEIF")
}


def check_mask_file(path: str | Path) -> Path:
    """``path`` as a Path if it is a file; else a :class:`MaskError` saying what it is instead.

    A folder gets a message that says so and what to give instead: one of its PNGs as the
    mask of one video, or the folder as ``--masks``.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        pngs = list_mask_files(path)
        example = f", e.g. --mask {pngs[0]}" if pngs else ""
        raise MaskError(
            "is a folder, not a mask file: --mask takes one PNG file, the mask of the first frame (or of "
            f"--mask-frame NAME){example}; masks of many videos (DIR/<video>.png, or DIR/<video>/<frame>.png "
            "named like the frames) go with --masks DIR",
            path,
        )
    raise MaskError("mask file does not exist", path)


def _read_label_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W) uint8 ids and the (256, 3) palette of a 'P' image (None for grayscale)."""
    check_mask_file(path)
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise MaskError(_NOT_LOSSLESS.get(img.format, _NOT_PNG).format(fmt=img.format), path)
            orientation = exif_orientation(img)
            img.load()
            mode = img.mode
            if mode not in _LABEL_MODES:
                raise MaskError(f"unsupported image mode {mode!r} (expected a palette 'P' or grayscale 'L' PNG of object ids)", path)
            arr = np.asarray(img)
            raw_palette = img.getpalette() if mode == "P" else None
    except MaskError:
        raise
    except Exception as exc:  # PIL raises several types for broken files
        raise MaskError(f"cannot read mask image ({exc})", path) from exc
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise MaskError(f"object ids outside 0..255 (min {int(arr.min())}, max {int(arr.max())})", path)
        arr = arr.astype(np.uint8)
    arr = apply_orientation(arr, orientation)
    palette = None
    if raw_palette is not None:
        # Pillow may return fewer than 256 entries; fill the rest from the DAVIS palette so
        # every id still gets a distinct colour when written back.
        palette = davis_palette()
        entries = np.asarray(raw_palette, dtype=np.uint8).reshape(-1, 3)[:256]
        palette[: len(entries)] = entries
    return arr, palette


def list_mask_files(folder: str | Path) -> list[Path]:
    """The PNG files directly in ``folder``, in natural order ("2.png" before "10.png"; for
    zero-padded DAVIS names that is plain lexicographic order). Empty when there are none."""
    files = (p for p in Path(folder).iterdir() if p.suffix.lower() == ".png" and p.is_file())
    return sorted(files, key=lambda p: natural_key(p.name))


def read_label_image(path: str | Path) -> np.ndarray:
    """Read a palette ('P') or grayscale ('L') PNG of object ids.

    Returns:
        (H, W) uint8 array of object ids (255 = void).

    Raises:
        MaskError: missing, unreadable or truncated file, or an image in another mode (e.g. RGB).
    """
    return _read_label_image(Path(path))[0]


@functools.lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((index >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    palette.setflags(write=False)
    return palette


def davis_palette() -> np.ndarray:
    """The DAVIS palette, which is the PASCAL-VOC colour map, generated in code.

    Id ``i``'s colour takes bits 0, 1, 2 of ``i`` as the top bits of R, G, B, bits 3, 4, 5 as the
    next ones, and so on (0 black, 1 dark red, 2 dark green, ...; 255 = (224, 224, 192)).

    Returns:
        (256, 3) uint8 array (a fresh, writable copy).
    """
    return _palette().copy()


@dataclass(frozen=True)
class ObjectIds:
    """Original object ids of label channels 1..K-1 (channel 0 is background, id 0).

    Attributes:
        ids: the ids in channel order, each in 1..254 and unique, e.g. (1, 3, 7).
    """

    ids: tuple[int, ...]

    def __post_init__(self):
        ids = tuple(int(i) for i in self.ids)
        bad = [i for i in ids if not 1 <= i < VOID_ID]
        if bad:
            raise MaskError(f"object ids must be in 1..{VOID_ID - 1} (0 is background, {VOID_ID} void), got {bad}")
        if len(set(ids)) != len(ids):
            raise MaskError(f"object ids must be unique, got {ids}")
        object.__setattr__(self, "ids", ids)

    @classmethod
    def from_mask(cls, ids: np.ndarray) -> "ObjectIds":
        """The objects present in an (H, W) id map, in increasing id order (0 and void excluded)."""
        counts = np.bincount(np.asarray(ids, dtype=np.uint8).ravel(), minlength=256)
        return cls(tuple(int(i) for i in np.nonzero(counts)[0] if i not in (0, VOID_ID)))

    @property
    def num_channels(self) -> int:
        """K = number of objects + 1 (background)."""
        return len(self.ids) + 1

    def to_ids(self, channel_map) -> np.ndarray:
        """Channel indices -> original ids.

        Args:
            channel_map: (H, W) integer array or tensor with values in 0..K-1.

        Returns:
            (H, W) uint8 array of object ids (0 = background).

        Raises:
            ShapeError: a value outside 0..K-1.
        """
        channels = _as_numpy(channel_map)
        if channels.size and (channels.min() < 0 or channels.max() >= self.num_channels):
            raise ShapeError(
                f"channel map values must be in 0..{self.num_channels - 1} for {self.num_channels} channels, "
                f"got {int(channels.min())}..{int(channels.max())}"
            )
        lut = np.array((0, *self.ids), dtype=np.uint8)
        return lut[channels]

    def to_channels(self, id_map: np.ndarray) -> np.ndarray:
        """Original ids -> channel indices; void (255) becomes background (channel 0).

        Args:
            id_map: (H, W) uint8 array of object ids.

        Returns:
            (H, W) uint8 array of channel indices in 0..K-1.

        Raises:
            MaskError: an id that is not one of ``ids`` (nor 0 or void).
        """
        id_map = np.asarray(id_map, dtype=np.uint8)
        counts = np.bincount(id_map.ravel(), minlength=256)
        unknown = [int(i) for i in np.nonzero(counts)[0] if i not in (0, VOID_ID) and i not in self.ids]
        if unknown:
            raise MaskError(f"mask contains object ids {unknown} that are not among the known objects {list(self.ids)}")
        lut = np.zeros(256, dtype=np.uint8)
        lut[list(self.ids)] = np.arange(1, self.num_channels, dtype=np.uint8)
        return lut[id_map]


@dataclass(frozen=True, eq=False)
class LabelMask:
    """A first-frame mask as read from disk.

    Attributes:
        ids: (H, W) uint8 array of original object ids (0 background, 255 void).
        object_ids: the objects present, in channel order.
        palette: (256, 3) uint8 palette of the file, or None for a grayscale PNG.
    """

    ids: np.ndarray
    object_ids: ObjectIds
    palette: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return int(self.ids.shape[0]), int(self.ids.shape[1])

    @property
    def has_void(self) -> bool:
        """Whether any pixel is void (255)."""
        return bool((self.ids == VOID_ID).any())

    def channels(self) -> np.ndarray:
        """(H, W) uint8 channel map (void -> background), see :meth:`ObjectIds.to_channels`."""
        return self.object_ids.to_channels(self.ids)


def read_mask(path: str | Path, expected_size: tuple[int, int] | None = None) -> LabelMask:
    """Read a first-frame mask (palette or grayscale PNG of object ids).

    Args:
        path: the PNG file.
        expected_size: (H, W) of the frames; the mask must match it exactly.

    Returns:
        The mask with its objects (increasing id order) and its palette (None for grayscale).

    Logs a warning (once per mask file and content) when objects look like anti-aliasing
    residue, see :func:`suspicious_objects`.

    Raises:
        MaskError: missing or unreadable file, not a PNG (JPEG and other lossy formats are
            refused), an RGB (or other) image mode, a size differing from ``expected_size``, or no
            object (only background and void).
    """
    path = Path(path)
    ids, palette = _read_label_image(path)
    if expected_size is not None and tuple(ids.shape) != tuple(expected_size):
        raise MaskError(
            f"mask is {ids.shape[0]}x{ids.shape[1]} (HxW) but the frames are "
            f"{expected_size[0]}x{expected_size[1]}; the first-frame mask must have the frames' size",
            path,
        )
    object_ids = ObjectIds.from_mask(ids)
    if not object_ids.ids:
        raise MaskError(no_object_message(ids), path)
    stat = path.stat()
    warn_suspicious_objects(ids, path, key=(str(path.resolve()), stat.st_mtime_ns, stat.st_size))
    return LabelMask(ids=ids, object_ids=object_ids, palette=palette)


def no_object_message(ids: np.ndarray) -> str:
    """Why a first-frame mask has no object, with the fix for binary 0/255 masks."""
    if (np.asarray(ids) == VOID_ID).any():
        return (
            f"mask has no object: its pixels are only background (0) and {VOID_ID}, which is void (not an "
            f"object, DAVIS convention); for a binary 0/{VOID_ID} mask, give the object another id, e.g. 1"
        )
    return "mask has no object (every pixel is background 0)"


TINY_OBJECT_FRACTION = 1e-4
"""Objects smaller than this fraction of the mask (and than 16 pixels at least) are suspicious."""

_warned: set = set()


def suspicious_objects(ids: np.ndarray) -> dict[int, int]:
    """Objects that look like anti-aliasing residue rather than drawn objects.

    An object is suspicious when it has fewer than ``max(16, TINY_OBJECT_FRACTION * H * W)``
    pixels, or when none of its pixels has all four neighbours of its own id (a line one pixel
    thin). Anti-aliased edges of a drawn mask give exactly such ids: each blended edge colour
    becomes a palette entry, hence an object, along the boundary of a real one.

    Args:
        ids: (H, W) uint8 object ids.

    Returns:
        {object id: pixel count} of the suspicious objects, in id order (0 and void excluded).
    """
    ids = np.asarray(ids, dtype=np.uint8)
    counts = np.bincount(ids.ravel(), minlength=256)
    interior = np.ones(ids.shape, dtype=bool)  # pixels whose in-image 4-neighbours share their id
    interior[1:] &= ids[1:] == ids[:-1]
    interior[:-1] &= ids[:-1] == ids[1:]
    interior[:, 1:] &= ids[:, 1:] == ids[:, :-1]
    interior[:, :-1] &= ids[:, :-1] == ids[:, 1:]
    inner = np.bincount(ids[interior], minlength=256)
    few = max(16, int(TINY_OBJECT_FRACTION * ids.size))
    return {
        int(k): int(counts[k])
        for k in np.flatnonzero(counts)
        if k not in (0, VOID_ID) and (counts[k] < few or inner[k] == 0)
    }


def warn_suspicious_objects(ids: np.ndarray, where: str | Path | None = None, key=None) -> dict[int, int]:
    """Log one warning listing :func:`suspicious_objects` (ids and pixel counts).

    Args:
        ids: (H, W) uint8 object ids.
        where: the mask's path (or a name) for the message.
        key: a hashable identity of the mask (path, mtime, size); a mask already warned about
            under the same key is not warned about again. None: always warn.

    Returns:
        The suspicious objects ({id: pixels}); empty when there are none.
    """
    found = suspicious_objects(ids)
    if not found or (key is not None and key in _warned):
        return found
    if key is not None:
        _warned.add(key)
    listed = ", ".join(f"id {k} ({n} px)" for k, n in found.items())
    logger.warning(
        "%s: %d object(s) of only a few pixels or one pixel thin: %s. Anti-aliased edges of a drawn mask show "
        "up as such extra ids; they are propagated as objects. If they are not objects, set them to 0 (or to "
        "their object's id) or redraw the mask without anti-aliasing.",
        where if where is not None else "mask", len(found), listed,
    )
    return found


def write_mask(path: str | Path, ids: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write an (H, W) id map as an indexed PNG, atomically.

    Args:
        path: destination (.png); parent folders are created.
        ids: (H, W) integer array of object ids in 0..255.
        palette: (N, 3) uint8 colours, N <= 256 (e.g. ``LabelMask.palette``); None = DAVIS palette.

    Returns:
        ``path`` as a Path.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ShapeError(f"a mask must be an (H, W) integer array, got shape {ids.shape} dtype {ids.dtype}", path)
    if ids.dtype != np.uint8:
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ShapeError(f"object ids must be in 0..255, got {int(ids.min())}..{int(ids.max())}", path)
        ids = ids.astype(np.uint8)
    colours = davis_palette() if palette is None else np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= colours.shape[0] <= 256:
        raise ShapeError(f"a palette must be an (N, 3) array with N <= 256, got shape {colours.shape}", path)
    image = Image.fromarray(np.ascontiguousarray(ids))  # mode "L"; putpalette makes it "P"
    image.putpalette(colours.astype(np.uint8).ravel().tolist())
    return atomic_save(path, lambda tmp: image.save(tmp, format="PNG"))


def labels_to_onehot(channel_map, num_channels: int, grid_size: tuple[int, int]) -> "torch.Tensor":
    """One-hot labels at feature resolution.

    The channel map is resized with PIL NEAREST to the feature grid, as DIFT's and DINO's
    ``read_seg`` do, then one-hot encoded.

    Args:
        channel_map: (H, W) integer array or tensor of channel indices in 0..K-1.
        num_channels: K.
        grid_size: (h, w) feature grid in cells.

    Returns:
        (K, h, w) float32 tensor of 0/1.

    Raises:
        ShapeError: not 2-D, or a value outside 0..K-1.
    """
    import torch

    channels = _as_numpy(channel_map)
    if channels.ndim != 2:
        raise ShapeError(f"channel map must be (H, W), got shape {channels.shape}")
    if not 1 <= num_channels <= 256:
        raise ShapeError(f"num_channels must be in 1..256, got {num_channels}")
    if channels.size and (channels.min() < 0 or channels.max() >= num_channels):
        raise ShapeError(f"channel map values must be in 0..{num_channels - 1}, got {int(channels.min())}..{int(channels.max())}")
    height, width = int(grid_size[0]), int(grid_size[1])
    small = Image.fromarray(channels.astype(np.uint8)).resize((width, height), Image.NEAREST)
    index = torch.from_numpy(np.asarray(small, dtype=np.int64))
    return torch.nn.functional.one_hot(index, num_channels).permute(2, 0, 1).float().contiguous()


def onehot_to_labels(onehot: "torch.Tensor") -> "torch.Tensor":
    """Channel map from (soft) labels: the argmax channel per cell (the first on ties).

    Args:
        onehot: (K, h, w) tensor.

    Returns:
        (h, w) int64 tensor of channel indices.
    """
    if onehot.ndim != 3:
        raise ShapeError(f"labels must be (K, h, w), got shape {tuple(onehot.shape)}")
    return onehot.argmax(dim=0)
