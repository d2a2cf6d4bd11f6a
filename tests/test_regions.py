"""QuPath GeoJSON: known synthetic regions and tiles, read back by geopandas and shapely."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from wsi_haloae.annotations import write_feature_collection
from wsi_haloae.errors import OutputError
from wsi_haloae.heatmaps.regions import anomaly_regions, region_features, tile_features

PX_TO_L0 = 4.0  # one heatmap pixel = 4 level-0 pixels
MPP = (0.5, 0.25)  # level-0 um/px (x, y), anisotropic so a swapped axis shows
PIXEL_UM2 = (PX_TO_L0 * 0.5) * (PX_TO_L0 * 0.25)  # 2.0 um2 per heatmap pixel
THRESHOLD = 1.0


def _synthetic() -> tuple[np.ndarray, np.ndarray]:
    """Two squares above threshold on a 0.2 background: A (rows 10-29, cols 20-39) with scores
    1.5..3.4 rising by column; B (rows 50-79, cols 60-99) at 5.0 with a 10 x 10 hole of 0.0.
    One hot pixel outside the mask and a 2-pixel speck (filtered by area) must not count."""
    heatmap = np.full((100, 120), 0.2, np.float32)
    mask = np.ones((100, 120), bool)
    heatmap[10:30, 20:40] = 1.5 + 0.1 * np.arange(20, dtype=np.float32)
    heatmap[50:80, 60:100] = 5.0
    heatmap[60:70, 70:80] = 0.0
    heatmap[5, 5] = 9.0
    mask[5, 5] = False
    heatmap[90, 110:112] = 2.0
    return heatmap, mask


def _regions():
    heatmap, mask = _synthetic()
    return anomaly_regions(
        heatmap, mask, THRESHOLD, px_to_l0=PX_TO_L0, mpp_um=MPP, min_area_um2=10.0, simplify_px=1.0
    )


def test_two_squares_give_two_regions_with_known_numbers() -> None:
    first, second = _regions()
    assert first.area_um2 == pytest.approx(400 * PIXEL_UM2)
    assert first.mean_score == pytest.approx(np.mean(1.5 + 0.1 * np.arange(20)), rel=1e-6)
    assert first.max_score == pytest.approx(3.4, rel=1e-6)
    assert first.geometry.bounds == pytest.approx(
        (20 * PX_TO_L0, 10 * PX_TO_L0, 40 * PX_TO_L0, 30 * PX_TO_L0)
    )

    assert second.area_um2 == pytest.approx((1200 - 100) * PIXEL_UM2)
    assert second.mean_score == pytest.approx(5.0) and second.max_score == pytest.approx(5.0)
    assert second.geometry.geom_type == "Polygon" and len(second.geometry.interiors) == 1
    hole = shapely.Polygon(second.geometry.interiors[0])
    assert hole.bounds == pytest.approx((70 * PX_TO_L0, 60 * PX_TO_L0, 80 * PX_TO_L0, 70 * PX_TO_L0))
    # outline area in level-0 px^2 times the level-0 pixel area, within one heatmap pixel
    for region in (first, second):
        assert region.geometry.is_valid
        assert region.geometry.area * MPP[0] * MPP[1] == pytest.approx(region.area_um2, abs=PIXEL_UM2)


def test_simplify_straightens_staircases_but_keeps_area() -> None:
    yy, xx = np.mgrid[0:60, 0:60]
    disc = ((yy - 30) ** 2 + (xx - 30) ** 2) < 20**2
    heatmap = disc.astype(np.float32) * 2
    mask = np.ones_like(disc)
    (exact,) = anomaly_regions(heatmap, mask, THRESHOLD, px_to_l0=1.0, mpp_um=(1.0, 1.0), simplify_px=0)
    (smooth,) = anomaly_regions(heatmap, mask, THRESHOLD, px_to_l0=1.0, mpp_um=(1.0, 1.0), simplify_px=1.0)
    assert exact.geometry.area == disc.sum()  # pixel-edge outline is exact
    assert len(smooth.geometry.exterior.coords) < len(exact.geometry.exterior.coords) / 2
    assert smooth.geometry.area == pytest.approx(disc.sum(), rel=0.03)


def test_region_file_reads_back_in_geopandas_with_qupath_fields(tmp_path: Path) -> None:
    geopandas = pytest.importorskip("geopandas")
    path = write_feature_collection(
        tmp_path / "regions.geojson", region_features(_regions(), id_namespace="a.svs|run-1")
    )

    raw = json.loads(path.read_text())
    assert raw["type"] == "FeatureCollection" and len(raw["features"]) == 2
    for feature in raw["features"]:
        assert feature["type"] == "Feature"
        assert uuid.UUID(feature["id"]).version == 5
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"] == {"name": "Anomaly", "color": [215, 48, 39]}
        assert set(props["measurements"]) == {"area_um2", "mean_score", "max_score"}
        assert shape(feature["geometry"]).is_valid
    assert [f["properties"]["name"] for f in raw["features"]] == ["Anomaly 1", "Anomaly 2"]

    frame = geopandas.read_file(path)
    assert len(frame) == 2
    assert list(frame.geometry.bounds.iloc[1]) == [240.0, 200.0, 400.0, 320.0]  # level-0 px of square B
    # GeoJSON implies WGS84 to geopandas; plain shapely areas avoid its geographic-CRS warning
    areas_um2 = shapely.area(frame.geometry.to_numpy()) * MPP[0] * MPP[1]
    np.testing.assert_allclose(areas_um2, [400 * PIXEL_UM2, 1100 * PIXEL_UM2], atol=PIXEL_UM2)
    assert {"objectType", "classification", "measurements"} <= set(frame.columns)


def test_rerun_writes_identical_bytes_and_namespace_changes_ids(tmp_path: Path) -> None:
    one = write_feature_collection(tmp_path / "one.geojson", region_features(_regions(), id_namespace="a"))
    two = write_feature_collection(tmp_path / "two.geojson", region_features(_regions(), id_namespace="a"))
    other = region_features(_regions(), id_namespace="b")
    assert one.read_bytes() == two.read_bytes()
    ids = [f["id"] for f in json.loads(one.read_text())["features"]]
    assert len(set(ids)) == 2 and not set(ids) & {f["id"] for f in other}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.geojson", "two.geojson"]  # no temp files left


def test_tiles_become_classified_detections(tmp_path: Path) -> None:
    coords = np.array([[0, 0], [512, 0], [1024, 2048]])
    features = tile_features(
        coords,
        512,
        {"anomaly_score": np.array([0.2, 1.7, np.nan]), "tissue_fraction": np.array([0.9, 1.0, 0.5])},
        threshold=THRESHOLD,
        id_namespace="a.svs",
    )
    assert [f["properties"]["classification"]["name"] for f in features] == ["Normal", "Anomaly", "Normal"]
    assert all(f["properties"]["objectType"] == "detection" for f in features)
    assert features[1]["properties"]["measurements"] == {"anomaly_score": 1.7, "tissue_fraction": 1.0}
    assert features[2]["properties"]["measurements"] == {"tissue_fraction": 0.5}  # NaN left out
    assert shape(features[2]["geometry"]).bounds == (1024, 2048, 1536, 2560)
    assert shape(features[2]["geometry"]).area == 512 * 512

    geopandas = pytest.importorskip("geopandas")
    frame = geopandas.read_file(write_feature_collection(tmp_path / "tiles.geojson", features))
    assert len(frame) == 3 and shapely.area(frame.geometry.to_numpy()).tolist() == [512.0 * 512] * 3

    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        tile_features(coords, 512, {"anomaly_score": np.zeros(2)}, threshold=1.0, id_namespace="a")


def test_unwritable_target_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="a-file/regions.geojson"):
        write_feature_collection(blocker / "regions.geojson", [])
