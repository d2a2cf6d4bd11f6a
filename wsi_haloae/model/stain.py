"""Stain normalisation: Macenko and Reinhard, vectorised over a batch of tiles, in torch.

A model trained on one lab's staining flags another lab's staining as anomalous. Both methods
map every tile's colours onto a target fitted on the training tiles (`fit_stain_normaliser`),
and the same module runs before HaloAE in training (on the CPU, in the tile loader) and in
`heatmap` (on the device, in the batch path), so the model only ever sees normalised tiles.

Images are (N, 3, H, W) float RGB in [0, 1]. Optical density OD = -ln((255 I + 1) / 256) per
channel (0 on white, finite on black). "Stained pixels" are those with OD >= `OD_THRESHOLD` in
every channel (Macenko's beta): the statistics of a tile come from them only, so glass does not
enter them; a tile with fewer than `MIN_STAINED_FRACTION` of its pixels stained passes through
unchanged (too little tissue to estimate its stain from).

- Macenko et al. 2009: the tile's two stain OD vectors are the extreme angles (percentiles
  `ANGLE_PERCENTILE` and 100 - it) of its stained pixels' OD projected on the plane of the two
  largest eigenvectors of their covariance; haematoxylin is the one absorbing more red. Stain
  concentrations (least squares) are scaled so their `MAX_PERCENTILE`th percentile matches the
  target's, then recombined with the target's stain vectors.
- Reinhard et al. 2001: the mean and standard deviation of each channel in Ruderman's lαβ space
  are matched to the target's (statistics over the stained pixels; every pixel is transformed).

Every step is deterministic (no random sampling; quantiles by sorting), so the same tiles give
the same bytes on one device.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

StainMethod = Literal["none", "macenko", "reinhard"]
STAIN_METHODS: tuple[StainMethod, ...] = ("none", "macenko", "reinhard")

OD_THRESHOLD = 0.15
ANGLE_PERCENTILE = 1.0
MAX_PERCENTILE = 99.0
MIN_STAINED_FRACTION = 0.02
# Pixels pooled to fit a target: enough for stable percentiles, bounded memory
FIT_MAX_PIXELS = 2_000_000

# Reinhard's RGB -> LMS matrix and the lαβ decorrelation (Ruderman et al. 1998)
_RGB_TO_LMS = torch.tensor(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]], dtype=torch.float64
)
_LMS_TO_LAB = torch.diag(torch.tensor([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)])).double() @ (
    torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]], dtype=torch.float64)
)
_LOG_FLOOR = 1e-4  # LMS floor before log10 (black pixels)


def optical_density(rgb: Tensor) -> Tensor:
    """(..., 3, ...) RGB in [0, 1] -> optical density, same shape, >= 0."""
    return -torch.log((rgb.clamp(0, 1) * 255 + 1) / 256)


def od_to_rgb(od: Tensor) -> Tensor:
    """Inverse of `optical_density`, clamped to [0, 1]."""
    return ((256 * torch.exp(-od) - 1) / 255).clamp(0, 1)


def stained_pixels(od: Tensor) -> Tensor:
    """(N, 3, P) optical densities -> (N, P) bool: stained in every channel."""
    return (od >= OD_THRESHOLD).all(dim=1)


def masked_quantile(values: Tensor, mask: Tensor, q: float) -> Tensor:
    """The `q` quantile (0-1, linear interpolation) of each row of `values` (N, P) over its
    `mask` (N, P) entries: (N,). Rows without an entry give the row's quantile over nothing: 0."""
    count = mask.sum(dim=1)
    ordered = torch.where(mask, values, torch.full_like(values, torch.inf)).sort(dim=1).values
    position = q * (count - 1).clamp(min=0).to(values.dtype)
    low = position.floor().long()
    high = torch.minimum(low + 1, (count - 1).clamp(min=0))
    frac = position - low.to(values.dtype)
    lo_v, hi_v = ordered.gather(1, low[:, None])[:, 0], ordered.gather(1, high[:, None])[:, 0]
    result = lo_v + (hi_v - lo_v) * frac
    return torch.where(count > 0, result, torch.zeros_like(result))


