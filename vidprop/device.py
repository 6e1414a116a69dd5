"""Devices and dtypes: the one place that turns config names into torch objects.

Configs hold plain names (``"auto"``, ``"cuda:1"``, ``"bfloat16"``) and validate them with
:func:`is_device_name` and :data:`DTYPES` without importing torch; :func:`resolve_device` and
:func:`torch_dtype` make the torch objects when a stage runs. torchrun's environment
(``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) is read here too, by :func:`distributed_env`: ``"auto"``
takes GPU ``LOCAL_RANK`` under torchrun.

torch is imported inside the functions, so that importing this module (and every config) stays cheap.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Iterator

from vidprop.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "COMPUTE_DTYPES",
    "is_device_name",
    "torch_dtype",
    "dtype_name",
    "resolve_device",
    "distributed_env",
    "upload",
    "tf32_matmuls",
]

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "float64")
"""Every dtype name a config may hold; each option allows a subset (see its help line)."""

COMPUTE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
"""Dtypes a feature extractor can compute in (``runtime.dtype``)."""

_DEVICE_KINDS = ("cpu", "cuda", "mps")


def is_device_name(name: object, auto: bool = True) -> bool:
    """Whether ``name`` is ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"mps"`` (or ``"auto"`` if allowed).

    Syntax only: whether the device exists here is checked by :func:`resolve_device`.
    """
    if not isinstance(name, str):
        return False
    if name == "auto":
        return auto
    kind, sep, index = name.partition(":")
    return kind in _DEVICE_KINDS and (not sep or (kind != "cpu" and index.isdigit()))


def torch_dtype(name: str) -> "torch.dtype":
    """The torch dtype of a name in :data:`DTYPES`.

    Raises:
        ConfigError: an unknown name.
    """
    import torch

    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r} (expected one of {', '.join(DTYPES)})", key="runtime.dtype")
    return getattr(torch, name)


def dtype_name(dtype: "torch.dtype | str") -> str:
    """The name (as in :data:`DTYPES`) of a torch dtype or of a name; the inverse of :func:`torch_dtype`.

    Raises:
        ConfigError: a dtype vidprop does not use.
    """
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"unsupported dtype {dtype} (expected one of {', '.join(DTYPES)})", key="runtime.dtype")
    return name


def distributed_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None when not under it.

    Raises:
        ConfigError: RANK/WORLD_SIZE/LOCAL_RANK that are not integers.
    """
    world = os.environ.get("WORLD_SIZE")
    if not world:
        return None
    try:
        world_size = int(world)
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(
            f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (got RANK={os.environ.get('RANK')!r}, "
            f"WORLD_SIZE={world!r}, LOCAL_RANK={os.environ.get('LOCAL_RANK')!r})",
            key="runtime.num_shards",
        ) from None
    return rank, world_size, local_rank


def resolve_device(name: "str | torch.device" = "auto") -> "torch.device":
    """The torch device of a device name.

    ``"auto"`` is cuda (``cuda:LOCAL_RANK`` under torchrun), then mps, then cpu. A bare ``"cuda"``
    under torchrun is ``cuda:LOCAL_RANK`` too.

    Raises:
        ConfigError: a malformed name, or a device this machine does not have (key ``runtime.device``).
    """
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if not is_device_name(name):
        raise ConfigError(f"invalid device {name!r} (expected auto, cpu, cuda, cuda:N or mps)", key="runtime.device")
    env = distributed_env()
    local_rank = env[2] if env else 0
    mps = getattr(torch.backends, "mps", None)
    mps_available = mps is not None and mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("mps" if mps_available else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("CUDA is not available on this machine (use --device cpu or auto)", key="runtime.device")
        if device.index is None and env is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"no such GPU (this machine has {torch.cuda.device_count()})", key="runtime.device")
    if device.type == "mps" and not mps_available:
        raise ConfigError("MPS is not available on this machine (use --device cpu or auto)", key="runtime.device")
    return device


def upload(tensor: "torch.Tensor", device: "torch.device", dtype: "torch.dtype | None" = None) -> "torch.Tensor":
    """``tensor`` on ``device`` (and in ``dtype``), without making the host wait for a GPU.

    A CPU tensor bound for CUDA goes through pinned (page-locked) memory with a non-blocking copy:
    the host queues the copy and goes on, and CUDA orders it before the kernels that use it on the
    same stream. The values are the same as ``tensor.to(device, dtype)`` gives (the dtype is
    changed on ``device`` after the copy; a conversion gives the same value on any device).
    Elsewhere (CPU, MPS, a tensor already there) it is ``tensor.to(device, dtype)``.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device=device, dtype=dtype)


@contextlib.contextmanager
def tf32_matmuls(device: "torch.device", enabled: bool) -> Iterator[None]:
    """Inside the block, float32 matrix products and convolutions on CUDA use TF32 tensor cores if ``enabled``
    (else full float32); the previous settings come back afterwards. Nothing changes on other devices.

    TF32 rounds the factors of each product to a 10-bit mantissa (float32 has 23) and accumulates in
    float32: about 1e-3 relative error per product, 3-8x the float32 throughput on Ampere and later.
    (PyTorch's defaults: TF32 on for convolutions, off for matrix products.)
    """
    import torch

    if torch.device(device).type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before
