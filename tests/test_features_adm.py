"""dift_adm against guided-diffusion's own UNetModel, and the backend's loading, options and errors.

The expected block outputs (``tests/data/adm_reference.safetensors``) were computed outside this
repository by openai/guided-diffusion's ``UNetModel`` (built with ``create_model_and_diffusion``
and the 256x256-uncond flags, 32 base channels, 16-channel heads), loaded with
:func:`adm_fixtures.random_adm_state_dict` (seed 0), on the DAVIS frame blackswan/00000.jpg read
as DIFT's ``read_frame`` does at short side 64 (64x96), noised with its ``q_sample`` at t=51 with
fixed noise, and run block by block as DIFT's ``ADMFeaturizer``. The file holds output blocks
5-8 for draws 0 and 1 and the mean over the 4 draws.
"""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from adm_fixtures import REFERENCE_FILE, TINY_ADM, random_adm_state_dict, save_tiny_checkpoint
from PIL import Image

from vidprop import cli
from vidprop.errors import CheckpointError, ConfigError, ModelNotFoundError, ShapeError
from vidprop.features import AdmConfig, FeatureConfig, create_extractor
from vidprop.features.adm_convert import (
    ADM_256_UNCOND,
    build_unet,
    convert_state_dict,
    guided_diffusion_shapes,
    infer_architecture,
    output_block_geometry,
    output_block_module,
    read_architecture,
)
from vidprop.features.dift_adm import AdmExtractor, linear_schedule_coefficients
from vidprop.io.resize import ResizePolicy

BLOCKS = (5, 6, 7, 8)


@pytest.fixture(scope="module")
def reference() -> dict:
    from safetensors import safe_open

    with safe_open(str(REFERENCE_FILE), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {"meta": meta, **tensors}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, reference):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("adm") / "tiny_adm.pt", seed=int(reference["meta"]["seed"]))


@pytest.fixture(scope="module")
def frame(davis_root, reference) -> torch.Tensor:
    """(1, 3, 64, 96) in [-1, 1]: vidprop's resize of the reference frame."""
    rgb = np.array(Image.open(davis_root / "JPEGImages" / "480p" / reference["meta"]["frame"]).convert("RGB"))
    image = ResizePolicy(short_side=64)(rgb)[None]
    assert tuple(image.shape[-2:]) == tuple(int(v) for v in reference["meta"]["size"].split("x"))
    return image


@pytest.fixture(scope="module")
def noise(reference, frame) -> torch.Tensor:
    seed, ensemble = int(reference["meta"]["seed"]), int(reference["meta"]["ensemble_size"])
    return torch.randn((1, ensemble, *frame.shape[1:]), generator=torch.Generator().manual_seed(seed + 1))


def adm(ckpt, **options) -> AdmExtractor:
    return create_extractor("dift_adm", checkpoint=str(ckpt), num_head_channels=16, **options)


@pytest.fixture(scope="module")
def block7(tiny_ckpt) -> AdmExtractor:
    return adm(tiny_ckpt, output_block=7)


def relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours - expected).abs().max() / expected.abs().max())


# ---- exactness against guided-diffusion -------------------------------------------------------

@pytest.mark.parametrize("block", BLOCKS)
def test_block_outputs_equal_guided_diffusion(tiny_ckpt, reference, frame, noise, block):
    extractor = adm(tiny_ckpt, output_block=block)
    assert extractor.channels == reference[f"block{block}_mean"].shape[1]
    for draw in (0, 1):
        single = extractor.extract_with_noise(frame, noise[:, draw : draw + 1])
        expected = reference[f"block{block}_draws01"][draw : draw + 1]
        assert single.shape == expected.shape
        assert relative_error(single, expected) < 1e-4, (block, draw)
    mean = extractor.extract_with_noise(frame, noise)
    assert relative_error(mean, reference[f"block{block}_mean"]) < 1e-4


