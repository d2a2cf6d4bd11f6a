"""Stitching tile maps into heatmap bands: geometry on toy numbers, blending against a slow
reference written from the definition, seamlessness, band release and band subsets (resume)."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_haloae.errors import ConfigError
from wsi_haloae.heatmaps.stitch import BandStitcher, HeatmapGeometry, blend_window, tissue_on_heatmap
from wsi_haloae.slides.grid import TileGrid


def _grid(width_l0: int = 1000, height_l0: int = 800, tile: int = 64, stride: int = 32) -> TileGrid:
    return TileGrid.from_geometry(
        (width_l0, height_l0), [1.0], 0.5, level=0, tile_size_px=tile, stride_px=stride
    )


def _stitch_all(
    geometry: HeatmapGeometry, indices: np.ndarray, maps: np.ndarray, **options
) -> dict[int, tuple]:
    stitcher = BandStitcher(geometry, indices, **options)
    bands = {}
    for start in range(0, len(indices), 7):  # uneven batches on purpose
        for band in stitcher.add(indices[start : start + 7], maps[start : start + 7]):
            bands[band.index] = (band.y0, band.scores, band.mask)
    for band in stitcher.finish():
        bands[band.index] = (band.y0, band.scores, band.mask)
    return bands


def _assemble(geometry: HeatmapGeometry, bands: dict[int, tuple]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([bands[b][1] for b in sorted(bands)])
    mask = np.concatenate([bands[b][2] for b in sorted(bands)])
    assert scores.shape == geometry.shape_yx
    return scores, mask


def _reference(geometry: HeatmapGeometry, indices: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Weighted mean per pixel straight from the definition: loop over pixels and tiles."""
    t, s = geometry.tile_px, geometry.stride_px
    ramp = [np.sin(np.pi * (i + 0.5) / t) ** 2 if s < t else 1.0 for i in range(t)]
    height, width = geometry.shape_yx
    out = np.full((height, width), np.nan)
    for y in range(height):
        for x in range(width):
            total = weight = 0.0
            for index, tile_map in zip(indices.tolist(), maps):
                top, left = (index // geometry.columns) * s, (index % geometry.columns) * s
                if top <= y < top + t and left <= x < left + t:
                    w = ramp[y - top] * ramp[x - left]
                    total += w * float(tile_map[y - top, x - left])
                    weight += w
            if weight > 0:
                out[y, x] = total / weight
    return out


def test_geometry_numbers() -> None:
    grid = _grid()
    assert (grid.columns, grid.rows) == (30, 24)
    geometry = HeatmapGeometry.for_grid(grid, band_px=64)
    assert (geometry.tile_px, geometry.stride_px, geometry.px_to_l0) == (16, 8, 4.0)
    # grid extent (24 - 1) * 8 + 16 = 200 rows; the slide's 1000 px / 4 = 250 columns
    assert geometry.shape_yx == (200, 250)
    assert geometry.band_count == 4 and geometry.band_span(3) == (192, 200)
    np.testing.assert_array_equal(
        geometry.origins_px(np.array([0, 1, 30, 31, 719])), [[0, 0], [0, 8], [8, 0], [8, 8], [184, 232]]
    )
    first, last = geometry.tile_bands(np.array([0, 6 * 30, 7 * 30, 23 * 30]))
    # tile rows 0, 6, 7, 23 start at heatmap rows 0, 48, 56, 184 and are 16 rows tall
    np.testing.assert_array_equal(first, [0, 0, 0, 2])
    np.testing.assert_array_equal(last, [0, 0, 1, 3])


def test_geometry_needs_multiples_of_four() -> None:
    with pytest.raises(ConfigError, match="stride 30 px is not a multiple of 4"):
        HeatmapGeometry.for_grid(_grid(stride=30))


def test_window() -> None:
    np.testing.assert_array_equal(blend_window(4, False), np.ones((4, 4)))
    window = blend_window(4, True)
    ramp = np.sin(np.pi * np.array([0.5, 1.5, 2.5, 3.5]) / 4) ** 2  # 0.146, 0.854, 0.854, 0.146
    np.testing.assert_allclose(window, np.outer(ramp, ramp), rtol=1e-6)
    assert window.min() > 0.02


@pytest.mark.parametrize("stride", [64, 32, 16])
def test_constant_maps_give_a_constant_heatmap(stride: int) -> None:
    geometry = HeatmapGeometry.for_grid(_grid(stride=stride), band_px=48)
    indices = np.arange(geometry.rows * geometry.columns)
    maps = np.full((len(indices), 16, 16), 0.37, np.float32)
    scores, mask = _assemble(geometry, _stitch_all(geometry, indices, maps))
    reached = mask
    # the grid reaches every pixel up to its extent; the slide's right margin is never covered
    extent_y = (geometry.rows - 1) * geometry.stride_px + 16
    extent_x = (geometry.columns - 1) * geometry.stride_px + 16
    assert reached[:extent_y, :extent_x].all() and not reached[:, extent_x:].any()
    np.testing.assert_allclose(scores[reached], 0.37, rtol=1e-6)
    assert np.isnan(scores[~reached]).all()


def test_blend_equals_slow_reference() -> None:
    rng = np.random.default_rng(3)
    geometry = HeatmapGeometry.for_grid(_grid(360, 300, tile=32, stride=16), band_px=12)
    # a holey selection, as tissue selection makes
    indices = np.sort(rng.choice(geometry.rows * geometry.columns, size=60, replace=False))
    maps = rng.random((len(indices), 8, 8)).astype(np.float32)
    scores, mask = _assemble(geometry, _stitch_all(geometry, indices, maps))
    expected = _reference(geometry, indices, maps)
    np.testing.assert_array_equal(mask, np.isfinite(expected))
    np.testing.assert_allclose(scores[mask], expected[mask], rtol=1e-5, atol=1e-6)


def test_without_overlap_pixels_are_the_tile_maps() -> None:
    geometry = HeatmapGeometry.for_grid(_grid(256, 128, tile=32, stride=32), band_px=16)
    indices = np.arange(geometry.rows * geometry.columns)
    maps = np.random.default_rng(0).random((len(indices), 8, 8)).astype(np.float32)
    scores, _ = _assemble(geometry, _stitch_all(geometry, indices, maps))
    tile_5 = scores[0:8, 40:48]  # tile (0, 5)
    np.testing.assert_array_equal(tile_5, maps[5])


def test_bands_are_released_as_soon_as_complete() -> None:
    geometry = HeatmapGeometry.for_grid(_grid(), band_px=64)  # bands of 64 rows
    indices = np.arange(geometry.rows * geometry.columns)
    stitcher = BandStitcher(geometry, indices)
    maps = np.ones((geometry.columns, 16, 16), np.float32)
    released = []
    for row in range(geometry.rows):
        row_tiles = indices[row * geometry.columns : (row + 1) * geometry.columns]
        released.append([band.index for band in stitcher.add(row_tiles, maps)])
        # tile rows touch at most 2 bands: only those are held in memory
        assert len(stitcher._sums) <= 2
    # band 0 (rows 0-63) is last touched by tile row 7 (rows 56-71), band 1 by row 15, band 2 by row 23
    assert {row: bands for row, bands in enumerate(released) if bands} == {7: [0], 15: [1], 23: [2, 3]}
    assert stitcher.finish() == []


def test_band_subset_matches_full_run_bytes_and_empty_bands() -> None:
    rng = np.random.default_rng(1)
    geometry = HeatmapGeometry.for_grid(_grid(), band_px=64)
    indices = np.sort(rng.choice(np.arange(10 * geometry.columns), size=150, replace=False))  # rows 0-9 only
    maps = rng.random((len(indices), 16, 16)).astype(np.float32)
    full = _stitch_all(geometry, indices, maps)
    # a resumed run: band 1 still to do, so only the tiles touching it (rows 7-9) arrive again
    first, last = geometry.tile_bands(indices)
    again = (first <= 1) & (last >= 1)
    part = _stitch_all(geometry, indices[again], maps[again], bands=[1, 3])
    assert sorted(part) == [1, 3]
    np.testing.assert_array_equal(part[1][1], full[1][1])
    np.testing.assert_array_equal(part[1][2], full[1][2])
    # band 3 has no tile: empty, and released by the very first add
    assert not part[3][2].any() and np.isnan(part[3][1]).all()
    stitcher = BandStitcher(geometry, indices[again], bands=[1, 3])
    assert [band.index for band in stitcher.add(indices[again][:1], maps[again][:1])] == [3]


def test_tissue_mask_limits_the_computed_pixels() -> None:
    geometry = HeatmapGeometry.for_grid(_grid(stride=64), band_px=64)
    indices = np.arange(geometry.rows * geometry.columns)
    maps = np.ones((len(indices), 16, 16), np.float32)
    tissue = np.zeros((80, 100), bool)  # 10 level-0 px per mask px
    tissue[:, :50] = True  # left half of the slide (x < 500 level-0 px = heatmap x < 125)
    _, mask = _assemble(
        geometry, _stitch_all(geometry, indices, maps, tissue_mask=tissue, tissue_downsample=(10.0, 10.0))
    )
    # 12 tile rows of 16 heatmap px reach rows 0-191 of 200
    assert mask[:192, :125].all() and not mask[192:].any() and not mask[:, 125:].any()


def test_tissue_on_heatmap_samples_pixel_centres() -> None:
    mask = np.array([[True, False], [False, True]])
    # 2 level-0 px per heatmap px, 3 per mask px: centres at 1, 3, 5, 7 -> mask px 0, 1, 1, 2 (outside)
    out = tissue_on_heatmap(mask, (3.0, 3.0), 2.0, 0, 4, 4)
    expected = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(out, expected)
