"""Benchmark the DIFT extractor against a straightforward implementation of the original scheme.

Both run the full-size SD 2.1 architecture (configs below, from SD 2.1's published
unet/config.json and vae/config.json) with random weights, so nothing is downloaded, in the
same run on the same frames and the same noise draws:

- baseline (the original ``SDFeaturizer`` scheme): repeat the frame ``ensemble`` times, encode
  every copy with the VAE, sample each posterior, add noise, run the full UNet forward (all up
  blocks and the output convolution) and take ``up_blocks[i]``'s output with a hook; average.
- vidprop: :class:`vidprop.features.dift_sd.DiftExtractor` (one VAE encoding per frame, UNet
  stopped after the block, ensemble and frames batched).

It reports seconds per frame for each (median over ``--repeats`` alternating runs), their ratio, and the largest relative difference
between the two features (they must agree: same draws, same maths). On CUDA it also runs
float16/bfloat16 and reports frames per second and peak GPU memory.

Examples::

    python tools/bench_dift.py                          # DAVIS setting: 480x832, t=51, block 2, ensemble 8
    python tools/bench_dift.py --size 128x224 --ensemble 2 --frames 1     # a quick CPU check
    python tools/bench_dift.py --device cuda --dtypes float32,bfloat16,float16 --frames 8
"""

from __future__ import annotations

import argparse
import json
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidprop.features.base import resolve_device  # noqa: E402
from vidprop.features.config import DiftConfig  # noqa: E402
from vidprop.features.dift_sd import DiftExtractor  # noqa: E402

# stabilityai/stable-diffusion-2-1 unet/config.json (diffusers layout), values as published.
SD21_UNET = dict(
    act_fn="silu",
    attention_head_dim=(5, 10, 20, 20),
    block_out_channels=(320, 640, 1280, 1280),
    center_input_sample=False,
    cross_attention_dim=1024,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    downsample_padding=1,
    dual_cross_attention=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-05,
    norm_num_groups=32,
    num_class_embeds=None,
    only_cross_attention=False,
    out_channels=4,
    sample_size=96,
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    use_linear_projection=True,
    upcast_attention=True,
)
# stabilityai/stable-diffusion-2-1 vae/config.json.
SD21_VAE = dict(
    act_fn="silu",
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    in_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    out_channels=3,
    sample_size=768,
    up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
# stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json.
SD21_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    set_alpha_to_one=False,
    steps_offset=1,
)
TEXT_TOKENS, TEXT_DIM = 77, 1024


