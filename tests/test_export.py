"""QuPath/Fiji export: the OME-TIFF opens with tifffile and ome-types, at the heatmap's physical
scale, every pyramid level holding the OME-Zarr's own values; the PNG overlay is transparent at
or below the threshold. Plus GeoJSON .gz round trips through geopandas."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from outputs_fixture import HIGH, HOT, THRESHOLD, make_output_folder
from PIL import Image

from wsi_haloae.annotations import read_feature_collection, write_feature_collection
from wsi_haloae.heatmaps.export import OME_TIFF_NAME, OVERLAY_PNG_NAME, export_qupath, write_ome_tiff
from wsi_haloae.heatmaps.regions import tile_features


@pytest.fixture(scope="module")
def folder(small_slide, tmp_path_factory) -> Path:
    return make_output_folder(tmp_path_factory.mktemp("export"), small_slide.path)


def test_ome_tiff_has_the_physical_scale_and_the_zarr_values(folder: Path) -> None:
    tif_path, png_path = export_qupath(folder)
    assert tif_path == folder / OME_TIFF_NAME and png_path == folder / OVERLAY_PNG_NAME
    group = zarr.open_group(folder / "heatmap.ome.zarr", mode="r")
    with tifffile.TiffFile(tif_path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert len(series.levels) == len(group.attrs["ome"]["multiscales"][0]["datasets"])
        assert series.dtype == np.float32
        for level, array in enumerate(series.levels):
            np.testing.assert_array_equal(array.asarray(), group[str(level)][:])
        ome_xml = tif.ome_metadata
    from ome_types import from_xml

    pixels = from_xml(ome_xml).images[0].pixels
    assert (pixels.size_x, pixels.size_y) == (128, 96)
    assert pixels.physical_size_x == pytest.approx(8.0) and pixels.physical_size_y == pytest.approx(8.0)
    assert pixels.physical_size_x_unit.value == "µm"
    # the heatmap spans the slide: 128 px x 8 µm = 2048 slide px x 0.5 µm
    assert pixels.size_x * pixels.physical_size_x == pytest.approx(2048 * 0.5)

    rgba = np.asarray(Image.open(png_path))
    assert rgba.shape == (96, 128, 4)
    hot = rgba[HOT]
    mask = group["labels/tissue/0"][:].astype(bool)
    assert (rgba[..., 3][~mask] == 0).all() and (rgba[..., 3][mask & (group["0"][:] <= THRESHOLD)] == 0).all()
    assert (hot[..., 3][mask[HOT]] == 255).all()
    assert HIGH > THRESHOLD


def test_ome_tiff_pyramid_levels_are_sub_resolutions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    levels = [rng.random((600 // 2**k + 1, 900 // 2**k), dtype=np.float32) for k in range(3)]
    levels[0][:10] = np.nan
    path = write_ome_tiff(tmp_path / "h.ome.tif", levels, (2.0, 2.5))
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert [lv.shape for lv in series.levels] == [a.shape for a in levels]
        for got, want in zip(series.levels, levels):
            np.testing.assert_array_equal(got.asarray(), want)
        page = series.levels[2].keyframe
        assert page.is_tiled and page.tilewidth == 256
        x_res = page.tags["XResolution"].value
        assert 1e4 / (x_res[0] / x_res[1]) == pytest.approx(2.5 * 4)  # level 2 at 4x the µm per px
        from ome_types import from_xml

        pixels = from_xml(tif.ome_metadata).images[0].pixels
        assert (pixels.physical_size_x, pixels.physical_size_y) == (2.5, 2.0)


def test_geojson_gz_round_trips_through_geopandas(tmp_path: Path) -> None:
    import geopandas

    coords = np.array([[0, 0], [128, 0], [0, 128]])
    scores = np.array([0.1234567891, 2.5, np.float32(1) / 3], np.float64)
    features = tile_features(coords, 128, {"anomaly_score": scores}, threshold=1.0, id_namespace="s:m")
    path = write_feature_collection(tmp_path / "tiles.geojson.gz", features)
    plain = write_feature_collection(tmp_path / "tiles.geojson", features)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(path.read_bytes())) == json.loads(plain.read_text())
    assert write_feature_collection(tmp_path / "again.geojson.gz", features).read_bytes() == path.read_bytes()
    frame = geopandas.read_file(f"/vsigzip/{path}")  # GDAL reads gzip through /vsigzip/
    assert len(frame) == 3 and frame.geometry.iloc[1].bounds == (128, 0, 256, 128)
    read = read_feature_collection(path)["features"]
    got = [f["properties"]["measurements"]["anomaly_score"] for f in read]
    assert got == [0.12345679, 2.5, 0.33333334]  # float32 precision, shortest digits
    assert np.array_equal(np.float32(got), np.float32(scores))
    ids = [f["id"] for f in read]
    assert len(set(ids)) == 3
    other = tile_features(coords, 128, {"anomaly_score": scores}, threshold=1.0, id_namespace="s2:m")
    assert not set(ids) & {f["id"] for f in other}  # another slide or model never shares an id
