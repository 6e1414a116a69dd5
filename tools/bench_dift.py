"""Benchmark a DIFT extractor against a straightforward implementation of the original scheme.

Both run the full-size architecture with random weights, so nothing is downloaded, in the same
run on the same frames and the same noise draws.

``--backend dift_sd`` (default): the SD 2.1 architecture (configs below, from SD 2.1's
published unet/config.json and vae/config.json).

- baseline (the original ``SDFeaturizer`` scheme): repeat the frame ``ensemble`` times, encode
  every copy with the VAE, sample each posterior, add noise, run the full UNet forward (all up
  blocks and the output convolution) and take ``up_blocks[i]``'s output with a hook; average.
- vidprop: :class:`vidprop.features.dift_sd.DiftExtractor` (one VAE encoding per frame, UNet
  stopped after the block, ensemble and frames batched).

``--backend dift_adm``: guided-diffusion's 256x256 unconditional UNet (553M parameters) as
diffusers' ``UNet2DModel``.

- baseline (the original ``ADMFeaturizer`` scheme, a stand-in written here): the frame repeated
  ``ensemble`` times as one batch, noised in pixel space, the UNet with guided-diffusion's legacy
  attention (weights materialised, softmax in float32), the mean of ``output_blocks[k]``; like
  the original it returns right after that block, or with ``--baseline-full-forward`` runs the
  whole UNet.
- vidprop: :class:`vidprop.features.dift_adm.AdmExtractor` (scaled-dot-product attention,
  later blocks dropped, frames batched).
- also: matmul + convolution FLOPs per frame (``torch.utils.flop_counter`` on the meta device)
  and the ideal time on an H100 SXM at its datasheet peak; peak memory above the loaded weights
  (on the CPU the resident-set high-water mark, reset before each measurement); the load average.

It reports seconds per frame for each (median over ``--repeats`` alternating runs), their ratio,
and the largest relative difference between the two features (they must agree: same draws, same
maths). On CUDA it also runs float16/bfloat16 and reports peak GPU memory.

vidprop's GPU options: ``--vae-dtype same`` runs SD's VAE encoder in the UNet's dtype
(``features.dift.vae_dtype``; default float32), ``--compile`` compiles vidprop's UNet blocks
(``runtime.compile``; the warm-up frame pays the compilation), ``--no-tf32`` turns TF32 off for
both sides (``runtime.tf32``; on by default, as in a run).

Examples::

    python tools/bench_dift.py                          # DAVIS setting: 480x832, t=51, block 2, ensemble 8
    python tools/bench_dift.py --size 128x224 --ensemble 2 --frames 1     # a quick CPU check
    python tools/bench_dift.py --device cuda --dtypes float32,bfloat16,float16 --frames 8
    python tools/bench_dift.py --device cuda --dtypes bfloat16 --vae-dtype same --compile --frames 8 --skip-baseline
    python tools/bench_dift.py --backend dift_adm       # 480x832, t=51, output block 7, ensemble 4, fp32
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidprop.device import resolve_device, tf32_matmuls  # noqa: E402
from vidprop.features.config import DiftConfig  # noqa: E402
from vidprop.features.dift_sd import DiftExtractor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_propagation import _rss_kib  # noqa: E402

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
    vae_dtype = str(dtype).removeprefix("torch.") if args.vae_dtype == "same" else args.vae_dtype
    cfg = DiftConfig(model_id="random-sd21", timestep=args.timestep, up_ft_index=args.up_ft_index,
                     ensemble_size=args.ensemble, batch_size=args.batch_size, seed=args.seed, vae_dtype=vae_dtype)
    unet, vae, scheduler, embeds = build_models(args.seed, device, dtype)
    gen = torch.Generator().manual_seed(args.seed)
    images = (torch.rand(args.frames, 3, height, width, generator=gen) * 2 - 1).to(device)
    shape = (args.frames, args.ensemble, 4, height // 8, width // 8)
    eps, noise = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    result: dict = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "frames": args.frames,
                    "ensemble": args.ensemble, "size": [height, width], "up_ft_index": args.up_ft_index,
                    "timestep": args.timestep, "batch_size": args.batch_size, **_options(args, device), "vae_dtype": vae_dtype}

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
    # The extractor casts its VAE and compiles its blocks in place: the baseline's modules must stay as they are.
    own_vae = vae if vae_dtype == "float32" and not args.compile else copy.deepcopy(vae)
    own_unet = copy.deepcopy(unet) if args.compile else shallow_unet_copy(unet)
    extractor = DiftExtractor.from_components(cfg, own_unet, own_vae, scheduler, embeds, device=device, dtype=dtype)
    eager = None
    if args.compile:
        extractor.compile_model()
        eager_vae = vae if vae_dtype == "float32" else copy.deepcopy(vae)
        eager = DiftExtractor.from_components(cfg, shallow_unet_copy(unet), eager_vae, scheduler, embeds, device=device, dtype=dtype)
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
    if eager is not None:  # compiled against eager blocks, same draws and dtypes
        reference = eager.extract_layers_with_noise(images, eps, noise)[args.up_ft_index]
        result["compile_max_rel_diff"] = float((ours - reference).abs().max() / reference.abs().max())
        print(f"[{result['dtype']}] compiled vs eager: max |diff| / max |eager| = {result['compile_max_rel_diff']:.2e}", flush=True)
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


# ---- dift_adm ------------------------------------------------------------------------------------

# Peak throughput of an H100 SXM5 (NVIDIA H100 datasheet, dense, no sparsity), for the ideal times.
H100_TFLOPS = {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4}


class LegacyAttentionProcessor:
    """guided-diffusion's ``AttentionBlock`` with ``QKVAttentionLegacy``, on diffusers' attention weights.

    The attention weights are materialised as the original computes them: q and k each scaled by
    ch**-1/4, ``einsum("bct,bcs->bts")``, softmax in float32, ``einsum("bts,bcs->bct")`` with v.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        import math

        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        tokens = attn.group_norm(hidden_states).view(batch, channels, height * width).transpose(1, 2)
        heads = attn.heads
        ch = channels // heads

        def split(x):  # (B, T, C) -> (B*heads, ch, T), channels head-major as the legacy layout
            return x.transpose(1, 2).reshape(batch * heads, ch, height * width)

        q, k, v = split(attn.to_q(tokens)), split(attn.to_k(tokens)), split(attn.to_v(tokens))
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(batch, channels, height * width)
        out = attn.to_out[0](a.transpose(1, 2)).transpose(1, 2).reshape(batch, channels, height, width)
        return (out + residual) / attn.rescale_output_factor


