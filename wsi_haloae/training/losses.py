"""HaloAE losses and their weighting (`model-spec.md`, "Losses and the evolving weighting scheme").

L_T(t) = α_cls(t) L_cls + α_fm(t) L_fm + α_im(t) L_im. L_fm and L_im are `reconstruction_loss`
(MSE + 1 - SSIM); L_cls is the classifier's cross-entropy. The weights come from the evolving
weighting scheme (`ews_weights`, the paper's default) or one of its ablations: `equal_weights`,
`KendallWeighting` (learned uncertainty).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (a, b, c, d) of f(t) = (a - b) / (1 + exp(d (t - c / 2))) + b for α_cls, α_fm, α_im: the values
# the official code ran (the paper's Figure 3 caption prints others).
EWS_PARAMS: tuple[tuple[float, float, float, float], ...] = (
    (1.0, 0.4, 80.0, 0.07),
    (-1e-8, 1.2, 150.0, 0.05),
    (-1e-8, 2.0, 300.0, 0.05),
)


def ssim(
    x: Tensor,
    y: Tensor,
    *,
    window: int = 11,
    sigma: float = 1.5,
    c1: float = 0.01**2,
    c2: float = 0.03**2,
) -> Tensor:
    """Mean structural similarity of two image batches, per channel, with a Gaussian window.

    This is scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)`: local statistics use a normalised `window` x
    `window` Gaussian and population (co)variances, and the SSIM map is averaged over the *valid*
    region only, (H - window + 1) x (W - window + 1) per channel and image. The official HaloAE loss
    zero-pads instead, which gives the same values in the interior but different ones within
    window // 2 (5) pixels of the border. `c1`, `c2` assume a data range of 1, as the spec fixes
    them for both images and feature maps.

    Computed in float32 at least (autocast disabled): the variances are differences of nearly
    equal moments, which half precision cannot resolve.

    Args:
        x, y: (N, C, H, W), same shape, H and W >= `window`.

    Returns:
        scalar tensor, 1 for identical inputs; differentiable in x and y.
    """
    if x.shape != y.shape or x.ndim != 4:
        shapes = f"{tuple(x.shape)} and {tuple(y.shape)}"
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {shapes}")
    if window % 2 == 0 or min(x.shape[-2:]) < window:
        raise ValueError(f"ssim window {window} must be odd and fit the {tuple(x.shape[-2:])} images")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.to(dtype), y.to(dtype)
        channels = x.shape[1]
        # the five local moments of every channel, filtered in one grouped pass: (N, 5 C, H, W)
        moments = torch.cat((x, y, x * x, y * y, x * y), dim=1)
        taps = torch.arange(window, dtype=dtype, device=x.device) - window // 2
        gauss = torch.exp(-(taps**2) / (2 * sigma**2))
        gauss = gauss / gauss.sum()
        groups = 5 * channels
        # separable Gaussian: a column pass then a row pass, no padding (valid region only)
        moments = F.conv2d(moments, gauss.view(1, 1, window, 1).repeat(groups, 1, 1, 1), groups=groups)
        moments = F.conv2d(moments, gauss.view(1, 1, 1, window).repeat(groups, 1, 1, 1), groups=groups)
        mu_x, mu_y, e_xx, e_yy, e_xy = moments.chunk(5, dim=1)  # each (N, C, H - w + 1, W - w + 1)
        var_x = e_xx - mu_x * mu_x
        var_y = e_yy - mu_y * mu_y
        cov_xy = e_xy - mu_x * mu_y
        numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
        denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
        return (numerator / denominator).mean()


def reconstruction_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """MSE + (1 - SSIM) of a reconstruction (N, C, H, W) against its target: L_fm and L_im. Scalar."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        mse = F.mse_loss(x_hat.float(), x.float())
    return mse + (1.0 - ssim(x_hat, x))


def ews_weights(epoch: float) -> tuple[float, float, float]:
    """Evolving weighting scheme: (α_cls, α_fm, α_im) at `epoch` (fractional epochs allowed), summing to 1.

    Each α follows f(t; a, b, c, d) = (a - b) / (1 + exp(d (t - c / 2))) + b with `EWS_PARAMS`, then
    the three are normalised. The classifier dominates first, the reconstructions later:
    (0.971, 0.028, 0.001) at epoch 0, (0.112, 0.335, 0.554) at epoch 250.
    """
    raw = [(a - b) * _logistic_of_minus(d * (epoch - c / 2)) + b for a, b, c, d in EWS_PARAMS]
    total = sum(raw)
    return raw[0] / total, raw[1] / total, raw[2] / total


def equal_weights(epoch: float) -> tuple[float, float, float]:
    """The equal-weights ablation: (1/3, 1/3, 1/3) at every epoch (signature of `ews_weights`)."""
    return 1 / 3, 1 / 3, 1 / 3


class KendallWeighting(nn.Module):
    """Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018) as the HaloAE ablation writes it.

    Total = Σ L_i / σ_i² + Σ log σ_i², with s_i = log σ_i² learned (one per loss, starting at 0, i.e.
    σ_i = 1). Learning s rather than σ keeps σ² positive without a constraint. The total can be
    negative; only its gradient matters.
    """

    def __init__(self, n_losses: int = 3) -> None:
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(n_losses))

    def forward(self, losses: Tensor) -> Tensor:
        """losses (n_losses,) -> scalar weighted total."""
        if losses.shape != self.log_var.shape:
            raise ValueError(f"expected {tuple(self.log_var.shape)} losses, got shape {tuple(losses.shape)}")
        return (losses * torch.exp(-self.log_var) + self.log_var).sum()


def _logistic_of_minus(z: float) -> float:
    """1 / (1 + exp(z)) without overflow for large |z|."""
    if z > 0:
        e = math.exp(-z)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(z))
