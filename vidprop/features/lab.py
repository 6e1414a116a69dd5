"""Weight-free baseline backend: CIE-Lab colour statistics over stride-sized cells.

Each stride x stride cell becomes the vector
``[L', a', b', (std L', std a', std b'), (w*y, w*x), bias]`` where ``L' = (L - 50) / 50``,
``a' = a / 50``, ``b' = b / 50`` are the cell's mean CIE-Lab values (sRGB, D65), the optional
standard deviations describe texture, ``(y, x)`` is the cell centre in units of the frame
size and ``bias`` a constant. The propagation compares features by cosine similarity; the
constant channel makes that similarity decrease with the colour distance (without it, two
colours on one ray from the origin would count as equal). It runs anywhere, needs no
weights, and lets the whole pipeline be tested end to end.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from vidprop.device import upload
from vidprop.features.base import ExtractorBase, FeatureSpec, check_images, register_extractor
from vidprop.features.config import LabConfig

__all__ = ["LabExtractor", "rgb_to_lab"]

logger = logging.getLogger(__name__)

# sRGB (linear) -> XYZ, D65 white point (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
_WHITE_D65 = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)
_DELTA = 6.0 / 29.0


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """CIE-Lab of sRGB frames.

    Args:
        images: (B, 3, H, W) float RGB in [-1, 1].

    Returns:
        (B, 3, H, W) float32: L in [0, 100], a and b roughly in [-110, 110].
    """
    rgb = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = (_RGB_TO_XYZ / _WHITE_D65[:, None]).to(linear)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear)
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(1e-12) ** (1.0 / 3.0), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=1)


@register_extractor("lab", LabConfig, "lab")
class LabExtractor(ExtractorBase):
    """CIE-Lab colour features; see the module docstring for the channels.

    Attributes:
        spec: name ``"lab"``; channels 4, +3 with ``texture``, +2 with a positional weight > 0;
            stride ``config.stride``; cache key: the config; frames per batch: 8.
    """

    def __init__(self, config: LabConfig | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.config = config or LabConfig()
        self.device = torch.device(device)
        self.spec = self.describe(self.config, dtype)
        logger.info("Lab features: stride %d, %d channels, on %s", self.stride, self.channels, self.device)

    @classmethod
    def describe(cls, config: LabConfig, dtype: torch.dtype = torch.float32) -> FeatureSpec:
        """The :class:`FeatureSpec` of ``config`` (the features are computed in float32 whatever ``dtype``)."""
        channels = 3 + (3 if config.texture else 0) + (2 if config.positional_weight > 0 else 0) + 1
        key = {"backend": "lab", "stride": config.stride, "texture": config.texture,
               "positional_weight": config.positional_weight, "bias": config.bias}
        return FeatureSpec(name="lab", channels=channels, stride=config.stride, frames_per_batch=8, cache_key=key)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h*stride, w*stride) frames in [-1, 1] -> (B, C, h, w) float32 (see ``FeatureExtractor.extract``)."""
        h, w = check_images(images, self.stride)
        lab = rgb_to_lab(upload(images, self.device))
        lab = (lab - lab.new_tensor([50.0, 0.0, 0.0])[:, None, None]) / 50.0
        mean = F.avg_pool2d(lab, self.stride)
        parts = [mean]
        if self.config.texture:
            var = F.avg_pool2d(lab * lab, self.stride) - mean * mean
            parts.append(var.clamp_min(0.0).sqrt())
        batch = images.shape[0]
        if self.config.positional_weight > 0:
            ys = (torch.arange(h, device=self.device, dtype=torch.float32) + 0.5) / h
            xs = (torch.arange(w, device=self.device, dtype=torch.float32) + 0.5) / w
            grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))
            parts.append((self.config.positional_weight * grid).expand(batch, -1, -1, -1))
        parts.append(mean.new_full((batch, 1, h, w), self.config.bias))
        return torch.cat(parts, dim=1)
