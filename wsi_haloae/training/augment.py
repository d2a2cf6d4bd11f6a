"""Colour augmentations for training tiles: colour jitter and HED stain jitter.

Images are float tensors (..., 3, H, W), RGB in [0, 1]. Every leading index is one image with its
own random draw, so a whole batch is jittered in one vectorised pass. Randomness comes only from
the `torch.Generator` passed in: a DataLoader worker seeded once replays the same stream.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Ruifrok & Johnston's stain optical-density vectors as scikit-image defines them (rows: haematoxylin,
# eosin, DAB; columns: R, G, B), so `rgb_to_hed` agrees with `skimage.color.rgb2hed`.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)

# scikit-image floors intensities at 1e-6 before the log and divides optical densities by
# -log(1e-6), so a stain density of 1 means "transmits 1e-6 of the light".
_INTENSITY_FLOOR = 1e-6
_LOG_FLOOR = math.log(_INTENSITY_FLOOR)

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses them.
_LUMA = (0.2989, 0.587, 0.114)


def colour_jitter(image: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Random brightness, contrast, saturation and hue, each drawn uniformly within ±strength.

    Brightness, contrast and saturation factors lie in [1 - strength, 1 + strength], the hue shift in
    [-strength, strength] turns of the colour wheel: torchvision's `ColorJitter(s, s, s, s)`. Unlike
    torchvision, the order is fixed (brightness, contrast, saturation, hue) so that a batch needs no
    per-image branching; `strength` 0 returns the image unchanged (up to float rounding).

    Args:
        image: (..., 3, H, W) RGB in [0, 1]; each leading index gets its own factors.
        strength: in [0, 0.5] (hue shifts beyond half a turn are meaningless).
        generator: the only source of randomness.

    Returns:
        (..., 3, H, W) RGB in [0, 1], same dtype and device.
    """
    if not 0.0 <= strength <= 0.5:
        raise ValueError(f"colour jitter strength {strength} is outside [0, 0.5]")
    lead = image.shape[:-3]
    # one row per adjustment, each uniform in [-1, 1)
    u = 2.0 * torch.rand((4, *lead), generator=generator, dtype=torch.float64) - 1.0
    u = u.to(device=image.device, dtype=image.dtype)
    return adjust_colour(
        image,
        brightness=1.0 + strength * u[0],
        contrast=1.0 + strength * u[1],
        saturation=1.0 + strength * u[2],
        hue=strength * u[3],
    )


def adjust_colour(
    image: Tensor,
    brightness: Tensor | float,
    contrast: Tensor | float,
    saturation: Tensor | float,
    hue: Tensor | float,
) -> Tensor:
    """Apply given brightness, contrast, saturation factors and hue shift, in that order.

    Each step is torchvision's: brightness scales the image; contrast blends it with the mean of
    its grey version; saturation blends each pixel with its grey value (all clamped to [0, 1]); hue
    rotates the HSV hue by `hue` turns.

    Args:
        image: (..., 3, H, W) RGB in [0, 1].
        brightness, contrast, saturation: factors (1 = unchanged), floats or tensors of shape `...`.
        hue: shift in turns (0 = unchanged), float or tensor of shape `...`.

    Returns:
        (..., 3, H, W) RGB in [0, 1].
    """
    lead = image.shape[:-3]

    def per_image(value: Tensor | float) -> Tensor:
        as_tensor = torch.as_tensor(value, dtype=image.dtype, device=image.device)
        return as_tensor.expand(lead)[..., None, None, None]

    out = (image * per_image(brightness)).clamp(0.0, 1.0)
    ratio = per_image(contrast)
    mean_grey = _grey(out).mean(dim=(-3, -2, -1), keepdim=True)
    out = (ratio * out + (1.0 - ratio) * mean_grey).clamp(0.0, 1.0)
    ratio = per_image(saturation)
    out = (ratio * out + (1.0 - ratio) * _grey(out)).clamp(0.0, 1.0)
    h, s, v = rgb_to_hsv(out).unbind(-3)
    h = torch.remainder(h + per_image(hue)[..., 0, :, :], 1.0)
    return hsv_to_rgb(torch.stack((h, s, v), dim=-3))


