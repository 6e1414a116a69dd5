"""The feature-extractor interface shared by every backend, and the backend registry.

A backend turns frames into a grid of feature vectors: images ``(B, 3, h*stride, w*stride)``
float in [-1, 1] go in, features ``(B, C, h, w)`` float32 come out, and a frame's features depend
only on that frame and the backend's settings (not on the batch). Everything else is explicit:

- :class:`FeatureSpec` is what a backend computes (channels, stride, frames per batch, cache
  key). Each backend class describes itself with the classmethod ``describe(config, dtype)``,
  which loads no model, so the pipeline knows the stride and the cache key before, and
  without, building the model.
- :class:`FeatureExtractor` is a built backend: ``spec`` and ``extract(images)``.
- :class:`FeatureMap` is one frame's features with their stride, what the pipeline receives
  (see :class:`~vidprop.features.stage.FeatureStage`).

Backends register under a name with :func:`register_extractor`; :func:`create_extractor` builds
one and :func:`describe_extractor` describes one, so callers never name a backend class.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from vidprop.config_base import replace_options
from vidprop.device import dtype_name, resolve_device, torch_dtype
from vidprop.errors import ConfigError, ShapeError

__all__ = [
    "FeatureSpec",
    "FeatureMap",
    "FeatureExtractor",
    "ExtractorBase",
    "Backend",
    "register_extractor",
    "get_backend",
    "create_extractor",
    "describe_extractor",
    "list_extractors",
    "check_images",
]


@dataclass(frozen=True)
class FeatureSpec:
    """What a backend computes, known without loading its model.

    Attributes:
        name: registry name of the backend (e.g. ``"dift_sd"``).
        channels: C, feature channels per cell.
        stride: pixels per feature cell along each axis.
        frames_per_batch: how many frames to pass to ``extract`` at once for full batches
            (one UNet batch for DIFT).
        cache_key: everything that changes the features except the input (JSON-serialisable).
    """

    name: str
    channels: int
    stride: int
    frames_per_batch: int
    cache_key: dict


@dataclass(frozen=True)
class FeatureMap:
    """One frame's features.

    Attributes:
        features: (C, h, w) float32 tensor.
        stride: pixels per feature cell: cell (y, x) covers input pixels
            ``[y*stride, (y+1)*stride) x [x*stride, (x+1)*stride)``.
    """

    features: torch.Tensor
    stride: int

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the feature grid."""
        return int(self.features.shape[-2]), int(self.features.shape[-1])


