"""``vidprop convert-adm``: convert a guided-diffusion (ADM) checkpoint into a diffusers folder, once."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]

DESCRIPTION = """\
Convert guided-diffusion's UNet checkpoint (OpenAI's 256x256_diffusion_uncond.pt, the one DIFT_adm
uses) into a diffusers UNet2DModel folder (config.json + safetensors) at OUT_DIR. The .pt file is
read with torch.load(weights_only=True) and every key and shape is checked first. Give OUT_DIR as
features.adm.checkpoint afterwards: runs then load safetensors and skip the conversion."""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert-adm", help="convert a guided-diffusion .pt checkpoint into a diffusers folder", description=DESCRIPTION
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="guided-diffusion .pt state dict, e.g. 256x256_diffusion_uncond.pt")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new folder to write (must not exist)")
    parser.add_argument(
        "--num-head-channels", type=int, default=64, metavar="N",
        help="channels per attention head (not stored in the .pt file; 64 for OpenAI's models)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vidprop.errors import CheckpointError, ConfigError
    from vidprop.features.adm_convert import load_adm_unet, save_converted
    from vidprop.io.outputs import prepare_output_folder

    if args.num_head_channels < 1:
        raise ConfigError(f"invalid value {args.num_head_channels} (expected an integer >= 1)", key="--num-head-channels")
    out = Path(args.out_dir).expanduser()
    if out.exists():  # before the (slow) conversion
        raise CheckpointError("output folder already exists (choose a new folder or remove it)", path=out)
    if Path(args.checkpoint).expanduser().is_dir():
        raise CheckpointError("expected a guided-diffusion .pt file, got a folder (is it already converted?)", path=args.checkpoint)
    prepare_output_folder(out.parent, "parent folder of OUT_DIR")
    unet, arch = load_adm_unet(args.checkpoint, args.num_head_channels)
    save_converted(unet, out)
    params = sum(p.numel() for p in unet.parameters())
    print(f"converted {args.checkpoint} ({params / 1e6:.1f}M parameters, base {arch.model_channels} channels, "
          f"channel_mult {list(arch.channel_mult)}) -> {out}")
    return 0
