"""Deep Zoom tiles of a slide and of its heatmap, for the browser viewer.

`DeepZoom` is the Deep Zoom geometry of openslide's `DeepZoomGenerator` (tile size 254, overlap
1, no bounds limit), computed here so that it works with either slide backend through
`slides.slide.Slide`: level L of `level_count` is level 0 halved (rounding up) `level_count - 1 - L`
times, and tile (col, row) of level L covers the level-L pixels [col * 254 - o, col * 254 + 254
+ o) (o = the overlap, only on inner edges), clipped to the level. OpenSeadragon's own Deep Zoom
tile source uses the same numbering, so both the slide and the heatmap are plain OpenSeadragon
tile sources of the slide's level-0 size.

Heatmap tiles share the slide's geometry: each tile pixel takes the heatmap pixel under its
centre (in level-0 coordinates) from the coarsest pyramid level still at least as fine as the
tile, and is coloured as in the overlay (`heatmaps.colours`): transparent at or below the
threshold and off tissue, the ramp above it, fully opaque (the page sets the opacity).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

from ..heatmaps.colours import ScoreColours
from ..heatmaps.pyramid import MASK_PATH
from ..slides.slide import Slide

TILE_SIZE = 254
OVERLAP = 1
_CACHED_LEVEL_PX = 4096 * 4096  # heatmap levels up to this many pixels are read once, whole


@dataclass(frozen=True)
class TileRead:
    """What one Deep Zoom tile needs: the slide read (level-0 top-left, slide level, size at
    that level) and the tile's own size."""

    location_l0: tuple[int, int]
    slide_level: int
    size_at_level: tuple[int, int]
    tile_size: tuple[int, int]
    box_l0: tuple[float, float, float, float]  # x0, y0, x1, y1 the tile covers, level-0 px


class DeepZoom:
    """Deep Zoom geometry of an image of `dimensions` (width, height) level-0 pixels whose
    pyramid has `level_downsamples` (the slide's own levels, finest first)."""

    def __init__(
        self,
        dimensions: tuple[int, int],
        level_downsamples: tuple[float, ...],
        level_dimensions: tuple[tuple[int, int], ...],
        tile_size: int = TILE_SIZE,
        overlap: int = OVERLAP,
    ) -> None:
        self.tile_size = tile_size
        self.overlap = overlap
        self._downsamples = tuple(level_downsamples)
        self._slide_dimensions = tuple(level_dimensions)
        size = (int(dimensions[0]), int(dimensions[1]))
        sizes = [size]
        while size[0] > 1 or size[1] > 1:
            size = (max(1, math.ceil(size[0] / 2)), max(1, math.ceil(size[1] / 2)))
            sizes.append(size)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(reversed(sizes))
        self.level_count = len(self.level_dimensions)
        self.level_tiles: tuple[tuple[int, int], ...] = tuple(
            (math.ceil(w / tile_size), math.ceil(h / tile_size)) for w, h in self.level_dimensions
        )

    @classmethod
    def for_slide(cls, slide: Slide) -> DeepZoom:
        return cls(slide.dimensions, tuple(slide.level_downsamples), tuple(slide.level_dimensions))

    @property
    def tile_count(self) -> int:
        return sum(cols * rows for cols, rows in self.level_tiles)

    def downsample(self, level: int) -> int:
        """Level-0 pixels per pixel of Deep Zoom `level`."""
        return 2 ** (self.level_count - 1 - level)

    def tile(self, level: int, col: int, row: int) -> TileRead:
        """The reads of tile (col, row) of `level`; ValueError for one that does not exist."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"Deep Zoom level {level} is outside 0..{self.level_count - 1}")
        cols, rows = self.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise ValueError(f"tile ({col}, {row}) is outside level {level}'s {cols} x {rows} tiles")
        downsample = self.downsample(level)
        slide_level = _best_level(self._downsamples, downsample)
        l_per_z = downsample / self._downsamples[slide_level]
        location_l0, size_l, size_z, box = [], [], [], []
        for t, t_lim, z_lim, l_lim in zip(
            (col, row), (cols, rows), self.level_dimensions[level], self._slide_dimensions[slide_level]
        ):
            before = self.overlap if t else 0
            after = self.overlap if t != t_lim - 1 else 0
            z_size = min(self.tile_size, z_lim - self.tile_size * t) + before + after
            z0 = self.tile_size * t - before
            l0 = l_per_z * z0
            location_l0.append(int(self._downsamples[slide_level] * l0))
            size_l.append(int(min(math.ceil(l_per_z * z_size), l_lim - math.ceil(l0))))
            size_z.append(z_size)
            box.append((z0 * downsample, (z0 + z_size) * downsample))
        return TileRead(
            (location_l0[0], location_l0[1]),
            slide_level,
            (size_l[0], size_l[1]),
            (size_z[0], size_z[1]),
            (box[0][0], box[1][0], box[0][1], box[1][1]),
        )


def _best_level(downsamples: tuple[float, ...], downsample: float) -> int:
    """OpenSlide's choice: the coarsest level whose downsample does not exceed `downsample`."""
    best = 0
    for level, level_downsample in enumerate(downsamples):
        if level_downsample <= downsample:
            best = level
    return best


