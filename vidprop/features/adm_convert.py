"""guided-diffusion (ADM) UNet checkpoints -> diffusers ``UNet2DModel``.

OpenAI's guided-diffusion ``UNetModel`` (Dhariwal & Nichol 2021; openai/guided-diffusion
``guided_diffusion/unet.py``) built with ``use_scale_shift_norm=True``, ``resblock_updown=True``
and without class conditioning is, layer for layer, diffusers' ``UNet2DModel`` with
ResNet up/down sampling and scale-shift time conditioning. This module holds the mapping,
written from the two architectures:

- ``input_blocks[0]`` -> ``conv_in``; level ``l``'s residual blocks ``input_blocks[1 + l*(n+1) + j]``
  -> ``down_blocks[l].resnets[j]`` (+ ``.attentions[j]``), its down-sampling ResBlock
  -> ``down_blocks[l].downsamplers[0]``; ``middle_block`` -> ``mid_block``;
- output block ``k`` lies in ``up_blocks[k // (n+1)]`` (``n`` = residual blocks per level): its
  ResBlock is ``resnets[k % (n+1)]``, its attention ``attentions[k % (n+1)]`` and, for the last
  block of a level, its up-sampling ResBlock is ``upsamplers[0]``. So output block k's output is
  that attention's (or ResBlock's) output, and for the last block of a level the whole up
  block's output (see :func:`output_block_module`);
- the attention's ``qkv`` 1x1 convolution is split into ``to_q``, ``to_k``, ``to_v``. The
  checkpoints use guided-diffusion's *legacy* head order (``QKVAttentionLegacy``): its 3C
  output rows are laid out as (heads, 3, head_channels), so q, k and v are gathered per head,
  not taken as three consecutive thirds (that is the ``use_new_attention_order`` layout).

A guided-diffusion ``.pt`` state dict does not record the head width (``num_head_channels``)
or the attention head order; they are parameters here (64 and legacy, as OpenAI's 256x256
models). Everything else is read off the tensors (:func:`infer_architecture`) and then every
key and shape is checked before converting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch

from vidprop.errors import CheckpointError, ModelNotFoundError

__all__ = [
    "AdmArchitecture",
    "ADM_256_UNCOND",
    "CHECKPOINT_URL",
    "infer_architecture",
    "check_state_dict",
    "convert_state_dict",
    "load_guided_diffusion_state_dict",
    "build_unet",
    "load_adm_unet",
    "read_architecture",
    "save_converted",
    "output_block_module",
    "output_block_geometry",
    "checkpoint_fingerprint",
]

CHECKPOINT_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
_GROUPS = 32  # guided-diffusion's normalization(): GroupNorm32(32, channels), eps 1e-5
_EPS = 1e-5


@dataclass(frozen=True)
class AdmArchitecture:
    """The guided-diffusion ``UNetModel`` hyper-parameters that fix its state dict.

    Attributes:
        model_channels: base channels (``num_channels``).
        channel_mult: channels of each level, in units of ``model_channels``.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: levels ``l`` (downsample factor ``2**l``) with self-attention.
        num_head_channels: channels per attention head.
        in_channels, out_channels: image channels in; model output channels (6 with learn_sigma).
    """

    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (3, 4, 5)
    num_head_channels: int = 64
    in_channels: int = 3
    out_channels: int = 6

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(m * self.model_channels for m in self.channel_mult)

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def num_output_blocks(self) -> int:
        return self.levels * (self.num_res_blocks + 1)

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (one halving per level boundary)."""
        return 2 ** (self.levels - 1)

    def diffusers_config(self) -> dict:
        """``UNet2DModel`` keyword arguments for this architecture."""
        attn = set(self.attention_levels)
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.num_res_blocks,
            down_block_types=tuple(
                "AttnDownBlock2D" if level in attn else "ResnetDownsampleBlock2D" for level in range(self.levels)
            ),
            up_block_types=tuple(
                "AttnUpBlock2D" if level in attn else "ResnetUpsampleBlock2D" for level in reversed(range(self.levels))
            ),
            mid_block_type="UNetMidBlock2D",
            attention_head_dim=self.num_head_channels,
            norm_num_groups=_GROUPS,
            attn_norm_num_groups=_GROUPS,  # else diffusers' scale-shift mid block has no GroupNorm before attention
            norm_eps=_EPS,
            resnet_time_scale_shift="scale_shift",
            downsample_type="resnet",
            upsample_type="resnet",
            time_embedding_type="positional",
            flip_sin_to_cos=True,
            freq_shift=0,
            act_fn="silu",
            add_attention=True,
            dropout=0.0,
        )

    @classmethod
    def from_diffusers_config(cls, config: Mapping) -> "AdmArchitecture":
        """The architecture of a ``UNet2DModel`` config written by :func:`save_converted`.

        Raises:
            CheckpointError: the config is not of this family (``diffusers_config()`` disagrees).
        """
        channels = tuple(config.get("block_out_channels") or ())
        base = channels[0] if channels else 0
        try:
            arch = cls(
                model_channels=base,
                channel_mult=tuple(c // base for c in channels),
                num_res_blocks=int(config["layers_per_block"]),
                attention_levels=tuple(i for i, t in enumerate(config["down_block_types"]) if t == "AttnDownBlock2D"),
                num_head_channels=int(config["attention_head_dim"]),
                in_channels=int(config["in_channels"]),
                out_channels=int(config["out_channels"]),
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise CheckpointError(f"config.json is not a converted guided-diffusion UNet ({type(exc).__name__}: {exc})") from None
        for key, value in arch.diffusers_config().items():
            have = config.get(key)
            if (tuple(have) if isinstance(have, list) else have) != value:
                raise CheckpointError(
                    f"config.json is not a converted guided-diffusion UNet: {key} is {have!r}, expected {value!r} "
                    "(write such a folder with `vidprop convert-adm`)"
                )
        return arch


# 256x256 unconditional ImageNet model (guided-diffusion README flags; the DIFT paper's DIFT_adm).
ADM_256_UNCOND = AdmArchitecture()


# ---- the module-by-module correspondence ----------------------------------------------------

@dataclass(frozen=True)
class _Part:
    kind: str  # conv | linear | norm | res | attn
    gd: str  # guided-diffusion prefix (no trailing dot)
    df: str  # diffusers prefix
    dims: tuple[int, ...]  # conv: (cin, cout, k); linear: (cin, cout); norm/attn: (c,); res: (cin, cout, emb)


def _parts(arch: AdmArchitecture) -> Iterator[_Part]:
    mc, emb = arch.model_channels, 4 * arch.model_channels
    attn, last = set(arch.attention_levels), arch.levels - 1
    yield _Part("linear", "time_embed.0", "time_embedding.linear_1", (mc, emb))
    yield _Part("linear", "time_embed.2", "time_embedding.linear_2", (emb, emb))
    ch = arch.block_out_channels[0]
    yield _Part("conv", "input_blocks.0.0", "conv_in", (arch.in_channels, ch, 3))
    skips, index = [ch], 1
    for level, out in enumerate(arch.block_out_channels):
        for j in range(arch.num_res_blocks):
            yield _Part("res", f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{j}", (ch, out, emb))
            ch = out
            if level in attn:
                yield _Part("attn", f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{j}", (ch,))
            skips.append(ch)
            index += 1
        if level != last:
            yield _Part("res", f"input_blocks.{index}.0", f"down_blocks.{level}.downsamplers.0", (ch, ch, emb))
            skips.append(ch)
            index += 1
    yield _Part("res", "middle_block.0", "mid_block.resnets.0", (ch, ch, emb))
    yield _Part("attn", "middle_block.1", "mid_block.attentions.0", (ch,))
    yield _Part("res", "middle_block.2", "mid_block.resnets.1", (ch, ch, emb))
    k = 0
    for level in reversed(range(arch.levels)):
        up, out = last - level, arch.block_out_channels[level]
        for j in range(arch.num_res_blocks + 1):
            yield _Part("res", f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{j}", (ch + skips.pop(), out, emb))
            ch, sub = out, 1
            if level in attn:
                yield _Part("attn", f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{j}", (ch,))
                sub = 2
            if level and j == arch.num_res_blocks:
                yield _Part("res", f"output_blocks.{k}.{sub}", f"up_blocks.{up}.upsamplers.0", (ch, ch, emb))
            k += 1
    yield _Part("norm", "out.0", "conv_norm_out", (ch,))
    yield _Part("conv", "out.2", "conv_out", (ch, arch.out_channels, 3))


def _leaves(part: _Part) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(guided-diffusion sub-module, diffusers sub-module, dims) of the simple layers in ``part``."""
    if part.kind == "res":
        cin, cout, emb = part.dims
        yield "in_layers.0", "norm1", ("norm", cin)
        yield "in_layers.2", "conv1", ("conv", cin, cout, 3)
        yield "emb_layers.1", "time_emb_proj", ("linear", emb, 2 * cout)
        yield "out_layers.0", "norm2", ("norm", cout)
        yield "out_layers.3", "conv2", ("conv", cout, cout, 3)
        if cin != cout:
            yield "skip_connection", "conv_shortcut", ("conv", cin, cout, 1)
    elif part.kind == "attn":
        (c,) = part.dims
        yield "norm", "group_norm", ("norm", c)
        yield "qkv", "to_qkv", ("conv1d", c, 3 * c)
        yield "proj_out", "to_out.0", ("conv1d", c, c)
    else:
        yield "", "", (part.kind, *part.dims)


def _shapes(spec: tuple) -> dict[str, tuple[int, ...]]:
    kind = spec[0]
    if kind == "norm":
        return {"weight": (spec[1],), "bias": (spec[1],)}
    if kind == "conv":
        _, cin, cout, size = spec
        return {"weight": (cout, cin, size, size), "bias": (cout,)}
    if kind == "conv1d":
        _, cin, cout = spec
        return {"weight": (cout, cin, 1), "bias": (cout,)}
    _, cin, cout = spec  # linear
    return {"weight": (cout, cin), "bias": (cout,)}


def _join(*names: str) -> str:
    return ".".join(n for n in names if n)


def guided_diffusion_shapes(arch: AdmArchitecture) -> dict[str, tuple[int, ...]]:
    """Every key of the guided-diffusion state dict of ``arch`` with its shape, in module order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for part in _parts(arch):
        for gd, _, spec in _leaves(part):
            for name, shape in _shapes(spec).items():
                shapes[_join(part.gd, gd, name)] = shape
    return shapes


# ---- reading a checkpoint --------------------------------------------------------------------

def _block_indices(state_dict: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    return sorted({int(k.split(".")[1]) for k in state_dict if k.startswith(prefix) and k.split(".")[1].isdigit()})


def infer_architecture(
    state_dict: Mapping[str, torch.Tensor], num_head_channels: int = 64, source: str | os.PathLike | None = None
) -> AdmArchitecture:
    """Read a guided-diffusion UNet's hyper-parameters off its state dict.

    Base channels and image channels come from ``input_blocks.0.0.weight``, the output channels
    from ``out.2.weight``, the residual blocks per level from where the up-sampling ResBlocks sit
    among the output blocks, the level widths from each level's first ResBlock and the attention
    levels from which of those carry an attention block. ``num_head_channels`` is not stored.

    Raises:
        CheckpointError: not a guided-diffusion UNet state dict of the supported kind (naming
            ``source`` and the key at fault).
    """

    def need(key: str) -> torch.Tensor:
        if key not in state_dict:
            raise CheckpointError(f"not a guided-diffusion UNet state dict: no key {key!r}", path=source)
        return state_dict[key]

    conv_in, conv_out = need("input_blocks.0.0.weight"), need("out.2.weight")
    model_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    outputs = _block_indices(state_dict, "output_blocks.")
    if not outputs:
        need("output_blocks.0.0.in_layers.0.weight")
    n_out = outputs[-1] + 1
    upsamplers = [k for k in outputs if any(f"output_blocks.{k}.{s}.in_layers.0.weight" in state_dict for s in (1, 2))]
    period = upsamplers[0] + 1 if upsamplers else n_out
    if n_out % period:
        raise CheckpointError(f"output blocks 0..{n_out - 1} do not split into levels of {period} blocks", path=source)
    mults, attention = [], []
    for level in range(n_out // period):
        first = f"input_blocks.{1 + level * period}"
        width = int(need(f"{first}.0.out_layers.3.weight").shape[0])
        if width % model_channels:
            raise CheckpointError(
                f"level {level} has {width} channels, not a multiple of the base {model_channels} (unsupported)", path=source
            )
        mults.append(width // model_channels)
        if f"{first}.1.qkv.weight" in state_dict:
            attention.append(level)
    return AdmArchitecture(
        model_channels=model_channels,
        channel_mult=tuple(mults),
        num_res_blocks=period - 1,
        attention_levels=tuple(attention),
        num_head_channels=num_head_channels,
        in_channels=in_channels,
        out_channels=int(conv_out.shape[0]),
    )


def check_state_dict(state_dict: Mapping[str, torch.Tensor], arch: AdmArchitecture, source: str | os.PathLike | None = None) -> None:
    """Check that ``state_dict`` has exactly the keys and shapes of ``arch``'s guided-diffusion UNet.

    Raises:
        CheckpointError: naming ``source`` and the first missing key, unexpected key or wrong shape.
    """
    expected = guided_diffusion_shapes(arch)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise CheckpointError(f"missing key {missing[0]!r} ({len(missing)} missing) for {_describe(arch)}", path=source)
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        hint = " (a class-conditional model? only unconditional ones are supported)" if unexpected[0].startswith("label_emb") else ""
        raise CheckpointError(
            f"unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected) for {_describe(arch)}{hint}", path=source
        )
    for key, shape in expected.items():
        value = state_dict[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(
                f"key {key!r} has shape {got}, expected {shape} for {_describe(arch)} "
                "(guided-diffusion built with use_scale_shift_norm=True and resblock_updown=True)",
                path=source,
            )
        if not value.is_floating_point():
            raise CheckpointError(f"key {key!r} holds {value.dtype}, expected floating point weights", path=source)
    heads = [c for level, c in enumerate(arch.block_out_channels) if level in arch.attention_levels] + [arch.block_out_channels[-1]]
    bad = [c for c in heads if c % arch.num_head_channels]
    if bad:
        raise CheckpointError(f"{bad[0]} attention channels do not split into heads of {arch.num_head_channels}", path=source)


def _describe(arch: AdmArchitecture) -> str:
    return (
        f"a guided-diffusion UNet with {arch.model_channels} base channels, channel_mult {arch.channel_mult}, "
        f"{arch.num_res_blocks} res blocks and attention at levels {arch.attention_levels}"
    )


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], arch: AdmArchitecture, source: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """The diffusers ``UNet2DModel`` state dict of a guided-diffusion one (checked first).

    Raises:
        CheckpointError: see :func:`check_state_dict`.
    """
    check_state_dict(state_dict, arch, source)
    out: dict[str, torch.Tensor] = {}
    for part in _parts(arch):
        for gd, df, spec in _leaves(part):
            weight, bias = state_dict[_join(part.gd, gd, "weight")], state_dict[_join(part.gd, gd, "bias")]
            if df == "to_qkv":
                channels = spec[1]
                heads = channels // arch.num_head_channels
                # Legacy order: rows are (head, {q,k,v}, channel in head).
                w = weight.reshape(heads, 3, arch.num_head_channels, channels)
                b = bias.reshape(heads, 3, arch.num_head_channels)
                for i, name in enumerate(("to_q", "to_k", "to_v")):
                    out[_join(part.df, name, "weight")] = w[:, i].reshape(channels, channels).contiguous()
                    out[_join(part.df, name, "bias")] = b[:, i].reshape(channels).contiguous()
                continue
            if spec[0] == "conv1d":
                weight = weight[..., 0]
            out[_join(part.df, df, "weight")] = weight.contiguous()
            out[_join(part.df, df, "bias")] = bias.contiguous()
    return out


def load_guided_diffusion_state_dict(path: str | os.PathLike, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Read a guided-diffusion ``.pt`` file safely (``torch.load(weights_only=True)``) on the CPU.

    ``mmap=True`` maps the tensors instead of reading them (zip-format files; others are read),
    for reading shapes cheaply.

    Raises:
        ModelNotFoundError: no such file (says where to get OpenAI's checkpoint).
        CheckpointError: unreadable, not loadable with ``weights_only``, or not a dict of tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"guided-diffusion checkpoint not found. {HOW_TO_GET}", path=path.absolute())
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # not a zip-format file
    except Exception as exc:  # noqa: BLE001 - unpickling any other file fails in many ways (KeyError, IndexError, struct.error, ...)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"cannot load as a plain tensor state dict ({type(exc).__name__}: {first})", path=path) from None
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise CheckpointError(f"expected a state dict (a dict of tensors), got {type(data).__name__}", path=path)
    return dict(data)


HOW_TO_GET = (
    "DIFT_adm uses OpenAI's 256x256 unconditional ImageNet model: download 256x256_diffusion_uncond.pt "
    f"({CHECKPOINT_URL}, linked from openai/guided-diffusion's README) and give its path as features.adm.checkpoint, "
    "or a folder converted from it with `vidprop convert-adm CKPT OUT_DIR`."
)


# ---- building and saving the diffusers model ------------------------------------------------

def build_unet(arch: AdmArchitecture, state_dict: Mapping[str, torch.Tensor] | None = None):
    """A diffusers ``UNet2DModel`` of ``arch``; with ``state_dict`` (diffusers keys) its weights, without
    allocating random ones first."""
    from diffusers import UNet2DModel

    if state_dict is None:
        return UNet2DModel(**arch.diffusers_config())
    with torch.device("meta"):
        unet = UNet2DModel(**arch.diffusers_config())
    unet.load_state_dict(state_dict, strict=True, assign=True)
    return unet


def read_architecture(checkpoint: str | os.PathLike, num_head_channels: int = 64) -> AdmArchitecture:
    """The architecture of a ``.pt`` checkpoint or converted folder, without building the model.

    A ``.pt`` file is memory-mapped and fully checked (every key and shape); a folder's
    ``config.json`` is read.

    Raises:
        ModelNotFoundError, CheckpointError: as :func:`load_adm_unet`.
    """
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return _folder_architecture(path)
    state_dict = load_guided_diffusion_state_dict(path, mmap=True)
    arch = infer_architecture(state_dict, num_head_channels, source=path)
    check_state_dict(state_dict, arch, source=path)
    return arch


def _folder_architecture(path: Path) -> AdmArchitecture:
    from diffusers import UNet2DModel

    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"folder has no config.json: not a converted ADM model. {HOW_TO_GET}", path=path.absolute())
    try:
        config = UNet2DModel.load_config(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read config.json ({type(exc).__name__}: {exc})", path=path) from None
    try:
        return AdmArchitecture.from_diffusers_config(config)
    except CheckpointError as exc:
        raise CheckpointError(exc.message, path=path) from None


def load_adm_unet(checkpoint: str | os.PathLike, num_head_channels: int = 64, dtype: torch.dtype = torch.float32):
    """Load an ADM UNet as a diffusers ``UNet2DModel`` in ``dtype`` on the CPU.

    Args:
        checkpoint: a guided-diffusion ``.pt`` state dict (converted here) or a folder written by
            :func:`save_converted` (``config.json`` + safetensors).
        num_head_channels: head width of a ``.pt`` checkpoint (not stored in it).
        dtype: parameter dtype.

    Returns:
        ``(unet, arch)``.

    Raises:
        ModelNotFoundError: no such file or folder, or a folder without the model files.
        CheckpointError: a file or folder that is not a supported guided-diffusion UNet.
    """
    from diffusers import UNet2DModel

    path = Path(checkpoint).expanduser()
    if path.is_dir():
        arch = _folder_architecture(path)
        try:
            unet = UNet2DModel.from_pretrained(path, torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ModelNotFoundError(f"cannot load the converted model ({type(exc).__name__}: {first}). {HOW_TO_GET}", path=path) from None
        return unet, arch
    state_dict = load_guided_diffusion_state_dict(path)
    arch = infer_architecture(state_dict, num_head_channels, source=path)
    converted = convert_state_dict(state_dict, arch, source=path)
    del state_dict
    converted = {k: v.to(dtype) for k, v in converted.items()}
    return build_unet(arch, converted), arch


def save_converted(unet, out_dir: str | os.PathLike) -> Path:
    """Write ``unet`` with ``save_pretrained`` (config.json + safetensors) into the new folder ``out_dir``.

    Written into a temporary sibling folder and renamed, so ``out_dir`` never holds half a model.

    Raises:
        CheckpointError: ``out_dir`` already exists.
    """
    import shutil
    import tempfile

    out = Path(out_dir).expanduser()
    if out.exists():
        raise CheckpointError("output folder already exists (choose a new folder or remove it)", path=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        unet.save_pretrained(tmp, safe_serialization=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- where the features come from -----------------------------------------------------------

def output_block_module(unet, arch: AdmArchitecture, index: int):
    """The diffusers module whose output is guided-diffusion's ``output_blocks[index]`` output.

    With ``n`` residual blocks per level, output block ``k`` is sub-block ``j = k % (n+1)`` of
    ``up_blocks[k // (n+1)]``: its attention (or ResBlock, at levels without attention) for
    ``j < n``, the whole up block (ResBlock, attention and up-sampling ResBlock) for ``j == n``.
    """
    period = arch.num_res_blocks + 1
    up, j = divmod(index, period)
    block = unet.up_blocks[up]
    if j == arch.num_res_blocks:
        return block
    attentions = getattr(block, "attentions", None)
    return attentions[j] if attentions is not None else block.resnets[j]


def output_block_geometry(arch: AdmArchitecture, index: int) -> tuple[int, int]:
    """(channels, stride in input pixels) of guided-diffusion's ``output_blocks[index]`` output.

    For the 256x256 model: block 7 -> (512, 8), block 5 -> (1024, 8), block 8 -> (512, 4).
    """
    period = arch.num_res_blocks + 1
    up, j = divmod(index, period)
    level = arch.levels - 1 - up
    upsampled = j == arch.num_res_blocks and level > 0
    return arch.block_out_channels[level], 2 ** (level - 1 if upsampled else level)


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """A short hash of the checkpoint's file names, sizes and modification times (for cache keys)."""
    from vidprop.features.unet_common import files_fingerprint

    path = Path(path).expanduser()
    if path.is_dir():
        return files_fingerprint(path, [p for p in path.rglob("*") if p.is_file()])
    return files_fingerprint(path.parent, [path])
