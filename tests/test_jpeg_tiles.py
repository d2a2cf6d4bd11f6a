"""JPEG tiles straight from the file: the bytes decoded by torchvision (the CPU path of the GPU
decoder) against OpenSlide's `read_region`, on the synthetic slides and on a real Aperio SVS; when
the grid allows it and why not; and the engine scoring the same numbers from either reader.

Tolerance: two conforming JPEG decoders may differ by a level or two (`JPEG_DECODER_TOLERANCE`);
measured here, libjpeg-turbo through torchvision against OpenSlide: max abs difference 0 on
every tile of the synthetic slide (both levels) and of CMU-1-Small-Region.svs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from wsi_haloae.config import TrainConfig, load_config
from wsi_haloae.errors import ConfigError
from wsi_haloae.heatmaps.infer import InferenceEngine
from wsi_haloae.heatmaps.jpeg_decode import (
    JPEG_DECODER_TOLERANCE,
    JpegTileReader,
    decode_streams,
    select_reader,
)
from wsi_haloae.model.haloae import HaloAE
from wsi_haloae.slides.grid import TileGrid
from wsi_haloae.slides.jpeg_tiles import JpegTiles
from wsi_haloae.slides.slide import open_slide
from wsi_haloae.slides.synthetic import write_synthetic_slide
from wsi_haloae.slides.tiles import iter_tiles
from wsi_haloae.training.checkpoint import TrainedModel

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
CPU = torch.device("cpu")
CUDA = torch.device("cuda")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 1200 x 900: the last column and row of file tiles are partly padding, at both levels
    folder = tmp_path_factory.mktemp("jpeg")
    return write_synthetic_slide(folder / "slide.tiff", 1200, 900, anomalies=1, seed=3).path


@pytest.fixture(scope="module")
def small_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-level JPEG TIFF with 64-px tiles (the tiny model's size), written by tifffile."""
    path = tmp_path_factory.mktemp("jpeg64") / "tiles64.tiff"
    y, x = np.mgrid[0:256, 0:330]
    rgb = np.stack([128 + 100 * np.sin(x / 9), 128 + 90 * np.cos(y / 7), (x + y) % 256], axis=-1)
    tifffile.imwrite(
        path, rgb.astype(np.uint8), tile=(64, 64), compression="jpeg", photometric="rgb", metadata=None
    )
    return path


def _max_difference_to_openslide(path: Path, level: int, *, rgb_marker: bool | None = None) -> int:
    """Decode every file tile of `level` on the CPU and compare with read_region; the max abs
    difference in 8-bit levels over the tiles' pixels inside the level."""
    with open_slide(path) as slide:
        tiles = JpegTiles.open_level(path, slide.level_dimensions[level])
        assert isinstance(tiles, JpegTiles), tiles
        if rgb_marker is not None:
            tiles = JpegTiles(**{**tiles.__dict__, "rgb_marker": rgb_marker})
        width, height = tiles.tile_px
        downsample = slide.level_downsamples[level]
        numbers = np.arange(len(tiles.offsets))
        fd = os.open(path, os.O_RDONLY)
        try:
            decoded = decode_streams([tiles.tile_stream(fd, int(t)) for t in numbers], tiles, numbers, CPU)
        finally:
            os.close(fd)
        worst = 0
        for tile in numbers.tolist():
            col, row = tile % tiles.across, tile // tiles.across
            x_l0, y_l0 = round(col * width * downsample), round(row * height * downsample)
            expected = slide.read_region(x_l0, y_l0, level, (width, height))
            difference = np.abs(decoded[tile].numpy().astype(int) - expected.astype(int))
            worst = max(worst, int(difference.max()))
        return worst


def test_synthetic_slide_tiles_decode_to_openslide_pixels(synthetic: Path) -> None:
    for level in (0, 1):
        assert _max_difference_to_openslide(synthetic, level) <= JPEG_DECODER_TOLERANCE