def _set_processor(unet, processor) -> None:
    from diffusers.models.attention_processor import Attention

    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(processor)


class _Stop(Exception):
    pass


@torch.inference_mode()
def adm_baseline_features(unet, arch, images, noise, output_block: int, timestep: int, full_forward: bool):
    """The original scheme (Tsingularity/dift ``ADMFeaturizer.forward``): per frame, the frame
    repeated E times as one batch, ``q_sample`` at t, the UNet with materialised attention, the
    mean over the batch of ``output_blocks[output_block]``. The original returns right after that
    block; ``full_forward`` runs the rest of the UNet too (as a plain hooked forward would).
    """
    from vidprop.features.adm_convert import output_block_module
    from vidprop.features.dift_adm import linear_schedule_coefficients

    a, b = (torch.tensor(c, dtype=torch.float32) for c in linear_schedule_coefficients(timestep))
    captured = []

    def hook(module, args, out):
        captured.append(out)
        if not full_forward:
            raise _Stop

    handle = output_block_module(unet, arch, output_block).register_forward_hook(hook)
    _set_processor(unet, LegacyAttentionProcessor())
    out = []
    try:
        for i in range(images.shape[0]):
            x = images[i : i + 1].repeat(noise.shape[1], 1, 1, 1)
            x_t = a * x + b * noise[i].to(x.device)
            t = torch.full((x.shape[0],), timestep, dtype=torch.long, device=x.device)
            try:
                unet(x_t.to(unet.dtype), t)
            except _Stop:
                pass
            out.append(captured.pop().float().mean(0))
    finally:
        handle.remove()
    return torch.stack(out)


def shallow_adm_copy(unet, up_block: int):
    """A UNet object sharing every weight with ``unet`` whose module lists (up blocks and those of
    ``up_blocks[up_block]``) are its own, so that the extractor can truncate it in place."""
    from torch import nn

    clone = copy.copy(unet)
    clone._modules = dict(unet._modules)
    clone.up_blocks = nn.ModuleList(list(unet.up_blocks))
    block = copy.copy(unet.up_blocks[up_block])
    block._modules = dict(block._modules)
    for name, sub in list(block._modules.items()):
        if isinstance(sub, nn.ModuleList):
            setattr(block, name, nn.ModuleList(list(sub)))
    clone.up_blocks[up_block] = block
    return clone


def count_adm_flops(arch, size, ensemble: int, output_block: int, full_forward: bool) -> int:
    """Matmul and convolution FLOPs of one frame (E rows), as ``torch.utils.flop_counter`` counts, on the meta device."""
    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    from vidprop.features.adm_convert import output_block_module

    with torch.device("meta"):
        unet = UNet2DModel(**arch.diffusers_config())
    x = torch.empty(ensemble, 3, *size, device="meta")
    t = torch.full((ensemble,), 51, dtype=torch.long, device="meta")

    def hook(module, args, out):
        if not full_forward:
            raise _Stop

    handle = output_block_module(unet, arch, output_block).register_forward_hook(hook)
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            unet(x, t)
    except _Stop:
        pass
    finally:
        handle.remove()
    return int(counter.get_total_flops())


