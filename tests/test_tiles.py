"""The streaming tile reader against a plain read_region loop, its clean-up, and the `tile` job."""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing
import os
import shutil
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsi_haloae.bench import benchmark_tiling, format_tiling_table
from wsi_haloae.errors import ConfigError, OutputError, SlideError
from wsi_haloae.slides.grid import TileGrid
from wsi_haloae.slides.slide import open_slide
from wsi_haloae.slides.tiles import MANIFEST_COLUMNS, TileConfig, iter_tiles, read_tile, write_tiles


def plain_loop(path: Path, grid: TileGrid, indices: np.ndarray) -> np.ndarray:
    """The reference: one read_region per tile in a fresh handle, resized with PIL when needed."""
    size = grid.tile_size_px
    with open_slide(path) as slide:
        tiles = []
        for x_l0, y_l0 in grid.coordinates()[indices].tolist():
            region = slide.read_region(x_l0, y_l0, grid.level, size_px=(grid.read_size_px, grid.read_size_px))
            if grid.needs_resize:
                region = np.asarray(Image.fromarray(region).resize((size, size), Image.Resampling.BILINEAR))
            tiles.append(region)
    return np.stack(tiles)


def no_new_children(before: set[multiprocessing.process.BaseProcess]) -> bool:
    """Whether every live child process of this one was already alive before (other tests' pools may be)."""
    return set(multiprocessing.active_children()) <= before


def shared_memory_blocks() -> set[str]:
    return (
        {name for name in os.listdir("/dev/shm") if name.startswith("psm_")}
        if os.path.isdir("/dev/shm")
        else set()
    )


def corrupt_copy(source: Path, folder: Path, tile_number: int) -> Path:
    """A copy of a TIFF slide whose level-0 JPEG tile `tile_number` (row-major) is zeroed: the copy
    opens, and that tile fails to decode. The fixture's cached original stays intact."""
    path = folder / f"corrupt_{source.name}"
    shutil.copyfile(source, path)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[tile_number]
        length = tif.pages[0].databytecounts[tile_number]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes(length))
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_returns_the_pixels_of_a_plain_loop(small_slide, workers: int) -> None:
    with open_slide(small_slide.path) as slide:
        grid = TileGrid.for_slide(slide)
        indices = np.array([0, 3, 9, 10, 11, 17, 30, 46, 47], dtype=np.int64)
        batches = [
            (b.images.copy(), b.coords_l0, b.indices)
            for b in iter_tiles(slide, grid, indices, batch_size=4, workers=workers)
        ]
    assert [len(images) for images, _, _ in batches] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([i for _, _, i in batches]), indices)
    np.testing.assert_array_equal(np.concatenate([c for _, c, _ in batches]), grid.coordinates()[indices])
    images = np.concatenate([images for images, _, _ in batches])
    assert images.dtype == np.uint8 and images.shape == (9, 256, 256, 3)
    np.testing.assert_array_equal(images, plain_loop(small_slide.path, grid, indices))
    assert images.std() > 5  # real pixels, not an empty buffer


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resizes_between_read_level_and_output(small_slide, workers: int) -> None:
    with open_slide(small_slide.path) as slide:
        grid = TileGrid.for_slide(slide, mpp_um=0.75, tile_size_px=128)  # 192 px at level 0 -> 128
        assert (grid.level, grid.read_size_px, len(grid)) == (0, 192, 80)
        images = np.concatenate(
            [b.images.copy() for b in iter_tiles(slide, grid, batch_size=32, workers=workers)]
        )
    assert images.shape == (80, 128, 128, 3)
    np.testing.assert_array_equal(images, plain_loop(small_slide.path, grid, np.arange(80)))


