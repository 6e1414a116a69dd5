"""On-disk cache of per-frame features, so propagation settings can be swept without the UNet.

Layout: ``<dir>/<key hash>/key.json`` (the key, for people) and
``<dir>/<key hash>/<video_id>/<H>x<W>/<frame_name>.vpf``, one file per frame. The key is the
extractor's ``cache_key`` (model, revision, timestep, layers, ensemble size, seed, prompt,
dtype, ...) plus the cache dtype; the input size (H, W) is part of the path.

An entry is ``MAGIC``, a 4-byte little-endian header length, a JSON header
``{"key": <key hash>, "shape": [C, h, w], "dtype": ..., "input_size": [H, W], "nbytes": ...,
"blake2b": <hex digest of the payload>}`` and the raw payload. Entries are written with
:func:`vidprop.io.atomic.atomic_write`. A read that finds a bad magic, header, key, shape,
size or checksum logs a warning, deletes the entry and reports a miss, so the caller
recomputes it; a corrupt entry is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vidprop.device import torch_dtype
from vidprop.errors import ConfigError, ShapeError
from vidprop.features.base import FeatureExtractor
from vidprop.features.config import CACHE_DTYPES
from vidprop.io.atomic import atomic_write

__all__ = ["FeatureCache", "CachedExtractor", "cached_extractor", "key_hash"]

logger = logging.getLogger(__name__)

MAGIC = b"VIDPROP-FEATURES-1\n"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def key_hash(key: dict) -> str:
    """Hex SHA-256 of the canonical JSON of ``key``."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _safe(name: str) -> str:
    """A file-name-safe version of ``name`` (other characters become ``_`` plus a short hash)."""
    clean = _SAFE_NAME.sub("_", name)
    return clean if clean == name and name not in ("", ".", "..") else f"{clean}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _to_bytes(features: torch.Tensor) -> bytes:
    # bfloat16 has no numpy dtype: store its bits as int16.
    flat = features.contiguous().cpu()
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return flat.numpy().tobytes()


def _from_bytes(payload: bytes, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.frombuffer(payload, dtype=np.int16).copy()).view(torch.bfloat16).reshape(shape)
    np_dtype = {torch.float16: np.float16, torch.float32: np.float32}[dtype]
    return torch.from_numpy(np.frombuffer(payload, dtype=np_dtype).copy()).reshape(shape)