def rgb_to_hsv(image: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 3, H, W) HSV, hue in turns [0, 1); grey pixels get hue 0."""
    r, g, b = image.unbind(-3)
    v, _ = image.max(dim=-3)
    delta = v - image.min(dim=-3).values
    s = torch.where(v > 0, delta / v.clamp_min(torch.finfo(image.dtype).tiny), 0.0)
    safe = torch.where(delta > 0, delta, 1.0)
    hue_sixths = torch.where(
        v == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    h = torch.where(delta > 0, hue_sixths / 6.0, 0.0)
    return torch.stack((h, s, v), dim=-3)


def hsv_to_rgb(image: Tensor) -> Tensor:
    """(..., 3, H, W) HSV (hue in turns) -> (..., 3, H, W) RGB in [0, 1]."""
    h, s, v = image.unbind(-3)
    # Branch-free form: channel n (5 = R, 3 = G, 1 = B) drops from v where the hue is far from it.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        channels.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=-3)


def rgb_to_hed(image: Tensor) -> Tensor:
    """Colour deconvolution into haematoxylin, eosin and DAB optical densities.

    `skimage.color.rgb2hed(x)` equals `rgb_to_hed(x).clamp(min=0)`: we keep the negative densities
    that scikit-image clips, so that `hed_to_rgb` inverts this exactly.

    Args:
        image: (..., 3, H, W) RGB in [0, 1].

    Returns:
        (..., 3, H, W) stain densities (H, E, D), in units of -log(1e-6).
    """
    density = torch.log(image.clamp_min(_INTENSITY_FLOOR)) / _LOG_FLOOR
    matrix = HED_FROM_RGB.to(device=image.device, dtype=image.dtype)
    return torch.einsum("...chw,cs->...shw", density, matrix)


def hed_to_rgb(stains: Tensor) -> Tensor:
    """Recombine (..., 3, H, W) H, E, D densities into RGB, clipped to [0, 1] (`skimage.color.hed2rgb`)."""
    matrix = RGB_FROM_HED.to(device=stains.device, dtype=stains.dtype)
    density = torch.einsum("...shw,sc->...chw", stains, matrix)
    return torch.exp(density * _LOG_FLOOR).clamp(0.0, 1.0)


def hed_jitter(image: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Stain augmentation: each stain density d becomes d * (1 + a) + b, with a, b uniform in [-sigma, sigma].

    The image is deconvolved into H, E, D densities (`rgb_to_hed`), each density channel is scaled
    and shifted with its own draw, and the result is recombined and clipped to [0, 1]. `sigma` 0 is
    the identity (up to float rounding and scikit-image's 1e-6 intensity floor).

    Args:
        image: (..., 3, H, W) RGB in [0, 1]; each leading index gets its own draws.
        sigma: >= 0; the shift is in density units (1 = a stain absorbing all but 1e-6 of the light).
        generator: the only source of randomness.

    Returns:
        (..., 3, H, W) RGB in [0, 1], same dtype and device.
    """
    if sigma < 0:
        raise ValueError(f"HED jitter sigma {sigma} is negative")
    lead = image.shape[:-3]
    u = 2.0 * torch.rand((2, *lead, 3, 1, 1), generator=generator, dtype=torch.float64) - 1.0
    u = u.to(device=image.device, dtype=image.dtype)
    stains = rgb_to_hed(image)
    return hed_to_rgb(stains * (1.0 + sigma * u[0]) + sigma * u[1])


def _grey(image: Tensor) -> Tensor:
    """(..., 3, H, W) RGB -> (..., 1, H, W) luma."""
    r, g, b = image.unbind(-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)
