"""A picture for pathologists: the slide thumbnail with the anomaly heatmap blended over it.

Colours (`colours.ScoreColours`): tissue scoring at or below the threshold is left untinted, so
the H&E shows as it is; above the threshold a perceptually uniform ramp (magma from purple to
yellow) runs from the threshold to a high percentile of the anomalous scores. Tiles flagged as
artefacts (QC) are painted in their own grey over everything else. The colour bar on the right
gives the untinted part below the threshold a fixed quarter of its height, so the threshold mark
is always visible however skewed the scores are; under it a legend names the outline and the
colours. Below the image a footer carries a scale bar in µm/mm and lines about the slide, the
model, the threshold's source and the counts.

The thumbnail is copied pixel for pixel into the picture (no resampling), at its top left under
the title band, so overlay pixel (title_px + r, c) is thumbnail pixel (r, c).

Three frames meet here: level-0 slide pixels (regions, artefact tiles), heatmap pixels (one
spans `heatmap_to_l0` level-0 pixels) and thumbnail pixels (one level-0 pixel spans `l0_to_thumb`
of them). Rendering uses matplotlib's object API on an Agg canvas: no pyplot state, no display.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

from ..files import write_atomically
from .colours import ScoreColours

log = logging.getLogger(__name__)

OUTLINE_RGB = (0, 229, 255)  # cyan: apart from every magma colour and from H&E pinks
THRESHOLD_RGB = (0, 229, 255)
ARTEFACT_RGB = (96, 96, 96)  # QC-flagged tiles: neutral grey, apart from magma and H&E
UNTINTED_RGB = (235, 235, 235)  # the colour bar's below-threshold part
SCALE_BAR_RGB = (0, 0, 0)
BELOW_FRACTION = 0.25  # of the colour bar's height, for scores at or below the threshold
_DPI = 100
_PANEL_PX = 170  # colour bar and legend to the right of the image
_MIN_HEIGHT_PX = 300  # so the colour bar and legend stay readable under tiny thumbnails
_LINE_PX = 16  # footer text line
_SCALE_ROW_PX = 30  # footer row holding the scale bar
_SCALE_BAR_THICK_PX = 6
_MARGIN_PX = 10


def render_overlay(
    thumbnail: np.ndarray,
    heatmap: np.ndarray,
    mask: np.ndarray,
    *,
    heatmap_to_l0: float,
    l0_to_thumb: float,
    colours: ScoreColours,
    vmin: float = 0.0,
    regions: Sequence[shapely.Geometry] | None = None,
    title: str = "",
    alpha: float = 0.6,
    max_side_px: int = 2048,
    mpp_um: float | None = None,
    footer: Sequence[str] = (),
    artefact_tiles_l0: np.ndarray | None = None,
    artefact_tile_l0: float | None = None,
) -> np.ndarray:
    """Render the overlay as an (H, W, 3) uint8 RGB array.

    `thumbnail` is (h, w, 3) uint8 of the whole slide; `heatmap` (hh, ww) float and `mask`
    (hh, ww) bool are one heatmap level. Each thumbnail pixel takes the heatmap pixel under its
    centre (nearest); where the mask is set and the score is above `colours.threshold` it is
    blended with weight `alpha` with the score's colour, elsewhere it stays the thumbnail's.
    `vmin` labels the bottom of the colour bar. `regions` are Polygons / MultiPolygons in level-0
    pixels, drawn as outlines. `mpp_um` (level-0 µm/px in x) adds a scale bar; `footer` lines
    are printed under it. `artefact_tiles_l0` (N, 2) are the level-0 top-left (x, y) corners of
    tiles flagged as artefacts, each `artefact_tile_l0` level-0 pixels wide, painted grey.
    A thumbnail whose longer side exceeds `max_side_px` is first shrunk to it.
    H = title band + max(h, 300) + footer, W = w + 170.
    """
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
        raise ValueError(f"thumbnail must be (h, w, 3) uint8, got {thumbnail.shape} {thumbnail.dtype}")
    if heatmap.shape != mask.shape or heatmap.ndim != 2:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} must be the same 2-D shape")
    if not colours.threshold > vmin:
        raise ValueError(
            f"the colour bar needs vmin < threshold, got vmin={vmin}, threshold={colours.threshold}"
        )
    if artefact_tiles_l0 is not None and artefact_tile_l0 is None:
        raise ValueError("artefact_tiles_l0 needs artefact_tile_l0, the tiles' side in level-0 pixels")
    thumbnail, l0_to_thumb = _fit(thumbnail, l0_to_thumb, max_side_px)
    height, width = thumbnail.shape[:2]

    # heatmap pixel under each thumbnail pixel centre, per axis (thumb -> level 0 -> heatmap)
    rows = np.floor((np.arange(height) + 0.5) / l0_to_thumb / heatmap_to_l0).astype(np.int64)
    cols = np.floor((np.arange(width) + 0.5) / l0_to_thumb / heatmap_to_l0).astype(np.int64)
    rows_in, cols_in = rows < heatmap.shape[0], cols < heatmap.shape[1]
    sampled = np.full((height, width), np.nan, np.float64)
    sampled[np.ix_(rows_in, cols_in)] = heatmap[np.ix_(rows[rows_in], cols[cols_in])]
    computed = np.zeros((height, width), bool)
    computed[np.ix_(rows_in, cols_in)] = mask[np.ix_(rows[rows_in], cols[cols_in])].astype(bool)
    position = colours.ramp(np.where(computed, sampled, np.nan))
    tinted = np.isfinite(position)

    blended = thumbnail.copy()
    ramp_rgb = colours.colour_of_position(position[tinted]) * 255.0
    blended[tinted] = np.round((1 - alpha) * thumbnail[tinted] + alpha * ramp_rgb).astype(np.uint8)
    artefact = np.zeros((height, width), bool)
    if artefact_tiles_l0 is not None and len(artefact_tiles_l0):
        artefact = _tile_raster(
            np.asarray(artefact_tiles_l0), float(artefact_tile_l0), l0_to_thumb, artefact.shape
        )
        blended[artefact] = np.round(
            (1 - alpha) * thumbnail[artefact] + alpha * np.asarray(ARTEFACT_RGB, np.float64)
        ).astype(np.uint8)

    title_px = 36 if title else 0
    footer_lines = _wrap(footer, width + _PANEL_PX)
    footer_px = (_SCALE_ROW_PX if mpp_um else 0) + _LINE_PX * len(footer_lines) + (6 if footer_lines else 0)
    body_h = max(height, _MIN_HEIGHT_PX)
    canvas_h = title_px + body_h + footer_px
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

    bar_top_px, bar_h = title_px + 14, round(min(body_h * 0.55, 420))
    _colour_bar(figure, canvas_w, canvas_h, width + 16, bar_top_px, bar_h, colours, vmin)
    legend = [Line2D([], [], color=np.divide(OUTLINE_RGB, 255), linewidth=1.5, label="region > threshold")]
    legend.append(Patch(facecolor=np.divide(UNTINTED_RGB, 255), edgecolor="0.6", label="≤ threshold: H&E"))
    if artefact.any():
        legend.append(Patch(facecolor=np.divide(ARTEFACT_RGB, 255), label="artefact (QC)"))
    figure.legend(
        handles=legend,
        loc="upper left",
        bbox_to_anchor=((width + 4) / canvas_w, 1 - (bar_top_px + bar_h + 26) / canvas_h),
        fontsize=7,
        frameon=False,
        handlelength=1.6,
        borderaxespad=0,
    )
    if title:
        figure.text(8 / canvas_w, 1 - (title_px / 2) / canvas_h, title, va="center", ha="left", fontsize=12)
    text_top = title_px + body_h
    if mpp_um:
        _scale_bar(figure, canvas_w, canvas_h, text_top, mpp_um / l0_to_thumb, width)
        text_top += _SCALE_ROW_PX
    for number, line in enumerate(footer_lines):
        y = text_top + _LINE_PX * (number + 0.5) + 2
        figure.text(_MARGIN_PX / canvas_w, 1 - y / canvas_h, line, va="center", ha="left", fontsize=8)

    canvas.draw()
    out = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if mpp_um:  # the bar itself is painted into the pixels, so its length is exact
        length_px = scale_bar_px(mpp_um / l0_to_thumb, width)[1]
        y0 = title_px + body_h + 4
        out[y0 : y0 + _SCALE_BAR_THICK_PX, _MARGIN_PX : _MARGIN_PX + length_px] = SCALE_BAR_RGB
    return out


def scale_bar_px(um_per_px: float, width_px: int) -> tuple[float, int]:
    """A round scale-bar length (1, 2 or 5 × 10^k µm) close to a fifth of `width_px` at
    `um_per_px` µm per picture pixel, and its length in pixels."""
    target_um = max(width_px, 50) / 5 * um_per_px
    exponent = math.floor(math.log10(target_um))
    best = min(
        (m * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 2, 5)),
        key=lambda v: abs(math.log(v / target_um)),
    )
    return best, max(1, round(best / um_per_px))


def scale_bar_label(length_um: float) -> str:
    return f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"


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


def _colour_bar(
    figure: Figure,
    canvas_w: int,
    canvas_h: int,
    left_px: int,
    top_px: int,
    height_px: int,
    colours: ScoreColours,
    vmin: float,
) -> None:
    """A bar in ramp units: [0, BELOW) untinted for vmin..threshold, [BELOW, 1] the ramp."""
    bar_w = 18
    axes = figure.add_axes(
        (left_px / canvas_w, 1 - (top_px + height_px) / canvas_h, bar_w / canvas_w, height_px / canvas_h)
    )
    steps = 256
    ramp = colours.colour_of_position(np.linspace(0, 1, steps))[:, None, :]
    axes.imshow(
        ramp, extent=(0, 1, BELOW_FRACTION, 1), origin="lower", aspect="auto", interpolation="nearest"
    )
    axes.axhspan(0, BELOW_FRACTION, color=np.divide(UNTINTED_RGB, 255))
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xticks([])
    axes.axhline(BELOW_FRACTION, color=np.divide(THRESHOLD_RGB, 255), linewidth=2.5)
    positions = [
        0.0,
        BELOW_FRACTION,
        *(BELOW_FRACTION + (1 - BELOW_FRACTION) * p for p in (1 / 3, 2 / 3, 1.0)),
    ]
    values = [vmin, colours.threshold, *(colours.score_at(p) for p in (1 / 3, 2 / 3, 1.0))]
    labels = [f"{v:.3g}" for v in values]
    labels[1] = f"{labels[1]} threshold"
    labels[-1] = f"≥ {labels[-1]}"
    axes.yaxis.tick_right()
    axes.set_yticks(positions, labels, fontsize=7)
    axes.set_title("anomaly score" + (" (log)" if colours.log else ""), fontsize=8, loc="left")


def _scale_bar(
    figure: Figure, canvas_w: int, canvas_h: int, top_px: int, um_per_px: float, width: int
) -> None:
    length_um, length_px = scale_bar_px(um_per_px, width)
    x = (_MARGIN_PX + length_px + 8) / canvas_w
    y = 1 - (top_px + 4 + _SCALE_BAR_THICK_PX / 2) / canvas_h
    figure.text(x, y, scale_bar_label(length_um), va="center", ha="left", fontsize=8)


def _wrap(lines: Sequence[str], width_px: int) -> list[str]:
    chars = max(20, int((width_px - 2 * _MARGIN_PX) / 6.0))  # 8 pt DejaVu Sans: ~6 px a character
    return [part for line in lines for part in (textwrap.wrap(line, chars) or [""])]


def _tile_raster(
    corners: np.ndarray, side_l0: float, l0_to_thumb: float, shape: tuple[int, int]
) -> np.ndarray:
    """Thumbnail pixels whose centre lies in one of the squares [x, x + side) x [y, y + side)."""
    raster = np.zeros(shape, bool)
    for x, y in corners.tolist():
        c0 = max(0, math.ceil(x * l0_to_thumb - 0.5))
        c1 = min(shape[1], math.ceil((x + side_l0) * l0_to_thumb - 0.5))
        r0 = max(0, math.ceil(y * l0_to_thumb - 0.5))
        r1 = min(shape[0], math.ceil((y + side_l0) * l0_to_thumb - 0.5))
        raster[r0:r1, c0:c1] = True
    return raster


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