def test_early_break_and_errors_stop_workers_and_free_shared_memory(small_slide) -> None:
    children = set(multiprocessing.active_children())
    before = shared_memory_blocks()
    with open_slide(small_slide.path) as slide:
        grid = TileGrid.for_slide(slide)
        for batch in iter_tiles(slide, grid, batch_size=2, workers=2):
            break
        del batch
        assert no_new_children(children)
        assert shared_memory_blocks() == before

        for interrupt in (RuntimeError("consumer failed"), KeyboardInterrupt()):
            with (
                pytest.raises(type(interrupt)),
                closing(iter_tiles(slide, grid, batch_size=2, workers=2)) as batches,
            ):
                for index, _ in enumerate(batches):
                    if index == 3:
                        raise interrupt
            assert no_new_children(children)
            assert shared_memory_blocks() == before


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_tile_raises_slide_error_naming_it(small_slide, tmp_path: Path, workers: int) -> None:
    children = set(multiprocessing.active_children())
    corrupt = corrupt_copy(small_slide.path, tmp_path, 10)  # 8 tiles per row: column 2, row 1
    with open_slide(corrupt) as slide:
        grid = TileGrid.for_slide(slide)
        with pytest.raises(SlideError, match=r"cannot read tile 10 at level-0 \(512, 256\), level 0"):
            for _ in iter_tiles(slide, grid, np.arange(8, 16), batch_size=4, workers=workers):
                pass
    assert no_new_children(children)


def test_bad_reader_arguments(small_slide) -> None:
    with open_slide(small_slide.path) as slide:
        grid = TileGrid.for_slide(slide)
        with pytest.raises(ConfigError, match="batch size 0"):
            iter_tiles(slide, grid, batch_size=0)
        with pytest.raises(ConfigError, match="workers -1"):
            iter_tiles(slide, grid, workers=-1)
        with pytest.raises(ValueError, match=r"\[0, 48\)"):
            iter_tiles(slide, grid, [48])


