"""`top_tiles.png`: the N highest-scoring tiles of a slide side by side, each at full resolution
(level 0, or the finest level that keeps a tile within `max_cell_px`), labelled with its rank,
score and level-0 (x, y), so a pathologist can look at what the model found most abnormal
without opening the slide, and then find each tile in QuPath or the viewer by its coordinates.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..files import write_atomically
from ..slides.slide import Slide

log = logging.getLogger(__name__)

LABEL_PX = 34  # two text lines under each tile
_GAP_PX = 8


def top_tile_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` highest finite scores, highest first (ties: lower index first)."""
    values = np.asarray(scores, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(values))
    order = finite[np.lexsort((finite, -values[finite]))]
    return order[:count]


def render_top_tiles(
    slide: Slide,
    coords_l0: np.ndarray,
    scores: np.ndarray,
    tile_size_l0: int,
    *,
    count: int = 16,
    columns: int = 4,
    max_cell_px: int = 512,
    threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The gallery as an (H, W, 3) uint8 array, and the indices of the tiles it shows.

    `coords_l0` (N, 2) are the tiles' level-0 top-left (x, y), `scores` (N,) their scores and
    `tile_size_l0` their side in level-0 pixels. Tiles are read from the finest level whose
    downsample brings the side to at most `max_cell_px` (level 0 for tiles up to that size).
    Ranks run left to right, top to bottom; a tile above `threshold` gets a red frame.
    """
    chosen = top_tile_indices(scores, count)
    if not len(chosen):
        raise ValueError("no finite tile score to show")
    downsample = max(1.0, tile_size_l0 / max_cell_px)
    level = slide.best_level_for_downsample(downsample)
    side_level = math.ceil(tile_size_l0 / slide.level_downsamples[level])
    cell = min(side_level, max_cell_px)
    columns = min(columns, len(chosen))
    grid_rows = math.ceil(len(chosen) / columns)
    width = columns * cell + (columns + 1) * _GAP_PX
    height = grid_rows * (cell + LABEL_PX) + (grid_rows + 1) * _GAP_PX
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    for rank, index in enumerate(chosen.tolist()):
        x_l0, y_l0 = (int(v) for v in coords_l0[index])
        pixels = slide.read_region(x_l0, y_l0, level, (side_level, side_level))
        tile = Image.fromarray(pixels)
        if side_level != cell:
            tile = tile.resize((cell, cell), Image.Resampling.LANCZOS)
        left = _GAP_PX + (rank % columns) * (cell + _GAP_PX)
        top = _GAP_PX + (rank // columns) * (cell + LABEL_PX + _GAP_PX)
        canvas.paste(tile, (left, top))
        score = float(scores[index])
        if threshold is not None and score > threshold:
            draw.rectangle(
                (left - 3, top - 3, left + cell + 2, top + cell + 2), outline=(215, 48, 39), width=3
            )
        draw.text((left, top + cell + 3), f"#{rank + 1}  score {score:.4g}", fill="black", font=font)
        draw.text((left, top + cell + 18), f"x {x_l0}, y {y_l0} (level 0)", fill=(60, 60, 60), font=font)
    return np.asarray(canvas), chosen


def save_top_tiles(
    path: str | Path, slide: Slide, coords_l0: np.ndarray, scores: np.ndarray, tile_size_l0: int, **options
) -> Path:
    """Render with `render_top_tiles` and write the PNG atomically."""
    path = Path(path)
    pixels, chosen = render_top_tiles(slide, coords_l0, scores, tile_size_l0, **options)
    picture = Image.fromarray(pixels)
    write_atomically(path, lambda handle: picture.save(handle, format="PNG"))
    log.info("wrote %s: the %d highest-scoring tiles", path, len(chosen))
    return path
