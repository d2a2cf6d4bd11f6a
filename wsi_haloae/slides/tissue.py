"""Where the tissue is: a mask from a slide thumbnail, and the tissue fraction of each grid tile.

Stained tissue is coloured, glass and background are grey-white: the mask thresholds the HSV
saturation of a lightly smoothed thumbnail with Otsu's method, clipped to
[`MIN_SATURATION`, `MAX_SATURATION`], then fills small holes and drops small specks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from skimage import color, filters

from ..errors import ConfigError, NoTissueError, SlideError
from .grid import TileGrid

if TYPE_CHECKING:
    from .slide import Slide

log = logging.getLogger(__name__)

DEFAULT_THUMBNAIL_PX = 2048
DEFAULT_MIN_TISSUE = 0.5
# Otsu assumes two classes, glass and tissue. On a blank slide it splits JPEG noise and on a slide
# that is all tissue it splits pale from dark stain, so its threshold is clipped to a band measured
# on CMU-1-Small-Region: 95% of the glass is below 0.02 saturation, the tissue's median is 0.39,
# and Otsu there gives 0.20 (0.15 instead changes the mask by 1.5% of the slide).
MIN_SATURATION = 0.05
MAX_SATURATION = 0.15
# Smoothing and the size of holes and specks scale with the thumbnail: fractions of its long side
# and of its area keep the mask the same whether the thumbnail is 512 or 4096 px.
SMOOTHING_SIGMA_FRAC = 0.002
MAX_HOLE_FRAC = 0.001
MIN_OBJECT_FRAC = 0.0002


@dataclass(frozen=True)
class TissueMask:
    """A slide's tissue mask and the thumbnail it came from.

    `mask` is (h, w) bool, `thumbnail` (h, w, 3) uint8; `downsample` is (sx, sy), level-0 px per
    mask px along x and y (the thumbnail keeps the slide's aspect ratio only up to rounding).
    """

    mask: np.ndarray
    thumbnail: np.ndarray
    downsample: tuple[float, float]
    colourless: bool = False  # every thumbnail pixel is grey: colour-based detection cannot work


@dataclass(frozen=True)
class TileSelection:
    """Grid tiles kept for having enough tissue: `indices` (K,) int64 into `grid.coordinates()`,
    ascending; `tissue_fraction` (K,) float64 in [0, 1], the share of each tile's footprint that
    the mask calls tissue."""

    indices: np.ndarray
    tissue_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


def tissue_mask(thumbnail_rgb: np.ndarray) -> np.ndarray:
    """Tissue mask of an RGB thumbnail: (h, w, 3) uint8 -> (h, w) bool, True on tissue."""
    if thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] != 3:
        raise ValueError(f"expected an (h, w, 3) RGB image, got shape {thumbnail_rgb.shape}")
    height, width = thumbnail_rgb.shape[:2]
    saturation = color.rgb2hsv(thumbnail_rgb)[..., 1]
    # Smoothing closes the pale gaps between fibres, which would otherwise split stroma into specks.
    saturation = filters.gaussian(saturation, sigma=max(1.0, SMOOTHING_SIGMA_FRAC * max(height, width)))
    otsu = float(filters.threshold_otsu(saturation)) if np.ptp(saturation) > 0 else MIN_SATURATION
    mask = saturation > min(max(otsu, MIN_SATURATION), MAX_SATURATION)
    area = height * width
    mask = _fill_small_holes(mask, max_hole_px=int(MAX_HOLE_FRAC * area))
    return _remove_small_objects(mask, min_object_px=int(MIN_OBJECT_FRAC * area) + 1)


def detect_tissue(slide: Slide, *, max_size_px: int = DEFAULT_THUMBNAIL_PX) -> TissueMask:
    """The tissue mask of a slide, from a thumbnail at most `max_size_px` on its long side.

    Raises SlideError naming the slide when the thumbnail cannot be read.
    """
    if max_size_px < 16:
        raise ConfigError(f"thumbnail_px {max_size_px} is too small for tissue detection; use 16 or more")
    try:
        thumbnail = slide.thumbnail(max_size_px)
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(
            f"{slide.path}: cannot read a thumbnail ({type(exc).__name__}: {exc}); is it corrupt?"
        ) from exc
    width_l0, height_l0 = slide.dimensions
    downsample = (width_l0 / thumbnail.shape[1], height_l0 / thumbnail.shape[0])
    mask = tissue_mask(thumbnail)
    log.info("%s: tissue covers %.1f%% of the slide", slide.path, 100.0 * mask.mean())
    return TissueMask(
        mask=mask, thumbnail=thumbnail, downsample=downsample, colourless=is_colourless(thumbnail)
    )


def is_colourless(thumbnail_rgb: np.ndarray) -> bool:
    """True when every pixel is grey (R, G and B within 2 levels) but the image is not blank
    (its brightness varies): a grayscale scan, on which colour-based tissue detection cannot work."""
    channels = thumbnail_rgb.astype(np.int16)
    grey = np.abs(channels - channels.mean(axis=2, keepdims=True)).max(initial=0) <= 2
    return bool(grey and np.ptp(channels) > 30)


def tile_tissue_fraction(
    grid: TileGrid, mask: np.ndarray, mask_downsample: tuple[float, float]
) -> np.ndarray:
    """Tissue fraction of every grid tile: (N,) float64 in [0, 1], in `grid.coordinates()` order.

    `mask` is (h, w) bool with `mask_downsample` = (sx, sy) level-0 px per mask px. A tile counts
    the mask pixels whose centres fall in its level-0 footprint (at least the one under its
    centre); a summed-area table makes this O(1) per tile.
    """
    sx, sy = mask_downsample
    coords_l0 = grid.coordinates()
    size = grid.tile_size_l0
    x0, x1 = _mask_span(coords_l0[:, 0], size, sx, mask.shape[1])
    y0, y1 = _mask_span(coords_l0[:, 1], size, sy, mask.shape[0])
    # summed[i, j] = number of tissue pixels in mask[:i, :j]
    summed = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    summed[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    tissue = summed[y1, x1] - summed[y0, x1] - summed[y1, x0] + summed[y0, x0]
    return tissue / ((y1 - y0) * (x1 - x0))


def select_tiles(
    grid: TileGrid,
    mask: np.ndarray,
    mask_downsample: tuple[float, float],
    *,
    min_tissue: float = DEFAULT_MIN_TISSUE,
    slide_name: str = "the slide",
    colourless: bool = False,
) -> TileSelection:
    """The grid tiles with a tissue fraction of at least `min_tissue` (0 keeps every tile).

    Raises NoTissueError naming `slide_name` when no tile qualifies, ConfigError when
    `min_tissue` is outside [0, 1].
    """
    if not 0.0 <= min_tissue <= 1.0:
        raise ConfigError(f"min tissue {min_tissue} must be a fraction between 0 and 1")
    fraction = tile_tissue_fraction(grid, mask, mask_downsample)
    keep = np.flatnonzero(fraction >= min_tissue)
    if keep.size == 0:
        best = float(fraction.max()) if fraction.size else 0.0
        if not mask.any() and colourless:
            raise NoTissueError(
                f"{slide_name}: no tissue found because the slide has no colour (every pixel is grey); "
                "tissue detection needs stained (e.g. H&E) colour: use an RGB scan, or --min-tissue 0 "
                "to keep every tile"
            )
        if not mask.any():
            raise NoTissueError(
                f"{slide_name}: no tissue found on the slide; if faint tissue is there, --min-tissue 0 keeps every tile"
            )
        raise NoTissueError(
            f"{slide_name}: no tile has {min_tissue:.0%} tissue (the best has {best:.0%}); "
            "lower --min-tissue or use smaller tiles"
        )
    log.info(
        "%s: %d of %d tiles have at least %.0f%% tissue", slide_name, keep.size, len(grid), 100 * min_tissue
    )
    return TileSelection(indices=keep.astype(np.int64), tissue_fraction=fraction[keep])


def _mask_span(
    origin_l0: np.ndarray, size_l0: int, downsample: float, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Half-open mask-pixel ranges [start, stop) whose pixel centres lie in each level-0 span
    [origin, origin + size); a span narrower than a mask pixel gets the pixel under its centre."""
    start = np.ceil(origin_l0 / downsample - 0.5).astype(np.int64)
    stop = np.ceil((origin_l0 + size_l0) / downsample - 0.5).astype(np.int64)
    centre = np.floor((origin_l0 + size_l0 / 2) / downsample).astype(np.int64)
    narrow = stop <= start
    start[narrow], stop[narrow] = centre[narrow], centre[narrow] + 1
    start = np.clip(start, 0, limit - 1)
    return start, np.clip(stop, start + 1, limit)


def _fill_small_holes(mask: np.ndarray, max_hole_px: int) -> np.ndarray:
    """`mask` with every background component of at most `max_hole_px` pixels set to True."""
    labels, _ = ndimage.label(~mask)
    sizes = np.bincount(labels.ravel())
    small = sizes <= max_hole_px
    small[0] = False  # label 0 is the tissue itself
    return mask | small[labels]


def _remove_small_objects(mask: np.ndarray, min_object_px: int) -> np.ndarray:
    """`mask` without its components of fewer than `min_object_px` pixels."""
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_object_px
    keep[0] = False
    return keep[labels]
