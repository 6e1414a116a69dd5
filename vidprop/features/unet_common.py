"""What the diffusion-feature backends (``dift_sd``, ``dift_adm``) share.

- :func:`frame_generator`: each frame's noise comes from a generator seeded with the config's
  seed and the frame's pixels, so a frame's features do not depend on batching, order or the cache;
- :class:`BlockCapture`: forward hooks that keep the outputs of chosen UNet sub-modules and stop
  the forward right after the last one (diffusers' ``forward`` is called unchanged, so new
  diffusers releases keep working); :class:`Removed` stands in for the parts that never run;
- :func:`check_dtype`, :func:`to_device`: the compute dtypes the backends accept, and moving a
  module without a needless cast;
- :func:`compile_units`: ``torch.compile`` of a UNet's repeated units (regional compilation),
  leaving the captured modules eager so that their hooks run as before;
- :func:`files_fingerprint`: a short hash of weight files for cache keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping

import torch
from torch import nn

from vidprop.device import COMPUTE_DTYPES, dtype_name
from vidprop.errors import ConfigError

__all__ = ["check_dtype", "to_device", "frame_generator", "BlockCapture", "Removed", "files_fingerprint", "compile_units",
           "COMPILED_UNITS"]


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if a backend can compute in it (:data:`vidprop.device.COMPUTE_DTYPES`).

    Raises:
        ConfigError: (key ``runtime.dtype``) anything but float32, float16, bfloat16.
    """
    if dtype_name(dtype) not in COMPUTE_DTYPES:
        raise ConfigError(f"unsupported dtype {dtype} (expected {', '.join(COMPUTE_DTYPES)})", key="runtime.dtype")
    return dtype


def to_device(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move ``module``; cast only if needed (diffusers warns about casting loaded models)."""
    module = module.to(device)
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)


def frame_generator(seed: int, image: torch.Tensor) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and the float32 pixels of one (3, H, W) frame."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    digest.update(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest.digest(), "little") >> 1)


class _StopForward(Exception):
    """Raised by the capture hook once the last wanted module has run."""


class Removed(nn.Module):
    """Stands in for a UNet part that is never run (keeps module lists' lengths; holds no weights)."""

    def __init__(self, name: str):
        super().__init__()
        self.removed_name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - internal invariant
        raise AssertionError(f"{self.removed_name} was removed (it runs after the captured block) but was called")


class BlockCapture:
    """Keep the outputs of some sub-modules of a network and stop its forward after one of them.

    Args:
        modules: name -> sub-module whose output to keep.
        stop_after: the name (a key of ``modules``) after whose output the forward stops; it must
            be the last of ``modules`` to run.
    """

    def __init__(self, modules: Mapping[Hashable, nn.Module], stop_after: Hashable):
        if stop_after not in modules:
            raise ValueError(f"stop_after {stop_after!r} is not one of the captured modules")
        self._captured: dict[Hashable, torch.Tensor] = {}
        self._active = False
        self.names = tuple(modules)
        self.modules = dict(modules)
        self.handles = [m.register_forward_hook(self._hook(name, name == stop_after)) for name, m in modules.items()]

    def _hook(self, name: Hashable, stop: bool):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if not self._active:  # the module runs outside run() (e.g. a shared module)
                return
            self._captured[name] = output
            if stop:
                raise _StopForward

        return hook

    def run(self, forward: Callable[[], Any]) -> dict[Hashable, torch.Tensor]:
        """Call ``forward()`` and return {name: output} of the captured modules."""
        self._captured = {}
        self._active = True
        try:
            forward()
        except _StopForward:
            pass
        finally:
            self._active = False
        captured, self._captured = self._captured, {}
        assert set(captured) == set(self.names), "the forward ended before the captured modules ran"
        return captured


# diffusers class names of the units compiled one by one: the ResNet blocks, SD's transformer blocks
# (diffusers' own ``_repeated_blocks``) and ADM's attention blocks. Compiling units rather than the
# whole UNet keeps compile time short (each distinct shape once) and the forward hooks eager.
COMPILED_UNITS = ("ResnetBlock2D", "BasicTransformerBlock", "Attention")


def compile_units(model: nn.Module, eager: Iterable[nn.Module] = (), **options: Any) -> int:
    """Compile ``model``'s units (:data:`COMPILED_UNITS`) in place with ``torch.compile``.

    A module in ``eager`` (one a :class:`BlockCapture` hooks: its hook ends the forward with an
    exception, which must not happen inside compiled code) stays eager, and the units inside it
    are compiled. Compiled units compute what the eager ones do, up to the rounding of fused kernels.

    Args:
        model: a diffusers UNet or VAE encoder.
        eager: modules to keep eager.
        **options: passed to ``torch.compile`` (``backend``, ``mode``, ...).

    Returns:
        The number of compiled modules.

    Raises:
        ConfigError: (key ``runtime.compile``) this torch has no ``nn.Module.compile`` (before 2.2).
    """
    if not hasattr(nn.Module, "compile"):
        raise ConfigError(f"torch {torch.__version__} cannot compile modules in place (torch >= 2.2 can): set it to false",
                          key="runtime.compile")
    _raise_recompile_limits()
    keep = {id(m) for m in eager}
    count = 0

    def visit(module: nn.Module) -> None:
        nonlocal count
        for child in module.children():
            if type(child).__name__ in COMPILED_UNITS and id(child) not in keep:
                if getattr(child, "_compiled_call_impl", None) is None:  # shared modules are compiled once
                    child.compile(**options)
                count += 1
            else:
                visit(child)

    visit(model)
    return count


def _raise_recompile_limits(variants: int = 256) -> None:
    """Let dynamo keep a compiled variant for every unit shape.

    Every compiled module runs through the same code object (``nn.Module._call_impl``), and dynamo
    keeps 8 variants per code object by default: SD 2.1's UNet has more distinct unit shapes than
    that, and past the limit units would silently run eager.
    """
    import torch._dynamo.config as dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), variants))
    if hasattr(dynamo, "accumulated_recompile_limit"):
        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 4 * variants)


def files_fingerprint(root: Path, files: Iterable[Path]) -> str:
    """A short hash of the files' names (relative to ``root``), sizes and modification times.

    It changes when weights are replaced in place, so stale cached features are never reused
    (a copied folder only costs a recomputation).
    """
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = path.stat()
        name = path.relative_to(root).as_posix()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