@runtime_checkable
class FeatureExtractor(Protocol):
    """A built backend (its model loaded).

    Attributes:
        spec: what it computes; equal to its class's ``describe(config, dtype)``.
    """

    spec: FeatureSpec

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a batch of frames.

        Args:
            images: (B, 3, h*stride, w*stride) float RGB in [-1, 1], on the CPU (as
                :class:`~vidprop.features.stage.FeatureStage` passes them) or any device; the
                extractor moves them to its device (:func:`vidprop.device.upload`).

        Returns:
            (B, C, h, w) float32 features (on CPU or the extractor's device).
        """
        ...

    # Optional: ``compile_model()`` compiles the model in place with torch.compile (runtime.compile).


class ExtractorBase:
    """Convenience base of the built-in backends: ``name``, ``channels``, ``stride``,
    ``frames_per_batch`` and ``cache_key`` read from ``self.spec``."""

    spec: FeatureSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def channels(self) -> int:
        return self.spec.channels

    @property
    def stride(self) -> int:
        return self.spec.stride

    @property
    def frames_per_batch(self) -> int:
        return self.spec.frames_per_batch

    @property
    def cache_key(self) -> dict:
        return self.spec.cache_key


@dataclass(frozen=True)
class Backend:
    """A registered backend.

    Attributes:
        name: registry name.
        config_class: its config dataclass.
        config_field: the :class:`~vidprop.features.config.FeatureConfig` field holding that config.
        factory: the backend class: ``factory(config, device=torch.device, dtype=torch.dtype)``
            loads the model; ``factory.describe(config, dtype)`` returns its :class:`FeatureSpec`
            without loading anything heavy.
        shared_option: the option of its config whose values one pass of the model can serve
            together (DIFT: ``up_ft_index``, all up blocks of one UNet pass), or None. A backend
            with one builds an extractor for the merged value (``factory.merge(values)``) whose
            ``extract_shared(images, values)`` gives each value's features exactly as an
            extractor of that value alone (see :class:`~vidprop.features.stage.SharedFeatureStage`).

    An extractor may also have ``reconfigure(config, device=, dtype=)``: an extractor of another
    setting of its backend on the model it has loaded (exactly what building one from ``config``
    gives), or None when that model cannot serve it; :meth:`FeatureStage.reuse
    <vidprop.features.stage.FeatureStage.reuse>` uses it so that a sweep over timesteps loads
    the model once.
    """

    name: str
    config_class: type
    config_field: str
    factory: Any
    shared_option: str | None = None


_REGISTRY: dict[str, Backend] = {}


def register_extractor(name: str, config_class: type, config_field: str | None = None, shared_option: str | None = None):
    """Class decorator registering a backend under ``name``.

    The class is built as ``cls(config, device=..., dtype=...)`` with an instance of
    ``config_class`` and must have a classmethod ``describe(config, dtype) -> FeatureSpec``.
    ``config_field`` names the field of :class:`~vidprop.features.config.FeatureConfig`
    holding its config (default: ``name``). ``shared_option``: see :class:`Backend` (the class
    then needs a classmethod ``merge(values)`` and a method ``extract_shared(images, values)``).

    Raises:
        ValueError: the name is taken.
        TypeError: the class has no ``describe`` (or, with ``shared_option``, no ``merge`` or
            ``extract_shared``).
    """

    def decorate(cls):
        if name in _REGISTRY:
            raise ValueError(f"feature backend {name!r} is already registered")
        if not callable(getattr(cls, "describe", None)):
            raise TypeError(f"feature backend {name!r}: {cls.__name__} needs a classmethod describe(config, dtype)")
        if shared_option is not None and not all(callable(getattr(cls, m, None)) for m in ("merge", "extract_shared")):
            raise TypeError(f"feature backend {name!r}: a shared option needs merge(values) and extract_shared(images, values)")
        _REGISTRY[name] = Backend(name, config_class, config_field or name, cls, shared_option)
        return cls

    return decorate


def _ensure_builtin_backends() -> None:
    # Importing the modules registers them; kept lazy so that importing vidprop loads no model code.
    from vidprop.features import dift_adm, dift_sd, lab  # noqa: F401


def list_extractors() -> list[str]:
    """Names of the registered backends, sorted."""
    _ensure_builtin_backends()
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The registered backend ``name``.

    Raises:
        ConfigError: no such backend (key ``features.backend``, with the closest name).
    """
    _ensure_builtin_backends()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown feature backend {name!r} (expected one of {', '.join(sorted(_REGISTRY))}){hint}", key="features.backend")
    return _REGISTRY[name]


def _resolve(name_or_config: Any, overrides: dict[str, Any]) -> tuple[Backend, Any]:
    """The backend and its config for :func:`create_extractor` / :func:`describe_extractor`."""
    from vidprop.features.config import FeatureConfig

    if isinstance(name_or_config, str):
        backend = get_backend(name_or_config)
        config = backend.config_class()
    elif isinstance(name_or_config, FeatureConfig):
        backend = get_backend(name_or_config.backend)
        config = getattr(name_or_config, backend.config_field)
    else:
        matches = [b for b in (get_backend(n) for n in list_extractors()) if isinstance(name_or_config, b.config_class)]
        if not matches:
            raise ConfigError(f"cannot build a feature extractor from {type(name_or_config).__name__}", key="features")
        backend, config = matches[0], name_or_config
    return backend, replace_options(config, overrides, f"features.{backend.config_field}.")


def create_extractor(name_or_config: Any, **overrides: Any) -> FeatureExtractor:
    """Build a feature extractor (this loads its model).

    Args:
        name_or_config: a backend name (``"dift_sd"``, ``"lab"``), a backend config
            (``DiftConfig``/``LabConfig``) or a ``FeatureConfig``.
        **overrides: ``device`` (a device name as in :func:`vidprop.device.resolve_device` or a
            torch.device; default ``"cpu"``) and ``dtype`` (torch dtype or its name, default
            float32) for the runtime; any other keyword replaces the field of that name in the
            backend's config.

    Returns:
        The backend's extractor. Pipelines use it through
        :class:`~vidprop.features.stage.FeatureStage`, which adds the cache.

    Raises:
        ConfigError: unknown backend, option, device or dtype.
        ModelNotFoundError: the backend's weights cannot be found.
    """
    device = resolve_device(overrides.pop("device", None) or "cpu")
    dtype = torch_dtype(dtype_name(overrides.pop("dtype", None) or "float32"))
    backend, config = _resolve(name_or_config, overrides)
    return backend.factory(config, device=device, dtype=dtype)


def describe_extractor(name_or_config: Any, dtype: Any = "float32", **overrides: Any) -> FeatureSpec:
    """What :func:`create_extractor` with the same arguments would compute, without loading a model.

    Args:
        name_or_config, overrides: as in :func:`create_extractor` (without ``device``).
        dtype: compute dtype (torch dtype or its name): part of some backends' cache keys.

    Raises:
        ConfigError: unknown backend or option.
        ModelNotFoundError: the backend's weights cannot be found (DIFT reads its model's
            config files and fingerprints its weight files; it loads no weights).
    """
    backend, config = _resolve(name_or_config, overrides)
    return backend.factory.describe(config, torch_dtype(dtype_name(dtype)))


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
