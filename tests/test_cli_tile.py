"""`wsi-haloae tile` and `wsi-haloae bench tiling` through click's CliRunner: results, and one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from wsi_haloae.cli import main


def write_tiff(path: Path, rgb: np.ndarray, mpp_um: float) -> Path:
    """A one-level tiled JPEG TIFF that OpenSlide opens as generic-tiff (the synthetic writer puts
    tissue on every slide; this writes any image, e.g. blank glass)."""
    resolution = (1e4 / mpp_um, 1e4 / mpp_um)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            rgb,
            tile=(256, 256),
            compression="jpeg",
            photometric="rgb",
            resolution=resolution,
            resolutionunit="CENTIMETER",
        )
    return path


def run_tile(*args: str | Path):
    return CliRunner().invoke(main, ["tile", *map(str, args)])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_tile_command_writes_tiles_and_a_manifest(small_slide, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_tile(
        small_slide.path, "--out", out, "--tile-size", "128", "--stride", "64", "--min-tissue", "0.9"
    )
    assert result.exit_code == 0, result.output
    manifest = out / small_slide.path.stem / "manifest.csv"
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert (
        result.stdout.strip()
        == f"{small_slide.path.resolve()}: {len(rows)} tiles ({len(rows)} written) -> {manifest}"
    )
    assert rows and all(float(r["tissue_fraction"]) >= 0.9 for r in rows)
    assert {int(r["x_l0"]) % 64 for r in rows} == {0} and {r["tile_size_px"] for r in rows} == {"128"}
    assert Image.open(manifest.parent / rows[0]["path"]).size == (128, 128)
    again = run_tile(
        small_slide.path, "--out", out, "--tile-size", "128", "--stride", "64", "--min-tissue", "0.9"
    )
    assert again.exit_code == 0 and "(already done)" in again.stdout


@pytest.fixture
def bad_inputs(
    broken_files: Path, synthetic_slide_factory, tmp_path: Path
) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """Each bad slide, with the words its one-line error must contain."""
    blank = write_tiff(tmp_path / "blank.tiff", np.full((768, 768, 3), 245, np.uint8), 0.5)
    tiny = synthetic_slide_factory(width_px=150, height_px=200, tissue="full").path
    return {
        "missing": (tmp_path / "absent.svs", ("absent.svs", "does not exist")),
        "png": (broken_files / "not_a_slide.png", ("not_a_slide.png",)),
        "text": (broken_files / "text.txt", ("text.txt",)),
        "truncated": (broken_files / "truncated.svs", ("truncated.svs",)),
        "no mpp": (broken_files / "no_mpp.tiff", ("no_mpp.tiff", "--assume-mpp", "--level")),
        "blank": (blank, ("blank.tiff", "no tissue")),
        "tiny": (tiny, (tiny.name, "smaller than one tile")),
    }


@pytest.mark.parametrize("case", ["missing", "png", "text", "truncated", "no mpp", "blank", "tiny"])
def test_bad_slides_give_one_line_and_no_manifest(bad_inputs, case: str, tmp_path: Path) -> None:
    path, fragments = bad_inputs[case]
    out = tmp_path / "out"
    assert_one_line_error(run_tile(path, "--out", out, "--workers", "2"), *fragments)
    assert not list(out.rglob("manifest.csv"))


def test_no_mpp_slide_tiles_with_assume_mpp_or_level(bad_inputs, tmp_path: Path) -> None:
    path, _ = bad_inputs["no mpp"]
    assumed = run_tile(path, "--out", tmp_path / "a", "--assume-mpp", "0.25", "--min-tissue", "0")
    by_level = run_tile(path, "--out", tmp_path / "b", "--level", "0", "--min-tissue", "0")
    assert assumed.exit_code == 0 and by_level.exit_code == 0, assumed.output + by_level.output
    # 1024 x 768 px: 0.5 µm/px tiles of a 0.25 µm/px slide are 512 level-0 px (2 x 1 of them);
    # level 0 gives 4 x 3 tiles of 256 px.
    assert "2 tiles (2 written)" in assumed.stdout
    assert "12 tiles (12 written)" in by_level.stdout


def test_unwritable_output_and_conflicting_options(small_slide, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_line_error(run_tile(small_slide.path, "--out", blocker / "out"), "cannot write to", "--out")
    assert_one_line_error(
        run_tile(small_slide.path, "--out", tmp_path / "o", "--mpp", "1", "--level", "0"), "--mpp", "--level"
    )
    assert_one_line_error(
        run_tile(small_slide.path, "--out", tmp_path / "o", "--min-tissue", "2"),
        "'min_tissue' is 2.0",
        "[0, 1]",
    )
    assert not list(tmp_path.rglob("manifest.csv"))


def test_bench_tiling_prints_a_table(small_slide) -> None:
    result = CliRunner().invoke(main, ["bench", "tiling", str(small_slide.path), "--workers", "1"])
    assert result.exit_code == 0, result.output
    head, table = result.stdout.strip().split("\n\n")
    assert head.startswith("- date: 20") and "cores" in head and "- command: `" in head
    lines = table.splitlines()
    assert lines[0].startswith("| reader | workers | tiles | seconds |")
    assert lines[2].startswith("| read_region | 0 | 48 |") and lines[3].startswith("| iter_tiles | 1 | 48 |")
    bad = CliRunner().invoke(main, ["bench", "tiling", "--size", "big", "--workers", "1"])
    assert_one_line_error(bad, "--size 'big'")
