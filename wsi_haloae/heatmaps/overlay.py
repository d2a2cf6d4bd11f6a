"""A picture for pathologists: the slide thumbnail with the anomaly heatmap blended over it.

The heatmap goes through a perceptually uniform colour map (magma by default) and is blended
only where it was computed, so background and unscored tissue keep the thumbnail's own colours.
A colour bar on the right marks the threshold, regions are outlined, and a title sits on top.
The thumbnail is copied pixel for pixel into the picture (no resampling), at its top left under
the title band, so overlay pixel (title_px + r, c) is thumbnail pixel (r, c).

Three frames meet here: level-0 slide pixels (regions), heatmap pixels (one spans
`heatmap_to_l0` level-0 pixels) and thumbnail pixels (one level-0 pixel spans `l0_to_thumb` of
them). Rendering uses matplotlib's object API on an Agg canvas: no pyplot state, no display.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import shapely
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from ..files import write_atomically

log = logging.getLogger(__name__)

OUTLINE_RGB = (0, 229, 255)  # cyan: apart from every magma/viridis colour and from H&E pinks
THRESHOLD_RGB = (0, 229, 255)
_DPI = 100
_PANEL_PX = 120  # colour bar panel to the right of the image
_MIN_HEIGHT_PX = 240  # so the colour bar stays readable under tiny thumbnails


def render_overlay(
    thumbnail: np.ndarray,
    heatmap: np.ndarray,
    mask: np.ndarray,
    *,
    heatmap_to_l0: float,
    l0_to_thumb: float,
    threshold: float,
    vmin: float,
    vmax: float,
    regions: Sequence[shapely.Geometry] | None = None,
    title: str = "",
    alpha: float = 0.55,
    cmap: str = "magma",
    max_side_px: int = 2048,
) -> np.ndarray:
    """Render the overlay as an (H, W, 3) uint8 RGB array.

    `thumbnail` is (h, w, 3) uint8 of the whole slide; `heatmap` (hh, ww) float and `mask`
    (hh, ww) bool are one heatmap level. Each thumbnail pixel takes the heatmap pixel under its
    centre (nearest), blended with weight `alpha` where the mask is set and the score finite.
    Colours span [vmin, vmax]; `threshold` is marked on the colour bar. `regions` are Polygons /
    MultiPolygons in level-0 pixels, drawn as outlines. A thumbnail whose longer side exceeds
    `max_side_px` is first shrunk to it. H = max(h, 240) + title band, W = w + 120.
    """
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
        raise ValueError(f"thumbnail must be (h, w, 3) uint8, got {thumbnail.shape} {thumbnail.dtype}")
    if heatmap.shape != mask.shape or heatmap.ndim != 2:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} must be the same 2-D shape")
    if not vmax > vmin:
        raise ValueError(f"colour range needs vmax > vmin, got vmin={vmin}, vmax={vmax}")
    thumbnail, l0_to_thumb = _fit(thumbnail, l0_to_thumb, max_side_px)
    height, width = thumbnail.shape[:2]
    colormap = matplotlib.colormaps[cmap]
    norm = Normalize(vmin=vmin, vmax=vmax, clip=True)

    # heatmap pixel under each thumbnail pixel centre, per axis (thumb -> level 0 -> heatmap)
    rows = np.floor((np.arange(height) + 0.5) / l0_to_thumb / heatmap_to_l0).astype(np.int64)
    cols = np.floor((np.arange(width) + 0.5) / l0_to_thumb / heatmap_to_l0).astype(np.int64)
    rows_in, cols_in = rows < heatmap.shape[0], cols < heatmap.shape[1]
    sampled = np.full((height, width), np.nan, np.float64)
    sampled[np.ix_(rows_in, cols_in)] = heatmap[np.ix_(rows[rows_in], cols[cols_in])]
    computed = np.zeros((height, width), bool)
    computed[np.ix_(rows_in, cols_in)] = mask[np.ix_(rows[rows_in], cols[cols_in])].astype(bool)
    computed &= np.isfinite(sampled)

    blended = thumbnail.copy()
    colours = colormap(norm(sampled[computed]))[:, :3] * 255.0
    blended[computed] = np.round((1 - alpha) * thumbnail[computed] + alpha * colours).astype(np.uint8)

    title_px = 36 if title else 0
    canvas_h = max(height, _MIN_HEIGHT_PX) + title_px
    canvas_w = width + _PANEL_PX
    figure = Figure(figsize=(canvas_w / _DPI, canvas_h / _DPI), dpi=_DPI, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    image_bottom = canvas_h - title_px - height  # figimage offsets count from the bottom left
    # figure images draw after axes of equal zorder; push the picture under the outlines
    figure.figimage(blended, xo=0, yo=image_bottom, origin="upper", zorder=-1)

    if regions:
        # an invisible axes laid exactly over the image, in thumbnail pixel coordinates
        outline_ax = figure.add_axes((0, image_bottom / canvas_h, width / canvas_w, height / canvas_h))
        outline_ax.set_xlim(0, width)
        outline_ax.set_ylim(height, 0)
        outline_ax.set_axis_off()
        outline_ax.patch.set_alpha(0)
        for geometry in regions:
            for ring in _rings(geometry):
                xy = np.asarray(ring.coords) * l0_to_thumb
                outline_ax.plot(xy[:, 0], xy[:, 1], color=np.divide(OUTLINE_RGB, 255), linewidth=1.5)

    bar_h = min(height, _MIN_HEIGHT_PX * 2) * 0.8
    bar_ax = figure.add_axes(
        (
            (width + 18) / canvas_w,
            (canvas_h - title_px - 0.1 * height - bar_h) / canvas_h,
            18 / canvas_w,
            bar_h / canvas_h,
        )
    )
    figure.colorbar(ScalarMappable(norm=norm, cmap=colormap), cax=bar_ax, label="anomaly score")
    bar_ax.axhline(threshold, color=np.divide(THRESHOLD_RGB, 255), linewidth=2.5)
    bar_ax.text(
        0.0,
        -0.04,
        f"threshold {threshold:.3g}",
        transform=bar_ax.transAxes,
        va="top",
        ha="left",
        fontsize=8,
        color=np.divide(THRESHOLD_RGB, 255) * 0.7,
    )
    if title:
        figure.text(8 / canvas_w, 1 - (title_px / 2) / canvas_h, title, va="center", ha="left", fontsize=12)

    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_overlay(
    path: str | Path, thumbnail: np.ndarray, heatmap: np.ndarray, mask: np.ndarray, **options
) -> Path:
    """Render with `render_overlay(thumbnail, heatmap, mask, **options)` and write it atomically
    as PNG (or JPEG if `path` ends in .jpg/.jpeg)."""
    path = Path(path)
    picture = Image.fromarray(render_overlay(thumbnail, heatmap, mask, **options))
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    write_atomically(
        path, lambda handle: picture.save(handle, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    )
    log.info("wrote overlay %s (%d x %d px)", path, picture.width, picture.height)
    return path


def _fit(thumbnail: np.ndarray, l0_to_thumb: float, max_side_px: int) -> tuple[np.ndarray, float]:
    height, width = thumbnail.shape[:2]
    if max(height, width) <= max_side_px:
        return thumbnail, l0_to_thumb
    factor = max_side_px / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    shrunk = np.asarray(Image.fromarray(thumbnail).resize(size, Image.Resampling.LANCZOS))
    return shrunk, l0_to_thumb * size[0] / width


def _rings(geometry: shapely.Geometry) -> list[shapely.LinearRing]:
    polygons = getattr(geometry, "geoms", [geometry])
    return [ring for polygon in polygons for ring in (polygon.exterior, *polygon.interiors)]
