"""TileGrid arithmetic on toy numbers (no slide opened), then on a synthetic slide."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from wsi_haloae.errors import ConfigError, SlideError
from wsi_haloae.slides.grid import TileGrid


def reference_origins(width: int, height: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Every (x, y) with the tile [x, x + size) x [y, y + size) inside the slide, row-major."""
    return [(x, y) for y in range(0, height - size + 1, stride) for x in range(0, width - size + 1, stride)]


def test_1000x600_tile_256_gives_six_tiles_at_known_origins() -> None:
    grid = TileGrid.from_geometry((1000, 600), [1.0], None, level=0, tile_size_px=256)
    assert (grid.columns, grid.rows, len(grid)) == (3, 2, 6)
    coords = grid.coordinates()
    assert coords.dtype == np.int64 and coords.shape == (6, 2)
    assert coords.tolist() == [[0, 0], [256, 0], [512, 0], [0, 256], [256, 256], [512, 256]]
    assert (grid.level, grid.read_size_px, grid.tile_size_l0, grid.stride_l0) == (0, 256, 256, 256)
    assert not grid.needs_resize and grid.mpp_um is None


def test_stride_128_overlaps_tiles() -> None:
    grid = TileGrid.from_geometry((1000, 600), [1.0], None, level=0, tile_size_px=256, stride_px=128)
    assert (grid.columns, grid.rows, len(grid)) == (6, 3, 18)
    coords = grid.coordinates()
    assert coords[:6, 0].tolist() == [0, 128, 256, 384, 512, 640]
    assert coords[-1].tolist() == [640, 256]  # 640 + 256 <= 1000 < 768 + 256


@pytest.mark.parametrize(
    ("width", "height", "size", "stride"),
    [
        (1000, 600, 256, 256),
        (1000, 600, 256, 100),
        (513, 257, 256, 1),
        (4096, 300, 300, 512),
        (256, 256, 256, 7),
    ],
)
def test_coordinates_match_a_plain_double_loop(width: int, height: int, size: int, stride: int) -> None:
    grid = TileGrid.from_geometry((width, height), [1.0], None, level=0, tile_size_px=size, stride_px=stride)
    assert grid.coordinates().tolist() == [list(xy) for xy in reference_origins(width, height, size, stride)]


def test_mpp_target_reads_the_matching_pyramid_level() -> None:
    # 0.25 µm/px slide with levels at 0.5 and 1.0 µm/px: 0.5 µm/px tiles come straight from level 1.
    grid = TileGrid.from_geometry((8000, 6000), [1.0, 2.0, 4.0], 0.25, mpp_um=0.5)
    assert (grid.level, grid.read_size_px, grid.tile_size_l0, grid.stride_l0) == (1, 256, 512, 512)
    assert not grid.needs_resize and grid.mpp_um == pytest.approx(0.5)
    assert (grid.columns, grid.rows) == (15, 11)  # 8000 // 512, 6000 // 512


def test_mpp_target_without_a_matching_level_resizes_from_the_finer_one() -> None:
    single_level = TileGrid.from_geometry((8000, 6000), [1.0], 0.25, mpp_um=0.5)
    assert (single_level.level, single_level.read_size_px, single_level.tile_size_l0) == (0, 512, 512)
    assert single_level.needs_resize
    # 0.75 µm/px = downsample 3: read 384 px at level 1 (downsample 2), never upsample from level 2.
    between = TileGrid.from_geometry((8000, 6000), [1.0, 2.0, 4.0], 0.25, mpp_um=0.75)
    assert (between.level, between.read_size_px, between.tile_size_l0) == (1, 384, 768)


def test_mpp_within_tolerance_of_a_level_reads_it_unresized() -> None:
    # A "20x" scan at 0.499 µm/px: a 0.5 µm/px target reads 256 px at level 0, keeping 0.499.
    grid = TileGrid.from_geometry((2220, 2967), [1.0], 0.499, mpp_um=0.5)
    assert (grid.level, grid.read_size_px, grid.tile_size_l0) == (0, 256, 256)
    assert grid.mpp_um == pytest.approx(0.499)
    # Real pyramids have downsamples like 4.0003: level 2 still serves 1.0 µm/px at 256 px.
    grid = TileGrid.from_geometry((80000, 60000), [1.0, 2.0001, 4.0003], 0.25, mpp_um=1.0)
    assert (grid.level, grid.read_size_px, grid.tile_size_l0) == (2, 256, 1024)


def test_level_target_uses_the_level_resolution() -> None:
    grid = TileGrid.from_geometry((8000, 6000), [1.0, 2.0, 4.0], 0.25, level=2)
    assert (grid.level, grid.read_size_px, grid.tile_size_l0, grid.mpp_um) == (2, 256, 1024, 1.0)


