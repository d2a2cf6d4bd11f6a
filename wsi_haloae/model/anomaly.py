"""From a feature map and its reconstruction to anomaly maps and image scores (pure functions).

`model-spec.md`, "Inference and post-processing": the per-pixel squared error of fm_hat against
fm (mean over channels), bilinearly upsampled to the image, optionally made relative to a
reference map of normal training images (|A - reference|), then smoothed by OpenCV's fixed 3x3
Gaussian.

The reference (`Normalisation`) is the per-pixel mean of the training maps, as in the paper and
the authors' code (the MVTec protocols), or their per-pixel median (slide heatmaps' default). The
mean is dominated by the few training tiles a model reconstructs worst (tissue edges, folds), so
|A - mean| then scores most normal tissue, reconstructed better than that mean, about as high as
the anomalies; the median is the typical tile. Measured on the demo's slide (tile AUROC against
the planted anomalies, `wsi-haloae demo`): mean 0.65, median 0.93 (raw A: 0.93); on the test
suite's barely trained model, where anomalies reconstruct *better* than tissue (raw A: 0.0),
mean 0.95 and median 0.94: both two-sided, only the median robust to the outliers.

Tissue-aware scores (the default on slides): a tile's glass pixels are filled with the mean
colour of its tissue before the model (`fill_glass`), and its score is the mean (and max) of its
map over its tissue pixels only, `tissue` a (N, T, T) bool mask at heatmap resolution (one value
per S/T x S/T block of tile pixels); glass inside a tile then no longer drives its score. The reference
maps are made the same way: per pixel, the mean or median over the training tiles where that
pixel is tissue (`train.calibrate`, `masked_median`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Normalisation = Literal["median", "mean"]
NORMALISATIONS: tuple[Normalisation, ...] = ("median", "mean")
# Post-processing order (model-spec.md, "Inference and post-processing"):
# "upsample-first": bilinear upsampling to S, then |A - reference| and the 3x3 blur at S (the
#   project's original order); "feature-first": |A - reference| and the 3x3 blur at the
#   feature-map resolution F = S/4, then bilinear upsampling (the official code's order). The
#   blur then acts on 4x coarser pixels: a feature-pixel impulse spreads wider (standard
#   deviation 3.28 px against 1.80 px at S = 256, tests/test_protocol_fixes.py).
MapOrder = Literal["upsample-first", "feature-first"]
MAP_ORDERS: tuple[MapOrder, ...] = ("upsample-first", "feature-first")

# Tile pixels per tissue-mask value along each axis: one value per heatmap pixel
# (`heatmaps.stitch.HEATMAP_REDUCTION`, which a test keeps equal).
TISSUE_BLOCK_PX = 4

# cv2.getGaussianKernel(3, sigma <= 0) = [1, 2, 1] / 4, applied along rows and columns
_GAUSS_1D = (0.25, 0.5, 0.25)


def feature_error(fm: Tensor, fm_hat: Tensor) -> Tensor:
    """(N, C, F, F) twice -> (N, F, F): squared L2 distance per pixel, averaged over channels."""
    return (fm - fm_hat).square().mean(dim=1)


def anomaly_map(
    error: Tensor, size_px: int, mean_map: Tensor | None = None, order: MapOrder = "upsample-first"
) -> Tensor:
    """(N, F, F) feature error -> (N, S, S) anomaly map, S = `size_px`, same pixel frame as the tile.

    order "upsample-first" (default): bilinear upsampling (half-pixel centres, like OpenCV's
    resize and PyTorch's align_corners=False); with `mean_map` (S, S), a reference map of normal
    training images (mean or median, see the module docstring), the absolute difference
    |A - mean_map|; then the 3x3 [1, 2, 1]/4 Gaussian with OpenCV's default border (reflect-101:
    ...c b | a b c...).

    order "feature-first" (the official code's): |A - reference| and the same blur at F x F, then
    the bilinear upsampling. `mean_map` is then (F, F), or (S, S) constant on S/F x S/F blocks
    (how such references are stored with a model, see `reference_at_features`), averaged back to F.
    """
    if order not in MAP_ORDERS:
        raise ValueError(f"order must be one of {MAP_ORDERS}, got {order!r}")
    if order == "feature-first":
        maps = error[:, None]
        if mean_map is not None:
            reference = mean_map.to(device=maps.device, dtype=maps.dtype)
            if reference.shape[-1] != maps.shape[-1]:
                reference = F.avg_pool2d(reference[None, None], reference.shape[-1] // maps.shape[-1])[0, 0]
            maps = (maps - reference).abs()
        maps = _blur(maps)[:, None]
        return F.interpolate(maps, size=(size_px, size_px), mode="bilinear", align_corners=False)[:, 0]
    maps = F.interpolate(error[:, None], size=(size_px, size_px), mode="bilinear", align_corners=False)
    if mean_map is not None:
        maps = (maps - mean_map.to(device=maps.device, dtype=maps.dtype)).abs()
    return _blur(maps)


def reference_at_features(error_reference: Tensor, size_px: int) -> Tensor:
    """(F, F) reference of raw feature errors -> (S, S) by nearest upsampling, the form a model stores.

    Each feature pixel becomes an S/F x S/F block of equal values, so `anomaly_map(...,
    order="feature-first")` recovers the (F, F) reference exactly by averaging the blocks.
    """
    return F.interpolate(error_reference[None, None], size=(size_px, size_px), mode="nearest")[0, 0]


def _blur(maps: Tensor) -> Tensor:
    """(N, 1, H, W) -> (N, H, W): the 3x3 [1, 2, 1]/4 Gaussian, reflect-101 border."""
    # PyTorch's "reflect" padding leaves the edge pixel out, which is OpenCV's reflect-101
    padded = F.pad(maps, (1, 1, 1, 1), mode="reflect")[:, 0]
    # separable, with the weights as Python numbers: no host-to-device copy of a kernel tensor,
    # so the scorer runs inside a CUDA graph and exports to ONNX as plain arithmetic
    left, centre, right = _GAUSS_1D
    rows = left * padded[:, :-2] + centre * padded[:, 1:-1] + right * padded[:, 2:]
    return left * rows[:, :, :-2] + centre * rows[:, :, 1:-1] + right * rows[:, :, 2:]


def image_scores(maps: Tensor, tissue: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(N, S, S) anomaly maps -> ((N,) mean, (N,) max) of each map.

    With `tissue` (N, T, T) bool, T dividing S (True on tissue, e.g. one value per 4 x 4 pixels),
    the mean and max over the tissue pixels only; a tile without a tissue pixel scores 0 (nothing
    on it can be anomalous tissue; with `min_tissue` > 0 such tiles are not scored at all).
    """
    if tissue is None:
        flat = maps.flatten(1)
        return flat.mean(dim=1), flat.amax(dim=1)
    weights = upsample_mask(tissue, maps.shape[-1]).to(maps.dtype).flatten(1)  # (N, S*S)
    flat = maps.flatten(1)
    count = weights.sum(dim=1)
    mean = (flat * weights).sum(dim=1) / count.clamp(min=1)
    peak = torch.where(weights > 0, flat, torch.full_like(flat, -torch.inf)).amax(dim=1)
    return mean, torch.where(count > 0, peak, torch.zeros_like(peak))


def fill_glass(images: Tensor, tissue: Tensor) -> Tensor:
    """(N, 3, S, S) images with their glass pixels (`tissue` (N, T, T) bool False) replaced by the
    mean colour of the tile's tissue pixels; tiles without tissue stay as they are.

    VGG19's receptive field carries a sharp glass edge into the features of the tissue beside it:
    on the test suite's model a half-glass normal tile's tissue pixels scored 4.4x a full tissue
    tile's with the glass left in, 0.7x with it filled (`tests/test_tissue_scores.py`)."""
    weights = upsample_mask(tissue, images.shape[-1])[:, None].to(images.dtype)  # (N, 1, S, S)
    count = weights.sum(dim=(2, 3), keepdim=True)
    mean = (images * weights).sum(dim=(2, 3), keepdim=True) / count.clamp(min=1)
    filled = images * weights + mean * (1 - weights)
    return torch.where(count > 0, filled, images)


def upsample_mask(tissue: Tensor, size_px: int) -> Tensor:
    """(N, T, T) bool -> (N, S, S) bool, S = `size_px` a multiple of T: each value repeated over
    its S/T x S/T block of pixels."""
    block = size_px // tissue.shape[-1]
    if block * tissue.shape[-1] != size_px:
        raise ValueError(f"tissue mask side {tissue.shape[-1]} does not divide the map side {size_px}")
    return tissue.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)


def masked_median(maps: Tensor, tissue: Tensor, fallback: Tensor) -> Tensor:
    """The per-pixel median of (N, S, S) maps over the tiles where the pixel is tissue (`tissue`
    (N, T, T) bool); pixels that are glass on every tile take `fallback` (S, S)."""
    weights = upsample_mask(tissue, maps.shape[-1])
    value = torch.where(weights, maps, torch.full_like(maps, torch.nan)).nanmedian(dim=0).values
    return torch.where(weights.any(dim=0), value, fallback.to(device=maps.device, dtype=maps.dtype))