def _measured(fn, device: torch.device) -> dict:
    """Run ``fn()``; wall and process CPU seconds and the peak memory it added.

    CPU: the process's resident-set high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs`` just before) minus its resident set just before (the weights are
    already resident). CUDA: ``max_memory_allocated`` minus the memory allocated before.
    """
    if device.type == "cuda":
        _reset_peak(device)
        before = torch.cuda.memory_allocated(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            method = "VmHWM after clear_refs minus VmRSS before"
        except OSError:
            method = "VmHWM minus VmRSS before (high-water mark not reset: an upper bound)"
        before = (_rss_kib("VmRSS") or 0) * 1024
    t0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if device.type == "cuda":
        peak, method = torch.cuda.max_memory_allocated(device) - before, "cuda max_memory_allocated"
    else:
        peak = (_rss_kib("VmHWM") or 0) * 1024 - before
    return {"value": value, "wall_s": wall, "cpu_s": cpu, "peak_mib": peak / 2**20, "peak_method": method}


def run_adm(args, device: torch.device, dtype: torch.dtype) -> dict:
    """vidprop's dift_adm against the original scheme on the full-size 256x256-uncond architecture, random weights."""
    from vidprop.features.adm_convert import ADM_256_UNCOND, build_unet
    from vidprop.features.config import AdmConfig
    from vidprop.features.dift_adm import AdmExtractor
    from vidprop.features.unet_common import to_device

    height, width = args.size
    ensemble = args.ensemble or 4
    arch = ADM_256_UNCOND
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    unet = to_device(build_unet(arch), device, dtype).eval().requires_grad_(False)
    print(f"[{dtype}] random-weight ADM UNet built in {time.perf_counter() - t0:.0f} s "
          f"({sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M parameters)", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    images = (torch.rand(args.frames, 3, height, width, generator=gen) * 2 - 1).to(device)
    noise = torch.randn((args.frames, ensemble, 3, height, width), generator=gen)
    cfg = AdmConfig(output_block=args.output_block, timestep=args.timestep, ensemble_size=ensemble,
                    batch_size=args.batch_size or 8, seed=args.seed)
    up_block = args.output_block // (arch.num_res_blocks + 1)
    extractor = AdmExtractor.from_unet(cfg, shallow_adm_copy(unet, up_block), arch, device=device, dtype=dtype)
    if args.compile:
        extractor.compile_model()
    from diffusers.models.attention_processor import AttnProcessor2_0

    def ours():
        _set_processor(extractor.unet, AttnProcessor2_0())  # the Attention modules are shared with the baseline
        return extractor.extract_with_noise(images, noise).cpu()

    def baseline():
        return adm_baseline_features(unet, arch, images, noise, args.output_block, args.timestep, args.baseline_full_forward).cpu()

    result: dict = {"backend": "dift_adm", "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                    "frames": args.frames, "ensemble": ensemble, "size": [height, width], "output_block": args.output_block,
                    "timestep": args.timestep, "batch_size": cfg.batch_size, "baseline_full_forward": args.baseline_full_forward,
                    "load_average_before": os.getloadavg(), **_options(args, device)}
    flops = count_adm_flops(arch, (height, width), ensemble, args.output_block, False)
    flops_full = count_adm_flops(arch, (height, width), ensemble, args.output_block, True)
    ideal = {name: flops / (tf * 1e12) for name, tf in H100_TFLOPS.items()}
    result["flops_per_frame"] = {"vidprop": flops, "original_scheme": flops_full if args.baseline_full_forward else flops,
                                 "full_forward": flops_full}
    result["ideal_h100_s_per_frame"] = ideal
    print(f"[{result['dtype']}] FLOPs per frame (matmul + conv): vidprop {flops / 1e12:.2f} T, full forward {flops_full / 1e12:.2f} T; "
          f"ideal H100 time for vidprop's: fp32 {ideal['float32']:.3f} s, tf32 {ideal['tf32']:.4f} s, bf16 {ideal['bfloat16']:.4f} s",
          flush=True)
    if args.warmup:
        extractor.extract_with_noise(images[:1], noise[:1])
        adm_baseline_features(unet, arch, images[:1], noise[:1], args.output_block, args.timestep, args.baseline_full_forward)
    runs = {"vidprop": [], "baseline": []}
    features = {}
    for _ in range(args.repeats):
        for name, fn in (("baseline", baseline), ("vidprop", ours)):
            if name == "baseline" and args.skip_baseline:
                continue
            m = _measured(fn, device)
            features[name] = m.pop("value")
            runs[name].append(m)
            print(f"[{result['dtype']}] {name}: {m['wall_s'] / args.frames:.2f} s/frame (CPU {m['cpu_s'] / args.frames:.2f} s), "
                  f"peak +{m['peak_mib']:.0f} MiB, load average {os.getloadavg()[0]:.2f}", flush=True)
    for name, measured in runs.items():
        if measured:
            walls = [m["wall_s"] for m in measured]
            result[name] = {"s_per_frame": statistics.median(walls) / args.frames,
                            "cpu_s_per_frame": statistics.median(m["cpu_s"] for m in measured) / args.frames,
                            "peak_mib": max(m["peak_mib"] for m in measured), "peak_method": measured[0]["peak_method"],
                            "all_s": walls}
    if "baseline" in features:
        result["speedup"] = result["baseline"]["s_per_frame"] / result["vidprop"]["s_per_frame"]
        result["memory_ratio"] = result["baseline"]["peak_mib"] / max(result["vidprop"]["peak_mib"], 1e-9)
        diff = (features["vidprop"] - features["baseline"]).abs().max() / features["baseline"].abs().max()
        result["max_rel_diff"] = float(diff)
        print(f"[{result['dtype']}] speedup {result['speedup']:.2f}x, peak memory {result['baseline']['peak_mib']:.0f} -> "
              f"{result['vidprop']['peak_mib']:.0f} MiB ({result['memory_ratio']:.1f}x less), "
              f"max |diff| / max |baseline| = {float(diff):.2e}", flush=True)
    result["load_average_after"] = os.getloadavg()
    return result


def _options(args, device: torch.device) -> dict:
    """vidprop's GPU options of this run, for the results."""
    return {"tf32": bool(args.tf32 and device.type == "cuda"), "compile": bool(args.compile)}


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    if height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f"size {text}: height and width must be multiples of 32")
    return height, width


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=(480, 832), help="HxW input size (default 480x832, DAVIS)")
    parser.add_argument("--backend", choices=("dift_sd", "dift_adm"), default="dift_sd",
                        help="dift_sd (SD 2.1 architecture) or dift_adm (guided-diffusion 256x256 uncond architecture)")
    parser.add_argument("--frames", type=int, default=1, help="frames per measurement (default 1)")
    parser.add_argument("--ensemble", type=int, default=None, help="ensemble size (default 8 for dift_sd, 4 for dift_adm)")
    parser.add_argument("--up-ft-index", type=int, default=2, help="dift_sd: up block (default 2)")
    parser.add_argument("--output-block", type=int, default=7, help="dift_adm: guided-diffusion output block (default 7)")
    parser.add_argument("--baseline-full-forward", action="store_true",
                        help="dift_adm: the baseline runs the whole UNet (the original returns right after the block)")
    parser.add_argument("--timestep", type=int, default=51, help="timestep (default 51)")
    parser.add_argument("--batch-size", type=int, default=None, help="UNet (and dift_sd baseline VAE) batch size (default 8)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    parser.add_argument("--dtypes", default=None, help="comma-separated dtypes (default: float32 on CPU, float32,bfloat16,float16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="alternate vidprop and baseline this many times; medians reported")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None, help="one untimed frame first (default: on for GPU)")
    parser.add_argument("--skip-baseline", action="store_true", help="time only vidprop")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--vae-dtype", default="float32", choices=("float32", "bfloat16", "float16", "same"),
                        help="dift_sd: vidprop's VAE encoder dtype; 'same' = each run's UNet dtype (default float32)")
    parser.add_argument("--compile", action="store_true", help="compile vidprop's UNet (and VAE encoder) blocks with torch.compile")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="TF32 float32 matmuls and convolutions on CUDA, both sides (default on, as runtime.tf32)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.warmup is None:
        args.warmup = device.type != "cpu"
    dtypes = args.dtypes.split(",") if args.dtypes else (["float32"] if device.type == "cpu" else ["float32", "bfloat16", "float16"])
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"bench_dift: {machine}; torch {torch.__version__}; args {vars(args)}", flush=True)
    with tf32_matmuls(device, args.tf32):
        if args.backend == "dift_adm":
            results = [run_adm(args, device, getattr(torch, name)) for name in dtypes]
        else:
            args.ensemble = args.ensemble or 8
            args.batch_size = args.batch_size or 8
            results = [run_one(args, device, getattr(torch, name)) for name in dtypes]
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "cpu_count": os.cpu_count(),
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
