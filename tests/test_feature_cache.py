"""Feature cache: hits, misses, corrupt or partial entries, key separation, cached extractor."""

from __future__ import annotations

import logging

import pytest
import torch

from vidprop.errors import ShapeError
from vidprop.features import CacheConfig, FeatureCache, cached_extractor, create_extractor
from vidprop.features.cache import CachedExtractor

KEY = {"backend": "dift_sd", "model_id": "m", "revision": None, "timestep": 51, "up_ft_index": [2], "ensemble_size": 8, "seed": 0}


def features(seed: int = 0) -> torch.Tensor:
    return torch.randn(16, 6, 10, generator=torch.Generator().manual_seed(seed))


def test_miss_then_hit_returns_float16_rounded_values(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    assert cache.get("car", "00000", (48, 80)) is None
    stored = cache.put("car", "00000", features(), (48, 80))
    got = cache.get("car", "00000", (48, 80))
    assert got.dtype == torch.float32 and got.shape == (16, 6, 10)
    torch.testing.assert_close(got, features().half().float(), rtol=0, atol=0)
    torch.testing.assert_close(stored, got, rtol=0, atol=0)
    assert cache.stats() == {"hits": 1, "misses": 1, "corrupt": 0}
    assert (cache.folder / "key.json").exists()


def test_entries_are_separated_by_key_and_input_size(tmp_path):
    FeatureCache(tmp_path, KEY).put("car", "00000", features(), (48, 80))
    assert FeatureCache(tmp_path, {**KEY, "timestep": 101}).get("car", "00000", (48, 80)) is None
    assert FeatureCache(tmp_path, {**KEY, "seed": 1}).get("car", "00000", (48, 80)) is None
    assert FeatureCache(tmp_path, KEY, dtype="float32").get("car", "00000", (48, 80)) is None
    assert FeatureCache(tmp_path, KEY).get("car", "00000", (96, 160)) is None
    assert FeatureCache(tmp_path, KEY).get("car", "00000", (48, 80)) is not None


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) - 7],  # partial write
        lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]),  # flipped payload byte
        lambda data: b"XX" + data[2:],  # bad magic
        lambda data: b"",  # empty file
        lambda data: data[:30],  # header cut off
    ],
    ids=["truncated", "bitflip", "magic", "empty", "header"],
)
def test_corrupt_entry_is_detected_removed_and_recomputed(tmp_path, damage, caplog):
    cache = FeatureCache(tmp_path, KEY)
    cache.put("car", "00001", features(), (48, 80))
    path = cache.path("car", "00001", (48, 80))
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="vidprop.features.cache"):
        assert cache.get("car", "00001", (48, 80)) is None
    assert "corrupt" in caplog.text and str(path) in caplog.text
    assert not path.exists() and cache.stats()["corrupt"] == 1


def test_entry_copied_from_another_key_is_rejected(tmp_path):
    a, b = FeatureCache(tmp_path, KEY), FeatureCache(tmp_path, {**KEY, "timestep": 7})
    a.put("car", "00000", features(), (48, 80))
    target = b.path("car", "00000", (48, 80))
    target.parent.mkdir(parents=True)
    target.write_bytes(a.path("car", "00000", (48, 80)).read_bytes())
    assert b.get("car", "00000", (48, 80)) is None


def test_bfloat16_storage_and_odd_names(tmp_path):
    cache = FeatureCache(tmp_path, KEY, dtype="bfloat16")
    cache.put("my video/1", "../frame 7", features(), None)
    assert cache.path("my video/1", "../frame 7").parent.parent.parent == cache.folder
    torch.testing.assert_close(cache.get("my video/1", "../frame 7"), features().bfloat16().float(), rtol=0, atol=0)
    with pytest.raises(ShapeError):
        cache.put("v", "f", torch.zeros(2, 3))


class CountingExtractor:
    """Wraps the Lab backend and records how many frames it computed."""

    def __init__(self):
        self.inner = create_extractor("lab", stride=8)
        self.name, self.channels, self.stride, self.cache_key = "lab", self.inner.channels, 8, self.inner.cache_key
        self.computed = 0

    def extract(self, images):
        self.computed += images.shape[0]
        return self.inner.extract(images)


def test_cached_extractor_computes_only_missing_frames(tmp_path):
    images = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    counting = CountingExtractor()
    wrapped = cached_extractor(counting, CacheConfig(dir=str(tmp_path)))
    assert isinstance(wrapped, CachedExtractor) and wrapped.stride == 8
    cold = wrapped.extract_frames("seq", ["a", "b", "c"], images)
    assert counting.computed == 3
    torch.testing.assert_close(cold, counting.inner.extract(images).half().float(), rtol=0, atol=0)
    warm = wrapped.extract_frames("seq", ["a", "b", "c"], images)
    assert counting.computed == 3
    torch.testing.assert_close(warm, cold, rtol=0, atol=0)
    wrapped.cache.path("seq", "b", (32, 48)).write_bytes(b"garbage")
    again = wrapped.extract_frames("seq", ["a", "b", "c"], images)
    assert counting.computed == 4
    torch.testing.assert_close(again, cold, rtol=0, atol=0)
    assert cached_extractor(counting, CacheConfig()) is counting