class SlideTiles:
    """JPEG/PNG-ready RGB Deep Zoom tiles of an open slide (reads serialised by a lock)."""

    def __init__(self, slide: Slide) -> None:
        self.slide = slide
        self.deepzoom = DeepZoom.for_slide(slide)
        self._lock = threading.Lock()

    def tile(self, level: int, col: int, row: int) -> Image.Image:
        read = self.deepzoom.tile(level, col, row)
        if min(read.size_at_level) < 1:
            return Image.new("RGB", read.tile_size, "white")
        with self._lock:
            pixels = self.slide.read_region(*read.location_l0, read.slide_level, read.size_at_level)
        image = Image.fromarray(pixels)
        if image.size != read.tile_size:
            image = image.resize(read.tile_size, Image.Resampling.LANCZOS)
        return image


class HeatmapTiles:
    """RGBA Deep Zoom tiles of a heatmap store over a slide of the same Deep Zoom geometry.

    One heatmap pixel of level k spans `px_to_l0 * 2**k` level-0 pixels."""

    def __init__(self, store: str | Path, deepzoom: DeepZoom, px_to_l0: float) -> None:
        self.deepzoom = deepzoom
        self.px_to_l0 = float(px_to_l0)
        self._group = zarr.open_group(zarr.storage.LocalStore(store, read_only=True), mode="r", zarr_format=3)
        datasets = self._group.attrs["ome"]["multiscales"][0]["datasets"]
        self.level_count = len(datasets)
        self.level_shapes = [tuple(self._group[str(k)].shape) for k in range(self.level_count)]

    def level_for(self, downsample: float) -> int:
        """The coarsest heatmap level whose pixel is at most `downsample` level-0 pixels (0 if none)."""
        level = 0
        for k in range(self.level_count):
            if self.px_to_l0 * 2**k <= downsample:
                level = k
        return level

    def scores(self, level: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Whole level `level` (scores NaN off tissue, mask) if it is small enough to cache."""
        height, width = self.level_shapes[level]
        if height * width > _CACHED_LEVEL_PX:
            return None
        return self._whole_level(level)

    @lru_cache(maxsize=8)  # noqa: B019 - one instance per server, levels are immutable
    def _whole_level(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        scores = self._group[str(level)][:]
        mask = self._group[f"{MASK_PATH}/{level}"][:].astype(bool)
        return np.where(mask, scores, np.nan).astype(np.float32), mask

    def sample(self, level: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Scores (NaN off tissue and outside the heatmap) at heatmap pixels rows x cols of `level`."""
        height, width = self.level_shapes[level]
        out = np.full((len(rows), len(cols)), np.nan, np.float32)
        rows_in = (rows >= 0) & (rows < height)
        cols_in = (cols >= 0) & (cols < width)
        if not rows_in.any() or not cols_in.any():
            return out
        r, c = rows[rows_in], cols[cols_in]
        whole = self.scores(level)
        if whole is not None:
            values = whole[0][np.ix_(r, c)]
        else:
            window = (slice(int(r.min()), int(r.max()) + 1), slice(int(c.min()), int(c.max()) + 1))
            scores = self._group[str(level)][window]
            mask = self._group[f"{MASK_PATH}/{level}"][window].astype(bool)
            values = np.where(mask, scores, np.nan)[np.ix_(r - r.min(), c - c.min())]
        out[np.ix_(rows_in, cols_in)] = values
        return out

    def tile_scores(self, level: int, col: int, row: int) -> np.ndarray:
        """(h, w) scores under the centres of tile (col, row)'s pixels."""
        read = self.deepzoom.tile(level, col, row)
        downsample = self.deepzoom.downsample(level)
        heat_level = self.level_for(downsample)
        pixel_l0 = self.px_to_l0 * 2**heat_level
        x0, y0 = read.box_l0[0], read.box_l0[1]
        width, height = read.tile_size
        cols = np.floor((x0 + (np.arange(width) + 0.5) * downsample) / pixel_l0).astype(np.int64)
        rows = np.floor((y0 + (np.arange(height) + 0.5) * downsample) / pixel_l0).astype(np.int64)
        return self.sample(heat_level, rows, cols)

    def tile(self, level: int, col: int, row: int, colours: ScoreColours) -> Image.Image:
        return Image.fromarray(colours.rgba(self.tile_scores(level, col, row)), mode="RGBA")

    def score_at(self, x_l0: float, y_l0: float) -> float | None:
        """The level-0 heatmap score at level-0 point (x, y), None off tissue or outside."""
        row, col = math.floor(y_l0 / self.px_to_l0), math.floor(x_l0 / self.px_to_l0)
        value = self.sample(0, np.array([row]), np.array([col]))[0, 0]
        return None if not np.isfinite(value) else float(value)