def read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_write_tiles_outputs(small_slide, tmp_path: Path) -> None:
    (result,) = write_tiles([small_slide.path], tmp_path / "out", TileConfig(workers=2))
    folder = tmp_path / "out" / small_slide.path.stem
    assert (result.folder, result.manifest, result.skipped) == (folder, folder / "manifest.csv", False)
    rows = read_manifest(result.manifest)
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert len(rows) == result.tiles == result.written > 0
    assert len(list((folder / "tiles").iterdir())) == len(rows)
    with open_slide(small_slide.path) as slide:
        grid = TileGrid.for_slide(slide)
        for row in rows[:: max(1, len(rows) // 4)]:
            x_l0, y_l0 = int(row["x_l0"]), int(row["y_l0"])
            assert row["slide"] == str(small_slide.path.resolve())
            assert (row["level"], row["size_l0"], row["tile_size_px"], row["mpp_um"]) == (
                "0",
                "256",
                "256",
                "0.5",
            )
            assert float(row["tissue_fraction"]) >= 0.5
            saved = np.asarray(Image.open(folder / row["path"]))
            np.testing.assert_array_equal(saved, read_tile(slide, grid, x_l0, y_l0))
    mask = np.asarray(Image.open(folder / "tissue_mask.png"))
    thumbnail = Image.open(folder / "thumbnail.png")
    assert set(np.unique(mask).tolist()) == {0, 255}
    assert thumbnail.size == (mask.shape[1], mask.shape[0])


def test_write_tiles_resumes_and_skips_finished_slides(small_slide, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = TileConfig(thumbnail_px=512)
    (first,) = write_tiles([small_slide.path], out, cfg)
    tiles_dir = first.folder / "tiles"
    names = sorted(p.name for p in tiles_dir.iterdir())
    manifest_text = first.manifest.read_text()
    # A killed run: no manifest yet, one tile never written, one left half-written.
    first.manifest.unlink()
    (tiles_dir / names[0]).unlink()
    (tiles_dir / names[1]).rename(tiles_dir / f"{names[1]}.tmp")
    untouched = {name: (tiles_dir / name).stat().st_mtime_ns for name in names[2:]}

    (resumed,) = write_tiles([small_slide.path], out, cfg)
    assert (resumed.written, resumed.tiles, resumed.skipped) == (2, first.tiles, False)
    assert sorted(p.name for p in tiles_dir.iterdir()) == names
    assert {name: (tiles_dir / name).stat().st_mtime_ns for name in names[2:]} == untouched
    assert resumed.manifest.read_text() == manifest_text

    (again,) = write_tiles([small_slide.path], out, cfg)
    assert (again.written, again.skipped) == (0, True)
    with pytest.raises(OutputError, match="holds tiles made with other settings"):
        write_tiles([small_slide.path], out, dataclasses.replace(cfg, min_tissue=0.9))


def test_max_tiles_samples_across_slides_reproducibly(
    small_slide, synthetic_slide_factory, tmp_path: Path
) -> None:
    full = synthetic_slide_factory(width_px=1024, height_px=768, tissue="full")  # 12 tiles
    slides = [small_slide.path, full.path]
    cfg = TileConfig(thumbnail_px=512, image_format="jpeg")
    everything = write_tiles(slides, tmp_path / "all", cfg)
    total = sum(r.tiles for r in everything)
    sampled = write_tiles(slides, tmp_path / "a", dataclasses.replace(cfg, max_tiles=10, seed=0))
    same_seed = write_tiles(slides, tmp_path / "b", dataclasses.replace(cfg, max_tiles=10, seed=0))
    other_seed = write_tiles(slides, tmp_path / "c", dataclasses.replace(cfg, max_tiles=10, seed=1))
    assert total >= 20 and sum(r.tiles for r in sampled) == 10

    def paths(results):
        return [row["path"] for r in results for row in read_manifest(r.manifest)]

    assert set(paths(sampled)) <= set(paths(everything))
    assert paths(sampled) == paths(same_seed)
    assert paths(sampled) != paths(other_seed)
    assert all(r.tiles > 0 for r in sampled)  # 10 of 20+ drawn uniformly: both slides get some
    assert all(row["path"].endswith(".jpg") for row in read_manifest(sampled[0].manifest))


def test_failed_slide_leaves_no_manifest(small_slide, synthetic_slide_factory, tmp_path: Path) -> None:
    full = synthetic_slide_factory(width_px=1024, height_px=768, tissue="full")
    broken = corrupt_copy(full.path, tmp_path, 5)  # an inner tile: opening and the thumbnail still work
    # artefact QC off: with it, planning reads every tile and the broken one fails before any writing
    with pytest.raises(SlideError, match=rf"{broken.name}: cannot read tile 5 "):
        write_tiles(
            [small_slide.path, broken],
            tmp_path / "out",
            TileConfig(workers=2, thumbnail_px=512, artefacts="off"),
        )
    assert (tmp_path / "out" / small_slide.path.stem / "manifest.csv").is_file()
    assert not (tmp_path / "out" / broken.stem / "manifest.csv").exists()


def test_benchmark_rows(small_slide) -> None:
    rows = benchmark_tiling(small_slide.path, workers=[1])
    assert [(r.reader, r.workers, r.tiles) for r in rows] == [("read_region", 0, 48), ("iter_tiles", 1, 48)]
    raw, streamed = rows
    assert raw.efficiency == 1.0 and raw.tiles_per_s == pytest.approx(48 / raw.seconds)
    assert streamed.efficiency == pytest.approx(streamed.tiles_per_s / raw.tiles_per_s)
    assert 0 < streamed.startup_s < streamed.seconds
    table = format_tiling_table(rows)
    assert table.count("\n") == 3 and "| iter_tiles | 1 | 48 |" in table
    synthetic = benchmark_tiling(size_px=(1024, 768), workers=[2])
    assert [(r.workers, r.tiles) for r in synthetic] == [(0, 12), (2, 12)]
