"""Colour and stain augmentation against torchvision, scikit-image and matplotlib references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from matplotlib.colors import rgb_to_hsv as mpl_rgb_to_hsv
from skimage.color import hed2rgb, rgb2hed

from wsi_haloae.training.augment import (
    adjust_colour,
    colour_jitter,
    hed_jitter,
    hed_to_rgb,
    hsv_to_rgb,
    rgb_to_hed,
    rgb_to_hsv,
)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def channels_last(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).double().numpy()


def test_colour_jitter_with_strength_zero_is_the_identity() -> None:
    x = rand(2, 3, 40, 40)
    x[0, :, :5] = 0.0  # black and white pixels take the special branches of the HSV conversion
    x[0, :, 5:10] = 1.0
    out = colour_jitter(x, 0.0, torch.Generator().manual_seed(1))
    assert torch.allclose(out, x, atol=1e-5)


def test_adjust_colour_matches_torchvision_per_image() -> None:
    x = rand(3, 3, 24, 32, seed=2)
    factors = {
        "brightness": torch.tensor([0.9, 1.0, 1.08]),
        "contrast": torch.tensor([1.1, 0.92, 1.0]),
        "saturation": torch.tensor([0.95, 1.1, 0.5]),
        "hue": torch.tensor([0.07, -0.1, 0.5]),
    }
    out = adjust_colour(x, **factors)
    for i in range(3):
        ref = TF.adjust_brightness(x[i], float(factors["brightness"][i]))
        ref = TF.adjust_contrast(ref, float(factors["contrast"][i]))
        ref = TF.adjust_saturation(ref, float(factors["saturation"][i]))
        ref = TF.adjust_hue(ref, float(factors["hue"][i]))
        assert torch.allclose(out[i], ref, atol=1e-5), i


def test_hsv_conversion_matches_matplotlib_and_round_trips() -> None:
    x = rand(3, 16, 16, seed=3)
    x[:, 0, :4] = torch.tensor([0.3, 0.3, 0.3])[:, None]  # grey: hue 0, saturation 0
    hsv = rgb_to_hsv(x)
    assert np.allclose(channels_last(hsv), mpl_rgb_to_hsv(channels_last(x)), atol=1e-6)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-6)


def test_colour_jitter_factors_span_plus_minus_strength() -> None:
    # Grey is blind to contrast, saturation and hue: the output is grey * brightness factor.
    grey = torch.full((64, 3, 2, 2), 0.5)
    brightness = colour_jitter(grey, 0.2, torch.Generator().manual_seed(4))[:, 0, 0, 0] / 0.5
    assert 0.8 <= brightness.min() < 0.83 and 1.17 < brightness.max() <= 1.2
    # Blending pure red with grey or scaling it keeps its hue: the output hue is the hue shift.
    red = torch.tensor([1.0, 0.0, 0.0])[None, :, None, None].expand(64, 3, 2, 2)
    out = colour_jitter(red, 0.2, torch.Generator().manual_seed(5))[:, :, 0, 0]
    hue = mpl_rgb_to_hsv(out.double().numpy())[:, 0]
    shift = (hue + 0.5) % 1.0 - 0.5
    assert -0.2 - 1e-6 <= shift.min() < -0.17 and 0.17 < shift.max() <= 0.2 + 1e-6


def test_colour_jitter_is_seeded_and_independent_per_image() -> None:
    x = rand(3, 20, 20, seed=6).expand(2, 3, 20, 20)
    a = colour_jitter(x, 0.1, torch.Generator().manual_seed(7))
    b = colour_jitter(x, 0.1, torch.Generator().manual_seed(7))
    c = colour_jitter(x, 0.1, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)
    assert not torch.allclose(a[0], a[1], atol=1e-3)
    assert a.min() >= 0 and a.max() <= 1


def test_rgb_to_hed_matches_skimage() -> None:
    for seed in range(3):
        x = rand(3, 32, 32, seed=seed)
        x[:, 0, 0] = 0.0  # hits scikit-image's 1e-6 floor
        ours = rgb_to_hed(x).clamp(min=0)
        assert np.allclose(channels_last(ours), rgb2hed(channels_last(x)), atol=1e-5)


def test_hed_to_rgb_matches_skimage_and_inverts_rgb_to_hed() -> None:
    stains = 0.3 * rand(3, 16, 16, seed=9)
    assert np.allclose(channels_last(hed_to_rgb(stains)), hed2rgb(channels_last(stains)), atol=1e-6)
    x = rand(2, 3, 16, 16, seed=10)
    assert torch.allclose(hed_to_rgb(rgb_to_hed(x)), x, atol=1e-5)


def test_hed_jitter_with_sigma_zero_is_the_identity() -> None:
    x = rand(2, 3, 48, 48, seed=11)
    assert torch.allclose(hed_jitter(x, 0.0, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_hed_jitter_is_an_affine_change_of_each_stain_within_sigma() -> None:
    sigma = 0.05
    x = 0.3 + 0.6 * rand(4, 3, 32, 32, seed=12)
    out = hed_jitter(x, sigma, torch.Generator().manual_seed(13))
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[0], out[1] - x[1] + x[0], atol=1e-3)  # each image has its own draw
    before, after = rgb_to_hed(x).double(), rgb_to_hed(out).double()
    unclipped = ((out > 0) & (out < 1)).all(dim=1)
    for i in range(4):
        for stain in range(3):
            d_in = before[i, stain][unclipped[i]]
            d_out = after[i, stain][unclipped[i]]
            design = torch.stack((d_in, torch.ones_like(d_in)), dim=1)
            scale, shift = torch.linalg.lstsq(design, d_out[:, None]).solution[:, 0].tolist()
            assert abs(scale - 1) <= sigma + 1e-3 and abs(shift) <= sigma + 1e-3
            assert torch.allclose(scale * d_in + shift, d_out, atol=1e-3)
    assert torch.equal(out, hed_jitter(x, sigma, torch.Generator().manual_seed(13)))


def test_bad_strengths_are_rejected() -> None:
    x = rand(3, 4, 4)
    with pytest.raises(ValueError, match="0.6"):
        colour_jitter(x, 0.6, torch.Generator())
    with pytest.raises(ValueError, match="negative"):
        hed_jitter(x, -0.1, torch.Generator())