def test_the_test_catches_a_new_order_qkv_split_and_a_wrong_block(tiny_ckpt, reference, frame, noise):
    """The two conversion traps each load without error; the reference comparison must reject them."""
    sd = random_adm_state_dict(TINY_ADM, int(reference["meta"]["seed"]))
    # Rows rearranged so that the (legacy) converter's q, k, v are the qkv rows' consecutive thirds,
    # i.e. what a plain chunk(3) (use_new_attention_order's layout) would take from the real weights.
    thirds_first = {}
    for key, value in sd.items():
        if ".qkv." in key:
            heads = value.shape[0] // 3 // TINY_ADM.num_head_channels
            value = value.reshape(3, heads, -1, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
        thirds_first[key] = value
    config = AdmConfig(output_block=7)
    expected = reference["block7_draws01"][:1]
    wrong_split = build_unet(TINY_ADM, convert_state_dict(thirds_first, TINY_ADM))
    got = AdmExtractor.from_unet(config, wrong_split, TINY_ADM).extract_with_noise(frame, noise[:, :1])
    assert relative_error(got, expected) > 1e-2

    # block 7 is up_blocks[2].attentions[1]'s output: not the ResBlock before it, nor a neighbouring block
    extractor = AdmExtractor.from_unet(config, build_unet(TINY_ADM, convert_state_dict(sd, TINY_ADM)), TINY_ADM)
    up_block = extractor.unet.up_blocks[2]
    assert output_block_module(extractor.unet, TINY_ADM, 7) is up_block.attentions[1]
    seen = []
    hook = up_block.resnets[1].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        assert relative_error(extractor.extract_with_noise(frame, noise[:, :1]), expected) < 1e-4
    finally:
        hook.remove()
    assert relative_error(seen[0], expected) > 1e-2
    block6 = adm(tiny_ckpt, output_block=6).extract_with_noise(frame, noise[:, :1])
    assert block6.shape == expected.shape and relative_error(block6, expected) > 1e-2


def test_linear_schedule_in_float64_as_guided_diffusion():
    a, b = linear_schedule_coefficients(51)
    assert a == pytest.approx(0.98431149, abs=5e-9) and b == pytest.approx(0.17643948, abs=5e-9)
    assert a * a + b * b == pytest.approx(1.0, abs=1e-12)


# ---- the full-size architecture --------------------------------------------------------------

def test_full_size_architecture_matches_openai_256_uncond():
    shapes = guided_diffusion_shapes(ADM_256_UNCOND)
    assert len(shapes) == 566  # tensors in 256x256_diffusion_uncond.pt
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 552_814_086
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert infer_architecture(meta) == ADM_256_UNCOND
    unet = build_unet(ADM_256_UNCOND, convert_state_dict(meta, ADM_256_UNCOND))  # strict load: every key and shape
    assert sum(p.numel() for p in unet.parameters()) == 552_814_086
    assert output_block_geometry(ADM_256_UNCOND, 7) == (512, 8)
    assert [output_block_geometry(ADM_256_UNCOND, k)[1] for k in range(18)] == [32, 32, 16, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1, 1]
    assert output_block_module(unet, ADM_256_UNCOND, 7) is unet.up_blocks[2].attentions[1]
    assert output_block_module(unet, ADM_256_UNCOND, 8) is unet.up_blocks[2]
    assert output_block_module(unet, ADM_256_UNCOND, 12) is unet.up_blocks[4].resnets[0]


# ---- the extractor -----------------------------------------------------------------------------

def test_forward_stops_after_the_block_and_later_parts_are_dropped(block7, tiny_ckpt):
    unet = block7.unet
    for dropped in (unet.up_blocks[3], unet.up_blocks[5], unet.up_blocks[2].resnets[2], unet.up_blocks[2].attentions[2],
                    unet.up_blocks[2].upsamplers[0], unet.conv_out):
        assert sum(p.numel() for p in dropped.parameters()) == 0
    full = sum(p.numel() for p in random_adm_state_dict(TINY_ADM, 0).values())
    assert sum(p.numel() for p in unet.parameters()) < full
    assert (block7.channels, block7.stride, block7.size_multiple) == (64, 8, 32)


def test_ensemble_is_the_mean_of_single_draws_and_batching_does_not_matter(block7, davis_root):
    frames = torch.stack([
        ResizePolicy(short_side=64)(np.array(Image.open(p).convert("RGB")))
        for p in sorted((davis_root / "JPEGImages" / "480p" / "dog").glob("*.jpg"))[:3]
    ])
    noise = block7.draw_noise(frames)
    assert noise.shape == (3, 4, 3, 64, 96) and noise.dtype == torch.float32
    together = block7.extract_with_noise(frames, noise)
    singles = torch.stack([block7.extract_with_noise(frames, noise[:, k : k + 1]) for k in range(4)]).mean(0)
    torch.testing.assert_close(together, singles, rtol=1e-4, atol=1e-5)
    one_by_one = torch.cat([block7.extract_with_noise(frames[i : i + 1], noise[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-5)
    block7.batch_size = 3  # ensemble split over UNet calls
    try:
        torch.testing.assert_close(block7.extract_with_noise(frames, noise), together, rtol=1e-4, atol=1e-5)
    finally:
        block7.batch_size = 8
    assert block7.frames_per_batch == 2


def test_seeded_noise_is_per_frame_reproducible_and_order_independent(block7, tiny_ckpt, frame):
    frames = torch.cat([frame, frame.flip(-1)])
    first = block7.extract(frames)
    torch.testing.assert_close(block7.extract(frames), first, rtol=0, atol=0)
    torch.testing.assert_close(block7.extract(frames.flip(0)), first.flip(0), rtol=1e-5, atol=1e-6)
    noise = block7.draw_noise(frames)
    assert (noise[0] - noise[1]).abs().mean() > 0.5  # different frames, different draws
    assert (noise[0, 0] - noise[0, 1]).abs().mean() > 0.5  # ensemble members differ
    other = adm(tiny_ckpt, output_block=7, seed=1)
    assert (other.draw_noise(frames) - noise).abs().mean() > 0.5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision(tiny_ckpt, block7, frame, noise, dtype):
    cfg = FeatureConfig(backend="dift_adm", adm=AdmConfig(checkpoint=str(tiny_ckpt), num_head_channels=16))
    half = create_extractor(cfg, dtype=dtype)
    assert half.unet.dtype == getattr(torch, dtype) and half.cache_key["dtype"] == dtype
    got, want = half.extract_with_noise(frame, noise), block7.extract_with_noise(frame, noise)
    assert got.dtype == torch.float32
    assert (got - want).norm() / want.norm() < 0.05


def test_frame_sides_must_be_multiples_of_32(block7):
    with pytest.raises(ShapeError, match="not a multiple of 32"):
        block7.extract(torch.zeros(1, 3, 48, 96))  # a multiple of the stride 8, not of 32
    with pytest.raises(ShapeError, match=r"\(B, 3, H, W\)"):
        block7.extract(torch.zeros(3, 64, 96))
    with pytest.raises(ShapeError, match="noise"):
        block7.extract_with_noise(torch.zeros(1, 3, 64, 96), torch.zeros(1, 4, 3, 64, 64))


def test_output_block_out_of_range_is_a_config_error(tiny_ckpt):
    with pytest.raises(ConfigError, match="output blocks 0..17") as info:
        adm(tiny_ckpt, output_block=18)
    assert info.value.key == "features.adm.output_block"


def test_cache_key_names_everything_that_changes_the_features(block7, tiny_ckpt, tmp_path):
    key = block7.cache_key
    assert {k: key[k] for k in ("backend", "checkpoint", "output_block", "timestep", "ensemble_size", "seed", "dtype")} == {
        "backend": "dift_adm", "checkpoint": str(tiny_ckpt), "output_block": 7, "timestep": 51, "ensemble_size": 4,
        "seed": 0, "dtype": "float32",
    }
    other = save_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    assert adm(other, output_block=7).cache_key["weights"] != key["weights"]


def test_feature_cache_round_trip(block7, frame, tmp_path):
    from vidprop.features import CacheConfig, FeatureStage

    cache = CacheConfig(dir=str(tmp_path / "cache"), dtype="float32")
    stage = FeatureStage(FeatureConfig(backend="dift_adm", cache=cache), extractor=block7)
    assert stage.spec.stride == 8 and stage.spec.channels == 64
    (first,) = stage.extract(frame)
    (again,) = stage.extract(frame)
    assert stage.cache.stats()["hits"] == 1 and again.stride == 8
    torch.testing.assert_close(again.features, first.features, rtol=0, atol=0)
    torch.testing.assert_close(first.features, block7.extract(frame)[0], rtol=0, atol=0)


def test_describe_reads_the_architecture_without_building_the_model(block7, tiny_ckpt, monkeypatch):
    import vidprop.features.dift_adm as dift_adm

    monkeypatch.setattr(dift_adm, "load_adm_unet", lambda *a, **k: pytest.fail("the model was built"))
    config = AdmConfig(checkpoint=str(tiny_ckpt), num_head_channels=16, output_block=7)
    assert AdmExtractor.describe(config) == block7.spec


# ---- loading: .pt, converted folder, errors ---------------------------------------------------

def test_missing_or_unset_checkpoint(tmp_path):
    missing = tmp_path / "nowhere" / "256x256_diffusion_uncond.pt"
    with pytest.raises(ModelNotFoundError) as info:
        create_extractor("dift_adm", checkpoint=str(missing))
    assert info.value.path == str(missing) and "256x256_diffusion_uncond.pt" in str(info.value)
    with pytest.raises(ModelNotFoundError, match="features.adm.checkpoint is not set"):
        create_extractor("dift_adm")


def _save(tmp_path, name, data):
    path = tmp_path / name
    torch.save(data, path)
    return path


def test_bad_checkpoints_name_the_file_and_the_key(tmp_path):
    sd = random_adm_state_dict(TINY_ADM, 0)
    cases = []
    missing = dict(sd)
    del missing["output_blocks.7.1.qkv.weight"]
    cases.append((_save(tmp_path, "missing.pt", missing), "missing key 'output_blocks.7.1.qkv.weight'"))
    cases.append((_save(tmp_path, "extra.pt", {**sd, "label_emb.weight": torch.zeros(1000, 128)}), "unexpected key 'label_emb.weight'"))
    no_scale_shift = {k: (v[: v.shape[0] // 2] if "emb_layers.1" in k else v) for k, v in sd.items()}
    cases.append((_save(tmp_path, "shift.pt", no_scale_shift), "key 'input_blocks.1.0.emb_layers.1.weight' has shape (32, 128)"))
    cases.append((_save(tmp_path, "other.pt", {"weight": torch.zeros(3)}), "no key 'input_blocks.0.0.weight'"))
    cases.append((_save(tmp_path, "list.pt", [torch.zeros(3)]), "expected a state dict"))
    unsafe = tmp_path / "unsafe.pt"
    with unsafe.open("wb") as fh:
        pickle.dump({"x": shutil.rmtree}, fh)  # not loadable with weights_only=True
    cases.append((unsafe, "weights_only"))
    (tmp_path / "truncated.pt").write_bytes(_save(tmp_path, "full.pt", sd).read_bytes()[:5000])
    cases.append((tmp_path / "truncated.pt", "cannot load"))
    # other files given by mistake: legacy unpickling fails with KeyError or struct.error
    for name, data in (("text.pt", b"hello, not a checkpoint\n"), ("binget.pt", b"]h\x05."), ("struct.pt", b"J\x01")):
        (tmp_path / name).write_bytes(data)
        cases.append((tmp_path / name, "cannot load as a plain tensor state dict"))
    for path, fragment in cases:
        with pytest.raises(CheckpointError) as info:
            create_extractor("dift_adm", checkpoint=str(path), num_head_channels=16)
        assert info.value.path == str(path), path
        assert fragment in str(info.value), (path, str(info.value))
    with pytest.raises(CheckpointError, match="do not split into heads of 24"):
        create_extractor("dift_adm", checkpoint=str(tmp_path / "full.pt"), num_head_channels=24)


def test_convert_adm_cli_writes_a_folder_that_loads_to_the_same_features(tiny_ckpt, block7, frame, noise, tmp_path, capsys, caplog):
    out = tmp_path / "converted"
    assert cli.main(["convert-adm", str(tiny_ckpt), str(out), "--num-head-channels", "16"]) == 0
    assert "converted" in capsys.readouterr().out
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]  # no temporary folder left
    assert read_architecture(out) == TINY_ADM == read_architecture(tiny_ckpt, num_head_channels=16)  # no model built
    from_folder = create_extractor("dift_adm", checkpoint=str(out))  # head width from config.json
    torch.testing.assert_close(from_folder.extract_with_noise(frame, noise), block7.extract_with_noise(frame, noise), rtol=0, atol=0)
    caplog.clear()
    assert cli.main(["convert-adm", str(tiny_ckpt), str(out)]) == 2  # exists
    assert "already exists" in caplog.text and str(out) in caplog.text
    caplog.clear()
    assert cli.main(["convert-adm", str(tmp_path / "none.pt"), str(tmp_path / "x")]) == 2
    assert "none.pt" in caplog.text and not (tmp_path / "x").exists()
    # OUT_DIR below a file: refused before the conversion, with the path (was a traceback after it)
    (tmp_path / "notes.txt").write_text("mine")
    caplog.clear()
    assert cli.main(["convert-adm", str(tiny_ckpt), str(tmp_path / "notes.txt" / "adm"), "--num-head-channels", "16"]) == 2
    assert f"{tmp_path / 'notes.txt'}: the parent folder of OUT_DIR is an existing file" in caplog.text
    assert "Traceback" not in caplog.text
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_folder_that_is_not_a_converted_adm_model(tmp_path, tiny_ckpt):
    from diffusers import UNet2DModel

    UNet2DModel(block_out_channels=(32, 32), norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                up_block_types=("UpBlock2D",) * 2).save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="not a converted guided-diffusion UNet") as info:
        create_extractor("dift_adm", checkpoint=str(tmp_path / "other"))
    assert info.value.path == str(tmp_path / "other")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        create_extractor("dift_adm", checkpoint=str(tmp_path / "empty"))


def test_config_validation():
    from vidprop.config_base import from_dict

    cfg = from_dict(FeatureConfig, {"adm": {"output_block": 5, "timestep": 101}}, prefix="features.")
    assert (cfg.adm.output_block, cfg.adm.timestep, cfg.adm.ensemble_size) == (5, 101, 4)
    for bad in ({"output_block": -1}, {"timestep": 1000}, {"ensemble_size": 0}, {"batch_size": 0}, {"num_head_channels": 0}, {"checkpoint": ""}):
        with pytest.raises(ConfigError) as info:
            from_dict(FeatureConfig, {"adm": bad}, prefix="features.")
        assert info.value.key == f"features.adm.{next(iter(bad))}"


# ---- end to end ----------------------------------------------------------------------------

def test_davis_preset_runs_end_to_end_with_a_tiny_checkpoint(short_sequence, tiny_ckpt, tmp_path, capsys, caplog):
    from vidprop.config import load_config
    from vidprop.scoring import evaluate_davis

    preset = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "davis2017_dift_adm.yaml")
    cfg = load_config(preset)
    assert (cfg.features.backend, cfg.features.adm.output_block, cfg.features.adm.timestep, cfg.features.adm.ensemble_size) == ("dift_adm", 7, 51, 4)
    assert (cfg.propagation.temperature, cfg.propagation.topk, cfg.propagation.n_last_frames, cfg.propagation.radius) == (0.1, 10, 28, 15)
    short_sequence("car-shadow", 4)
    root = short_sequence("libby", 4)
    out = tmp_path / "results"
    base = ["davis", "--davis-root", str(root), "--set", "val", "--config", preset, "--device", "cpu", "--short-side", "64"]
    argv = [*base, "--out", str(out), "--set", f"features.adm.checkpoint={tiny_ckpt}", "--set", "features.adm.num_head_channels=16"]
    assert cli.main(argv) == 0
    assert "J&F-Mean" in capsys.readouterr().out
    scores = evaluate_davis(root, out, split="val")
    assert scores.sequences == ("car-shadow", "libby")
    caplog.clear()
    missing = tmp_path / "no" / "256x256_diffusion_uncond.pt"
    assert cli.main([*base, "--out", str(tmp_path / "r2"), "--set", f"features.adm.checkpoint={missing}"]) == 2
    assert str(missing) in caplog.text


def test_seed_flag_sets_the_adm_seed():
    from vidprop.cli.common import config_from_args

    cfg = config_from_args(cli.build_parser().parse_args(["propagate", "f", "--mask", "m.png", "--out", "o", "--seed", "7"]))
    assert (cfg.features.dift.seed, cfg.features.adm.seed) == (7, 7)
