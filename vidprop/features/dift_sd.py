"""DIFT features from Stable Diffusion (Tang et al. 2023), on diffusers' public modules.

Per frame, as the original ``SDFeaturizer``: encode with the VAE, draw a sample of the latent
posterior, scale it, noise it to timestep t with the model's DDIM scheduler, run the UNet
once with the prompt embedding and take the output of ``up_blocks[i]``; average over
``ensemble_size`` draws. Differences, none of which changes what is computed:

- the VAE encodes each frame once and all posterior samples come from that encoding (the
  original encodes ``ensemble_size`` identical copies; the encoder is deterministic);
- the ensemble and several frames run as one UNet batch (``batch_size``);
- the UNet stops after the last requested up block: a forward hook captures the block's
  output and raises a private exception, and the later blocks and output layers are deleted
  (diffusers' forward is called unchanged, so new diffusers releases keep working);
- the draws are seeded: each frame's generator is seeded from ``seed`` and the frame's pixels,
  so a frame's features do not depend on batching, order or the cache;
- the text encoder runs once at load time and is then freed; the VAE decoder is never kept.

:meth:`DiftExtractor.describe` gives the channels, stride and cache key from the model's
``unet/config.json`` and ``vae/config.json`` and a fingerprint of its weight files, without
loading any weights: a run whose features are all cached never builds the model.

Attention uses PyTorch's scaled-dot-product attention (``AttnProcessor2_0``). SD 2.1's UNet
config sets ``upcast_attention``, which diffusers only honours in its classic (non-SDPA)
processor; the SDPA kernels accumulate the softmax in float32 for float16/bfloat16 inputs
(flash / memory-efficient kernels, and the math kernel unless
``torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)``), so half precision does not
overflow. The VAE encoder runs in ``vae_dtype`` (float32 by default; once per frame, so it costs
little); its posterior mean and standard deviation are used in float32.

On a GPU: each frame's noise is drawn on the CPU from its own generator, seeded from the CPU copy
of the frame before the frame is uploaded, so the draws are the same on every device (CUDA's
generators give other numbers for the same seed) and cached features stay valid; frames and draws
go up through pinned memory without waiting (:func:`vidprop.device.upload`). ``compile_model``
compiles the UNet's and the VAE encoder's blocks (:func:`~vidprop.features.unet_common.compile_units`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shlex
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vidprop.device import dtype_name, torch_dtype, upload
from vidprop.errors import ConfigError, ModelNotFoundError, ShapeError
from vidprop.features.base import ExtractorBase, FeatureSpec, check_images, register_extractor
from vidprop.features.config import DiftConfig
from vidprop.features.unet_common import (BlockCapture, Removed, check_dtype, compile_units, files_fingerprint, frame_generator,
                                          to_device)

__all__ = ["DiftExtractor", "resolve_model_dir", "download_command", "REQUIRED_SUBFOLDERS", "up_block_geometry", "weights_fingerprint", "encode_prompt"]

logger = logging.getLogger(__name__)

REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# What to fetch from the Hub: the five components in full precision, safetensors only.
_HUB_ALLOW = [f"{sub}/*" for sub in REQUIRED_SUBFOLDERS]
_HUB_IGNORE = ["*.bin", "*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.fp16.*", "*non_ema*", "*.pt", "*.h5"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def download_command(model_id: str, revision: str | None = None) -> str:
    """The shell command that downloads what :func:`resolve_model_dir` needs into the Hugging Face
    cache, for the command line tool the installed huggingface_hub provides (``hf`` since 0.34,
    ``huggingface-cli`` before; a Python one-liner when it provides neither)."""
    from importlib import metadata

    try:
        scripts = {ep.name for ep in metadata.distribution("huggingface_hub").entry_points if ep.group == "console_scripts"}
    except metadata.PackageNotFoundError:
        scripts = set()
    quote = shlex.quote
    rev = f" --revision {quote(revision)}" if revision else ""
    if "hf" in scripts:  # typer options: one pattern per --include/--exclude
        include = "".join(f" --include {quote(p)}" for p in _HUB_ALLOW)
        exclude = "".join(f" --exclude {quote(p)}" for p in _HUB_IGNORE)
        return f"hf download {quote(model_id)}{rev}{include}{exclude}"
    if "huggingface-cli" in scripts:  # argparse options: several patterns after one flag
        return (
            f"huggingface-cli download {quote(model_id)}{rev} --include {' '.join(map(quote, _HUB_ALLOW))} "
            f"--exclude {' '.join(map(quote, _HUB_IGNORE))}"
        )
    call = f"snapshot_download({model_id!r}, revision={revision!r}, allow_patterns={_HUB_ALLOW!r}, ignore_patterns={_HUB_IGNORE!r})"
    return f"python -c {quote('from huggingface_hub import snapshot_download; ' + call)}"


def _how_to_provide(model_id: str, revision: str | None = None) -> str:
    return (
        f"Provide the weights either as a local folder in the diffusers layout "
        f"({', '.join(s + '/' for s in REQUIRED_SUBFOLDERS)}) passed as features.dift.model_id, "
        f"or download {model_id!r} once with network access into the Hugging Face cache "
        f"(`{download_command(model_id, revision)}`) and then run with HF_HUB_OFFLINE=1."
    )


def _check_layout(folder: Path, model_id: str) -> Path:
    missing = [sub for sub in REQUIRED_SUBFOLDERS if not (folder / sub).is_dir()]
    if missing:
        raise ModelNotFoundError(
            f"model folder for {model_id!r} lacks {', '.join(s + '/' for s in missing)} "
            f"(expected the diffusers layout: {', '.join(s + '/' for s in REQUIRED_SUBFOLDERS)}). {_how_to_provide(model_id)}",
            path=folder,
        )
    return folder


def resolve_model_dir(model_id: str, revision: str | None = None, timeout_s: float = 10.0) -> Path:
    """Find (or download) a Stable Diffusion model and return its local folder.

    A local folder is used as is. A Hub id is looked up in the local Hugging Face cache first;
    only if it is not there, and ``HF_HUB_OFFLINE`` is not set, is the Hub asked, with
    ``timeout_s`` as connection timeout.

    Args:
        model_id: Hub id (``"org/name"``) or a folder in the diffusers layout.
        revision: branch, tag or commit on the Hub (ignored for folders).
        timeout_s: seconds to wait for the Hub.

    Returns:
        The folder holding ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``.

    Raises:
        ModelNotFoundError: naming the model, revision, where it looked and how to provide it.
    """
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return _check_layout(folder, model_id)
    if not _HUB_ID.match(model_id):
        raise ModelNotFoundError(
            f"model folder does not exist and {model_id!r} is not a Hub id of the form 'org/name'. {_how_to_provide(model_id)}",
            path=folder.resolve(),
        )
    from huggingface_hub import constants, snapshot_download

    where = f"{model_id!r} (revision {revision or 'default'})"
    kwargs = dict(repo_id=model_id, revision=revision, allow_patterns=_HUB_ALLOW, ignore_patterns=_HUB_IGNORE)
    try:
        return _check_layout(Path(snapshot_download(local_files_only=True, **kwargs)), model_id)
    except ModelNotFoundError:
        raise
    except Exception as exc:  # not in the cache (huggingface_hub raises several types)
        cache_error = exc
    if _hub_offline():
        raise ModelNotFoundError(
            f"model {where} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
            f"({type(cache_error).__name__}). {_how_to_provide(model_id, revision)}",
            path=constants.HF_HUB_CACHE,
        )
    logger.info("downloading %s from the Hugging Face Hub into %s", where, constants.HF_HUB_CACHE)
    try:
        path = snapshot_download(etag_timeout=timeout_s, **kwargs)
    except Exception as exc:
        raise ModelNotFoundError(
            f"model {where} is not in the local Hugging Face cache and could not be fetched from the Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). {_how_to_provide(model_id, revision)}",
            path=constants.HF_HUB_CACHE,
        ) from exc
    return _check_layout(Path(path), model_id)


def weights_fingerprint(model_dir: Path) -> str:
    """A short hash of the model's files (names, sizes, modification times), for cache keys.

    It changes when the weights in a local folder are replaced, so stale cached features are
    never reused (a copied folder only costs a recomputation).
    """
    files = [path for sub in REQUIRED_SUBFOLDERS for path in (model_dir / sub).rglob("*") if path.is_file()]
    return files_fingerprint(model_dir, files)


def up_block_geometry(unet_config: Any, vae_config: Any) -> list[tuple[int, int]]:
    """(channels, stride in image pixels) of each UNet up block's output.

    Up block i ends with a 2x upsampler unless it is the last one, so its output lies
    ``2 ** max(n_up - 2 - i, 0)`` latent cells apart; the VAE adds ``2 ** (n_vae_blocks - 1)``.
    For SD 2.1: [(1280, 32), (1280, 16), (640, 8), (320, 8)].

    Args:
        unet_config, vae_config: the models' configs (diffusers configs or the dicts of their
            ``config.json``).
    """
    vae_scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    channels = list(reversed(unet_config["block_out_channels"]))
    n_up = len(unet_config["up_block_types"])
    return [(channels[i], vae_scale * 2 ** max(n_up - 2 - i, 0)) for i in range(n_up)]


def _read_model_configs(model_dir: Path, model_id: str) -> tuple[dict, dict]:
    """The UNet's and the VAE's ``config.json`` (read as JSON: no diffusers import, no weights)."""
    configs = []
    for sub in ("unet", "vae"):
        path = model_dir / sub / "config.json"
        try:
            configs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelNotFoundError(
                f"cannot read the {sub} config of model {model_id!r} ({type(exc).__name__}: {exc}). {_how_to_provide(model_id)}",
                path=path,
            ) from exc
    return configs[0], configs[1]


def _describe(config: DiftConfig, dtype: torch.dtype, unet_config: Any, vae_config: Any, weights: str | None) -> FeatureSpec:
    """The :class:`FeatureSpec` of ``config`` on a model with these configs (and weight fingerprint)."""
    check_dtype(dtype)
    geometry = up_block_geometry(unet_config, vae_config)
    if any(i >= len(geometry) for i in config.layers):
        raise ConfigError(
            f"invalid value {config.up_ft_index!r} (this UNet has up blocks 0..{len(geometry) - 1})", key="features.dift.up_ft_index"
        )
    key = {
        "backend": "dift_sd",
        "model_id": config.model_id,
        "revision": config.revision,
        "timestep": config.timestep,
        "up_ft_index": list(config.layers),
        "ensemble_size": config.ensemble_size,
        "prompt": config.prompt,
        "seed": config.seed,
        "dtype": dtype_name(dtype),
    }
    if config.vae_dtype != "float32":  # absent at the default, so caches filled before the option stay valid
        key["vae_dtype"] = config.vae_dtype
    if weights is not None:
        key["weights"] = weights
    return FeatureSpec(
        name="dift_sd",
        channels=sum(geometry[i][0] for i in config.layers),
        stride=min(geometry[i][1] for i in config.layers),
        frames_per_batch=max(1, config.batch_size // config.ensemble_size),
        cache_key=key,
    )


def encode_prompt(model_dir: Path, prompt: str) -> torch.Tensor:
    """Text embedding of ``prompt`` as Stable Diffusion pipelines compute it.

    Loads the tokenizer and text encoder on the CPU in float32 and frees them afterwards.

    Returns:
        (1, L, D) float32 tensor (L = tokenizer.model_max_length, D = text hidden size).
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", torch_dtype=torch.float32)
    text_encoder.eval()
    tokens = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    mask = tokens.attention_mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    with torch.inference_mode():
        embeds = text_encoder(tokens.input_ids, attention_mask=mask)[0]
    del text_encoder, tokenizer
    gc.collect()
    return embeds.clone()


