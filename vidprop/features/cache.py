"""On-disk cache of per-frame features, so propagation settings can be swept without the UNet.

Entries are addressed by content: a frame's entry is named by :func:`frame_digest`, the SHA-256
of the model input itself (the resized (3, H, W) float32 frame, with its shape), under a folder
per backend setting. So no video name or path is needed, a frame edited on disk can never be
served stale features, and identical frames share an entry. This relies on the features
contract of :mod:`vidprop.features.base`: a frame's features depend only on the frame and the
backend's settings.

Layout: ``<dir>/<key hash>/key.json`` (the key, for people) and
``<dir>/<key hash>/<H>x<W>/<digest[:2]>/<digest>.safetensors``, one file per frame. The key is the
extractor's ``cache_key`` (model, revision, timestep, layers, ensemble size, seed, prompt,
dtype, weights fingerprint, ...) plus the storage dtype.

An entry is a `safetensors <https://huggingface.co/docs/safetensors>`_ file holding one tensor,
``features`` (C, h, w) in the storage dtype, and the metadata ``format``, ``key`` (the key hash),
``input_size`` ("HxW"), ``stride`` and ``blake2b`` (hex digest of the tensor's bytes: safetensors
itself has no checksum). Entries are written with :func:`vidprop.io.atomic.atomic_write`. A read
that finds an unreadable file, another key, dtype, input size, stride or shape, or a checksum
mismatch logs a warning, deletes the entry and reports a miss, so the caller recomputes it; a
corrupt entry is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from vidprop.device import dtype_name, torch_dtype
from vidprop.errors import ConfigError, ShapeError
from vidprop.features.config import CACHE_DTYPES
from vidprop.io.atomic import atomic_write

__all__ = ["FeatureCache", "frame_digest", "key_hash", "FORMAT"]

logger = logging.getLogger(__name__)

FORMAT = "vidprop-features-2"
_TENSOR = "features"


def key_hash(key: dict) -> str:
    """Hex SHA-256 of the canonical JSON of ``key``."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def frame_digest(image: torch.Tensor) -> str:
    """Hex SHA-256 of one model input frame: its shape, dtype and bytes.

    Args:
        image: (3, H, W) tensor (the resized frame in [-1, 1], as the extractor receives it).
    """
    data = image.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{tuple(data.shape)}:{data.dtype}\n".encode())
    digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()


def _checksum(stored: torch.Tensor) -> str:
    return hashlib.blake2b(stored.contiguous().view(torch.uint8).numpy()).hexdigest()


class FeatureCache:
    """Per-frame feature files for one extractor setting.

    Args:
        dir: cache root folder (created on first write).
        key: everything that changes the features except the input (the extractor's ``cache_key``).
        dtype: storage dtype, ``"float16"`` (default), ``"bfloat16"`` or ``"float32"``.
        stride: the features' stride, recorded in each entry and checked on reading.

    Raises:
        ConfigError: an unknown storage dtype (key ``features.cache.dtype``).
    """

    def __init__(self, dir: str | os.PathLike, key: dict, dtype: str = "float16", stride: int | None = None):
        if dtype not in CACHE_DTYPES:
            raise ConfigError(f"invalid value {dtype!r} (expected one of {', '.join(CACHE_DTYPES)})", key="features.cache.dtype")
        self.root = Path(dir)
        self.dtype_name = dtype
        self.dtype = torch_dtype(dtype)
        self.stride = stride
        self.key = {**key, "cache_dtype": dtype}
        self.hash = key_hash(self.key)
        self.folder = self.root / self.hash[:16]
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def path(self, digest: str, input_size: tuple[int, int]) -> Path:
        """File of the entry of the frame with :func:`frame_digest` ``digest`` and input size (H, W)."""
        return self.folder / f"{int(input_size[0])}x{int(input_size[1])}" / digest[:2] / f"{digest}.safetensors"

    def get(self, digest: str, input_size: tuple[int, int]) -> torch.Tensor | None:
        """The cached (C, h, w) float32 features on the CPU, or None on a miss or a corrupt entry."""
        from safetensors import SafetensorError

        path = self.path(digest, input_size)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            features = self._read(path, input_size)
        except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            logger.warning("feature cache entry %s is corrupt (%s); recomputing it", path, exc)
            self.corrupt += 1
            self.misses += 1
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        return features

    def _read(self, path: Path, input_size: tuple[int, int]) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as entry:
            meta = entry.metadata() or {}
            names = list(entry.keys())
            if names != [_TENSOR]:
                raise ValueError(f"tensors {names}, expected [{_TENSOR!r}]")
            stored = entry.get_tensor(_TENSOR)
        expected = {
            "format": FORMAT,
            "key": self.hash,
            "input_size": f"{int(input_size[0])}x{int(input_size[1])}",
            **({} if self.stride is None else {"stride": str(self.stride)}),
        }
        wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            raise ValueError(f"metadata {wrong} differs from {expected}")
        if stored.dtype != self.dtype or stored.ndim != 3:
            raise ValueError(f"{dtype_name(stored.dtype)} {tuple(stored.shape)}, expected a (C, h, w) {self.dtype_name} tensor")
        if _checksum(stored) != meta.get("blake2b"):
            raise ValueError("checksum mismatch")
        return stored.float()

    def put(self, digest: str, features: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """Store one frame's (C, h, w) features atomically.

        Returns:
            The features as stored, back in float32 on the CPU (what a later :meth:`get` returns).

        Raises:
            ShapeError: features that are not (C, h, w).
        """
        from safetensors.torch import save

        if features.ndim != 3:
            raise ShapeError(f"features: expected (C, h, w), got {tuple(features.shape)}")
        stored = features.detach().to("cpu", self.dtype).contiguous()
        meta = {
            "format": FORMAT,
            "key": self.hash,
            "input_size": f"{int(input_size[0])}x{int(input_size[1])}",
            "blake2b": _checksum(stored),
        }
        if self.stride is not None:
            meta["stride"] = str(self.stride)
        self._write_key_file()
        with atomic_write(self.path(digest, input_size), "wb") as f:
            f.write(save({_TENSOR: stored}, metadata=meta))
        return stored.float()

    def _write_key_file(self) -> None:
        key_file = self.folder / "key.json"
        if not key_file.exists():
            with atomic_write(key_file, "w", encoding="utf-8") as f:
                json.dump(self.key, f, indent=2, sort_keys=True, default=str)

    def stats(self) -> dict[str, int]:
        """{"hits", "misses", "corrupt"} counted since creation."""
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt}

    def log_stats(self) -> None:
        """Log the hits and misses at INFO."""
        logger.info("feature cache %s: %d hits, %d misses (%d corrupt)", self.folder, self.hits, self.misses, self.corrupt)
