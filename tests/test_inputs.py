"""Input-kind checks: fluorescence / dark backgrounds, YCbCr-looking glass, a background that is
not near-white and tissue over 95 % are refused or warned about before any work (case 4 and 5)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from wsi_haloae.cli import main
from wsi_haloae.errors import SlideError
from wsi_haloae.slides.inputs import assess_input
from wsi_haloae.slides.tiles import TileConfig, write_tiles


def _slide(
    path: Path, background: tuple[int, int, int], tissue: tuple[int, int, int], cover: float = 0.4
) -> Path:
    """A 1024 x 1024 tiled TIFF at 0.5 µm/px: `background` with a centred square of `tissue`
    covering `cover` of it (lossless, so the colours are exact)."""
    rng = np.random.default_rng(0)
    image = np.empty((1024, 1024, 3), np.uint8)
    image[:] = background
    side = int(1024 * cover**0.5)
    start = (1024 - side) // 2
    image[start : start + side, start : start + side] = tissue
    image = np.clip(image.astype(int) + rng.integers(-2, 3, image.shape), 0, 255).astype(np.uint8)
    options = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib", "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, resolution=(20000, 20000), resolutionunit="CENTIMETER", **options)
        tif.write(np.ascontiguousarray(image[::4, ::4]), subfiletype=1, **options)
    return path


def _tile(path: Path, out: Path, *extra: str) -> object:
    return CliRunner().invoke(main, ["tile", str(path), "--out", str(out), "--tile-size", "64", *extra])


def test_a_fluorescence_image_is_refused_with_the_reason_and_the_override(tmp_path: Path) -> None:
    """DAPI/FITC/Cy3 read as RGB: a black background with bright coloured nuclei."""
    path = _slide(tmp_path / "dapi.tif", (4, 6, 5), (30, 200, 90), cover=0.3)
    result = _tile(path, tmp_path / "out")
    assert result.exit_code == 2
    assert "does not look like a brightfield slide" in result.output and "near-black" in result.output
    assert "--allow-non-brightfield" in result.output
    assert not (tmp_path / "out" / "dapi").exists(), "refused before any output is written"
    forced = _tile(
        path, tmp_path / "forced", "--allow-non-brightfield", "--min-tissue", "0", "--artefacts", "keep"
    )
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "forced" / "dapi" / "manifest.csv").is_file()


def test_ycbcr_looking_glass_is_refused_naming_the_colour_space(tmp_path: Path) -> None:
    """Glass (242, 128, 128) and tissue in YCbCr, stored as RGB: what a decoder that skipped the
    colour conversion returns. Read as it is, tissue detection calls it 100 % tissue."""
    path = _slide(tmp_path / "ycbcr.tif", (242, 128, 128), (120, 150, 170))
    with pytest.raises(
        SlideError, match=r"its background is \(24\d, 1[23]\d, 1[23]\d\), what white glass in YCbCr"
    ):
        write_tiles([path], tmp_path / "out", TileConfig(tile_size_px=64))
    result = _tile(path, tmp_path / "cli")
    assert result.exit_code == 2 and "YCbCr" in result.output and "re-export" in result.output
    assert not (tmp_path / "cli" / "ycbcr" / "manifest.csv").exists()


def test_a_grey_background_and_wall_to_wall_tissue_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grey = _slide(tmp_path / "grey.tif", (170, 170, 170), (150, 60, 130))
    with caplog.at_level(logging.WARNING):
        write_tiles([grey], tmp_path / "grey-out", TileConfig(tile_size_px=64, artefacts="keep"))
    assert "is not near-white" in caplog.text
    caplog.clear()
    full = _slide(tmp_path / "full.tif", (242, 242, 242), (190, 90, 170), cover=0.99)
    with caplog.at_level(logging.WARNING):
        write_tiles([full], tmp_path / "full-out", TileConfig(tile_size_px=64, artefacts="keep"))
    assert "tissue covers" in caplog.text and "check the thumbnail" in caplog.text


def test_assess_input_numbers() -> None:
    thumbnail = np.full((100, 100, 3), 240, np.uint8)
    thumbnail[30:70, 30:70] = (180, 80, 160)
    mask = np.zeros((100, 100), bool)
    mask[30:70, 30:70] = True
    ok = assess_input(thumbnail, mask, channels=3)
    assert ok.brightfield and ok.background_rgb == (240, 240, 240) and ok.tissue_fraction == 0.16
    assert ok.dark_fraction == 0.0 and not ok.warnings
    planes = assess_input(thumbnail, mask, channels=8, photometric="MINISBLACK")
    assert not planes.brightfield and "8 channel(s)" in planes.refusals[0]


def test_info_says_whether_it_looks_like_brightfield(tmp_path: Path) -> None:
    dark = _slide(tmp_path / "dark.tif", (4, 6, 5), (30, 200, 90), cover=0.3)
    result = CliRunner().invoke(main, ["info", str(dark)])
    assert result.exit_code == 0 and "channels: 3, photometric: RGB" in result.output
    assert "input: does not look like brightfield" in result.output
    light = _slide(tmp_path / "light.tif", (242, 242, 242), (180, 80, 160))
    assert "input: looks like brightfield" in CliRunner().invoke(main, ["info", str(light)]).output
