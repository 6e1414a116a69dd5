"""Lazily loaded package namespaces (PEP 562), so that importing a package loads only what is used.

Importing ``vidprop``, ``vidprop.io``, ``vidprop.features``, ``vidprop.propagation`` or
``vidprop.scoring`` runs none of their heavy submodules: a config module imports without torch or
OpenCV, and ``vidprop --help`` starts at once.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a package with lazily loaded names.

    Args:
        package: the package's ``__name__``.
        exports: public name -> submodule defining it, relative to ``package`` (``"engine"``)
            or absolute (``"vidprop.pipeline"``).

    Usage, in the package's ``__init__.py``::

        __getattr__, __dir__ = lazy_exports(__name__, {"LabelPropagator": "engine"})
    """

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = module if module.startswith("vidprop") else f"{package}.{module}"
        value = getattr(importlib.import_module(target), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
