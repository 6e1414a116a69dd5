"""The exception tree of vidprop.

Every error a user can cause is an :class:`InputError` (CLI exit code 2) and names the
path or config key at fault; other :class:`VidpropError` s are internal (exit code 1).
"""

from __future__ import annotations

from os import PathLike

__all__ = [
    "VidpropError",
    "InputError",
    "SourceError",
    "MaskError",
    "DavisLayoutError",
    "ConfigError",
    "ModelNotFoundError",
    "CheckpointError",
    "ShapeError",
    "OutputError",
]


class VidpropError(Exception):
    """Base class of all vidprop errors. The CLI exits with ``exit_code``."""

    exit_code = 1


class InputError(VidpropError, ValueError):
    """Bad user input. ``path`` names the file or folder at fault (or None)."""

    exit_code = 2

    def __init__(self, message: str, path: str | PathLike | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class SourceError(InputError):
    """Missing path, empty folder, mixed frame sizes, undecodable image or video."""


class MaskError(InputError):
    """Mask of the wrong size, with no object, or in an unsupported image mode."""


class DavisLayoutError(InputError):
    """DAVIS root without JPEGImages/Annotations/ImageSets, or a sequence not in the split."""


class ConfigError(InputError):
    """Unknown config key or bad value. ``key`` is the dotted key at fault."""

    def __init__(self, message: str, key: str | None = None, path: str | PathLike | None = None):
        self.key = key
        self.reason = message
        super().__init__(f"{key}: {message}" if key else message, path=path)


class ModelNotFoundError(InputError):
    """Model weights could not be found (id, revision, where it looked, how to supply them)."""


class CheckpointError(InputError):
    """A model file or folder that is not what the backend expects (unreadable, missing or unexpected keys, wrong shapes)."""


class ShapeError(InputError):
    """Propagation or scoring inputs that disagree (channels, grid, sizes, NaN)."""


class OutputError(VidpropError):
    """An output file could not be written (disk full, permissions); ``path`` names it."""

    def __init__(self, message: str, path: str | PathLike | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)
