"""Overlay PNG: H&E untouched at or below the threshold, the ramp above it, the threshold visible
on the colour bar, outlines and artefacts in place, a scale bar as long as the mpp says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import MultiPolygon, box

from wsi_haloae.heatmaps.colours import ScoreColours, score_colours
from wsi_haloae.heatmaps.overlay import (
    ARTEFACT_RGB,
    BELOW_FRACTION,
    OUTLINE_RGB,
    THRESHOLD_RGB,
    UNTINTED_RGB,
    render_overlay,
    save_overlay,
    scale_bar_px,
)

TITLE_PX = 36  # the title band above the image when a title is given
PANEL_PX = 170
MIN_H = 300
ALPHA = 0.6
COLOURS = ScoreColours(threshold=1.2, vmax=2.0)


def _scene(he: bool = False):
    """A 150 x 200 thumbnail at 1/8 of level 0 and a heatmap at 4 level-0 px per pixel, so
    thumbnail pixel (r, c) sits over heatmap pixel (2r + 1, 2c + 1). Scores rise left to right
    from 0 to 2 (threshold 1.2 at heatmap column 240, thumbnail column 120)."""
    rng = np.random.default_rng(7)
    if he:  # pink stroma with purple nuclei, as H&E
        thumbnail = np.empty((150, 200, 3), np.uint8)
        thumbnail[:] = (232, 160, 196)
        nuclei = rng.random((150, 200)) < 0.15
        thumbnail[nuclei] = (96, 60, 150)
    else:
        thumbnail = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    heatmap = np.tile(np.linspace(0.0, 2.0, 400, dtype=np.float32), (300, 1))
    mask = np.zeros((300, 400), bool)
    mask[40:120, 100:300] = True
    return thumbnail, heatmap, mask


def _options(**extra):
    return dict(heatmap_to_l0=4.0, l0_to_thumb=0.125, colours=COLOURS, **extra)


def test_below_threshold_keeps_the_thumbnail_and_above_gets_the_ramp() -> None:
    thumbnail, heatmap, mask = _scene()
    out = render_overlay(thumbnail, heatmap, mask, title="slide a.svs", alpha=ALPHA, **_options())
    assert out.shape == (MIN_H + TITLE_PX, 200 + PANEL_PX, 3)  # short thumbnails get a 300 px floor
    assert out.dtype == np.uint8

    image = out[TITLE_PX : TITLE_PX + 150, :200]
    rows, cols = np.arange(150) * 2 + 1, np.arange(200) * 2 + 1
    sampled = heatmap[np.ix_(rows, cols)]
    on = mask[np.ix_(rows, cols)]
    above = on & (sampled > 1.2)
    assert on.sum() == 40 * 100 and 0 < above.sum() < on.sum()
    np.testing.assert_array_equal(image[~above], thumbnail[~above])  # off the mask and below: untouched

    ramp = COLOURS.colour_of_position((sampled[above] - 1.2) / 0.8) * 255
    want = np.round((1 - ALPHA) * thumbnail[above] + ALPHA * ramp)
    np.testing.assert_allclose(image[above].astype(float), want, atol=1)


def test_normal_he_tissue_keeps_its_colours() -> None:
    """Scored tissue below the threshold must look like H&E (the old overlay darkened it with
    magma's black at α 0.55); above the threshold it must visibly change."""
    thumbnail, heatmap, mask = _scene(he=True)
    heatmap = np.where(np.arange(400) < 240, 0.5, 1.9).astype(np.float32) * np.ones((300, 1), np.float32)
    out = render_overlay(thumbnail, heatmap, mask, **_options())
    normal = out[25:55, 55:115].astype(int)  # thumbnail rows 20..59 are tissue, cols 50..119 below
    anomalous = out[25:55, 125:145].astype(int)
    assert np.abs(normal - thumbnail[25:55, 55:115].astype(int)).max() <= 2
    assert np.abs(anomalous - thumbnail[25:55, 125:145].astype(int)).mean() > 20


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


@pytest.mark.parametrize(
    "colours",
    [COLOURS, score_colours(5.43, np.r_[np.linspace(0, 5, 1000), np.geomspace(6, 11000, 200)])],
    ids=["linear", "demo-like skew"],
)
def test_threshold_is_visible_on_the_colour_bar(colours: ScoreColours) -> None:
    thumbnail, heatmap, mask = _scene()
    out = render_overlay(thumbnail, heatmap, mask, heatmap_to_l0=4.0, l0_to_thumb=0.125, colours=colours)
    column = out[:, 200 + 16 + 9].astype(int)  # down the middle of the bar

    def rows_of(rgb, tol=12) -> np.ndarray:
        return np.nonzero(np.abs(column - np.asarray(rgb)).sum(axis=-1) < tol)[0]

    top = rows_of(np.round(colours.colour_of_position(0.97) * 255), tol=30)  # vmax end of the ramp
    untinted = rows_of(UNTINTED_RGB, tol=4)
    line = rows_of(THRESHOLD_RGB)
    assert top.size and untinted.size and 2 <= line.size <= 5
    bar_top, bar_bottom = top.min(), untinted.max()
    # the threshold sits BELOW_FRACTION of the way up the bar, whatever vmax is
    assert abs(line.mean() - (bar_bottom - BELOW_FRACTION * (bar_bottom - bar_top))) < 3
    assert (untinted > line.max()).all()  # untinted only below the mark
    ramp_low = np.round(colours.colour_of_position(0.02) * 255)
    assert rows_of(ramp_low, tol=30).min() < line.min()  # the ramp starts just above it
    if colours.threshold == 5.43:
        assert colours.log and colours.vmax > 1000


@pytest.mark.parametrize("mpp_um", [0.25, 0.5, 2.0])
def test_scale_bar_length_matches_the_mpp(mpp_um: float) -> None:
    thumbnail, heatmap, mask = _scene()
    out = render_overlay(
        thumbnail, heatmap, mask, mpp_um=mpp_um, footer=["slide a.svs, 0.5 µm/px"], **_options()
    )
    um_per_px = mpp_um / 0.125  # one thumbnail pixel spans 8 level-0 pixels
    length_um, length_px = scale_bar_px(um_per_px, 200)
    assert length_um / 10 ** np.floor(np.log10(length_um)) in (1, 2, 5)
    assert 0.5 * 200 / 5 <= length_px <= 2 * 200 / 5
    footer = out[MIN_H:, : 10 + length_px + 6].astype(int)  # the bar, not its label to the right
    black = (footer.sum(axis=-1) == 0).sum(axis=1)
    assert black.max() == length_px  # one painted run of exactly that many pixels per bar row
    assert (black == length_px).sum() == 6  # bar thickness
    assert length_px * um_per_px == pytest.approx(length_um, rel=1 / length_px)


def test_artefact_tiles_get_their_own_colour() -> None:
    thumbnail, heatmap, mask = _scene()
    thumbnail[:] = 200
    tiles = np.array([[800, 400], [1200, 880]])  # level-0 corners; 160 px sides = 20 thumbnail px
    out = render_overlay(
        thumbnail, heatmap, mask, artefact_tiles_l0=tiles, artefact_tile_l0=160, **_options()
    )
    grey = np.round(0.4 * 200 + 0.6 * np.asarray(ARTEFACT_RGB))
    np.testing.assert_array_equal(out[50:70, 100:120], np.broadcast_to(grey, (20, 20, 3)))
    np.testing.assert_array_equal(out[110:130, 150:170], np.broadcast_to(grey, (20, 20, 3)))
    assert (out[45:50, 100:120] != grey).any(axis=-1).all()  # the tile ends where it should


def test_colour_ramp_values() -> None:
    linear = ScoreColours(threshold=1.0, vmax=3.0)
    np.testing.assert_allclose(
        linear.ramp(np.array([0.5, 1.0, 2.0, 3.0, 9.0, np.nan])), [np.nan, np.nan, 0.5, 1, 1, np.nan]
    )
    log = ScoreColours(threshold=1.0, vmax=100.0, log=True)
    np.testing.assert_allclose(log.ramp(np.array([10.0])), [0.5])
    assert log.score_at(0.5) == pytest.approx(10.0)
    rgba = linear.rgba(np.array([0.5, 2.0]), alpha=0.5)
    assert tuple(rgba[0]) == (0, 0, 0, 0) and rgba[1, 3] == 128
    assert not score_colours(1.0, np.array([0.2, 1.5, 2.0, 3.0])).log
    assert score_colours(1.0, np.array([0.5])).vmax == 2.0  # nothing above: a nominal ramp
    with pytest.raises(ValueError, match="vmax > threshold"):
        ScoreColours(threshold=2.0, vmax=1.0)


def test_large_thumbnails_are_shrunk_and_files_written(tmp_path: Path) -> None:
    thumbnail = np.full((60, 3000, 3), 200, np.uint8)
    heatmap, mask = np.zeros((8, 375), np.float32), np.ones((8, 375), bool)
    out = render_overlay(thumbnail, heatmap, mask, max_side_px=1500, **_options())
    assert out.shape == (MIN_H, 1500 + PANEL_PX, 3)

    png = save_overlay(tmp_path / "overlay.png", thumbnail, heatmap, mask, max_side_px=1500, **_options())
    np.testing.assert_array_equal(np.asarray(Image.open(png)), out)
    jpg = save_overlay(tmp_path / "overlay.jpg", thumbnail, heatmap, mask, max_side_px=1500, **_options())
    assert Image.open(jpg).format == "JPEG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.jpg", "overlay.png"]

    with pytest.raises(ValueError, match="uint8"):
        render_overlay(thumbnail.astype(np.float32), heatmap, mask, **_options())
