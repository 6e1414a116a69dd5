"""The feature-extractor interface shared by every backend, and the backend registry.

A backend turns frames into a grid of feature vectors: images ``(B, 3, h*stride, w*stride)``
float in [-1, 1] go in, features ``(B, C, h, w)`` float32 come out. Backends register under a
name with :func:`register_extractor` and are built with :func:`create_extractor`, so callers
never name a backend class.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from vidprop.device import dtype_name, resolve_device, torch_dtype
from vidprop.errors import ConfigError, ShapeError

__all__ = [
    "FeatureExtractor",
    "FeatureMap",
    "BackendSpec",
    "register_extractor",
    "create_extractor",
    "list_extractors",
    "check_images",
]


@runtime_checkable
class FeatureExtractor(Protocol):
    """What every backend provides.

    Attributes:
        name: registry name of the backend (e.g. ``"dift_sd"``).
        channels: C, feature channels per cell.
        stride: pixels per feature cell along each axis.
        cache_key: everything that changes the features except the input (JSON-serialisable).

    Backends may also offer ``frames_per_batch`` (how many frames to pass to ``extract`` at
    once for full batches); callers should default to 1 when it is absent.
    """

    name: str
    channels: int
    stride: int
    cache_key: dict

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a batch of frames.

        Args:
            images: (B, 3, h*stride, w*stride) float RGB in [-1, 1].

        Returns:
            (B, C, h, w) float32 features (on CPU or the extractor's device).
        """
        ...


@dataclass(frozen=True)
class FeatureMap:
    """One frame's features.

    Attributes:
        features: (C, h, w) float tensor.
        stride: pixels per feature cell.
    """

    features: torch.Tensor
    stride: int

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the feature grid."""
        return int(self.features.shape[-2]), int(self.features.shape[-1])


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend: its config dataclass, the FeatureConfig field holding it, and its factory."""

    name: str
    config_class: type
    config_field: str
    factory: Callable[..., FeatureExtractor]


_REGISTRY: dict[str, BackendSpec] = {}


def register_extractor(name: str, config_class: type, config_field: str | None = None):
    """Class (or function) decorator registering a backend under ``name``.

    The decorated callable is called as ``factory(config, device=..., dtype=...)`` with an
    instance of ``config_class``. ``config_field`` names the field of
    :class:`~vidprop.features.config.FeatureConfig` holding that config (default: ``name``).
    """

    def decorate(factory):
        if name in _REGISTRY:
            raise ValueError(f"feature backend {name!r} is already registered")
        _REGISTRY[name] = BackendSpec(name, config_class, config_field or name, factory)
        return factory

    return decorate


def _ensure_builtin_backends() -> None:
    # Importing the modules registers them; kept lazy so that importing vidprop loads no model code.
    from vidprop.features import dift_adm, dift_sd, lab  # noqa: F401


def list_extractors() -> list[str]:
    """Names of the registered backends, sorted."""
    _ensure_builtin_backends()
    return sorted(_REGISTRY)


def _spec(name: str) -> BackendSpec:
    _ensure_builtin_backends()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown feature backend {name!r} (expected one of {', '.join(sorted(_REGISTRY))}){hint}", key="features.backend")
    return _REGISTRY[name]


def create_extractor(name_or_config: Any, **overrides: Any) -> FeatureExtractor:
    """Build a feature extractor.

    Args:
        name_or_config: a backend name (``"dift_sd"``, ``"lab"``), a backend config
            (``DiftConfig``/``LabConfig``) or a ``FeatureConfig``.
        **overrides: ``device`` (str or torch.device, ``"auto"`` allowed, default ``"cpu"``) and ``dtype``
            (torch dtype or its name, default float32) for the runtime; any other keyword
            replaces the field of that name in the backend's config.

    Returns:
        The backend's extractor (the cache is applied separately, see
        :func:`vidprop.features.cache.cached_extractor`).

    Raises:
        ConfigError: unknown backend or option.
        ModelNotFoundError: the backend's weights cannot be found.
    """
    from vidprop.features.config import FeatureConfig

    device = resolve_device(overrides.pop("device", None) or "cpu")
    dtype = torch_dtype(dtype_name(overrides.pop("dtype", None) or "float32"))
    if isinstance(name_or_config, str):
        spec = _spec(name_or_config)
        config = spec.config_class()
    elif isinstance(name_or_config, FeatureConfig):
        spec = _spec(name_or_config.backend)
        config = getattr(name_or_config, spec.config_field)
    else:
        matches = [s for s in (_spec(n) for n in list_extractors()) if isinstance(name_or_config, s.config_class)]
        if not matches:
            raise ConfigError(f"cannot build a feature extractor from {type(name_or_config).__name__}", key="features")
        spec, config = matches[0], name_or_config
    if overrides:
        names = {f.name for f in dataclasses.fields(config)}
        for key in overrides:
            if key not in names:
                close = difflib.get_close_matches(key, sorted(names), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown option of backend {spec.name!r}{hint}", key=f"features.{spec.config_field}.{key}")
        config = dataclasses.replace(config, **overrides)
    return spec.factory(config, device=device, dtype=dtype)


def check_images(images: torch.Tensor, stride: int, name: str = "images") -> tuple[int, int]:
    """Check a batch of frames for :meth:`FeatureExtractor.extract`; return the grid (h, w).

    Raises:
        ShapeError: not (B, 3, H, W), not floating point, or H, W not multiples of ``stride``.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ShapeError(f"{name}: expected a (B, 3, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ShapeError(f"{name}: expected float values in [-1, 1], got dtype {images.dtype}")
    height, width = int(images.shape[2]), int(images.shape[3])
    if height % stride or width % stride or height == 0 or width == 0:
        raise ShapeError(
            f"{name}: frame size {height}x{width} is not a multiple of the feature stride {stride} "
            f"(resize frames to multiples of {stride}, e.g. ResizePolicy(multiple=32))"
        )
    return height // stride, width // stride
