"""Cut&Paste: sizes within the spec over many seeds, pasted pixels traced back to their source."""

from __future__ import annotations

import pytest
import torch

from wsi_haloae.training.cutpaste import cutpaste_normal, cutpaste_scar, make_triplet

SEEDS = range(150)


def rand_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Random RGB: every pixel's colour is unique, so a pasted pixel can be traced to its source."""
    return torch.rand((3, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class SourceIndex:
    """Where each colour of a random image sits; its pixels' colours are all distinct."""

    def __init__(self, image: torch.Tensor) -> None:
        width = image.shape[-1]
        self._where = {tuple(c): divmod(i, width) for i, c in enumerate(image.flatten(1).T.tolist())}

    def positions(self, colours: torch.Tensor) -> torch.Tensor:
        """(P, 2) row, col of each colour of (P, 3); -1, -1 where the image lacks it."""
        return torch.tensor([self._where.get(tuple(c), (-1, -1)) for c in colours.tolist()]).view(-1, 2)


def bounding_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


@pytest.mark.parametrize("size", [(64, 64), (256, 256), (48, 80)])
def test_normal_patch_is_a_rectangle_of_2_to_15_percent(size: tuple[int, int]) -> None:
    image = rand_image(*size)
    fractions, ratios = [], []
    for seed in SEEDS if size == (64, 64) else range(30):
        damaged, mask = cutpaste_normal(image, torch.Generator().manual_seed(seed))
        top, left, bottom, right = bounding_box(mask)
        assert mask.sum() == (bottom - top) * (right - left)  # one filled rectangle
        fractions.append(mask.sum().item() / mask.numel())
        ratios.append((right - left) / (bottom - top))
        assert torch.equal(damaged[:, ~mask], image[:, ~mask])
    assert 0.02 <= min(fractions) and max(fractions) <= 0.15
    if size == (64, 64):
        assert min(fractions) < 0.03 and max(fractions) > 0.14  # the whole range is used
        assert min(ratios) < 0.5 and max(ratios) > 2.0 and all(0.25 < r < 4.0 for r in ratios)


def test_normal_patch_is_a_crop_of_the_same_image() -> None:
    image = rand_image(64, 64)
    index = SourceIndex(image)
    moved = 0
    for seed in range(40):
        damaged, mask = cutpaste_normal(image, torch.Generator().manual_seed(seed), patch_jitter=0.0)
        top, left, bottom, right = bounding_box(mask)
        patch = damaged[:, top:bottom, left:right]
        row, col = index.positions(patch[:, 0, 0][None])[0].tolist()
        assert row >= 0, "the patch's corner colour is nowhere in the source"
        crop = image[:, row : row + bottom - top, col : col + right - left]
        assert torch.equal(patch, crop)
        moved += (row, col) != (top, left)
    assert moved >= 38


def test_normal_patch_is_colour_jittered_by_default() -> None:
    image = rand_image(64, 64).float()
    jittered = 0
    for seed in range(30):
        damaged, mask = cutpaste_normal(image, torch.Generator().manual_seed(seed))
        plain, plain_mask = cutpaste_normal(image, torch.Generator().manual_seed(seed), patch_jitter=0.0)
        assert torch.equal(mask, plain_mask)  # same geometry: the jitter draws come after it
        jittered += not torch.allclose(damaged[:, mask], plain[:, mask], atol=1e-3)
        assert not torch.allclose(damaged[:, mask], image[:, mask], atol=1e-3)
    assert jittered >= 28


def test_scar_area_stays_within_the_rotated_strip() -> None:
    image = rand_image(256, 256)
    areas = []
    for seed in SEEDS:
        damaged, mask = cutpaste_scar(image, torch.Generator().manual_seed(seed))
        areas.append(int(mask.sum()))
        assert torch.equal(damaged[:, ~mask], image[:, ~mask])
    # Pixel centres inside a convex shape of area A and perimeter P number in (A - P/2, A + P/2 + 1]
    # (Nosarzewska); the strip is 2-16 x 10-25 px.
    assert min(areas) > 2 * 10 - (2 + 10) and max(areas) <= 16 * 25 + (16 + 25) + 1
    assert min(areas) < 60 and max(areas) > 250  # the whole range of sizes is used


def test_scar_pixels_come_from_a_2_to_16_by_10_to_25_strip_of_the_same_image() -> None:
    image = rand_image(256, 256, seed=1)
    index = SourceIndex(image)
    rotated = 0
    for seed in range(60):
        damaged, mask = cutpaste_scar(image, torch.Generator().manual_seed(seed), patch_jitter=0.0)
        sources = index.positions(damaged[:, mask].T)
        assert (sources >= 0).all(), "a pasted colour is nowhere in the source"
        # unrotated, the strip is axis-aligned in the source: its pixels span at most 16 x 25 px
        height = int(sources[:, 0].max() - sources[:, 0].min()) + 1
        width = int(sources[:, 1].max() - sources[:, 1].min()) + 1
        assert width <= 16 and height <= 25
        assert height >= 10 - 1  # the strip's far rows can fall between pixel centres
        top, left, bottom, right = bounding_box(mask)
        rotated += (bottom - top, right - left) != (height, width)
    assert rotated >= 50


def test_scar_scales_with_smaller_tiles() -> None:
    image = rand_image(64, 64, seed=2)
    areas = [int(cutpaste_scar(image, torch.Generator().manual_seed(s))[1].sum()) for s in SEEDS]
    # 64 px: strips of 0.5-4 x 2.5-6.25 px, rounded, at least 1 px (area <= 4 x 6 + the margin above)
    assert min(areas) >= 1 and max(areas) <= 4 * 6 + (4 + 6) + 1
    assert max(areas) > 12


def test_same_seed_same_result_different_seed_different() -> None:
    image = rand_image(64, 64).float()
    for transform in (cutpaste_normal, cutpaste_scar):
        a, mask_a = transform(image, torch.Generator().manual_seed(3))
        b, mask_b = transform(image, torch.Generator().manual_seed(3))
        c, mask_c = transform(image, torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and torch.equal(mask_a, mask_b)
        assert not torch.equal(mask_a, mask_c)


def test_make_triplet_jitters_the_original_then_damages_it() -> None:
    image = rand_image(64, 64).float()
    images, labels = make_triplet(image, torch.Generator().manual_seed(5))
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 1]
    original, normal, scar = images
    assert not torch.allclose(original, image, atol=1e-3)
    for damaged, max_changed in ((normal, 0.15), (scar, 0.15)):
        changed = (damaged != original).any(dim=0).float().mean().item()
        assert 0 < changed <= max_changed  # the rest is the jittered original, bit for bit
    again, _ = make_triplet(image, torch.Generator().manual_seed(5))
    assert torch.equal(images, again)
    other, _ = make_triplet(image, torch.Generator().manual_seed(6))
    assert not torch.equal(images, other)
    plain, _ = make_triplet(image, torch.Generator().manual_seed(5), jitter=0.0)
    assert torch.equal(plain[0], image)


def test_bad_images_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        cutpaste_normal(torch.rand(1, 32, 32), torch.Generator())
    with pytest.raises(ValueError, match="torch.uint8"):
        make_triplet(torch.zeros(3, 32, 32, dtype=torch.uint8), torch.Generator())


def test_scar_fits_tiny_tiles() -> None:
    image = rand_image(8, 8)
    for seed in range(20):
        # 8 px: the strip rounds to 1 x 1 px, and still pastes its one pixel at any angle
        damaged, mask = cutpaste_scar(image, torch.Generator().manual_seed(seed))
        assert mask.sum() == 1 and (damaged != image).any(dim=0).sum() <= 1
