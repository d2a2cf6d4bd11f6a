"""Slide reading: both backends agree, metadata is right, every bad input is one clear SlideError."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wsi_haloae.cli import main
from wsi_haloae.errors import SlideError
from wsi_haloae.slides import slide as slide_module
from wsi_haloae.slides.slide import open_slide
from wsi_haloae.slides.synthetic import SyntheticSlide

BACKENDS = ["openslide", "tiffslide"]
# (x_l0, y_l0, level, (width, height)): inside, across the right/bottom edges, partly and fully outside
SYNTHETIC_REGIONS = [
    (0, 0, 0, (256, 256)),
    (700, 300, 0, (333, 211)),
    (1900, 1400, 0, (300, 300)),
    (-64, -32, 0, (128, 96)),
    (513, 257, 1, (200, 150)),
    (1000, 600, 1, (200, 300)),
    (0, 0, 2, (512, 384)),
    (1800, 1200, 2, (100, 100)),
    (4000, 100, 1, (50, 50)),
]
CMU_REGIONS = [(0, 0, 0, (256, 256)), (1000, 1500, 0, (517, 333)), (2100, 2900, 0, (256, 256))]


def _max_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_cmu_metadata(cmu_slide: Path, backend: str) -> None:
    with open_slide(cmu_slide, backend) as slide:
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1
        assert slide.level_dimensions == ((2220, 2967),)
        assert slide.level_downsamples == (1.0,)
        assert slide.mpp_um == pytest.approx((0.499, 0.499), abs=1e-9)
        assert slide.objective_power == 20.0
        assert slide.path == cmu_slide and slide.backend == backend


def test_backends_agree_on_cmu(cmu_slide: Path) -> None:
    with open_slide(cmu_slide, "openslide") as a, open_slide(cmu_slide, "tiffslide") as b:
        for x_l0, y_l0, level, size in CMU_REGIONS:
            region_a = a.read_region(x_l0, y_l0, level, size)
            region_b = b.read_region(x_l0, y_l0, level, size)
            assert region_a.shape == (size[1], size[0], 3) and region_a.dtype == np.uint8
            assert _max_difference(region_a, region_b) <= 1, (x_l0, y_l0, level, size)
        # the last region crosses the slide's corner: its outside part is white in both
        corner = a.read_region(2100, 2900, 0, (256, 256))
        assert (corner[67:, :] == 255).all() and (corner[:, 120:] == 255).all()
        assert corner[:67, :120].mean() < 250
        assert _max_difference(a.thumbnail(300), b.thumbnail(300)) <= 1


def test_backends_agree_on_synthetic(small_slide: SyntheticSlide) -> None:
    with open_slide(small_slide.path, "openslide") as a, open_slide(small_slide.path, "tiffslide") as b:
        assert a.dimensions == b.dimensions == (2048, 1536)
        assert a.level_dimensions == b.level_dimensions == ((2048, 1536), (1024, 768), (512, 384))
        assert a.level_downsamples == b.level_downsamples == (1.0, 2.0, 4.0)
        assert a.mpp_um == b.mpp_um == (0.5, 0.5)
        assert a.vendor == "generic-tiff"
        for x_l0, y_l0, level, size in SYNTHETIC_REGIONS:
            region_a = a.read_region(x_l0, y_l0, level, size)
            assert region_a.shape == (size[1], size[0], 3)
            assert _max_difference(region_a, b.read_region(x_l0, y_l0, level, size)) <= 1, (x_l0, y_l0, level)


@pytest.mark.parametrize("backend", BACKENDS)
def test_outside_pixels_are_white(synthetic_slide_factory, backend: str) -> None:
    full = synthetic_slide_factory(1024, 1024, tissue="full")
    with open_slide(full.path, backend) as slide:
        region = slide.read_region(1000, -10, 0, (50, 40))  # 24 px inside in x, 30 px in y
        assert (region[:10] == 255).all() and (region[:, 24:] == 255).all()
        inside = region[10:, :24]
        assert inside.mean() < 230, "tissue everywhere: inside pixels are not background"
        far = slide.read_region(5000, 5000, 1, (30, 20))
        np.testing.assert_array_equal(far, np.full((20, 30, 3), 255, np.uint8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_levels_map_level0_coordinates(small_slide: SyntheticSlide, backend: str) -> None:
    with open_slide(small_slide.path, backend) as slide:
        # a region at level L starts at level pixel floor(x_l0 / downsample)
        np.testing.assert_array_equal(
            slide.read_region(515, 258, 2, (64, 64)), slide.read_region(512, 256, 2, (64, 64))
        )
        # a level-1 pixel is the 2 x 2 mean of level 0, up to JPEG, and aligned with it: one
        # level-1 pixel of shift gives a far larger difference
        fine = slide.read_region(200, 1000, 0, (512, 512)).astype(np.float64)
        coarse = slide.read_region(200, 1000, 1, (256, 256)).astype(np.float64)
        binned = fine.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        aligned = np.abs(binned - coarse).mean()
        assert aligned < 4.5
        assert np.abs(binned[:, 1:] - coarse[:, :-1]).mean() > 2 * aligned
        assert np.abs(binned[1:] - coarse[:-1]).mean() > 2 * aligned


def test_thumbnail_of_a_pyramid(small_slide: SyntheticSlide) -> None:
    with open_slide(small_slide.path) as slide:
        # 512 px for a 2048 px slide is downsample 4: level 2 itself
        np.testing.assert_array_equal(slide.thumbnail(512), slide.read_region(0, 0, 2, (512, 384)))
        assert slide.thumbnail(100).shape == (75, 100, 3)
        assert slide.thumbnail(5000).shape == (1536, 2048, 3)


def test_thumbnail_of_one_level(cmu_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_slide(cmu_slide) as slide:
        thumbnail = slide.thumbnail(555)
        assert thumbnail.shape == (555, 415, 3)
        # two box filters (5 x 5 blocks, then 1.07) blur a little more than one: compare blocks
        full = Image.fromarray(slide.read_region(0, 0, 0, slide.dimensions))
        reference = np.asarray(full.resize((415, 555), Image.Resampling.BOX).reduce(5), np.float64)
        assert np.abs(np.asarray(Image.fromarray(thumbnail).reduce(5)) - reference).mean() < 2.0
        # strips of a few rows give the same thumbnail as one big read
        monkeypatch.setattr(slide_module, "_THUMBNAIL_STRIP_BYTES", 3 * 2220 * 12)
        np.testing.assert_array_equal(slide.thumbnail(555), thumbnail)


def test_best_level_for_downsample(small_slide: SyntheticSlide) -> None:
    with open_slide(small_slide.path) as slide:
        cases = {0.5: 0, 1.0: 0, 1.99: 0, 2.0: 1, 3.99: 1, 3.999: 2, 4.0: 2, 100.0: 2}
        assert {d: slide.best_level_for_downsample(d) for d in cases} == cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_require_mpp(small_slide: SyntheticSlide, broken_files: Path, backend: str) -> None:
    with open_slide(small_slide.path, backend) as slide:
        assert slide.require_mpp() == (0.5, 0.5)
        assert slide.require_mpp(assume_mpp_um=0.25) == (0.5, 0.5), "the file's own mpp wins"
    with open_slide(broken_files / "no_mpp.tiff", backend) as slide:
        assert slide.mpp_um is None
        assert slide.level_count == 2
        assert slide.require_mpp(0.25) == (0.25, 0.25)
        with pytest.raises(SlideError) as error:
            slide.require_mpp()
        message = str(error.value)
        assert "no_mpp.tiff" in message and "--assume-mpp 0.25" in message and "--level" in message
        with pytest.raises(SlideError, match="positive"):
            slide.require_mpp(-1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("not_a_slide.png", "is not a whole-slide image"),
        ("text.txt", "is not a whole-slide image"),
        ("truncated.svs", "truncated or corrupt"),
        ("missing.svs", "does not exist"),
        (".", "a folder without DICOM files"),
    ],
)
def test_bad_files(broken_files: Path, backend: str, name: str, words: str) -> None:
    path = broken_files / name
    with pytest.raises(SlideError) as error:
        open_slide(path, backend)
    message = str(error.value)
    assert words in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_tiff_that_opens(small_slide: SyntheticSlide, tmp_path: Path, backend: str) -> None:
    """Cut inside level 0's tiles, the file still opens in tiffslide (OpenSlide refuses it):
    the reads on open catch it either way."""
    path = tmp_path / "cut.tiff"
    data = small_slide.path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match="truncated or corrupt"):
        open_slide(path, backend)


def test_unknown_backend_and_bad_level(small_slide: SyntheticSlide) -> None:
    with pytest.raises(SlideError, match="unknown slide backend 'bioformats'.*openslide, tiffslide"):
        open_slide(small_slide.path, "bioformats")  # type: ignore[arg-type]
    with (
        open_slide(small_slide.path) as slide,
        pytest.raises(SlideError, match="levels 0..2; level 3 does not exist"),
    ):
        slide.read_region(0, 0, 3, (10, 10))


def test_close_and_pickle(small_slide: SyntheticSlide) -> None:
    slide = open_slide(small_slide.path, "tiffslide")
    copy = pickle.loads(pickle.dumps(slide))
    assert copy is not slide and (copy.path, copy.backend) == (slide.path, slide.backend)
    np.testing.assert_array_equal(
        copy.read_region(300, 300, 0, (64, 64)), slide.read_region(300, 300, 0, (64, 64))
    )
    with copy:
        pass
    with pytest.raises(ValueError, match="closed"):
        copy.read_region(0, 0, 0, (8, 8))
    slide.close()
    slide.close()


def test_info_command(small_slide: SyntheticSlide, broken_files: Path) -> None:
    runner = CliRunner()
    for backend in BACKENDS:
        result = runner.invoke(main, ["info", str(small_slide.path), "--backend", backend])
        assert result.exit_code == 0, result.output
        assert "dimensions: 2048 x 1536 px" in result.output
        assert "mpp: 0.5 x 0.5 µm/px" in result.output
        assert "levels: 3" in result.output
        assert "level 2: 512 x 384 px, downsample 4" in result.output
    result = runner.invoke(main, ["info", str(broken_files / "not_a_slide.png")])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "not a whole-slide image" in result.output
    assert len(result.output.strip().splitlines()) == 1
