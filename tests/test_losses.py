"""Losses against references: SSIM against scikit-image, EWS against the formula written out here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from wsi_haloae.training.losses import (
    KendallWeighting,
    equal_weights,
    ews_weights,
    reconstruction_loss,
    ssim,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def hazelnut_dir() -> Path:
    folder = SHARED_DATA / "hazelnut_toy" / "train" / "good"
    if not folder.is_dir():
        pytest.skip(f"real data not present at {folder}")
    return folder


def skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over the batch of scikit-image's Gaussian, population-covariance SSIM, float64."""
    values = [
        structural_similarity(
            a.double().numpy(),
            b.double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=0,
        )
        for a, b in zip(x, y)
    ]
    return float(np.mean(values))


def structured_pair(shape: tuple[int, int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth stripes and blobs per channel, and a blurred, shifted, noisy copy: SSIM well inside (0, 1)."""
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
    yy, xx = torch.meshgrid(rows, cols, indexing="ij")
    freq = 0.1 + 0.4 * torch.rand(n, c, 2, generator=g, dtype=torch.float64)
    x = 0.5 + 0.25 * torch.sin(freq[..., 0, None, None] * xx) * torch.cos(freq[..., 1, None, None] * yy)
    x = x + 0.2 * ((xx - w / 3) ** 2 + (yy - h / 2) ** 2 < (min(h, w) / 4) ** 2)
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    y = blurred.roll(1, dims=-1) + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x.clamp(0, 1), y.clamp(0, 1)


@pytest.mark.parametrize("shape", [(2, 3, 11, 11), (1, 1, 17, 23), (2, 3, 40, 32), (1, 5, 64, 64)])
def test_ssim_matches_skimage_on_random_images(shape: tuple[int, int, int, int]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g)
    y = (x + 0.3 * torch.rand(shape, generator=g)).clamp(0, 1)
    expected = skimage_ssim(x, y)
    assert 0.1 < expected < 0.99
    assert abs(ssim(x, y).item() - expected) < 1e-4


@pytest.mark.parametrize("shape", [(1, 3, 32, 48), (2, 4, 64, 64), (1, 1, 100, 71)])
def test_ssim_matches_skimage_on_structured_images(shape: tuple[int, int, int, int]) -> None:
    x, y = structured_pair(shape, seed=shape[-1])
    expected = skimage_ssim(x, y)
    assert 0.2 < expected < 0.95
    assert abs(ssim(x.float(), y.float()).item() - expected) < 1e-4
    assert abs(ssim(x, y).item() - expected) < 1e-10


def test_ssim_matches_skimage_on_a_real_photograph(hazelnut_dir: Path) -> None:
    from PIL import Image

    paths = sorted(hazelnut_dir.iterdir())[:2]
    pair = [torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((96, 96)))) for p in paths]
    x, y = (p.permute(2, 0, 1)[None].float() / 255 for p in pair)
    expected = skimage_ssim(x, y)
    assert 0.1 < expected < 0.99
    assert abs(ssim(x, y).item() - expected) < 1e-4


def test_ssim_of_an_image_with_itself_is_one() -> None:
    x = torch.rand(3, 4, 30, 30, generator=torch.Generator().manual_seed(0))
    assert abs(ssim(x, x).item() - 1.0) < 1e-6


def test_ssim_is_differentiable_and_rejects_small_images() -> None:
    x = torch.rand(1, 2, 16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    (1 - ssim(x, torch.full_like(x, 0.5))).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="window 11"):
        ssim(torch.rand(1, 1, 10, 20), torch.rand(1, 1, 10, 20))


def test_reconstruction_loss_is_mse_plus_one_minus_ssim() -> None:
    x, y = structured_pair((2, 3, 32, 32), seed=7)
    expected = float(((x - y) ** 2).mean()) + 1 - skimage_ssim(x, y)
    assert abs(reconstruction_loss(y.float(), x.float()).item() - expected) < 1e-4


def ews_reference(t: float) -> tuple[float, float, float]:
    def f(a: float, b: float, c: float, d: float) -> float:
        return (a - b) / (1 + math.exp(d * (t - c / 2))) + b

    raw = (f(1, 0.4, 80, 0.07), f(-1e-8, 1.2, 150, 0.05), f(-1e-8, 2, 300, 0.05))
    return raw[0] / sum(raw), raw[1] / sum(raw), raw[2] / sum(raw)


@pytest.mark.parametrize("epoch", [0, 40, 75, 150, 250, 12.5])
def test_ews_weights_follow_the_formula(epoch: float) -> None:
    weights = ews_weights(epoch)
    assert weights == pytest.approx(ews_reference(epoch), abs=1e-12)
    assert sum(weights) == pytest.approx(1.0, abs=1e-12)


def test_ews_weights_match_the_spec_and_survive_late_epochs() -> None:
    assert tuple(round(w, 3) for w in ews_weights(0)) == (0.971, 0.028, 0.001)
    assert tuple(round(w, 3) for w in ews_weights(250)) == (0.112, 0.335, 0.554)
    # far past the schedule the weights settle at (0.4, 1.2, 2) / 3.6, without overflow
    assert ews_weights(1e5) == pytest.approx((0.4 / 3.6, 1.2 / 3.6, 2 / 3.6), abs=1e-12)


def test_equal_weights() -> None:
    assert equal_weights(0) == equal_weights(250) == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_kendall_weighting_value_and_gradients() -> None:
    weighting = KendallWeighting()
    log_var = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        weighting.log_var.copy_(log_var)
    losses = torch.tensor([0.7, 0.2, 1.3])
    total = weighting(losses)
    sigma_sq = log_var.exp()
    expected = (losses / sigma_sq).sum() + sigma_sq.log().sum()
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)
    total.backward()
    # d/ds_i (L_i e^{-s_i} + s_i) = 1 - L_i e^{-s_i}
    assert weighting.log_var.grad is not None
    assert torch.allclose(weighting.log_var.grad, 1 - losses * torch.exp(-log_var), atol=1e-6)
    with pytest.raises(ValueError, match="losses"):
        weighting(torch.ones(2))