def test_aperio_svs_tiles_need_the_rgb_marker(cmu_slide: Path) -> None:
    tiles = JpegTiles.open_level(cmu_slide, (2220, 2967))
    assert isinstance(tiles, JpegTiles) and tiles.rgb_marker and tiles.tables and tiles.tile_px == (240, 240)
    assert _max_difference_to_openslide(cmu_slide, 0) <= JPEG_DECODER_TOLERANCE
    # without the Adobe marker the decoder takes the RGB samples for YCbCr: colours far off
    assert _max_difference_to_openslide(cmu_slide, 0, rgb_marker=False) > 100


def test_grid_must_be_the_files_tiles(synthetic: Path, small_tiles: Path, tmp_path: Path) -> None:
    with open_slide(synthetic) as slide:
        aligned = TileGrid.for_slide(slide, level=0, tile_size_px=256)
        tiles, reason = JpegTiles.for_grid(slide, aligned, np.arange(len(aligned)))
        assert tiles is not None and reason == ""
        assert tiles.file_tiles(slide, aligned, np.arange(len(aligned))).tolist() == [
            0,
            1,
            2,
            3,
            5,
            6,
            7,
            8,
            10,
            11,
            12,
            13,
        ]
        level1 = TileGrid.for_slide(slide, level=1, tile_size_px=256)
        assert JpegTiles.for_grid(slide, level1, np.arange(len(level1)))[0] is not None

        overlapping = TileGrid.for_slide(slide, level=0, tile_size_px=256, stride_px=128)
        tiles, reason = JpegTiles.for_grid(slide, overlapping, np.arange(len(overlapping)))
        assert tiles is None and "not on the file's tile grid" in reason
        # the tiles on the file's grid alone are fine
        assert JpegTiles.for_grid(slide, overlapping, np.array([0, 2]))[0] is not None
        small = TileGrid.for_slide(slide, level=0, tile_size_px=64)
        assert (
            "the file's tiles are 256 x 256 px, the grid reads 64 px"
            in JpegTiles.for_grid(slide, small, [0])[1]
        )
        resized = TileGrid.for_slide(slide, mpp_um=0.6, tile_size_px=256)
        assert "resized" in JpegTiles.for_grid(slide, resized, [0])[1]
        with pytest.raises(
            ConfigError, match="cannot decode the file's JPEG tiles directly: .*--tile-reader slide"
        ):
            select_reader(slide, small, np.array([0]), CPU, "jpeg")
        assert select_reader(slide, small, np.array([0]), CUDA, "auto") == (None, "slide")
        assert select_reader(slide, aligned, np.array([0]), CPU, "auto") == (None, "slide")
        assert select_reader(slide, aligned, np.array([0]), CPU, "jpeg")[1] == "jpeg"
        assert select_reader(slide, aligned, np.array([0]), CUDA, "auto")[1] == "jpeg"

    deflate = tmp_path / "deflate.tiff"
    tifffile.imwrite(deflate, np.zeros((512, 512, 3), np.uint8), tile=(256, 256), compression="zlib")
    assert "not JPEG" in JpegTiles.open_level(deflate, (512, 512))
    assert "no tiled TIFF page of 100 x 100" in JpegTiles.open_level(small_tiles, (100, 100))


def test_reader_batches_equal_openslide_reads(synthetic: Path) -> None:
    with open_slide(synthetic) as slide:
        grid = TileGrid.for_slide(slide, level=0, tile_size_px=256)
        indices = np.array([7, 0, 3, 5, 1])
        tiles, _ = JpegTiles.for_grid(slide, grid, indices)
        reader = JpegTileReader(tiles, slide, grid, indices, batch_size=2, device=CPU)
        try:
            decoded = list(reader)
        finally:
            reader.close()
        # iter_tiles reuses its buffer: keep copies
        expected = [(b.indices, b.images.copy()) for b in iter_tiles(slide, grid, indices, batch_size=2)]
    assert [len(i) for i, _ in decoded] == [2, 2, 1]
    for (got_indices, images), (want_indices, want) in zip(decoded, expected):
        np.testing.assert_array_equal(got_indices, want_indices)
        assert images.shape == want.shape and images.dtype == torch.uint8
        assert np.abs(images.numpy().astype(int) - want.astype(int)).max() <= JPEG_DECODER_TOLERANCE