def build_models(seed: int, device: torch.device, dtype: torch.dtype):
    """Random-weight SD 2.1 UNet (``dtype``) and VAE (float32), DDIM scheduler, a prompt embedding."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD21_UNET).to(device, dtype).eval().requires_grad_(False)
    vae = AutoencoderKL(**SD21_VAE).to(device).eval().requires_grad_(False)
    embeds = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=torch.Generator().manual_seed(seed))
    return unet, vae, DDIMScheduler(**SD21_SCHEDULER), embeds


@torch.inference_mode()
def baseline_features(unet, vae, scheduler, embeds, images, eps, noise, cfg: DiftConfig, batch_size: int, dtype, timings):
    """The original scheme: every ensemble copy encoded by the VAE, full UNet forward.

    Returns (B, C, h, w) float32 features of block ``cfg.up_ft_index``.
    """
    device = images.device
    captured = []
    hook = unet.up_blocks[cfg.up_ft_index].register_forward_hook(lambda m, a, out: captured.append(out))
    ensemble = eps.shape[1]
    out = []
    try:
        for b in range(images.shape[0]):
            copies = images[b : b + 1].repeat(ensemble, 1, 1, 1)
            feats = []
            for n0 in range(0, ensemble, batch_size):
                rows = slice(n0, n0 + batch_size)
                t0 = time.perf_counter()
                dist = vae.encode(copies[rows]).latent_dist
                latents = (dist.mean + dist.std * eps[b, rows].to(device)) * vae.config.scaling_factor
                _sync(device)
                t1 = time.perf_counter()
                t = torch.full((latents.shape[0],), cfg.timestep, dtype=torch.long, device=device)
                noisy = scheduler.add_noise(latents, noise[b, rows].to(device), t)
                unet(noisy.to(dtype), t, encoder_hidden_states=embeds.to(device, dtype).expand(latents.shape[0], -1, -1))
                feats.append(captured.pop().float())
                _sync(device)
                timings["vae_s"] += t1 - t0
                timings["unet_s"] += time.perf_counter() - t1
            out.append(torch.cat(feats).mean(0))
    finally:
        hook.remove()
    return torch.stack(out)


def shallow_unet_copy(unet):
    """A UNet object sharing all sub-modules and weights with ``unet`` but with its own module lists."""
    from torch import nn

    clone = copy.copy(unet)
    clone._modules = dict(unet._modules)
    clone.up_blocks = nn.ModuleList(list(unet.up_blocks))
    return clone


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_one(args, device: torch.device, dtype: torch.dtype) -> dict:
    height, width = args.size
    cfg = DiftConfig(model_id="random-sd21", timestep=args.timestep, up_ft_index=args.up_ft_index,
                     ensemble_size=args.ensemble, batch_size=args.batch_size, seed=args.seed)
    unet, vae, scheduler, embeds = build_models(args.seed, device, dtype)
    gen = torch.Generator().manual_seed(args.seed)
    images = (torch.rand(args.frames, 3, height, width, generator=gen) * 2 - 1).to(device)
    shape = (args.frames, args.ensemble, 4, height // 8, width // 8)
    eps, noise = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    result: dict = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "frames": args.frames,
                    "ensemble": args.ensemble, "size": [height, width], "up_ft_index": args.up_ft_index,
                    "timestep": args.timestep, "batch_size": args.batch_size}

    baseline = None
    if not args.skip_baseline:
        timings = {"vae_s": 0.0, "unet_s": 0.0}
        if args.warmup:
            baseline_features(unet, vae, scheduler, embeds, images[:1], eps[:1], noise[:1], cfg, args.batch_size, dtype, dict(timings))
        _reset_peak(device)
        t0 = time.perf_counter()
        baseline = baseline_features(unet, vae, scheduler, embeds, images, eps, noise, cfg, args.batch_size, dtype, timings)
        _sync(device)
        seconds = time.perf_counter() - t0
        base_times = [seconds]
        result["baseline"] = {"s_per_frame": seconds / args.frames, "fps": args.frames / seconds,
                              "vae_s_per_frame": timings["vae_s"] / args.frames,
                              "unet_s_per_frame": timings["unet_s"] / args.frames, "peak_mib": _peak_mib(device)}
        print(f"[{result['dtype']}] baseline: {seconds / args.frames:.2f} s/frame "
              f"(VAE {timings['vae_s'] / args.frames:.2f} s, UNet {timings['unet_s'] / args.frames:.2f} s)", flush=True)

    # The extractor truncates its UNet: give it a shallow copy that shares every weight.
    extractor = DiftExtractor.from_components(cfg, shallow_unet_copy(unet), vae, scheduler, embeds, device=device, dtype=dtype)
    if args.warmup:
        extractor.extract_layers_with_noise(images[:1], eps[:1], noise[:1])
    times = []
    for _ in range(args.repeats):
        _reset_peak(device)
        t0 = time.perf_counter()
        ours = extractor.extract_layers_with_noise(images, eps, noise)[args.up_ft_index]
        _sync(device)
        times.append(time.perf_counter() - t0)
        print(f"[{result['dtype']}] vidprop:  {times[-1] / args.frames:.2f} s/frame", flush=True)
        if baseline is not None and len(times) < args.repeats:
            t0 = time.perf_counter()
            baseline_features(unet, vae, scheduler, embeds, images, eps, noise, cfg, args.batch_size, dtype, timings)
            _sync(device)
            base_times.append(time.perf_counter() - t0)
            print(f"[{result['dtype']}] baseline: {base_times[-1] / args.frames:.2f} s/frame", flush=True)
    seconds = statistics.median(times)
    result["vidprop"] = {"s_per_frame": seconds / args.frames, "fps": args.frames / seconds, "peak_mib": _peak_mib(device),
                         "all_s": times}
    if baseline is not None:
        seconds = statistics.median(base_times)
        result["baseline"].update(s_per_frame=seconds / args.frames, fps=args.frames / seconds, all_s=base_times,
                                  vae_s_per_frame=timings["vae_s"] / args.frames / len(base_times),
                                  unet_s_per_frame=timings["unet_s"] / args.frames / len(base_times))
        result["speedup"] = result["baseline"]["s_per_frame"] / result["vidprop"]["s_per_frame"]
        diff = (ours - baseline).abs().max() / baseline.abs().max()
        result["max_rel_diff"] = float(diff)
        print(f"[{result['dtype']}] speedup {result['speedup']:.2f}x, max |diff| / max |baseline| = {float(diff):.2e}", flush=True)
    return result


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    if height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f"size {text}: height and width must be multiples of 32")
    return height, width


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=(480, 832), help="HxW input size (default 480x832, DAVIS)")
    parser.add_argument("--frames", type=int, default=1, help="frames per measurement (default 1)")
    parser.add_argument("--ensemble", type=int, default=8, help="ensemble size (default 8)")
    parser.add_argument("--up-ft-index", type=int, default=2, help="up block (default 2)")
    parser.add_argument("--timestep", type=int, default=51, help="timestep (default 51)")
    parser.add_argument("--batch-size", type=int, default=8, help="UNet (and baseline VAE) batch size (default 8)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    parser.add_argument("--dtypes", default=None, help="comma-separated dtypes (default: float32 on CPU, float32,bfloat16,float16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="alternate vidprop and baseline this many times; medians reported")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None, help="one untimed frame first (default: on for GPU)")
    parser.add_argument("--skip-baseline", action="store_true", help="time only vidprop")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.warmup is None:
        args.warmup = device.type != "cpu"
    dtypes = args.dtypes.split(",") if args.dtypes else (["float32"] if device.type == "cpu" else ["float32", "bfloat16", "float16"])
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"bench_dift: {machine}; torch {torch.__version__}; args {vars(args)}", flush=True)
    results = [run_one(args, device, getattr(torch, name)) for name in dtypes]
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
