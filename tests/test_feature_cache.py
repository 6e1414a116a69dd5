"""Feature cache and feature stage: hits, misses, corrupt or partial entries, key separation,
content addressing, and a model built only on a cache miss."""

from __future__ import annotations

import logging

import pytest
import torch

from vidprop.errors import ConfigError, ShapeError
from vidprop.features import FeatureCache, FeatureConfig, FeatureMap, FeatureStage, create_extractor, describe_extractor
from vidprop.features.cache import frame_digest
from vidprop.features.config import CacheConfig, LabConfig
from vidprop.features.lab import LabExtractor

KEY = {"backend": "dift_sd", "model_id": "m", "revision": None, "timestep": 51, "up_ft_index": [2], "ensemble_size": 8, "seed": 0}
SIZE = (48, 80)


def features(seed: int = 0) -> torch.Tensor:
    return torch.randn(16, 6, 10, generator=torch.Generator().manual_seed(seed))


def frames(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 48, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_miss_then_hit_returns_float16_rounded_values(tmp_path):
    cache = FeatureCache(tmp_path, KEY, stride=8)
    assert cache.get("ab12", SIZE) is None
    stored = cache.put("ab12", features(), SIZE)
    got = cache.get("ab12", SIZE)
    assert got.dtype == torch.float32 and got.shape == (16, 6, 10)
    torch.testing.assert_close(got, features().half().float(), rtol=0, atol=0)
    torch.testing.assert_close(stored, got, rtol=0, atol=0)
    assert cache.stats() == {"hits": 1, "misses": 1, "corrupt": 0}
    assert (cache.folder / "key.json").exists()
    assert cache.path("ab12", SIZE).suffix == ".safetensors"


def test_entries_are_safetensors_files_with_their_metadata(tmp_path):
    from safetensors import safe_open

    cache = FeatureCache(tmp_path, KEY, dtype="bfloat16", stride=8)
    cache.put("cd34", features(), SIZE)
    with safe_open(cache.path("cd34", SIZE), framework="pt") as entry:
        meta = entry.metadata()
        tensor = entry.get_tensor("features")
    assert tensor.dtype == torch.bfloat16 and tensor.shape == (16, 6, 10)
    assert (meta["key"], meta["input_size"], meta["stride"]) == (cache.hash, "48x80", "8") and len(meta["blake2b"]) == 128


def test_entries_are_separated_by_key_input_size_and_stride(tmp_path):
    FeatureCache(tmp_path, KEY, stride=8).put("ab12", features(), SIZE)
    assert FeatureCache(tmp_path, {**KEY, "timestep": 101}, stride=8).get("ab12", SIZE) is None
    assert FeatureCache(tmp_path, {**KEY, "seed": 1}, stride=8).get("ab12", SIZE) is None
    assert FeatureCache(tmp_path, KEY, dtype="float32", stride=8).get("ab12", SIZE) is None
    assert FeatureCache(tmp_path, KEY, stride=8).get("ab12", (96, 160)) is None
    assert FeatureCache(tmp_path, KEY, stride=8).get("ab12", SIZE) is not None
    other_stride = FeatureCache(tmp_path, KEY, stride=16)
    assert other_stride.get("ab12", SIZE) is None and other_stride.corrupt == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) - 7],  # partial write
        lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]),  # flipped payload byte
        lambda data: b"XX" + data[2:],  # bad header length
        lambda data: b"",  # empty file
        lambda data: data[:30],  # header cut off
        lambda data: data[:8] + data[8:].replace(b'"F16"', b'"F32"', 1),  # another dtype in the header
    ],
    ids=["truncated", "bitflip", "header-length", "empty", "header", "dtype"],
)
def test_corrupt_entry_is_detected_removed_and_recomputed(tmp_path, damage, caplog):
    cache = FeatureCache(tmp_path, KEY, stride=8)
    cache.put("ef56", features(), SIZE)
    path = cache.path("ef56", SIZE)
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="vidprop.features.cache"):
        assert cache.get("ef56", SIZE) is None
    assert "corrupt" in caplog.text and str(path) in caplog.text
    assert not path.exists() and cache.stats()["corrupt"] == 1


def test_entry_copied_from_another_key_is_rejected(tmp_path):
    a, b = FeatureCache(tmp_path, KEY), FeatureCache(tmp_path, {**KEY, "timestep": 7})
    a.put("ab12", features(), SIZE)
    target = b.path("ab12", SIZE)
    target.parent.mkdir(parents=True)
    target.write_bytes(a.path("ab12", SIZE).read_bytes())
    assert b.get("ab12", SIZE) is None and not target.exists()


def test_bad_put_and_bad_dtype(tmp_path):
    with pytest.raises(ShapeError):
        FeatureCache(tmp_path, KEY).put("ab12", torch.zeros(2, 3), SIZE)
    with pytest.raises(ConfigError) as info:
        FeatureCache(tmp_path, KEY, dtype="float64")
    assert info.value.key == "features.cache.dtype"