def test_engine_scores_the_same_from_either_reader(small_tiles: Path) -> None:
    cfg = load_config(TINY, TrainConfig)
    torch.manual_seed(0)
    model = HaloAE(cfg.model).eval()
    mean_map = torch.linspace(0.0, 0.01, 64 * 64).reshape(64, 64)
    scores = {"mean": torch.arange(10.0), "median": torch.arange(10.0)}
    trained = TrainedModel(model, cfg, mean_map, mean_map.flip(0), scores, Path("tiny-run"))
    engine = InferenceEngine(trained, CPU, batch_size=4)
    with open_slide(small_tiles) as slide:
        grid = TileGrid.for_slide(slide, level=0, tile_size_px=64)
        indices = np.arange(len(grid))
        jpeg, name = select_reader(slide, grid, indices, CPU, "jpeg")
        results = {}
        for reader, tiles in (("slide", None), ("jpeg", jpeg)):
            got = []
            engine.run(slide, grid, indices, got.append, jpeg=tiles)
            results[reader] = got
    assert name == "jpeg" and len(grid) == 20
    for a, b in zip(results["slide"], results["jpeg"], strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.maps, b.maps)  # same pixels, same batches: same bytes
        np.testing.assert_array_equal(a.score_mean, b.score_mean)


@pytest.mark.gpu
def test_gpu_decode_matches_cpu_decode(synthetic: Path, cmu_slide: Path) -> None:
    for path in (synthetic, cmu_slide):
        with open_slide(path) as slide:
            tiles = JpegTiles.open_level(path, slide.dimensions)
        numbers = np.arange(len(tiles.offsets))
        fd = os.open(path, os.O_RDONLY)
        try:
            streams = [tiles.tile_stream(fd, int(t)) for t in numbers]
        finally:
            os.close(fd)
        cpu = decode_streams(streams, tiles, numbers, CPU)
        gpu = decode_streams(streams, tiles, numbers, CUDA).cpu()
        difference = (gpu.int() - cpu.int()).abs().max().item()
        print(f"{path.name}: nvJPEG vs libjpeg-turbo max abs difference {difference}")
        assert difference <= JPEG_DECODER_TOLERANCE


@pytest.mark.gpu
def test_cuda_engine_jpeg_reader_and_cuda_graph(small_tiles: Path) -> None:
    cfg = load_config(TINY, TrainConfig)
    torch.manual_seed(0)
    model = HaloAE(cfg.model).eval()
    mean_map = torch.linspace(0.0, 0.01, 64 * 64).reshape(64, 64)
    scores = {"mean": torch.arange(10.0), "median": torch.arange(10.0)}
    trained = TrainedModel(model.to(CUDA), cfg, mean_map, mean_map.flip(0), scores, Path("tiny-run"))
    results = {}
    with open_slide(small_tiles) as slide:
        grid = TileGrid.for_slide(slide, level=0, tile_size_px=64)
        indices = np.arange(len(grid))
        jpeg, name = select_reader(slide, grid, indices, CUDA, "auto")
        assert name == "jpeg"
        for label, graphs, tiles in (("slide", False, None), ("jpeg", False, jpeg), ("graph", True, jpeg)):
            engine = InferenceEngine(trained, CUDA, batch_size=8, cuda_graphs=graphs)
            got: list = []
            engine.run(slide, grid, indices, got.append, jpeg=tiles)
            results[label] = np.concatenate([r.score_mean for r in got])
    scale = np.abs(results["slide"]).max()
    # nvJPEG pixels differ by a level or two; bf16 model: close, not equal
    assert np.abs(results["jpeg"] - results["slide"]).max() < 0.05 * scale
    np.testing.assert_allclose(results["graph"], results["jpeg"], rtol=1e-3, atol=1e-3 * scale)
