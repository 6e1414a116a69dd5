"""Where a run executes: device resolution and torchrun's RANK / WORLD_SIZE / LOCAL_RANK."""

from __future__ import annotations

import dataclasses
import os

import torch

from vidprop.config import VidpropConfig
from vidprop.errors import ConfigError

__all__ = ["distributed_env", "resolve_runtime", "resolve_device", "torch_dtype"]

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``runtime.dtype`` name (float32, float16, bfloat16)."""
    return _TORCH_DTYPES[name]


def distributed_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None when not under it."""
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


def resolve_runtime(cfg: VidpropConfig) -> VidpropConfig:
    """Apply torchrun's RANK/WORLD_SIZE to ``runtime.num_shards``/``shard_index`` when present.

    Raises:
        ConfigError: explicit sharding that disagrees with torchrun's world size.
    """
    env = distributed_env()
    if env is None or env[1] <= 1:
        return cfg
    rank, world_size, _ = env
    rt = cfg.runtime
    if rt.engine != "local":
        raise ConfigError(
            f"torchrun started {world_size} processes, but the {rt.engine!r} engine runs the videos on its own "
            "workers: start one process without torchrun",
            key="runtime.engine",
        )
    if rt.num_shards not in (1, world_size):
        raise ConfigError(
            f"{rt.num_shards} shards requested but torchrun started {world_size} processes "
            "(leave --num-shards unset under torchrun)",
            key="runtime.num_shards",
        )
    return cfg.replace(runtime=dataclasses.replace(rt, num_shards=world_size, shard_index=rank))


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> cuda (``cuda:LOCAL_RANK`` under torchrun), then mps, then cpu; else ``name``.

    Raises:
        ConfigError: the named device is not available here.
    """
    env = distributed_env()
    local_rank = env[2] if env else 0
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("CUDA is not available on this machine (use --device cpu or auto)", key="runtime.device")
        if device.index is None and env is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"no such GPU (this machine has {torch.cuda.device_count()})", key="runtime.device")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("MPS is not available on this machine (use --device cpu or auto)", key="runtime.device")
    return device


