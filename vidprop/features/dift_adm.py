"""DIFT features from guided-diffusion's ADM UNet (Tang et al. 2023, DIFT_adm), on diffusers.

Per frame, as the original ``ADMFeaturizer`` (Tsingularity/dift ``src/models/dift_adm.py``):
repeat the frame ``ensemble_size`` times, noise each copy in pixel space to timestep t on
guided-diffusion's linear schedule (``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; 1000
steps, betas ``linspace(1e-4, 0.02)``, computed in float64 and rounded to float32 as
``GaussianDiffusion.q_sample`` does), run the UNet at t, take the output of
``output_blocks[output_block]`` and average it over the copies. The UNet is diffusers'
``UNet2DModel`` holding the guided-diffusion weights (:mod:`vidprop.features.adm_convert`).
Differences, none of which changes what is computed:

- the forward stops right after the captured block (a forward hook), and the blocks after it
  are dropped, so most of the high-resolution decoder never runs;
- the ensemble and several frames run as one UNet batch (``batch_size`` rows);
- the noise is seeded per frame from ``seed`` and the frame's pixels (the original draws from
  the global generator), so a frame's features do not depend on batching, order or the cache;
- attention uses PyTorch's scaled-dot-product attention instead of materialising the weights.

Inputs must have sides that are multiples of 32: the UNet halves the grid five times and
concatenates each level's skip connection on the way up (the original never pads).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from vidprop.device import dtype_name, upload
from vidprop.errors import ConfigError, ModelNotFoundError, ShapeError
from vidprop.features.adm_convert import (
    HOW_TO_GET,
    AdmArchitecture,
    checkpoint_fingerprint,
    load_adm_unet,
    output_block_geometry,
    output_block_module,
    read_architecture,
)
from vidprop.features.base import ExtractorBase, FeatureSpec, check_images, register_extractor
from vidprop.features.config import AdmConfig
from vidprop.features.unet_common import BlockCapture, Removed, check_dtype, compile_units, frame_generator, to_device

__all__ = ["AdmExtractor", "linear_schedule_coefficients"]

logger = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000


def linear_schedule_coefficients(timestep: int, steps: int = NUM_TRAIN_TIMESTEPS) -> tuple[float, float]:
    """``(sqrt(abar_t), sqrt(1 - abar_t))`` of guided-diffusion's linear schedule, in float64.

    As ``get_named_beta_schedule("linear", steps)`` and ``GaussianDiffusion.__init__``
    (openai/guided-diffusion ``gaussian_diffusion.py``): betas = linspace(1e-4 * 1000/steps,
    0.02 * 1000/steps, steps) in float64, abar = cumprod(1 - betas). t = 51 gives
    (0.98431149, 0.17643948).
    """
    scale = 1000 / steps
    betas = np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    return float(np.sqrt(alphas_cumprod[timestep])), float(np.sqrt(1.0 - alphas_cumprod[timestep]))


def adm_cache_key(config: AdmConfig, dtype: torch.dtype) -> dict:
    """Everything that changes dift_adm's features except the input (no model loading needed)."""
    return {
        "backend": "dift_adm",
        "checkpoint": config.checkpoint,
        "weights": checkpoint_fingerprint(config.checkpoint) if config.checkpoint else None,
        "num_head_channels": config.num_head_channels,
        "output_block": config.output_block,
        "timestep": config.timestep,
        "ensemble_size": config.ensemble_size,
        "seed": config.seed,
        "dtype": dtype_name(dtype),
    }


