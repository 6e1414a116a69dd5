"""A tiny, seeded Stable Diffusion model in the diffusers folder layout (no download).

The UNet has four down and four up blocks like SD 2.1 (so every ``up_ft_index`` 0..3 exists,
with strides 32, 16, 8, 8 and channels 32, 32, 16, 16), linear projections and
``upcast_attention`` as in SD 2.1; the VAE has four blocks (latent stride 8); the CLIP text
encoder is two layers wide 32; the tokenizer's vocabulary and merges are written here.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 16, 32, 32),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=(2, 2, 4, 4),
    use_linear_projection=True,
    upcast_attention=True,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=64,
)
# SD 2.1's scheduler_config.json values (num_train_timesteps=1000 is the default).
SD21_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1)
TINY_UP_BLOCKS = {0: (32, 32), 1: (32, 16), 2: (16, 8), 3: (16, 8)}  # index -> (channels, stride)


def _write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>", "!", *letters, *(f"{c}</w>" for c in letters), "th", "the</w>", "ca", "car</w>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = ["#version: 0.2", "t h", "th e</w>", "c a", "ca r</w>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def build_tiny_sd(path: Path, seed: int = 0) -> Path:
    """Build and save the tiny model under ``path``; return ``path``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    UNet2DConditionModel(**TINY_UNET).save_pretrained(path / "unet")
    torch.manual_seed(seed + 1)
    AutoencoderKL(**TINY_VAE).save_pretrained(path / "vae")
    DDIMScheduler(**SD21_SCHEDULER).save_pretrained(path / "scheduler")

    vocab_file, merges_file = _write_tokenizer_files(path / "tokenizer")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    tokenizer.save_pretrained(path / "tokenizer")
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(text_config).save_pretrained(path / "text_encoder")
    return path
