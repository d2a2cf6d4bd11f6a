"""`heatmap` with regions (--include/--exclude) and artefact QC: artefact tiles get their own
class in tiles.geojson, their own count in summary.json, and stay out of the anomaly regions."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import shapely

from wsi_haloae.config import HeatmapConfig, TrainConfig, load_config
from wsi_haloae.heatmaps.heatmap import REGIONS_NAME, SCORES_NAME, SUMMARY_NAME, TILES_NAME, heatmap_slide
from wsi_haloae.slides.grid import TileGrid
from wsi_haloae.slides.slide import open_slide
from wsi_haloae.slides.tiles import TileConfig, write_tiles
from wsi_haloae.slides.tissue import detect_tissue, select_tiles
from wsi_haloae.training.checkpoint import load_trained
from wsi_haloae.training.train import train

ROOT = Path(__file__).resolve().parents[1]
CFG = HeatmapConfig(mpp_um=1.0, workers=0, batch_size=8, min_region_um2=500.0, threshold=0.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(synthetic_slide_factory, tmp_path_factory):
    normal = synthetic_slide_factory(2048, 1536, mpp_um=0.5, tissue="blobs", anomalies=0, seed=5)
    folder = tmp_path_factory.mktemp("regions_run")
    write_tiles([normal.path], folder / "tiles", TileConfig(mpp_um=1.0, tile_size_px=64, max_tiles=16))
    cfg = dataclasses.replace(
        load_config(ROOT / "configs" / "tiny.yaml", TrainConfig), epochs=1, samples_per_epoch=8
    )
    return load_trained(train(cfg, folder / "tiles", folder / "run", progress=False))


@pytest.fixture(scope="module")
def artefact_slide(synthetic_slide_factory):
    return synthetic_slide_factory(
        3072, 3072, mpp_um=0.5, anomalies=3, seed=2, artefacts=("pen", "blur", "fold", "pen")
    )


def test_artefacts_are_their_own_class_and_never_anomaly_regions(artefact_slide, trained, tmp_path) -> None:
    # threshold 0: every tile is above it, so every scored tissue pixel would be in a region
    folder = heatmap_slide(artefact_slide.path, trained, tmp_path, CFG).out_dir
    summary = json.loads((folder / SUMMARY_NAME).read_text())
    features = json.loads(gzip.decompress((folder / TILES_NAME).read_bytes()))["features"]
    names = Counter(f["properties"]["classification"]["name"] for f in features)
    artefacts = summary["artefacts"]
    assert artefacts["qc"] == "report" and artefacts["tiles"] == sum(artefacts["by_kind"].values())
    for kind in ("pen", "fold", "blur"):
        assert artefacts["by_kind"][f"Artefact: {kind}"] == names[f"Artefact: {kind}"] > 0, (kind, names)
    assert (
        summary["tiles"]["anomalous"] == names["Anomaly"] == summary["tiles"]["tissue"] - artefacts["tiles"]
    )
    # artefact tiles are still scored (tile_scores.npz keeps every tissue tile)
    with np.load(folder / SCORES_NAME) as scores:
        assert (
            len(scores["score_mean"]) == summary["tiles"]["tissue"]
            and np.isfinite(scores["score_mean"]).all()
        )
        flagged = [f["properties"]["classification"]["name"].startswith("Artefact") for f in features]
        assert scores["artefact"].tolist() == flagged  # per-tile flags for the viewer and the overlay
    boxes = [
        shapely.geometry.shape(f["geometry"])
        for f in features
        if f["properties"]["classification"]["name"].startswith("Artefact")
    ]
    inner = shapely.union_all([b.buffer(-16) for b in boxes])  # 2 heatmap px inside each artefact tile
    regions = [
        shapely.geometry.shape(f["geometry"])
        for f in json.loads((folder / REGIONS_NAME).read_text())["features"]
    ]
    assert regions and all(region.intersection(inner).area == 0 for region in regions)
    assert (
        artefacts["tiles"] > 0
        and shapely.union_all(regions).intersection(shapely.union_all(boxes)).area
        < 0.05 * shapely.union_all(boxes).area
    )


def test_heatmap_scores_inside_the_included_region_only(artefact_slide, trained, tmp_path) -> None:
    region = tmp_path / "roi.geojson"
    roi = [[0, 0], [1536, 0], [1536, 1536], [0, 1536], [0, 0]]
    region.write_text(
        json.dumps(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [roi]},
                "properties": {"classification": {"name": "ROI"}},
            }
        )
    )
    coarse = dataclasses.replace(CFG, mpp_um=2.0, artefacts="off", allow_mpp_mismatch=True)  # 256 l0 px tiles
    inside = heatmap_slide(
        artefact_slide.path, trained, tmp_path, dataclasses.replace(coarse, include=(f"{region}:ROI",))
    )
    with open_slide(artefact_slide.path) as slide:
        grid = TileGrid.for_slide(slide, mpp_um=2.0, tile_size_px=64)
        tissue = detect_tissue(slide)
    every = grid.coordinates()[select_tiles(grid, tissue.mask, tissue.downsample, min_tissue=0.5).indices]
    # tiles with their origin in [0, 1536) lie wholly inside the square, the others wholly outside
    expected = {(x, y) for x, y in every.tolist() if x < 1536 and y < 1536}
    with np.load(inside.out_dir / SCORES_NAME) as scores:
        assert set(zip(scores["x_l0"].tolist(), scores["y_l0"].tolist())) == expected
    summary = json.loads((inside.out_dir / SUMMARY_NAME).read_text())
    assert summary["fingerprint"]["regions"]["include"] == [f"{region}:ROI"] and summary["artefacts"] == {
        "qc": "off"
    }
