"""Weight-free Lab backend: colour conversion, cell statistics, interface, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vidprop.errors import ConfigError, ShapeError
from vidprop.features import FeatureConfig, LabConfig, create_extractor, list_extractors
from vidprop.features.lab import rgb_to_lab


def to_tensor(rgb_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb_uint8).copy()).permute(2, 0, 1).float()[None] / 127.5 - 1


def test_registry_lists_both_backends_and_rejects_unknown():
    assert {"dift_sd", "lab"} <= set(list_extractors())
    with pytest.raises(ConfigError, match="did you mean 'lab'"):
        create_extractor("labb")
    with pytest.raises(ConfigError, match="features.lab.strid"):
        create_extractor("lab", strid=4)


def test_lab_conversion_matches_scikit_image(davis_root):
    from skimage.color import rgb2lab

    frame = np.asarray(Image.open(davis_root / "JPEGImages" / "480p" / "car-shadow" / "00000.jpg").convert("RGB"))[::8, ::8]
    ours = rgb_to_lab(to_tensor(frame))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, rgb2lab(frame), atol=0.02)


def test_cells_average_the_colour_and_interface(davis_root):
    frame = np.asarray(Image.open(davis_root / "JPEGImages" / "480p" / "car-shadow" / "00000.jpg").convert("RGB"))
    frame = frame[:480, :832]
    ex = create_extractor(FeatureConfig(backend="lab", lab=LabConfig(stride=16, positional_weight=0.5, bias=1.0)))
    assert ex.channels == 3 + 3 + 2 + 1 and ex.stride == 16 and ex.cache_key["stride"] == 16
    images = to_tensor(frame)
    feats = ex.extract(images)
    assert feats.shape == (1, 9, 30, 52) and feats.dtype == torch.float32
    lab = rgb_to_lab(images)[0]
    cell = lab[:, 16:32, 48:64]
    torch.testing.assert_close(feats[0, 0, 1, 3], (cell[0].mean() - 50) / 50, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats[0, 4, 1, 3], (cell[1] / 50).std(unbiased=False), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(feats[0, 6:8, 1, 3], 0.5 * torch.tensor([1.5 / 30, 3.5 / 52]))
    assert torch.all(feats[0, 8] == 1.0)


def test_similar_colours_are_more_similar_than_different_ones():
    red, dark_red, blue = (torch.tensor(c, dtype=torch.float32) for c in ([0.9, -0.8, -0.8], [0.6, -0.9, -0.9], [-0.8, -0.8, 0.9]))
    images = torch.stack([c[:, None, None].expand(3, 8, 8) for c in (red, dark_red, blue)])
    f = torch.nn.functional.normalize(create_extractor("lab", stride=8, positional_weight=0.0).extract(images)[:, :, 0, 0], dim=1)
    assert f[0] @ f[1] > f[0] @ f[2] + 0.1


def test_bad_input_and_config():
    with pytest.raises(ShapeError, match="multiple of the feature stride 8"):
        create_extractor("lab").extract(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ConfigError, match="stride"):
        LabConfig(stride=0)
