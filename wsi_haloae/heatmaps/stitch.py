"""Stitching per-tile anomaly maps into one heatmap, band by band.

Frames: the heatmap's pixel grid has its origin at the slide's level-0 origin, and one heatmap
pixel spans `reduction` tile pixels (so `px_to_l0` level-0 pixels). Tile (r, c) of the grid lands
with its top-left corner at heatmap pixel (y, x) = (r * stride, c * stride), `stride` being the
grid's stride in heatmap pixels, and covers `tile_px` x `tile_px` heatmap pixels.

Overlapping tiles (grid stride below the tile size) are blended with a smooth window: every
heatmap pixel is the weighted mean of the tiles covering it, each tile weighted by a separable
Hann window that is largest at its centre and small (never zero) at its border, so no tile edge
shows as a seam. Without overlap every pixel has one tile and the weights cancel exactly.

Bands are `band_px` heatmap rows (the store's chunk rows). Tiles arrive in grid order, so a band
is finished as soon as the last tile touching it has arrived; `BandStitcher` hands each finished
band back at once and forgets it, so memory holds only the few bands the current tile row touches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..slides.grid import TileGrid

HEATMAP_REDUCTION = 4  # tile pixels per heatmap pixel along each axis (= model.anomaly.TISSUE_BLOCK_PX)


@dataclass(frozen=True)
class HeatmapGeometry:
    """Where the tiles of a `TileGrid` land on the heatmap's pixel grid (pure arithmetic).

    `shape_yx` covers the whole slide (at least the tiles' extent); `tile_px` and `stride_px` are
    heatmap pixels; `px_to_l0` is the level-0 pixels one heatmap pixel spans; the grid has
    `rows` x `columns` tiles, numbered row-major as in `TileGrid.coordinates()`.
    """

    shape_yx: tuple[int, int]
    tile_px: int
    stride_px: int
    px_to_l0: float
    rows: int
    columns: int
    band_px: int

    @classmethod
    def for_grid(
        cls,
        grid: TileGrid,
        *,
        reduction: int = HEATMAP_REDUCTION,
        band_px: int = 512,
    ) -> HeatmapGeometry:
        """The geometry of `grid`. Its tile size and stride, in tile pixels, must be multiples of
        `reduction` (ConfigError)."""
        # the grid keeps its stride in level-0 px, rounded; back in tile px it is the option given
        stride_px = round(grid.stride_l0 * grid.tile_size_px / grid.tile_size_l0)
        for name, value in (("tile size", grid.tile_size_px), ("stride", stride_px)):
            if value % reduction:
                raise ConfigError(
                    f"{name} {value} px is not a multiple of {reduction} (tile px per heatmap px); "
                    f"use a --stride that is"
                )
        if band_px < 1:
            raise ConfigError(f"band height {band_px} px must be at least 1")
        tile_px, stride = grid.tile_size_px // reduction, stride_px // reduction
        px_to_l0 = reduction * grid.tile_size_l0 / grid.tile_size_px
        width_l0, height_l0 = grid.slide_size_l0
        height = max((grid.rows - 1) * stride + tile_px, math.ceil(height_l0 / px_to_l0))
        width = max((grid.columns - 1) * stride + tile_px, math.ceil(width_l0 / px_to_l0))
        return cls((height, width), tile_px, stride, px_to_l0, grid.rows, grid.columns, band_px)

    @property
    def band_count(self) -> int:
        """Number of bands; the last may be shorter than `band_px`."""
        return math.ceil(self.shape_yx[0] / self.band_px)

    def band_span(self, band: int) -> tuple[int, int]:
        """Heatmap rows [y0, y1) of `band`."""
        y0 = band * self.band_px
        return y0, min(y0 + self.band_px, self.shape_yx[0])

    def origins_px(self, indices: np.ndarray) -> np.ndarray:
        """Heatmap (y, x) of the top-left corner of grid tiles `indices`: (N, 2) int64."""
        indices = np.asarray(indices, dtype=np.int64)
        rows, cols = np.divmod(indices, self.columns)
        return np.stack([rows * self.stride_px, cols * self.stride_px], axis=1)

    def tile_bands(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last band (inclusive) each of grid tiles `indices` touches: two (N,) int64."""
        top = self.origins_px(indices)[:, 0]
        return top // self.band_px, (top + self.tile_px - 1) // self.band_px


def blend_window(tile_px: int, overlapping: bool) -> np.ndarray:
    """Blending weights of one tile, (tile_px, tile_px) float32, all positive.

    With `overlapping`, the separable Hann window sin^2(pi (i + 0.5) / tile_px): weighted means of
    overlapping tiles then change smoothly from one tile to the next. Without, all ones.
    """
    if not overlapping:
        return np.ones((tile_px, tile_px), np.float32)
    ramp = np.sin(np.pi * (np.arange(tile_px) + 0.5) / tile_px) ** 2
    return np.outer(ramp, ramp).astype(np.float32)


def tissue_on_heatmap(
    mask: np.ndarray, mask_downsample: tuple[float, float], px_to_l0: float, y0: int, y1: int, width: int
) -> np.ndarray:
    """Tissue at heatmap rows [y0, y1) and columns [0, width): (y1 - y0, width) bool.

    `mask` (h, w) bool has `mask_downsample` = (sx, sy) level-0 px per mask px; each heatmap pixel
    takes the mask pixel under its centre (outside the mask counts as no tissue).
    """
    sx, sy = mask_downsample
    rows = np.floor((np.arange(y0, y1) + 0.5) * px_to_l0 / sy).astype(np.int64)
    cols = np.floor((np.arange(width) + 0.5) * px_to_l0 / sx).astype(np.int64)
    out = np.zeros((y1 - y0, width), bool)
    rows_in, cols_in = rows < mask.shape[0], cols < mask.shape[1]
    out[np.ix_(rows_in, cols_in)] = mask[np.ix_(rows[rows_in], cols[cols_in])]
    return out


def tile_tissue_on_heatmap(
    mask: np.ndarray,
    mask_downsample: tuple[float, float],
    coords_l0: np.ndarray,
    grid: TileGrid,
    tile_px: int,
) -> np.ndarray:
    """Tissue of each tile at heatmap resolution: (N, tile_px, tile_px) bool for tiles at level-0
    `coords_l0` (N, 2) (x, y) of `grid`, each value the mask pixel under the centre of its block
    of tile pixels (the rule `tissue_on_heatmap` follows; outside the mask counts as no tissue).
    These are the pixels a tissue-aware score counts."""
    sx, sy = mask_downsample
    step_l0 = grid.tile_size_l0 / tile_px
    centres = (np.arange(tile_px) + 0.5) * step_l0
    cols = np.floor((coords_l0[:, :1] + centres[None]) / sx).astype(np.int64)  # (N, T)
    rows = np.floor((coords_l0[:, 1:] + centres[None]) / sy).astype(np.int64)
    inside = (rows < mask.shape[0])[:, :, None] & (cols < mask.shape[1])[:, None, :]
    values = mask[
        np.minimum(rows, mask.shape[0] - 1)[:, :, None], np.minimum(cols, mask.shape[1] - 1)[:, None, :]
    ]
    return values & inside


@dataclass(frozen=True)
class Band:
    """A finished band: heatmap rows [y0, y0 + h) in full width. `scores` (h, W) float32 holds the
    blended maps (NaN where no tile reached); `mask` (h, W) bool is set where a tile reached and,
    when a tissue mask was given, the pixel lies on tissue."""

    index: int
    y0: int
    scores: np.ndarray
    mask: np.ndarray


class BandStitcher:
    """Blends tile maps into bands and releases each band as soon as it is complete.

    Built with the grid indices of every tile that will arrive (`arrivals`, ascending: grid order)
    and the bands to produce (`bands`, default all). Feed maps with `add` in that order; each call
    returns the bands it finished, in band order. Bands that no arriving tile touches are returned
    by the first `add` (or `finish`) as empty (all mask 0). Tiles touching no wanted band are
    ignored. Accumulation is float32 in arrival order, so the same tiles give the same bytes.
    """

    def __init__(
        self,
        geometry: HeatmapGeometry,
        arrivals: np.ndarray,
        *,
        bands: Iterable[int] | None = None,
        tissue_mask: np.ndarray | None = None,
        tissue_downsample: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        self.geometry = geometry
        arrivals = np.asarray(arrivals, dtype=np.int64)
        if arrivals.size and np.any(np.diff(arrivals) <= 0):
            raise ValueError("tiles must arrive in ascending grid order, each once")
        wanted = sorted(set(range(geometry.band_count) if bands is None else bands))
        # the arrival position after which each wanted band has all its tiles (-1: none touch it)
        first, last = geometry.tile_bands(arrivals)
        self._ready_after: dict[int, int] = {}
        for band in wanted:
            touching = np.flatnonzero((first <= band) & (last >= band))
            self._ready_after[band] = int(touching[-1]) if touching.size else -1
        self._window = blend_window(geometry.tile_px, geometry.stride_px < geometry.tile_px)
        self._tissue = tissue_mask
        self._tissue_downsample = tissue_downsample
        self._sums: dict[int, np.ndarray] = {}
        self._weights: dict[int, np.ndarray] = {}
        self._received = 0
        self._arrivals = arrivals

    @property
    def pending_bands(self) -> list[int]:
        """Wanted bands not yet returned."""
        return sorted(self._ready_after)

    def add(self, indices: np.ndarray, maps: np.ndarray) -> list[Band]:
        """Add the maps (N, tile_px, tile_px) of grid tiles `indices` (N,), the next N arrivals."""
        indices = np.asarray(indices, dtype=np.int64)
        expected = self._arrivals[self._received : self._received + len(indices)]
        if not np.array_equal(indices, expected):
            raise ValueError(f"tiles arrived out of order: got {indices[:4]}..., expected {expected[:4]}...")
        tile_px = self.geometry.tile_px
        if maps.shape != (len(indices), tile_px, tile_px):
            raise ValueError(f"maps must be ({len(indices)}, {tile_px}, {tile_px}), got {maps.shape}")
        for (top, left), tile_map in zip(self.geometry.origins_px(indices).tolist(), maps):
            weighted = tile_map.astype(np.float32) * self._window
            first, last = top // self.geometry.band_px, (top + tile_px - 1) // self.geometry.band_px
            for band in range(first, last + 1):
                if band not in self._ready_after:
                    continue
                y0, y1 = self.geometry.band_span(band)
                sums, weights = self._accumulators(band, y1 - y0)
                lo, hi = max(y0, top), min(y1, top + tile_px)
                sums[lo - y0 : hi - y0, left : left + tile_px] += weighted[lo - top : hi - top]
                weights[lo - y0 : hi - y0, left : left + tile_px] += self._window[lo - top : hi - top]
        self._received += len(indices)
        return self._release(self._received - 1)

    def finish(self) -> list[Band]:
        """The remaining bands, once every tile has arrived."""
        if self._received != len(self._arrivals):
            raise ValueError(f"{len(self._arrivals) - self._received} tiles have not arrived yet")
        return self._release(len(self._arrivals))

    def _accumulators(self, band: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        if band not in self._sums:
            width = self.geometry.shape_yx[1]
            self._sums[band] = np.zeros((height, width), np.float32)
            self._weights[band] = np.zeros((height, width), np.float32)
        return self._sums[band], self._weights[band]

    def _release(self, position: int) -> list[Band]:
        done = [band for band, after in self._ready_after.items() if after <= position]
        return [self._band(band) for band in sorted(done)]

    def _band(self, band: int) -> Band:
        del self._ready_after[band]
        y0, y1 = self.geometry.band_span(band)
        sums, weights = self._accumulators(band, y1 - y0)
        del self._sums[band], self._weights[band]
        reached = weights > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.where(reached, sums / weights, np.float32(np.nan)).astype(np.float32)
        mask = reached
        if self._tissue is not None:
            mask = reached & tissue_on_heatmap(
                self._tissue,
                self._tissue_downsample,
                self.geometry.px_to_l0,
                y0,
                y1,
                self.geometry.shape_yx[1],
            )
        return Band(band, y0, scores, mask)