def test_frame_digest_follows_the_pixels_and_the_shape():
    images = frames(2)
    assert frame_digest(images[0]) == frame_digest(images[0].clone())
    assert frame_digest(images[0]) != frame_digest(images[1])
    nudged = images[0].clone()
    nudged[2, 31, 47] += 1e-6
    assert frame_digest(nudged) != frame_digest(images[0])
    assert frame_digest(images[0]) != frame_digest(images[0].reshape(3, 48, 32))


class CountingLab(LabExtractor):
    """The Lab backend counting the frames it computes."""

    computed = 0

    def extract(self, images):
        CountingLab.computed += images.shape[0]
        return super().extract(images)


def lab_features(tmp_path) -> FeatureConfig:
    return FeatureConfig(backend="lab", cache=CacheConfig(dir=str(tmp_path)))


def test_stage_computes_only_missing_frames_and_returns_feature_maps(tmp_path):
    images = frames(3)
    CountingLab.computed = 0
    stage = FeatureStage(lab_features(tmp_path), extractor=CountingLab(LabConfig()))
    cold = stage.extract(images)
    assert CountingLab.computed == 3
    assert all(isinstance(m, FeatureMap) and m.stride == 8 and m.grid_size == (4, 6) for m in cold)
    reference = create_extractor("lab").extract(images)
    for m, ref in zip(cold, reference):
        torch.testing.assert_close(m.features, ref.half().float(), rtol=0, atol=0)
    warm = stage.extract(images)
    assert CountingLab.computed == 3 and stage.stats() == {"hits": 3, "misses": 3, "corrupt": 0}
    for a, b in zip(warm, cold):
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
    stage.cache.path(frame_digest(images[1]), (32, 48)).write_bytes(b"garbage")
    again = stage.extract(images)
    assert CountingLab.computed == 4
    torch.testing.assert_close(again[1].features, cold[1].features, rtol=0, atol=0)
    # the same frame under another name or in another batch is the same entry
    assert len(stage.extract(images[[2, 0]])) == 2 and CountingLab.computed == 4


def test_stage_without_cache_computes_every_time(tmp_path):
    CountingLab.computed = 0
    stage = FeatureStage(FeatureConfig(backend="lab"), extractor=CountingLab(LabConfig()))
    assert stage.cache is None and stage.stats() is None
    stage.extract(frames(2))
    stage.extract(frames(2))
    assert CountingLab.computed == 4


def test_stage_builds_its_model_only_on_a_cache_miss(tmp_path, monkeypatch):
    images = frames(3)
    config = lab_features(tmp_path)
    FeatureStage(config).extract(images)  # fills the cache
    built = []
    monkeypatch.setattr(LabExtractor, "__init__", lambda self, *a, **k: built.append(1) or pytest.fail("model built"))
    warm = FeatureStage(config)
    assert warm.spec == describe_extractor(config) and warm.spec.stride == 8
    assert len(warm.extract(images)) == 3
    assert not warm.loaded and built == []
    with pytest.raises(pytest.fail.Exception, match="model built"):
        warm.extract(frames(1, seed=5))  # a new frame: a miss, so the model is needed


def test_stream_batches_full_from_the_first_frame(tmp_path):
    from vidprop.features.stage import batches

    assert [len(b) for b in batches(range(20), 8)] == [8, 8, 4]
    assert [len(b) for b in batches(range(1), 8)] == [1]
    assert list(batches([], 8)) == []
    stage = FeatureStage(FeatureConfig(backend="lab"))
    images = frames(10)
    out = list(stage.stream((f"f{i}", image) for i, image in enumerate(images)))
    assert [name for name, _ in out] == [f"f{i}" for i in range(10)]
    reference = create_extractor("lab").extract(images)
    for (_, fmap), ref in zip(out, reference):
        torch.testing.assert_close(fmap.features, ref, rtol=0, atol=0)


def test_stage_compile_and_tf32_options(tmp_path, monkeypatch):
    """runtime.compile builds the model compiled (a backend without a model refuses it); TF32 is a
    CUDA setting, switched only around the extractor and restored after."""
    from vidprop.device import tf32_matmuls

    with pytest.raises(ConfigError) as info:
        FeatureStage(FeatureConfig(backend="lab"), compile=True)
    assert info.value.key == "runtime.compile" and "lab" in str(info.value)
    calls = []

    class CompilableLab(LabExtractor):
        def compile_model(self):
            calls.append(1)

    stage = FeatureStage(FeatureConfig(backend="lab"), extractor=CompilableLab(LabConfig()), compile=True)
    stage.extract(frames(2))
    stage.extract(frames(2))
    assert calls == [1]
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    for enabled in (True, False):
        with tf32_matmuls(torch.device("cuda"), enabled):
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (enabled, enabled)
        assert (matmul.allow_tf32, cudnn.allow_tf32) == before
        with tf32_matmuls(torch.device("cpu"), enabled):
            assert (matmul.allow_tf32, cudnn.allow_tf32) == before
