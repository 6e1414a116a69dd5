"""Logging and progress bars.

The library never prints: every module logs to ``logging.getLogger(__name__)`` under the
``vidprop`` root, which has a NullHandler. The CLI calls :func:`set_verbosity` to install
a handler. All progress bars go through :func:`progress`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

__all__ = ["get_logger", "set_verbosity", "progress", "set_progress_enabled"]

T = TypeVar("T")

_ROOT = logging.getLogger("vidprop")
_ROOT.addHandler(logging.NullHandler())

_progress_enabled = True


def get_logger(name: str) -> logging.Logger:
    """Return the logger ``name`` (use ``__name__``); it lives under the ``vidprop`` root."""
    return logging.getLogger(name)


def set_verbosity(level: int | str | None = None) -> None:
    """Install one stderr handler on the ``vidprop`` root and set its level.

    ``level`` defaults to ``$VIDPROP_VERBOSITY`` or INFO.
    """
    if level is None:
        level = os.environ.get("VIDPROP_VERBOSITY", "INFO")
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            level = logging.INFO
    for handler in list(_ROOT.handlers):
        if getattr(handler, "_vidprop_cli", False):
            _ROOT.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._vidprop_cli = True  # type: ignore[attr-defined]
    _ROOT.addHandler(handler)
    _ROOT.setLevel(level)


def set_progress_enabled(enabled: bool) -> None:
    """Switch all vidprop progress bars on or off (library users may want them off)."""
    global _progress_enabled
    _progress_enabled = bool(enabled)


def progress(iterable: Iterable[T], **kwargs) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar (``unit="frame"`` shows frames per second).

    Bars are hidden when switched off or when stderr is not a terminal.
    """
    from tqdm.auto import tqdm

    disable = kwargs.pop("disable", None)
    if not _progress_enabled:
        disable = True
    elif disable is None:
        disable = not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, dynamic_ncols=True, **kwargs)
