"""top_tiles.png: the highest-scoring tiles, in order, at full resolution, pixel for pixel."""

from __future__ import annotations

import numpy as np

from wsi_haloae.heatmaps.gallery import LABEL_PX, render_top_tiles, save_top_tiles, top_tile_indices
from wsi_haloae.slides.slide import open_slide


def test_top_tile_indices_order_and_nan() -> None:
    scores = np.array([0.5, np.nan, 3.0, 1.0, 3.0, -2.0])
    assert top_tile_indices(scores, 3).tolist() == [2, 4, 3]
    assert top_tile_indices(scores, 10).tolist() == [2, 4, 3, 0, 5]


def test_gallery_shows_the_top_tiles_at_level_0(small_slide, tmp_path) -> None:
    coords = np.array([[0, 0], [256, 512], [1024, 768], [512, 256], [1536, 1024]])
    scores = np.array([0.1, 5.0, 2.0, 9.0, np.nan], np.float32)
    with open_slide(small_slide.path) as slide:
        picture, chosen = render_top_tiles(slide, coords, scores, 128, count=3, columns=2)
        assert chosen.tolist() == [3, 1, 2]
        gap = 8
        assert picture.shape == (2 * (128 + LABEL_PX) + 3 * gap, 2 * 128 + 3 * gap, 3)
        # rank 2 (index 1) sits in the second cell of the first row, at level-0 resolution
        cell = picture[gap : gap + 128, gap + 128 + gap : gap + 2 * 128 + gap]
        np.testing.assert_array_equal(cell, slide.read_region(256, 512, 0, (128, 128)))
        first = picture[gap : gap + 128, gap : gap + 128]
        np.testing.assert_array_equal(first, slide.read_region(512, 256, 0, (128, 128)))
        label = picture[gap + 128 : gap + 128 + LABEL_PX, gap : gap + 128]
        assert (label < 100).any()  # text under the tile
        path = save_top_tiles(
            tmp_path / "top_tiles.png", slide, coords, scores, 1024, count=2, max_cell_px=256
        )
    assert path.is_file()