class FeatureCache:
    """Per-frame feature files for one extractor setting.

    Args:
        dir: cache root folder (created on first write).
        key: everything that changes the features except the input (the extractor's ``cache_key``).
        dtype: storage dtype, ``"float16"`` (default), ``"bfloat16"`` or ``"float32"``.
    """

    def __init__(self, dir: str | os.PathLike, key: dict, dtype: str = "float16"):
        if dtype not in CACHE_DTYPES:
            raise ConfigError(f"invalid value {dtype!r} (expected one of {', '.join(CACHE_DTYPES)})", key="features.cache.dtype")
        self.root = Path(dir)
        self.dtype_name = dtype
        self.dtype = torch_dtype(dtype)
        self.key = {**key, "cache_dtype": dtype}
        self.hash = key_hash(self.key)
        self.folder = self.root / self.hash[:16]
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def path(self, video_id: str, frame_name: str, input_size: tuple[int, int] | None = None) -> Path:
        """File of one frame's entry (``input_size`` = (H, W) of the frame fed to the extractor)."""
        size = "any" if input_size is None else f"{int(input_size[0])}x{int(input_size[1])}"
        return self.folder / _safe(video_id) / size / f"{_safe(frame_name)}.vpf"

    def get(self, video_id: str, frame_name: str, input_size: tuple[int, int] | None = None) -> torch.Tensor | None:
        """The cached (C, h, w) float32 features, or None on a miss or a corrupt entry."""
        path = self.path(video_id, frame_name, input_size)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            features = self._decode(data, input_size)
        except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError, RuntimeError) as exc:
            logger.warning("feature cache entry %s is corrupt (%s); recomputing it", path, exc)
            self.corrupt += 1
            self.misses += 1
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        return features

    def _decode(self, data: bytes, input_size: tuple[int, int] | None) -> torch.Tensor:
        if not data.startswith(MAGIC):
            raise ValueError("bad magic")
        start = len(MAGIC) + 4
        (header_len,) = struct.unpack("<I", data[len(MAGIC) : start])
        header = json.loads(data[start : start + header_len].decode())
        payload = data[start + header_len :]
        if header["key"] != self.hash:
            raise ValueError("entry belongs to another key")
        if header["dtype"] != self.dtype_name:
            raise ValueError(f"dtype {header['dtype']} != {self.dtype_name}")
        if input_size is not None and list(header["input_size"]) != [int(s) for s in input_size]:
            raise ValueError(f"input size {header['input_size']} != {list(input_size)}")
        shape = [int(s) for s in header["shape"]]
        expected = int(np.prod(shape)) * self.dtype.itemsize
        if len(shape) != 3 or header["nbytes"] != expected or len(payload) != expected:
            raise ValueError(f"payload of {len(payload)} bytes, expected {expected} for shape {shape}")
        if hashlib.blake2b(payload).hexdigest() != header["blake2b"]:
            raise ValueError("checksum mismatch")
        return _from_bytes(payload, self.dtype, shape).float()

    def put(self, video_id: str, frame_name: str, features: torch.Tensor, input_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Store one frame's (C, h, w) features atomically.

        Returns:
            The features as stored, back in float32 (what a later :meth:`get` returns).
        """
        if features.ndim != 3:
            raise ShapeError(f"features: expected (C, h, w), got {tuple(features.shape)}")
        stored = features.detach().to("cpu", self.dtype).contiguous()
        payload = _to_bytes(stored)
        header = json.dumps(
            {
                "key": self.hash,
                "shape": list(stored.shape),
                "dtype": self.dtype_name,
                "input_size": None if input_size is None else [int(s) for s in input_size],
                "nbytes": len(payload),
                "blake2b": hashlib.blake2b(payload).hexdigest(),
            }
        ).encode()
        path = self.path(video_id, frame_name, input_size)
        self._write_key_file()
        with atomic_write(path, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header + payload)
        return stored.float()

    def _write_key_file(self) -> None:
        key_file = self.folder / "key.json"
        if not key_file.exists():
            with atomic_write(key_file, "w", encoding="utf-8") as f:
                json.dump(self.key, f, indent=2, sort_keys=True, default=str)

    def stats(self) -> dict[str, int]:
        """{"hits", "misses", "corrupt"} counted since creation."""
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt}


class CachedExtractor:
    """An extractor whose per-frame features go through a :class:`FeatureCache`.

    It has the wrapped extractor's ``name``, ``channels``, ``stride`` and ``cache_key``;
    :meth:`extract` (no frame identities) bypasses the cache, :meth:`extract_frames` uses it.
    Features come back as the cache stores them (rounded to its dtype), whether they were
    computed now or read, so a run gives the same result with a cold or a warm cache.
    """

    def __init__(self, extractor: FeatureExtractor, cache: FeatureCache):
        self.extractor = extractor
        self.cache = cache
        self.name = extractor.name
        self.channels = extractor.channels
        self.stride = extractor.stride
        self.cache_key = extractor.cache_key
        self.frames_per_batch = getattr(extractor, "frames_per_batch", 1)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Uncached features, as the wrapped extractor's ``extract``."""
        return self.extractor.extract(images)

    def extract_frames(self, video_id: str, frame_names: Sequence[str], images: torch.Tensor) -> torch.Tensor:
        """Features of named frames, read from the cache where present.

        Args:
            video_id: name of the video (a folder of the cache).
            frame_names: one name per frame of ``images``.
            images: (B, 3, H, W) float in [-1, 1].

        Returns:
            (B, C, h, w) float32 on the CPU.
        """
        if len(frame_names) != images.shape[0]:
            raise ShapeError(f"frame_names: {len(frame_names)} names for {images.shape[0]} frames")
        size = (int(images.shape[-2]), int(images.shape[-1]))
        found = [self.cache.get(video_id, name, size) for name in frame_names]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            computed = self.extractor.extract(images[missing])
            for i, features in zip(missing, computed):
                found[i] = self.cache.put(video_id, frame_names[i], features, size)
        return torch.stack(found)

    def log_stats(self) -> None:
        """Log the cache's hits and misses at INFO."""
        s = self.cache.stats()
        logger.info("feature cache %s: %d hits, %d misses (%d corrupt)", self.cache.folder, s["hits"], s["misses"], s["corrupt"])


def cached_extractor(extractor: FeatureExtractor, cache_config: Any) -> FeatureExtractor | CachedExtractor:
    """Wrap ``extractor`` in a :class:`CachedExtractor` when ``cache_config.dir`` is set.

    Args:
        extractor: any feature extractor.
        cache_config: a :class:`~vidprop.features.config.CacheConfig`.
    """
    if cache_config is None or cache_config.dir is None:
        return extractor
    return CachedExtractor(extractor, FeatureCache(cache_config.dir, extractor.cache_key, cache_config.dtype))