@pytest.mark.parametrize("level", [3, -1])
def test_level_that_does_not_exist_is_an_error(level: int) -> None:
    with pytest.raises(ConfigError, match=f"level {level} does not exist.*levels 0 to 2"):
        TileGrid.from_geometry((8000, 6000), [1.0, 2.0, 4.0], 0.25, level=level)


def test_bad_options_are_errors() -> None:
    with pytest.raises(ConfigError, match="either"):
        TileGrid.from_geometry((8000, 6000), [1.0], 0.25, mpp_um=0.5, level=0)
    with pytest.raises(ConfigError, match="tile size 0"):
        TileGrid.from_geometry((8000, 6000), [1.0], 0.25, tile_size_px=0)
    with pytest.raises(ConfigError, match="stride -4"):
        TileGrid.from_geometry((8000, 6000), [1.0], 0.25, stride_px=-4)
    with pytest.raises(ConfigError, match="mpp -0.5"):
        TileGrid.from_geometry((8000, 6000), [1.0], 0.25, mpp_um=-0.5)


def test_slide_smaller_than_one_tile_is_an_error() -> None:
    with pytest.raises(SlideError, match=r"\(200 x 1000 level-0 px\) is smaller than one tile \(256"):
        TileGrid.from_geometry((200, 1000), [1.0], None, level=0)
    with pytest.raises(SlideError, match="smaller than one tile"):
        TileGrid.from_geometry((1000, 1000), [1.0], 0.25, mpp_um=1.0)  # footprint 1024 l0 px


def test_mpp_target_on_a_slide_without_mpp_names_the_fixes() -> None:
    with pytest.raises(SlideError, match="--assume-mpp.*--level"):
        TileGrid.from_geometry((1000, 600), [1.0], None)


@dataclass
class FakeSlide:
    """The slide metadata a grid reads, and nothing else."""

    path: Path
    dimensions: tuple[int, int]
    level_downsamples: tuple[float, ...]
    mpp_um: tuple[float, float] | None

    def require_mpp(
        self, assume_mpp_um: float | None = None, slide_mpp_um: float | None = None
    ) -> tuple[float, float]:
        if slide_mpp_um is not None:
            return (slide_mpp_um, slide_mpp_um)
        if self.mpp_um is not None:
            return self.mpp_um
        assert assume_mpp_um is not None
        return (assume_mpp_um, assume_mpp_um)


def test_for_slide_uses_metadata_or_the_assumed_mpp_and_names_the_slide() -> None:
    slide = FakeSlide(Path("a.svs"), (8000, 6000), (1.0, 4.0), (0.25, 0.25))
    assert TileGrid.for_slide(slide, mpp_um=1.0).level == 1  # type: ignore[arg-type]
    bare = FakeSlide(Path("bare.tiff"), (8000, 6000), (1.0, 4.0), None)
    with pytest.raises(SlideError, match=r"^bare.tiff: .*--assume-mpp"):
        TileGrid.for_slide(bare)  # type: ignore[arg-type]
    grid = TileGrid.for_slide(bare, assume_mpp_um=0.25)  # type: ignore[arg-type]
    assert (grid.level, grid.read_size_px, grid.tile_size_l0, grid.mpp_um) == (0, 512, 512, 0.5)
    by_level = TileGrid.for_slide(bare, level=1)  # type: ignore[arg-type]
    assert (by_level.tile_size_l0, by_level.mpp_um) == (1024, None)
    with pytest.raises(ConfigError, match=r"^bare.tiff: level 2 does not exist"):
        TileGrid.for_slide(bare, level=2)  # type: ignore[arg-type]


def test_str_states_the_grid() -> None:
    text = str(TileGrid.from_geometry((8000, 6000), [1.0], 0.25, mpp_um=0.5))
    assert "15 x 11 = 165 tiles of 256 px (0.5 µm/px)" in text
    assert "read at level 0 as 512 px -> 256" in text


def test_for_slide_on_a_synthetic_pyramid(small_slide) -> None:
    from wsi_haloae.slides.slide import open_slide

    with open_slide(small_slide.path) as slide:
        at_05 = TileGrid.for_slide(slide)
        at_10 = TileGrid.for_slide(slide, mpp_um=1.0)
    assert (at_05.level, at_05.columns, at_05.rows) == (0, 8, 6)  # 2048 x 1536 at 0.5 µm/px
    assert (at_10.level, at_10.read_size_px, at_10.columns, at_10.rows) == (1, 256, 4, 3)
