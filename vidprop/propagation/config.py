"""Configuration of the propagation stage (defaults: DIFT's DAVIS-2017 setting)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vidprop.config_base import check, option
from vidprop.device import is_device_name, torch_dtype

if TYPE_CHECKING:
    import torch

__all__ = ["PropagationConfig", "MIN_TEMPERATURE", "DTYPES", "BACKENDS"]

# exp(cos / temperature) must stay finite in float32 for |cos| <= 1: exp(88) < 3.4e38 < exp(89).
MIN_TEMPERATURE = 1.0 / 88.0

DTYPES = ("float32", "float64")

# Names accepted by ``backend`` (the implementations are registered in vidprop.propagation.engine).
BACKENDS = ("auto", "fused", "torch", "strips")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class PropagationConfig:
    """Label propagation by top-k cosine affinity (DINO/DIFT), computed in bounded memory.

    Raises:
        ConfigError: a value out of range (the message names the key and what is allowed).
    """

    topk: int = option(15, help="number of context cells (over all context frames) each target cell takes labels from; ties at the k-th value are kept")
    n_last_frames: int = option(28, help="number of preceding frames kept as context besides the first frame (0 = first frame only)")
    radius: int = option(15, help="neighbourhood radius in feature cells: a context cell feeds a target cell only if both offsets are <= radius (0 = whole frame)")
    temperature: float = option(0.2, help="affinity is exp(cosine / temperature); must be >= 1/88 so that it stays finite in float32")
    memory_budget_mib: int = option(256, help="working memory per step in MiB (similarity tiles), beyond the context frames themselves")
    block_size: int = option(8, help="side, in feature cells, of the square blocks the 'torch' backend tiles the grid into (speed only; results do not depend on it)")
    device: str | None = option(None, help="device for the propagation state, e.g. 'cpu' or 'cuda:0' (null = the first frame's features' device)")
    dtype: str | None = option(None, help="float32 or float64 (null = float32, as the reference)")
    backend: str = option("auto", help="'fused' (numba window top-k kernel; CPU, float32), 'strips' (matrix products over column strips, exact in rows; any device), 'torch' (matrix products over square blocks; any device), or 'auto' (on the CPU: fused up to 24 channels in float32, else strips where a strip fits memory_budget_mib, else torch; torch on other devices); results are the same")
    threads: int | None = option(None, help="CPU threads of the fused and strips backends (null = the cores this process may use); 'torch' uses torch's own thread setting")
    backward: bool = option(True, help="label the frames before a video's first given mask by propagating backwards in time from it (false: leave them empty)")

    def __post_init__(self) -> None:
        check(_is_int(self.topk) and self.topk >= 1, "topk", self.topk, "an integer >= 1")
        check(_is_int(self.n_last_frames) and self.n_last_frames >= 0, "n_last_frames", self.n_last_frames, "an integer >= 0")
        check(_is_int(self.radius) and self.radius >= 0, "radius", self.radius, "an integer >= 0")
        check(
            isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool)
            and math.isfinite(self.temperature) and self.temperature >= MIN_TEMPERATURE,
            "temperature", self.temperature, f"a finite number >= 1/88 = {MIN_TEMPERATURE:.5f} (exp(1/temperature) overflows float32 below)",
        )
        check(_is_int(self.memory_budget_mib) and self.memory_budget_mib >= 16, "memory_budget_mib", self.memory_budget_mib, "an integer >= 16")
        check(_is_int(self.block_size) and 1 <= self.block_size <= 64, "block_size", self.block_size, "an integer in [1, 64]")
        check(
            self.device is None or is_device_name(self.device, auto=False),
            "device", self.device, "null or a torch device string such as 'cpu' or 'cuda:0'",
        )
        check(self.dtype is None or self.dtype in DTYPES, "dtype", self.dtype, "null, 'float32' or 'float64'")
        check(self.backend in BACKENDS, "backend", self.backend, "one of " + ", ".join(repr(b) for b in BACKENDS))
        check(self.threads is None or (_is_int(self.threads) and self.threads >= 1), "threads", self.threads,
              "null or an integer >= 1")
        check(isinstance(self.backward, bool), "backward", self.backward, "true or false")

    @property
    def torch_dtype(self) -> "torch.dtype":
        """The compute dtype (float32 unless ``dtype`` says otherwise)."""
        return torch_dtype(self.dtype or "float32")