def _describe(config: AdmConfig, dtype: torch.dtype, arch: AdmArchitecture) -> FeatureSpec:
    """The :class:`FeatureSpec` of ``config`` on a UNet of architecture ``arch``."""
    check_dtype(dtype)
    if config.output_block >= arch.num_output_blocks:
        raise ConfigError(
            f"invalid value {config.output_block} (this UNet has output blocks 0..{arch.num_output_blocks - 1})",
            key="features.adm.output_block",
        )
    channels, stride = output_block_geometry(arch, config.output_block)
    return FeatureSpec(
        name="dift_adm",
        channels=channels,
        stride=stride,
        frames_per_batch=max(1, config.batch_size // config.ensemble_size),
        cache_key=adm_cache_key(config, dtype),
    )


@register_extractor("dift_adm", AdmConfig, "adm")
class AdmExtractor(ExtractorBase):
    """DIFT features of a guided-diffusion (ADM) UNet output block.

    Attributes:
        spec: name ``"dift_adm"``; channels C (512 for the 256x256 model's block 7); stride
            (8 for block 7); frames per batch (``batch_size // ensemble_size``, at least 1:
            frames that fill one UNet batch); cache key (everything that changes the features
            except the input).
        size_multiple: frame sides must be multiples of this (32).
    """

    def __init__(self, config: AdmConfig | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        """Load ``config.checkpoint`` (a guided-diffusion ``.pt`` or a converted folder).

        Raises:
            ModelNotFoundError: no checkpoint configured, or the file/folder does not exist.
            CheckpointError: the file is not a supported guided-diffusion UNet (names the key at fault).
            ConfigError: the output block does not exist or the dtype is unsupported.
        """
        config = config or AdmConfig()
        check_dtype(dtype)
        if config.checkpoint is None:
            raise ModelNotFoundError(f"features.adm.checkpoint is not set. {HOW_TO_GET}")
        logger.info("loading the ADM UNet from %s", config.checkpoint)
        unet, arch = load_adm_unet(config.checkpoint, config.num_head_channels, dtype)
        self._setup(config, _describe(config, dtype, arch), unet, arch, device, dtype)

    @classmethod
    def describe(cls, config: AdmConfig, dtype: torch.dtype = torch.float32) -> FeatureSpec:
        """The :class:`FeatureSpec` of ``config``, from the checkpoint's architecture (read without
        building the model; see :func:`~vidprop.features.adm_convert.read_architecture`).

        Raises:
            ModelNotFoundError: no checkpoint configured, or the file/folder does not exist.
            CheckpointError: the file is not a supported guided-diffusion UNet.
            ConfigError: the output block does not exist or the dtype is unsupported.
        """
        if config.checkpoint is None:
            raise ModelNotFoundError(f"features.adm.checkpoint is not set. {HOW_TO_GET}")
        return _describe(config, dtype, read_architecture(config.checkpoint, config.num_head_channels))

    @classmethod
    def from_unet(
        cls,
        config: AdmConfig,
        unet: nn.Module,
        arch: AdmArchitecture,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "AdmExtractor":
        """Build from an already loaded ``UNet2DModel`` of ``arch`` (benchmarks, tests); ``unet`` is truncated in place."""
        self = cls.__new__(cls)
        self._setup(config, _describe(config, dtype, arch), unet, arch, device, dtype)
        return self

    def _setup(self, config: AdmConfig, spec: FeatureSpec, unet: nn.Module, arch: AdmArchitecture, device, dtype: torch.dtype) -> None:
        from diffusers.models.attention_processor import Attention, AttnProcessor2_0

        self.config = config
        self.spec = spec
        self.arch = arch
        self.device = torch.device(device)
        self.dtype = dtype
        self.size_multiple = arch.size_multiple
        self.batch_size = config.batch_size
        self.sqrt_alpha_bar, self.sqrt_one_minus_alpha_bar = linear_schedule_coefficients(config.timestep)

        self._truncate(unet, config.output_block)
        for module in unet.modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor2_0())
        self.unet = to_device(unet, self.device, dtype).eval().requires_grad_(False)
        block = output_block_module(self.unet, arch, config.output_block)
        self._capture = BlockCapture({config.output_block: block}, stop_after=config.output_block)
        logger.info(
            "DIFT_adm: output block %d (%d channels, stride %d), t=%d, ensemble %d, on %s in %s",
            config.output_block, self.channels, self.stride, config.timestep, config.ensemble_size,
            self.device, dtype_name(dtype),
        )

    def _truncate(self, unet: nn.Module, index: int) -> None:
        """Drop every part that runs after output block ``index`` (they hold most of the decoder's weights)."""
        period = self.arch.num_res_blocks + 1
        up, j = divmod(index, period)
        for later in range(up + 1, len(unet.up_blocks)):
            unet.up_blocks[later] = Removed(f"unet.up_blocks.{later}")
        block = unet.up_blocks[up]
        if j < self.arch.num_res_blocks:
            for attr in ("resnets", "attentions"):
                modules = getattr(block, attr, None)
                for i in range(j + 1, len(modules or ())):
                    modules[i] = Removed(f"unet.up_blocks.{up}.{attr}.{i}")
            if getattr(block, "upsamplers", None) is not None:
                block.upsamplers[0] = Removed(f"unet.up_blocks.{up}.upsamplers.0")
        for part in ("conv_norm_out", "conv_act", "conv_out"):
            setattr(unet, part, Removed(f"unet.{part}"))

    def compile_model(self, **options: Any) -> int:
        """Compile the UNet's blocks in place (``runtime.compile``); the captured block stays eager
        (its hook stops the forward). Returns how many; ``options`` go to ``torch.compile``."""
        count = compile_units(self.unet, self._capture.modules.values(), **options)
        logger.info("DIFT_adm: %d UNet blocks compiled with torch.compile", count)
        return count

    # ---- noise -------------------------------------------------------------------------

    def draw_noise(self, images: torch.Tensor, ensemble_size: int | None = None) -> torch.Tensor:
        """Each frame's pixel-space noise: (B, E, 3, H, W) standard normal, float32, CPU.

        Frame b's draws come from :func:`~vidprop.features.unet_common.frame_generator`
        (``config.seed`` and the frame's pixels).
        """
        size = (ensemble_size or self.config.ensemble_size, *images.shape[1:])
        return torch.stack([torch.randn(size, generator=frame_generator(self.config.seed, image)) for image in images])

    # ---- the computation ---------------------------------------------------------------

    def check_frames(self, images: torch.Tensor) -> tuple[int, int]:
        """Check a batch of frames; return the feature grid (h, w).

        Raises:
            ShapeError: not (B, 3, H, W) float, or H, W not multiples of 32.
        """
        check_images(images, self.stride)
        height, width = int(images.shape[2]), int(images.shape[3])
        if height % self.size_multiple or width % self.size_multiple:
            raise ShapeError(
                f"images: frame size {height}x{width} is not a multiple of {self.size_multiple}: the ADM UNet halves "
                f"the grid {self.arch.levels - 1} times and concatenates its skip connections, so both sides must be "
                f"multiples of {self.size_multiple} (resize frames, e.g. ResizePolicy(multiple={self.size_multiple}))"
            )
        return height // self.stride, width // self.stride

    def noisy_images(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t`` for frames (B, 3, H, W) and draws (B, E, 3, H, W): (B*E, 3, H, W) float32, frame-major."""
        x0 = upload(images, self.device, torch.float32)[:, None]
        a = torch.tensor(self.sqrt_alpha_bar, dtype=torch.float32)
        b = torch.tensor(self.sqrt_one_minus_alpha_bar, dtype=torch.float32)
        return (a * x0 + b * upload(noise, self.device, torch.float32)).flatten(0, 1)

    def unet_features(self, x_t: torch.Tensor) -> torch.Tensor:
        """Run the (truncated) UNet on noisy frames (N, 3, H, W); return the block's (N, C, h, w) output."""
        timesteps = torch.full((x_t.shape[0],), self.config.timestep, dtype=torch.long, device=self.device)
        captured = self._capture.run(lambda: self.unet(x_t.to(self.device, self.dtype), timesteps, return_dict=False))
        return captured[self.config.output_block]

    @torch.inference_mode()
    def extract_with_noise(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Ensemble-averaged features for given noise draws.

        Args:
            images: (B, 3, H, W) float in [-1, 1], H and W multiples of 32.
            noise: (B, E, 3, H, W) standard normal draws (see :meth:`draw_noise`); E = 1 gives
                single-draw features.

        Returns:
            (B, C, H/stride, W/stride) float32 on the extractor's device.

        Raises:
            ShapeError: bad image or noise shape.
        """
        self.check_frames(images)
        if noise.ndim != 5 or noise.shape[0] != images.shape[0] or noise.shape[2:] != images.shape[1:] or noise.shape[1] < 1:
            raise ShapeError(f"noise: expected shape ({images.shape[0]}, E, {', '.join(map(str, images.shape[1:]))}), got {tuple(noise.shape)}")
        ensemble = int(noise.shape[1])
        frames_per_chunk = max(1, self.batch_size // ensemble)
        outputs = []
        for f0 in range(0, images.shape[0], frames_per_chunk):
            f1 = min(f0 + frames_per_chunk, images.shape[0])
            x_t = self.noisy_images(images[f0:f1], noise[f0:f1])
            frame_of_row = torch.arange(f1 - f0, device=self.device).repeat_interleave(ensemble)
            sums = None
            for n0 in range(0, x_t.shape[0], self.batch_size):
                rows = slice(n0, n0 + self.batch_size)
                feats = self.unet_features(x_t[rows]).float()
                if sums is None:
                    sums = feats.new_zeros((f1 - f0, *feats.shape[1:]))
                sums.index_add_(0, frame_of_row[rows], feats)
            outputs.append(sums / ensemble)
        return torch.cat(outputs)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """DIFT_adm features of a batch of frames.

        Args:
            images: (B, 3, H, W) float RGB in [-1, 1], H and W multiples of 32.

        Returns:
            (B, C, H/stride, W/stride) float32 on the extractor's device.

        Raises:
            ShapeError: bad shape or sides that are not multiples of 32.
        """
        self.check_frames(images)
        return self.extract_with_noise(images, self.draw_noise(images))
