"""A tiny guided-diffusion (ADM) UNet with seeded random weights, in guided-diffusion's key names.

The architecture is the 256x256 unconditional model's (six levels, channel_mult (1, 1, 2, 2, 4, 4),
2 res blocks, attention at downsample factors 8, 16, 32, scale-shift norm, ResBlock up/down
sampling, 6 output channels, legacy attention head order) with 32 base channels and 16-channel
heads, so a 64x96 frame runs attention over 8x12, 4x6 and 2x3 grids.

Every tensor is drawn from one generator seeded with ``seed``, in the order of
:func:`vidprop.features.adm_convert.guided_diffusion_shapes`; nothing is zero (unlike
guided-diffusion's init, which zeroes every residual branch's last layer), so each layer
changes the output. The expected outputs in ``tests/data/adm_reference.safetensors`` were made
by guided-diffusion's own ``UNetModel`` loading this state dict.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vidprop.features.adm_convert import AdmArchitecture, guided_diffusion_shapes

TINY_ADM = AdmArchitecture(model_channels=32, num_head_channels=16)
# guided-diffusion create_model() flags of the same model (used by the reference script).
TINY_ADM_FLAGS = dict(
    image_size=256, num_channels=32, num_res_blocks=2, channel_mult="", learn_sigma=True, class_cond=False,
    attention_resolutions="32,16,8", num_heads=4, num_head_channels=16, num_heads_upsample=-1,
    use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_fp16=False, use_new_attention_order=False,
)
REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "adm_reference.safetensors"


def random_adm_state_dict(arch: AdmArchitecture = TINY_ADM, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights for every guided-diffusion key of ``arch`` (float32, CPU).

    Weights ~ N(0, 1/fan_in) (activations keep unit scale through the depth), biases ~ N(0, 0.1^2),
    GroupNorm scales ~ 1 + N(0, 0.1^2).
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in guided_diffusion_shapes(arch).items():
        noise = torch.randn(shape, generator=gen)
        if key.endswith(".bias"):
            out[key] = 0.1 * noise
        elif len(shape) == 1:  # GroupNorm scale
            out[key] = 1.0 + 0.1 * noise
        else:
            out[key] = noise / math.sqrt(math.prod(shape[1:]))
    return out


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write the tiny model's guided-diffusion state dict as a ``.pt`` file (as OpenAI ships theirs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_adm_state_dict(TINY_ADM, seed), path)
    return path
