"""Artefact QC (slides/qc.py) on a synthetic slide with planted pen, blur and fold, against the
exact truth; clean tissue and the planted anomalies (which are the model's job) stay unflagged."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from wsi_haloae.annotations.read import fraction_inside, tile_boxes
from wsi_haloae.slides.grid import TileGrid
from wsi_haloae.slides.qc import classify, qc_tiles, tile_measures
from wsi_haloae.slides.slide import open_slide
from wsi_haloae.slides.synthetic import ARTEFACT_KINDS, plan_synthetic_slide, render_region
from wsi_haloae.slides.tissue import detect_tissue, select_tiles


@pytest.fixture(scope="module")
def artefact_slide(synthetic_slide_factory):
    return synthetic_slide_factory(
        3072, 3072, mpp_um=0.5, anomalies=3, seed=2, artefacts=("pen", "blur", "fold", "pen")
    )


@pytest.fixture(scope="module")
def checked(artefact_slide):
    with open_slide(artefact_slide.path) as slide:
        grid = TileGrid.for_slide(slide, mpp_um=0.5, tile_size_px=128)
        tissue = detect_tissue(slide, max_size_px=1024)
        selection = select_tiles(grid, tissue.mask, tissue.downsample, min_tissue=0.5)
        qc = qc_tiles(slide, grid, selection.indices)
    boxes = tile_boxes(grid.coordinates()[selection.indices], grid.tile_size_l0)

    def overlap(items, kind):
        shapes = [item.polygon for item in items if item.kind == kind]
        return fraction_inside(shapely.union_all(shapes), boxes) if shapes else np.zeros(len(boxes))

    truth = {kind: overlap(artefact_slide.artefacts, kind) for kind in ARTEFACT_KINDS}
    anomalies = sum(overlap(artefact_slide.anomalies, kind) for kind in ("foreign", "stain", "fold"))
    return qc, truth, anomalies


@pytest.mark.parametrize("kind", ARTEFACT_KINDS)
def test_planted_artefacts_are_found(checked, kind: str) -> None:
    qc, truth, _ = checked
    mostly = truth[kind] >= 0.5
    assert mostly.sum() >= 5  # the slide does plant this kind across several tiles
    recall = (qc.kind[mostly] == kind).mean()
    flagged = qc.kind == kind
    precision = (truth[kind][flagged] > 0).mean()
    assert recall >= 0.9, f"{kind}: recall {recall:.2f}"
    assert precision >= 0.9, f"{kind}: precision {precision:.2f}"


def test_clean_tissue_and_anomalies_are_left_alone(checked) -> None:
    qc, truth, anomalies = checked
    clean = (sum(truth.values()) == 0) & (anomalies == 0)
    assert clean.sum() > 100
    assert not qc.is_artefact[clean].any()
    # foreign tissue, dark stains and the two-layer "fold" anomaly are pathology-like: not artefacts
    assert not qc.is_artefact[(anomalies >= 0.25) & (sum(truth.values()) == 0)].any()


def test_measures_of_plain_tiles() -> None:
    slide = plan_synthetic_slide("x.tiff", 2048, 2048, tissue="full", seed=1)
    tissue = render_region(slide, 0, 0, (256, 256))
    glass = np.full((256, 256, 3), 240, np.uint8)
    pen, fold, blur = tile_measures(np.stack([tissue, glass]))
    assert pen.tolist() == [0.0, 0.0]
    assert fold[0] == 0.0 and blur[0] == 0.0
    assert np.isnan(fold[1]) and np.isnan(blur[1])  # glass: nothing to measure
    assert classify(pen, fold, blur).tolist() == ["", ""]
    flat = np.full((256, 256, 3), (200, 120, 170), np.uint8)  # pink tissue with no detail at all
    assert classify(*tile_measures(flat[None])).tolist() == ["blur"]
    inked = tissue.copy()
    inked[:, :64] = (tissue[:, :64] * np.array([0.15, 0.5, 0.8])).astype(np.uint8)
    assert classify(*tile_measures(inked[None])).tolist() == ["pen"]


def test_cmu_small_region(cmu_slide) -> None:
    """CMU-1-Small-Region: in-focus skin with no fold; the green tissue-marking dye at the
    epidermis' torn edge (top right) is ink, and the QC says so."""
    with open_slide(cmu_slide) as slide:
        grid = TileGrid.for_slide(slide, mpp_um=0.5, tile_size_px=256)
        tissue = detect_tissue(slide)
        selection = select_tiles(grid, tissue.mask, tissue.downsample, min_tissue=0.5)
        qc = qc_tiles(slide, grid, selection.indices)
    assert len(qc) == 34
    assert qc.counts() == {"pen": 1, "fold": 0, "blur": 0}
    assert grid.coordinates()[qc.indices[qc.is_artefact]].tolist() == [[1536, 1024]]