@register_extractor("dift_sd", DiftConfig, "dift", shared_option="up_ft_index")
class DiftExtractor(ExtractorBase):
    """DIFT features of a Stable Diffusion UNet up block.

    Attributes:
        spec: name ``"dift_sd"``; channels C (sum over the requested blocks; 640 for SD 2.1 block
            2); stride (the finest of the requested blocks); frames per batch
            (``batch_size // ensemble_size``, at least 1: frames that fill one UNet batch); cache
            key (every setting that changes the features, and a fingerprint of the weight files).
        layers: the requested up blocks, in ``config.layers`` order.
        layer_channels, layer_strides: per requested block, in that order.

    Several blocks (``up_ft_index`` a tuple) are captured in one pass; :meth:`extract` resizes
    coarser ones bilinearly to the finest grid and concatenates them in the order given, and
    :meth:`extract_layers` returns each at its own stride.
    """

    def __init__(self, config: DiftConfig | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        """Load the model named by ``config.model_id`` (see :func:`resolve_model_dir`).

        Raises:
            ModelNotFoundError: the weights cannot be found.
            ConfigError: a requested block does not exist or the dtype is unsupported.
        """
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        config = config or DiftConfig()
        model_dir = resolve_model_dir(config.model_id, config.revision, config.hub_timeout_s)
        spec = self._describe_folder(config, dtype, model_dir)
        logger.info("loading Stable Diffusion from %s (model %s, revision %s)", model_dir, config.model_id, config.revision)
        try:
            prompt_embeds = encode_prompt(model_dir, config.prompt)
            vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", torch_dtype=torch_dtype(config.vae_dtype))
            unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=dtype)
            scheduler = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler")
        except OSError as exc:  # missing or unreadable weight/config files in the folder
            raise ModelNotFoundError(
                f"cannot load model {config.model_id!r} from this folder ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). {_how_to_provide(config.model_id)}",
                path=model_dir,
            ) from exc
        self._setup(config, spec, unet, vae, scheduler, prompt_embeds, device, dtype)

    @classmethod
    def describe(cls, config: DiftConfig, dtype: torch.dtype = torch.float32) -> FeatureSpec:
        """The :class:`FeatureSpec` of ``config``: finds the model folder (see :func:`resolve_model_dir`)
        and reads its UNet and VAE ``config.json``, loading no weights.

        Raises:
            ModelNotFoundError: the model cannot be found.
            ConfigError: a requested block does not exist or the dtype is unsupported.
        """
        return cls._describe_folder(config, dtype, resolve_model_dir(config.model_id, config.revision, config.hub_timeout_s))

    @staticmethod
    def _describe_folder(config: DiftConfig, dtype: torch.dtype, model_dir: Path) -> FeatureSpec:
        unet_config, vae_config = _read_model_configs(model_dir, config.model_id)
        return _describe(config, dtype, unet_config, vae_config, weights_fingerprint(model_dir))

    @classmethod
    def from_components(
        cls,
        config: DiftConfig,
        unet: nn.Module,
        vae: nn.Module,
        scheduler: Any,
        prompt_embeds: torch.Tensor,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "DiftExtractor":
        """Build from already loaded modules (benchmarks, tests). ``unet`` is truncated in place.

        The cache key has no weight fingerprint (there are no weight files).
        """
        self = cls.__new__(cls)
        self._setup(config, _describe(config, dtype, unet.config, vae.config, None), unet, vae, scheduler, prompt_embeds, device, dtype)
        return self

    def _setup(self, config, spec, unet, vae, scheduler, prompt_embeds, device, dtype) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.device = torch.device(device)
        self.dtype = dtype
        self.latent_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(vae.config.scaling_factor)

        # Only the encoder half of the VAE is needed.
        vae.decoder = None
        if getattr(vae, "post_quant_conv", None) is not None:
            vae.post_quant_conv = None
        self.vae_dtype = torch_dtype(config.vae_dtype)
        self.vae = to_device(vae, self.device, self.vae_dtype).eval().requires_grad_(False)

        self._kept_blocks = max(config.layers) + 1  # the up blocks after the deepest requested one are dropped
        for j in range(self._kept_blocks, len(unet.up_blocks)):
            unet.up_blocks[j] = Removed(f"unet.up_blocks.{j}")
        for part in ("conv_norm_out", "conv_act", "conv_out"):
            if getattr(unet, part, None) is not None:
                setattr(unet, part, Removed(f"unet.{part}"))
        unet.set_attn_processor(AttnProcessor2_0())
        self.unet = to_device(unet, self.device, dtype).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.prompt_embeds = prompt_embeds.to(self.device, dtype)
        gc.collect()
        self._bind(config, spec)

    def _bind(self, config: DiftConfig, spec: FeatureSpec) -> None:
        """Set what depends on the setting rather than on the loaded model (see :meth:`reconfigure`)."""
        self.config = config
        self.spec = spec
        geometry = up_block_geometry(self.unet.config, self.vae.config)
        layers = config.layers
        self.layers = layers
        self.batch_size = config.batch_size
        self.layer_channels = tuple(geometry[i][0] for i in layers)
        self.layer_strides = tuple(geometry[i][1] for i in layers)
        self._capture = BlockCapture({i: self.unet.up_blocks[i] for i in layers}, stop_after=max(layers))
        logger.info(
            "DIFT: up blocks %s (%s channels, strides %s), t=%d, ensemble %d, on %s in %s",
            list(layers), list(self.layer_channels), list(self.layer_strides),
            config.timestep, config.ensemble_size, self.device, dtype_name(self.dtype),
        )

    def reconfigure(
        self, config: DiftConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "DiftExtractor | None":
        """An extractor of ``config`` on this extractor's loaded modules, or None when they cannot serve it.

        They serve any setting of the same weights (model id, revision), prompt, device, dtype and
        VAE dtype whose up blocks were kept (none deeper than the deepest this extractor was built for):
        another timestep, ensemble size, seed, batch size or up block. The result gives exactly
        the features, and has the spec (cache key included), of an extractor built from
        ``config``; this extractor stays usable (both share the modules, each captures its own
        blocks).
        """
        same_model = (config.model_id, config.revision, config.prompt, config.vae_dtype) == (
            self.config.model_id, self.config.revision, self.config.prompt, self.config.vae_dtype)
        if not same_model or torch.device(device) != self.device or dtype != self.dtype or max(config.layers) >= self._kept_blocks:
            return None
        other = type(self).__new__(type(self))
        other.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_capture"})
        weights = self.spec.cache_key.get("weights")
        other._bind(config, _describe(config, dtype, self.unet.config, self.vae.config, weights))
        return other

    def compile_model(self, **options: Any) -> int:
        """Compile the UNet's and the VAE encoder's blocks in place (``runtime.compile``); returns how many.

        The captured up blocks stay eager (their hooks stop the forward), the blocks inside them are
        compiled. ``options`` go to ``torch.compile``.
        """
        count = compile_units(self.unet, self._capture.modules.values(), **options) + compile_units(self.vae.encoder, **options)
        logger.info("DIFT: %d UNet and VAE blocks compiled with torch.compile", count)
        return count

    # ---- noise -------------------------------------------------------------------------

    def latent_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the VAE latent of an (H, W) frame."""
        return image_size[0] // self.latent_scale, image_size[1] // self.latent_scale

    def frame_generator(self, image: torch.Tensor) -> torch.Generator:
        """A CPU generator seeded from ``config.seed`` and the pixels of one (3, H, W) frame."""
        return frame_generator(self.config.seed, image)

    def draw_noise(self, images: torch.Tensor, ensemble_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw each frame's posterior and diffusion noise (standard normal, float32, CPU).

        Args:
            images: (B, 3, H, W) frames in [-1, 1].
            ensemble_size: E (default ``config.ensemble_size``).

        Returns:
            ``(posterior_eps, noise)``, each (B, E, latent_channels, H/8, W/8) for SD.
        """
        size = (ensemble_size or self.config.ensemble_size, self.latent_channels, *self.latent_size(tuple(images.shape[-2:])))
        eps, noise = [], []
        for image in images:
            gen = self.frame_generator(image)
            eps.append(torch.randn(size, generator=gen))
            noise.append(torch.randn(size, generator=gen))
        return torch.stack(eps), torch.stack(noise)

    # ---- the computation ---------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the VAE's latent posterior, each (B, 4, H/8, W/8) float32.

        The encoder computes in ``config.vae_dtype``.
        """
        posterior = self.vae.encode(upload(images.float(), self.device, self.vae_dtype)).latent_dist
        return posterior.mean.float(), posterior.std.float()

    def noisy_latents(self, images: torch.Tensor, posterior_eps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The UNet inputs: scaled posterior samples noised to ``config.timestep``.

        Args:
            images: (B, 3, H, W) in [-1, 1], encoded once each.
            posterior_eps, noise: (B, E, 4, H/8, W/8) standard normal draws.

        Returns:
            (B*E, 4, H/8, W/8) float32, frame-major (frame b's members are rows b*E .. b*E+E-1).
        """
        mean, std = self.encode(images)
        eps = upload(posterior_eps, self.device, torch.float32)
        latents = (mean[:, None] + std[:, None] * eps) * self.scaling_factor
        latents = latents.flatten(0, 1)
        timesteps = torch.full((latents.shape[0],), self.config.timestep, dtype=torch.long, device=self.device)
        return self.scheduler.add_noise(latents, upload(noise, self.device, torch.float32).flatten(0, 1), timesteps)

    def unet_features(self, latents: torch.Tensor) -> dict[int, torch.Tensor]:
        """Run the (truncated) UNet on noisy latents (N, 4, h8, w8); return {block: (N, C_i, h_i, w_i)}."""
        n = latents.shape[0]
        timesteps = torch.full((n,), self.config.timestep, dtype=torch.long, device=self.device)
        context = self.prompt_embeds.expand(n, -1, -1)
        return self._capture.run(
            lambda: self.unet(latents.to(self.device, self.dtype), timesteps, encoder_hidden_states=context, return_dict=False)
        )

    @torch.inference_mode()
    def extract_layers_with_noise(
        self, images: torch.Tensor, posterior_eps: torch.Tensor, noise: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        """Ensemble-averaged features of each requested block, for given draws.

        Args:
            images: (B, 3, H, W) float in [-1, 1].
            posterior_eps, noise: (B, E, 4, H/8, W/8) standard normal draws (see :meth:`draw_noise`).

        Returns:
            {block index: (B, C_i, h_i, w_i) float32 on the extractor's device}.
        """
        check_images(images, self.stride)
        expected = (images.shape[0], posterior_eps.shape[1], self.latent_channels, *self.latent_size(tuple(images.shape[-2:])))
        for label, draws in (("posterior_eps", posterior_eps), ("noise", noise)):
            if tuple(draws.shape) != expected:
                raise ShapeError(f"{label}: expected shape {expected}, got {tuple(draws.shape)}")
        ensemble = int(posterior_eps.shape[1])
        frames_per_chunk = max(1, self.batch_size // ensemble)
        outputs: dict[int, list[torch.Tensor]] = {i: [] for i in self.layers}
        for f0 in range(0, images.shape[0], frames_per_chunk):
            f1 = min(f0 + frames_per_chunk, images.shape[0])
            latents = self.noisy_latents(images[f0:f1], posterior_eps[f0:f1], noise[f0:f1])
            sums: dict[int, torch.Tensor] = {}
            frame_of_row = torch.arange(f1 - f0, device=self.device).repeat_interleave(ensemble)
            for n0 in range(0, latents.shape[0], self.batch_size):
                rows = slice(n0, n0 + self.batch_size)
                for i, feats in self.unet_features(latents[rows]).items():
                    feats = feats.float()
                    if i not in sums:
                        sums[i] = feats.new_zeros((f1 - f0, *feats.shape[1:]))
                    sums[i].index_add_(0, frame_of_row[rows], feats)
            for i in self.layers:
                outputs[i].append(sums[i] / ensemble)
        return {i: torch.cat(chunks) for i, chunks in outputs.items()}

    def extract_layers(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """{block index: (B, C_i, h_i, w_i) float32}: each requested block at its own stride."""
        check_images(images, self.stride)
        posterior_eps, noise = self.draw_noise(images)
        return self.extract_layers_with_noise(images, posterior_eps, noise)

    def combine(self, layers: dict[int, torch.Tensor], order: tuple[int, ...] | None = None) -> torch.Tensor:
        """Concatenate per-block features on the finest grid: (B, C, h, w) float32.

        ``order``: the blocks to combine, in order (default: this extractor's ``layers``); a
        subset gives exactly what an extractor of those blocks alone gives.
        """
        chosen = [layers[i] for i in (self.layers if order is None else order)]
        grid = max((f.shape[-2:] for f in chosen), key=lambda s: s[0] * s[1])
        parts = [
            f if f.shape[-2:] == grid else F.interpolate(f, size=tuple(grid), mode="bilinear", align_corners=False)
            for f in chosen
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    @staticmethod
    def merge(values: Sequence[int | tuple[int, ...]]) -> tuple[int, ...]:
        """The ``up_ft_index`` that captures every block of ``values`` in one pass (sorted)."""
        return tuple(sorted({i for v in values for i in ((v,) if isinstance(v, int) else v)}))

    def extract_shared(self, images: torch.Tensor, values: Sequence[int | tuple[int, ...]]) -> list[torch.Tensor]:
        """Features of several ``up_ft_index`` values from one UNet pass per frame.

        Args:
            images: (B, 3, H, W) float in [-1, 1].
            values: ``up_ft_index`` values whose blocks this extractor captures.

        Returns:
            Per value, (B, C, h, w) float32: exactly what an extractor of that value alone gives
            (the same draws, the blocks combined in the value's order).
        """
        layers = self.extract_layers(images)
        return [self.combine(layers, (v,) if isinstance(v, int) else tuple(v)) for v in values]

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """DIFT features of a batch of frames.

        Args:
            images: (B, 3, h*stride, w*stride) float RGB in [-1, 1].

        Returns:
            (B, C, h, w) float32 on the extractor's device.

        Raises:
            ShapeError: bad shape or a frame size that is not a multiple of ``stride``.
        """
        return self.combine(self.extract_layers(images))