def macenko_stains(od: Tensor, stained: Tensor) -> tuple[Tensor, Tensor]:
    """Stain vectors and concentrations of (N, 3, P) optical densities, from their `stained`
    (N, P) pixels: ((N, 3, 2) unit OD vectors [haematoxylin, eosin], (N, 2, P) concentrations)."""
    weights = stained.to(od.dtype)[:, None]  # (N, 1, P)
    count = weights.sum(dim=2, keepdim=True).clamp(min=2)
    centred = (od - (od * weights).sum(dim=2, keepdim=True) / count) * weights
    covariance = (centred @ centred.transpose(1, 2) / (count - 1)).double()  # (N, 3, 3)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    plane = vectors[:, :, 1:].flip(-1).to(od.dtype)  # (N, 3, 2), largest first
    plane = plane * torch.sign(plane.sum(dim=1, keepdim=True) + 1e-12)  # OD vectors point into +OD
    projected = plane.transpose(1, 2) @ od  # (N, 2, P)
    angle = torch.atan2(projected[:, 1], projected[:, 0])
    low = masked_quantile(angle, stained, ANGLE_PERCENTILE / 100)
    high = masked_quantile(angle, stained, 1 - ANGLE_PERCENTILE / 100)

    def direction(phi: Tensor) -> Tensor:  # (N,) -> (N, 3)
        return (plane @ torch.stack([phi.cos(), phi.sin()], dim=1)[:, :, None])[:, :, 0]

    first, second = direction(low), direction(high)
    haematoxylin_first = (first[:, 0] > second[:, 0])[:, None]
    h = torch.where(haematoxylin_first, first, second)
    e = torch.where(haematoxylin_first, second, first)
    stains = torch.stack([h, e], dim=2)
    stains = stains / stains.norm(dim=1, keepdim=True).clamp(min=1e-8)
    concentrations = torch.linalg.pinv(stains) @ od  # (N, 2, P)
    return stains, concentrations


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """(N, 3, P) RGB in [0, 1] -> Ruderman's lαβ (N, 3, P)."""
    lms = _RGB_TO_LMS.to(rgb) @ rgb
    return _LMS_TO_LAB.to(rgb) @ torch.log10(lms.clamp(min=_LOG_FLOOR))


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Inverse of `rgb_to_lab`, clamped to [0, 1]."""
    lms = torch.pow(10.0, torch.linalg.inv(_LMS_TO_LAB).to(lab) @ lab)
    return (torch.linalg.inv(_RGB_TO_LMS).to(lab) @ lms).clamp(0, 1)


def _masked_mean_std(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (N, C) of (N, C, P) over the (N, P) mask."""
    weights = mask.to(values.dtype)[:, None]
    count = weights.sum(dim=2).clamp(min=1)
    mean = (values * weights).sum(dim=2) / count
    var = ((values - mean[..., None]).square() * weights).sum(dim=2) / count
    return mean, var.sqrt()


class StainNormaliser(nn.Module):
    """Maps tiles' stain onto a fitted target: (N, 3, H, W) RGB in [0, 1] -> the same shape.

    Buffers (all float32): `stain_matrix` (3, 2) target OD vectors [H, E] and
    `max_concentrations` (2,) (Macenko); `lab_mean`, `lab_std` (3,) target lαβ statistics
    (Reinhard). Only the buffers of `method` are used; all four are always present, so the
    module's state has one shape whatever the method.
    """

    def __init__(
        self,
        method: Literal["macenko", "reinhard"],
        stain_matrix: Tensor | None = None,
        max_concentrations: Tensor | None = None,
        lab_mean: Tensor | None = None,
        lab_std: Tensor | None = None,
    ) -> None:
        super().__init__()
        if method not in ("macenko", "reinhard"):
            raise ValueError(f"stain normalisation method {method!r} is not macenko or reinhard")
        self.method = method
        for name, value, shape in (
            ("stain_matrix", stain_matrix, (3, 2)),
            ("max_concentrations", max_concentrations, (2,)),
            ("lab_mean", lab_mean, (3,)),
            ("lab_std", lab_std, (3,)),
        ):
            value = torch.zeros(shape) if value is None else value.detach().float().cpu()
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must be {shape}, got {tuple(value.shape)}")
            self.register_buffer(name, value)

    def forward(self, images: Tensor) -> Tensor:
        n, _, height, width = images.shape
        rgb = images.float().reshape(n, 3, height * width)
        od = optical_density(rgb)
        stained = stained_pixels(od)
        enough = stained.float().mean(dim=1) >= MIN_STAINED_FRACTION  # (N,)
        if self.method == "macenko":
            _, concentrations = macenko_stains(od, stained)
            peak = torch.stack(
                [masked_quantile(concentrations[:, k], stained, MAX_PERCENTILE / 100) for k in range(2)],
                dim=1,
            )
            scale = self.max_concentrations / peak.clamp(min=1e-6)  # (N, 2)
            out = od_to_rgb(self.stain_matrix @ (concentrations * scale[..., None]))
        else:
            lab = rgb_to_lab(rgb)
            mean, std = _masked_mean_std(lab, stained)
            lab = (lab - mean[..., None]) / std.clamp(min=1e-6)[..., None] * self.lab_std[:, None]
            out = lab_to_rgb(lab + self.lab_mean[:, None])
        out = torch.where(enough[:, None, None], out, rgb)
        return out.reshape(n, 3, height, width).to(images.dtype)

    def extra_repr(self) -> str:
        return f"method={self.method}"


def fit_stain_normaliser(method: Literal["macenko", "reinhard"], tiles: Tensor) -> StainNormaliser:
    """The target of `method` fitted on training tiles (N, 3, H, W) RGB in [0, 1] (CPU is fine):
    their stained pixels pooled into one image (every k-th pixel when there are more than
    `FIT_MAX_PIXELS`). Raises ValueError when too few pixels are stained to fit."""
    rgb = tiles.double().permute(1, 0, 2, 3).reshape(3, -1)  # (3, N*H*W)
    od = optical_density(rgb)
    keep = stained_pixels(od[None])[0]
    rgb, od = rgb[:, keep], od[:, keep]
    if rgb.shape[1] < 100:
        raise ValueError(
            f"only {rgb.shape[1]} stained pixels in {len(tiles)} training tiles: too few to fit a stain target"
        )
    step = max(1, math.ceil(rgb.shape[1] / FIT_MAX_PIXELS))
    rgb, od = rgb[None, :, ::step], od[None, :, ::step]
    every = torch.ones(od.shape[0], od.shape[2], dtype=torch.bool)
    stains, concentrations = macenko_stains(od, every)
    peak = torch.stack(
        [masked_quantile(concentrations[:, k], every, MAX_PERCENTILE / 100) for k in range(2)], 1
    )
    lab_mean, lab_std = _masked_mean_std(rgb_to_lab(rgb), every)
    return StainNormaliser(method, stains[0], peak[0], lab_mean[0], lab_std[0])
