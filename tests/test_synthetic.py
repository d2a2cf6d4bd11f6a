"""Synthetic slides: the pyramid reads back, the pixels are the rendering, the truth is exact."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage
from shapely.geometry import box, shape

from wsi_haloae.cli import main
from wsi_haloae.errors import ConfigError
from wsi_haloae.slides.slide import open_slide
from wsi_haloae.slides.synthetic import (
    StarShape,
    SyntheticSlide,
    anomaly_mask,
    plan_synthetic_slide,
    render_region,
    write_ground_truth,
    write_synthetic_slide,
)


def _pixel_centres(
    width_px: int, height_px: int, x0: float = 0, y0: float = 0
) -> tuple[np.ndarray, np.ndarray]:
    return x0 + np.arange(width_px) + 0.5, y0 + np.arange(height_px) + 0.5


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_pyramid_and_mpp_read_back(synthetic_slide_factory, backend: str) -> None:
    odd = synthetic_slide_factory(2500, 1100, mpp_um=0.25, seed=5)
    with open_slide(odd.path, backend) as slide:
        assert slide.dimensions == (2500, 1100)
        assert slide.level_dimensions == ((2500, 1100), (1250, 550), (625, 275))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0), rel=1e-3)
        assert slide.mpp_um == pytest.approx((0.25, 0.25))
        for level, (width, height) in enumerate(slide.level_dimensions):
            corner = slide.read_region(0, 0, level, (width, height))[-40:, -40:]
            assert corner.mean() > 200, "every level decodes up to its last tile"


def test_pixels_are_the_rendering(small_slide: SyntheticSlide) -> None:
    with open_slide(small_slide.path) as slide:
        read = slide.read_region(0, 0, 0, (2048, 1536)).astype(np.int16)
    error = np.abs(read - render_region(small_slide, 0, 0, (2048, 1536)))
    assert error.mean() < 3.0, "JPEG at quality 90"
    assert np.percentile(error, 99) < 20


def test_rendering_is_deterministic_and_seamless(small_slide: SyntheticSlide) -> None:
    big = render_region(small_slide, 100, 200, (700, 500))
    np.testing.assert_array_equal(render_region(small_slide, 333, 444, (256, 200)), big[244:444, 233:489])
    other_seed = plan_synthetic_slide("x.tiff", 2048, 1536, anomalies=3, seed=1)
    assert np.abs(render_region(other_seed, 100, 200, (700, 500)).astype(int) - big).mean() > 10


def test_star_shape_contains_is_the_polygon() -> None:
    rng = np.random.default_rng(3)
    star = StarShape((50.3, 40.7), tuple(rng.uniform(10, 40, 64)))
    x, y = _pixel_centres(120, 100)
    xx, yy = np.meshgrid(x, y)
    np.testing.assert_array_equal(star.contains(x, y), shapely.contains_xy(star.polygon, xx, yy))
    assert star.polygon.is_valid


def test_anomalies_are_planted_in_tissue(small_slide: SyntheticSlide) -> None:
    assert [a.kind for a in small_slide.anomalies] == ["foreign", "stain", "fold"]
    for anomaly in small_slide.anomalies:
        assert small_slide.tissue.contains(anomaly.polygon)
        min_x, min_y, max_x, max_y = anomaly.polygon.bounds
        diameter_um = max(max_x - min_x, max_y - min_y) * 0.5
        assert 100 < diameter_um < 400
    for a, b in zip(small_slide.anomalies, small_slide.anomalies[1:], strict=False):
        assert not a.polygon.intersects(b.polygon)


def test_anomaly_mask_is_exact(small_slide: SyntheticSlide) -> None:
    for anomaly in small_slide.anomalies:
        min_x, min_y, max_x, max_y = (int(v) for v in anomaly.polygon.bounds)
        x0, y0, width, height = min_x - 10, min_y - 10, max_x - min_x + 20, max_y - min_y + 20
        x, y = _pixel_centres(width, height, x0, y0)
        xx, yy = np.meshgrid(x, y)
        truth = shapely.contains_xy(anomaly.polygon, xx, yy)
        np.testing.assert_array_equal(anomaly_mask(small_slide, x0, y0, (width, height)), truth)
        assert truth.sum() == pytest.approx(anomaly.polygon.area, rel=0.01)
    # at downsample 4, a pixel is True where its centre, in level 0, is inside an anomaly
    coarse = anomaly_mask(small_slide, 0, 0, (512, 384), downsample=4)
    xx, yy = np.meshgrid((np.arange(512) + 0.5) * 4, (np.arange(384) + 0.5) * 4)
    anomalies = shapely.union_all([a.polygon for a in small_slide.anomalies])
    np.testing.assert_array_equal(coarse, shapely.contains_xy(anomalies, xx, yy))
    assert anomaly_mask(small_slide, 0, 0, 64).shape == (64, 64)


def test_anomaly_pixels_differ_from_tissue(small_slide: SyntheticSlide) -> None:
    with open_slide(small_slide.path) as slide:
        pixels = slide.read_region(0, 0, 0, (2048, 1536)).astype(np.float64)
    x, y = _pixel_centres(2048, 1536)
    xx, yy = np.meshgrid(x, y)
    tissue = shapely.contains_xy(small_slide.tissue, xx, yy)
    anomalous = anomaly_mask(small_slide, 0, 0, (2048, 1536))
    # keep clear of edges, where JPEG mixes the two
    normal = ndimage.binary_erosion(tissue & ~ndimage.binary_dilation(anomalous, iterations=8), iterations=8)
    normal_mean = pixels[normal].mean(axis=0)
    assert normal_mean[0] > 190 and normal_mean[1] < normal_mean[0] - 40, "pink H&E-like tissue"
    for anomaly in small_slide.anomalies:
        core = ndimage.binary_erosion(
            anomaly_mask(small_slide, 0, 0, (2048, 1536)) & shapely.contains_xy(anomaly.polygon, xx, yy),
            iterations=4,
        )
        mean = pixels[core].mean(axis=0)
        assert np.linalg.norm(mean - normal_mean) > 60, anomaly.kind
        if anomaly.kind == "fold":
            assert mean.sum() < normal_mean.sum() - 100, "a fold is darker"
    background = ~ndimage.binary_dilation(tissue, iterations=8)
    assert np.abs(pixels[background].mean(axis=0) - 240).max() < 1.5
    assert pixels[background].std() < 2.0


def test_tissue_layouts(synthetic_slide_factory, small_slide: SyntheticSlide) -> None:
    full = synthetic_slide_factory(1024, 1024, tissue="full")
    assert full.tissue.equals(box(0, 0, 1024, 1024))
    assert full.tissue_shapes == ()
    with open_slide(full.path) as slide:
        pixels = slide.read_region(0, 0, 0, (1024, 1024)).astype(np.float64)
    # every 32 x 32 block is tissue-coloured: red well above green, unlike the grey background
    blocks = pixels.reshape(32, 32, 32, 32, 3).mean(axis=(1, 3))
    assert (blocks[..., 0] - blocks[..., 1] > 30).all()
    # blobs: 2 x 2 blobs on 2048 x 1536; the corners and the cross between blobs are background
    assert len(small_slide.tissue_shapes) == 4
    assert 0.3 < small_slide.tissue.area / (2048 * 1536) < 0.6
    for strip in (
        box(0, 0, 40, 40),
        box(2008, 1496, 2048, 1536),
        box(1004, 0, 1044, 1536),
        box(0, 748, 2048, 788),
    ):
        assert not small_slide.tissue.intersects(strip)
    assert np.abs(render_region(small_slide, 0, 0, (40, 40)).astype(int) - 240).max() <= 3


def test_ground_truth_files(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    mask_path, geojson_path = write_ground_truth(small_slide, tmp_path / "truth", downsample=16)
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == (96, 128) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    total_area = sum(a.polygon.area for a in small_slide.anomalies)
    assert (mask == 255).sum() * 16 * 16 == pytest.approx(total_area, rel=0.15)

    collection = json.loads(geojson_path.read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == 3
    for feature, anomaly in zip(features, small_slide.anomalies, strict=True):
        uuid.UUID(feature["id"])
        properties = feature["properties"]
        assert properties["objectType"] == "annotation"
        assert properties["classification"]["name"] == "Anomaly"
        assert len(properties["classification"]["color"]) == 3
        assert anomaly.kind in properties["name"]
        polygon = shape(feature["geometry"])
        assert polygon.is_valid
        assert polygon.area == pytest.approx(anomaly.polygon.area, rel=1e-9)
        assert properties["measurements"]["area_um2"] == pytest.approx(anomaly.polygon.area * 0.25)


def test_geopandas_reads_ground_truth(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    geopandas = pytest.importorskip("geopandas")
    _, geojson_path = write_ground_truth(small_slide, tmp_path)
    frame = geopandas.read_file(geojson_path)
    assert len(frame) == 3
    areas = [polygon.area for polygon in frame.geometry]  # level-0 px, whatever CRS geopandas assumes
    np.testing.assert_allclose(areas, [a.polygon.area for a in small_slide.anomalies], rtol=1e-9)


def test_memory_does_not_grow_with_slide_size(tmp_path: Path) -> None:
    peaks = []
    for side in (1024, 3072):
        tracemalloc.start()
        write_synthetic_slide(tmp_path / f"s{side}.tiff", side, side, tissue="full")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # 9 x the pixels (27 MB raw at level 0) for at most a few more strips of memory
    assert peaks[1] < peaks[0] + 6e6, peaks
    assert peaks[1] < 20e6, peaks
    assert not list(tmp_path.glob(".*")), "no scratch or partial file left behind"


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="too small"):
        write_synthetic_slide(tmp_path / "a.tiff", 8, 100)
    with pytest.raises(ConfigError, match="mpp -1"):
        write_synthetic_slide(tmp_path / "a.tiff", 100, 100, mpp_um=-1)
    with pytest.raises(ConfigError, match="tissue layout 'patchy'"):
        write_synthetic_slide(tmp_path / "a.tiff", 100, 100, tissue="patchy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot fit 50 anomalies"):
        write_synthetic_slide(tmp_path / "a.tiff", 256, 256, anomalies=50)
    assert not list(tmp_path.iterdir())


def test_make_slide_command(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "made.tiff"
    result = runner.invoke(
        main,
        [
            "make-slide",
            str(out),
            "--size",
            "1200x900",
            "--anomalies",
            "2",
            "--seed",
            "4",
            "--mpp",
            "0.25",
            "--tissue",
            "full",
            "--ground-truth",
            str(tmp_path / "truth"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1200x900 px at 0.25 µm/px, tissue 100%, anomalies: foreign, stain" in result.output
    with open_slide(out) as slide:
        assert slide.dimensions == (1200, 900) and slide.mpp_um == (0.25, 0.25)
    assert (tmp_path / "truth" / "made_anomaly_mask.png").is_file()
    assert (tmp_path / "truth" / "made_anomalies.geojson").is_file()

    for size in ("1200", "axb", "0x100", "12x-3"):
        result = runner.invoke(main, ["make-slide", str(tmp_path / "bad.tiff"), "--size", size])
        assert result.exit_code == 2, size
        assert result.output.startswith("error: --size") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad.tiff").exists()


def test_sparse_tissue_is_one_blob_of_the_same_size_on_any_slide() -> None:
    from wsi_haloae.slides.synthetic import SPARSE_BLOB_PX, plan_synthetic_slide

    small = plan_synthetic_slide("a.tiff", 16384, 16384, tissue="sparse")
    large = plan_synthetic_slide("b.tiff", 70000, 70000, tissue="sparse")
    assert len(small.tissue_shapes) == len(large.tissue_shapes) == 1
    assert small.tissue.area == pytest.approx(large.tissue.area, rel=0.05)
    assert small.tissue.area < SPARSE_BLOB_PX**2  # a few hundred 64-px tiles whatever the size
    minx, miny, maxx, maxy = large.tissue.bounds
    assert 33000 < minx < maxx < 37000 and 33000 < miny < maxy < 37000
