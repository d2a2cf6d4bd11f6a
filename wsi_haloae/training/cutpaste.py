"""Cut&Paste self-supervision (block A of `model-spec.md`).

Each normal training image yields two damaged copies: CutPaste-normal (a rectangle of 2-15 % of the
image, cut from one place and pasted at another) and CutPaste-scar (a thin rotated strip). The
classifier (block E) learns label 0 for the original and 1 for either copy.

Images are float tensors (3, H, W), RGB in [0, 1]; masks are bool (H, W), True where pixels were
pasted. Randomness comes only from the `torch.Generator` passed in. The scar sizes of the spec are
for 256 px images; on other sizes they scale with min(H, W) / 256 (a 64 px tile gets 0.5-4 px wide,
2.5-6.25 px tall scars, rounded, at least 1 px), so the scar covers the same fraction of any tile.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .augment import colour_jitter

NORMAL_AREA_FRACTION = (0.02, 0.15)
NORMAL_ASPECT_RATIO = (0.3, 1 / 0.3)  # width / height, sampled log-uniformly
SCAR_WIDTH_PX = (2.0, 16.0)  # at SPEC_IMAGE_SIZE_PX, before rotation
SCAR_HEIGHT_PX = (10.0, 25.0)
SCAR_ROTATION_DEG = 45.0
SPEC_IMAGE_SIZE_PX = 256
PATCH_JITTER = 0.1


def cutpaste_normal(
    image: Tensor, generator: torch.Generator, *, patch_jitter: float = PATCH_JITTER
) -> tuple[Tensor, Tensor]:
    """Cut a rectangle of 2-15 % of the image, colour-jitter it and paste it at another random place.

    The aspect ratio (width / height) is log-uniform in [0.3, 1/0.3]. The width is rounded so that the
    pasted area stays inside 2-15 % of H * W (exactly, for any square image of 6 px or more).

    Args:
        image: (3, H, W) RGB in [0, 1].
        generator: the only source of randomness.
        patch_jitter: colour jitter strength of the pasted patch (`augment.colour_jitter`); 0 pastes
            the source pixels unchanged.

    Returns:
        damaged image (3, H, W), and bool mask (H, W) of the pasted rectangle.
    """
    _, height, width = _check_image(image)
    area_px = _uniform(generator, *NORMAL_AREA_FRACTION) * height * width
    log_ratio = _uniform(generator, *(math.log(r) for r in NORMAL_ASPECT_RATIO))
    patch_h = min(height, max(1, round(math.sqrt(area_px / math.exp(log_ratio)))))
    lowest_w = math.ceil(NORMAL_AREA_FRACTION[0] * height * width / patch_h)
    highest_w = math.floor(NORMAL_AREA_FRACTION[1] * height * width / patch_h)
    patch_w = min(width, max(1, lowest_w, min(highest_w, round(area_px / patch_h))))

    y_from, x_from = _randint(generator, height - patch_h), _randint(generator, width - patch_w)
    y_to, x_to = _randint(generator, height - patch_h), _randint(generator, width - patch_w)
    patch = _jitter(image[:, y_from : y_from + patch_h, x_from : x_from + patch_w], patch_jitter, generator)

    damaged = image.clone()
    damaged[:, y_to : y_to + patch_h, x_to : x_to + patch_w] = patch
    mask = torch.zeros((height, width), dtype=torch.bool, device=image.device)
    mask[y_to : y_to + patch_h, x_to : x_to + patch_w] = True
    return damaged, mask


def cutpaste_scar(
    image: Tensor, generator: torch.Generator, *, patch_jitter: float = PATCH_JITTER
) -> tuple[Tensor, Tensor]:
    """Cut a thin strip, colour-jitter it, rotate it by up to ±45° and paste it at a random place.

    At 256 px the strip is 2-16 px wide and 10-25 px tall (scaled with min(H, W) / 256 otherwise).
    The rotation is nearest-neighbour, so every pasted pixel is a (jittered) pixel of the strip and
    only the pixels inside the rotated strip are pasted, never its bounding box's corners.

    Args:
        image: (3, H, W) RGB in [0, 1].
        generator: the only source of randomness.
        patch_jitter: colour jitter strength of the strip (`augment.colour_jitter`); 0 pastes the
            source pixels unchanged.

    Returns:
        damaged image (3, H, W), and bool mask (H, W) of the pasted pixels.
    """
    _, height, width = _check_image(image)
    scale = min(height, width) / SPEC_IMAGE_SIZE_PX
    strip_w = min(width, max(1, round(_uniform(generator, *(scale * w for w in SCAR_WIDTH_PX)))))
    strip_h = min(height, max(1, round(_uniform(generator, *(scale * h for h in SCAR_HEIGHT_PX)))))
    y_from, x_from = _randint(generator, height - strip_h), _randint(generator, width - strip_w)
    angle_rad = math.radians(_uniform(generator, -SCAR_ROTATION_DEG, SCAR_ROTATION_DEG))
    box_h, box_w = _rotated_box(strip_h, strip_w, angle_rad)
    assert box_h <= height and box_w <= width, "a scaled scar always fits its image"
    y_to, x_to = _randint(generator, height - box_h), _randint(generator, width - box_w)
    strip = _jitter(image[:, y_from : y_from + strip_h, x_from : x_from + strip_w], patch_jitter, generator)
    rotated, inside = _rotate_nearest(strip, angle_rad, box_h, box_w)

    damaged = image.clone()
    target = damaged[:, y_to : y_to + box_h, x_to : x_to + box_w]
    damaged[:, y_to : y_to + box_h, x_to : x_to + box_w] = torch.where(inside, rotated, target)
    mask = torch.zeros((height, width), dtype=torch.bool, device=image.device)
    mask[y_to : y_to + box_h, x_to : x_to + box_w] = inside
    return damaged, mask


def make_triplet(image: Tensor, generator: torch.Generator, jitter: float = 0.1) -> tuple[Tensor, Tensor]:
    """One training sample: the colour-jittered original and its two Cut&Paste copies.

    The training recipe's colour jitter (`jitter`, see `augment.colour_jitter`) is applied to the
    original first; both damaged copies are made from that jittered original, so the classifier
    cannot tell them apart by global colour. `jitter` 0 skips it (pass an image already augmented,
    e.g. by `augment.hed_jitter`).

    Args:
        image: (3, H, W) RGB in [0, 1].
        generator: the only source of randomness.
        jitter: colour jitter strength of the original.

    Returns:
        images (3, 3, H, W) = [original, CutPaste-normal, CutPaste-scar] and labels (3,) int64 = [0, 1, 1].
    """
    _check_image(image)
    original = colour_jitter(image, jitter, generator) if jitter > 0 else image
    normal, _ = cutpaste_normal(original, generator)
    scar, _ = cutpaste_scar(original, generator)
    labels = torch.tensor([0, 1, 1], dtype=torch.int64)
    return torch.stack((original, normal, scar)), labels


def _rotated_box(h: int, w: int, angle_rad: float) -> tuple[int, int]:
    """(box_h, box_w) of a canvas holding an h x w patch rotated by `angle_rad`.

    The sides are odd, so the canvas's centre pixel samples the patch's centre: even a 1 px strip
    pastes at least one pixel at any angle.
    """
    cos, sin = abs(math.cos(angle_rad)), abs(math.sin(angle_rad))
    # the tolerance keeps an unrotated patch's exact size despite float rounding
    box_w = math.ceil(w * cos + h * sin - 1e-6)
    box_h = math.ceil(w * sin + h * cos - 1e-6)
    return box_h | 1, box_w | 1


def _rotate_nearest(patch: Tensor, angle_rad: float, box_h: int, box_w: int) -> tuple[Tensor, Tensor]:
    """Rotate (C, h, w) about its centre onto a (box_h, box_w) canvas (`_rotated_box`), nearest-neighbour.

    Returns the canvas (C, box_h, box_w) and a bool (box_h, box_w) mask of canvas pixels whose centre
    maps back inside the patch: the pixel centres inside a rotated h x w rectangle.
    """
    _, h, w = patch.shape
    cos, sin = math.cos(angle_rad), math.sin(angle_rad)
    y = torch.arange(box_h, dtype=torch.float64, device=patch.device) + 0.5 - box_h / 2
    x = torch.arange(box_w, dtype=torch.float64, device=patch.device) + 0.5 - box_w / 2
    yy, xx = torch.meshgrid(y, x, indexing="ij")  # canvas pixel centres, origin at the centre
    col = torch.floor(cos * xx + sin * yy + w / 2).long()
    row = torch.floor(-sin * xx + cos * yy + h / 2).long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    canvas = patch[:, row.clamp(0, h - 1), col.clamp(0, w - 1)]
    return canvas, inside


def _jitter(patch: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Colour-jitter a patch; strength 0 pastes the source pixels bit for bit (no HSV round trip)."""
    return colour_jitter(patch, strength, generator) if strength > 0 else patch


def _check_image(image: Tensor) -> tuple[int, int, int]:
    if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"expected a float (3, H, W) RGB image, got {image.dtype} {tuple(image.shape)}")
    channels, height, width = image.shape
    return channels, height, width


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(generator: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (), generator=generator))
