"""Overlay PNG: exact thumbnail pixels off the mask, the expected blend on it, outlines in place."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from shapely.geometry import MultiPolygon, box

from wsi_haloae.heatmaps.overlay import OUTLINE_RGB, render_overlay, save_overlay

TITLE_PX = 36  # the title band above the image when a title is given
PANEL_PX = 120
ALPHA = 0.55


def _scene():
    """A textured 150 x 200 thumbnail at 1/8 of level 0 and a heatmap at 4 level-0 px per pixel,
    so thumbnail pixel (r, c) sits over heatmap pixel (2r + 1, 2c + 1)."""
    rng = np.random.default_rng(7)
    thumbnail = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    heatmap = np.tile(np.linspace(0.0, 2.0, 400, dtype=np.float32), (300, 1))
    mask = np.zeros((300, 400), bool)
    mask[40:120, 100:300] = True
    return thumbnail, heatmap, mask


def _options(**extra):
    return dict(heatmap_to_l0=4.0, l0_to_thumb=0.125, threshold=1.2, vmin=0.0, vmax=2.0, **extra)


def test_off_mask_pixels_are_the_thumbnail_and_on_mask_pixels_the_blend() -> None:
    thumbnail, heatmap, mask = _scene()
    out = render_overlay(thumbnail, heatmap, mask, title="slide a.svs", alpha=ALPHA, **_options())
    assert out.shape == (240 + TITLE_PX, 200 + PANEL_PX, 3)  # short thumbnails get a 240 px floor
    assert out.dtype == np.uint8

    image = out[TITLE_PX : TITLE_PX + 150, :200]
    rows, cols = np.arange(150) * 2 + 1, np.arange(200) * 2 + 1
    on = mask[np.ix_(rows, cols)]
    assert on.sum() == 40 * 100  # thumbnail rows 20..59, cols 50..149
    np.testing.assert_array_equal(image[~on], thumbnail[~on])

    magma = matplotlib.colormaps["magma"]
    sampled = heatmap[np.ix_(rows, cols)][on]
    want = np.round((1 - ALPHA) * thumbnail[on] + ALPHA * magma(sampled / 2.0)[:, :3] * 255)
    np.testing.assert_allclose(image[on].astype(float), want, atol=1)


def test_region_outline_is_drawn_where_the_region_is() -> None:
    thumbnail, heatmap, mask = _scene()
    thumbnail[:] = 128  # flat grey, so any outline pixel stands out
    square_l0 = box(400, 800, 1200, 1040)  # thumbnail x 50..150, y 100..130
    elsewhere = box(100, 100, 140, 140)
    out = render_overlay(
        thumbnail, heatmap, np.zeros_like(mask), regions=[square_l0, MultiPolygon([elsewhere])], **_options()
    )
    image = out[:150, :200].astype(int)  # no title: the image starts at row 0

    def cyan_distance(patch: np.ndarray) -> float:
        return float(np.abs(patch - np.array(OUTLINE_RGB)).sum(axis=-1).min())

    assert cyan_distance(image[98:103, 100]) < 60  # top edge, mid-way
    assert cyan_distance(image[128:133, 100]) < 60  # bottom edge
    assert cyan_distance(image[115, 48:53]) < 60  # left edge
    assert cyan_distance(image[115, 148:153]) < 60  # right edge
    assert (image[105:126, 55:146] == 128).all()  # inside untouched
    assert (image[60:90, 60:140] == 128).all()  # outside untouched


def test_colour_bar_spans_the_map_and_marks_the_threshold() -> None:
    thumbnail, heatmap, mask = _scene()
    out = render_overlay(thumbnail, heatmap, mask, **_options())
    panel = out[:, 200:].astype(int)

    def rows_of(rgb) -> np.ndarray:
        return np.nonzero((np.abs(panel - np.asarray(rgb)).sum(axis=-1) < 16).any(axis=1))[0]

    magma = matplotlib.colormaps["magma"]
    top = rows_of(np.round(np.array(magma(0.99)[:3]) * 255))  # vmax end of the bar
    bottom = rows_of(np.round(np.array(magma(0.01)[:3]) * 255))  # vmin end
    line = rows_of(OUTLINE_RGB)
    assert top.size and bottom.size and line.size
    # threshold 1.2 on [0, 2] sits 40 % of the way down from the top of the bar
    expected = top.min() + 0.4 * (bottom.max() - top.min())
    assert abs(line.mean() - expected) < 3


def test_large_thumbnails_are_shrunk_and_files_written(tmp_path: Path) -> None:
    thumbnail = np.full((60, 3000, 3), 200, np.uint8)
    heatmap, mask = np.zeros((8, 375), np.float32), np.ones((8, 375), bool)
    out = render_overlay(thumbnail, heatmap, mask, max_side_px=1500, **_options())
    assert out.shape == (240, 1500 + PANEL_PX, 3)

    png = save_overlay(tmp_path / "overlay.png", thumbnail, heatmap, mask, max_side_px=1500, **_options())
    np.testing.assert_array_equal(np.asarray(Image.open(png)), out)
    jpg = save_overlay(tmp_path / "overlay.jpg", thumbnail, heatmap, mask, max_side_px=1500, **_options())
    assert Image.open(jpg).format == "JPEG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.jpg", "overlay.png"]

    with pytest.raises(ValueError, match="uint8"):
        render_overlay(thumbnail.astype(np.float32), heatmap, mask, **_options())
