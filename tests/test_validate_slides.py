"""End to end on a synthetic cohort (issue 13): `make-slide --cohort` truth in three formats, the
tiny model's heatmaps, `validate` numbers, plots and a chosen threshold that `heatmap` uses."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from click.testing import CliRunner

from wsi_haloae.annotations import read_feature_collection
from wsi_haloae.annotations.read import read_region
from wsi_haloae.cli import main
from wsi_haloae.config import HeatmapConfig, TrainConfig, load_config
from wsi_haloae.errors import ConfigError, DataError
from wsi_haloae.heatmaps.calibration import CALIBRATION_NAME, normalise_scores, read_calibration
from wsi_haloae.heatmaps.heatmap import SUMMARY_NAME, TILES_NAME, heatmap_slide, model_digest
from wsi_haloae.slides.synthetic_cohort import write_cohort
from wsi_haloae.slides.tiles import TileConfig, write_tiles
from wsi_haloae.training.checkpoint import load_trained
from wsi_haloae.training.train import train
from wsi_haloae.validation.slides import parse_threshold_choice, validate_slides

ROOT = Path(__file__).resolve().parents[1]
CFG = HeatmapConfig(mpp_um=1.0, workers=0, batch_size=16, min_region_um2=500.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2 normal + 2 abnormal 1024 px slides, the tiny model trained on tiles of normal-1, and the
    four heatmaps."""
    root = tmp_path_factory.mktemp("validate")
    written = write_cohort(
        root / "cohort", normal=2, abnormal=2, size_px=(1024, 1024), seed=3, stain_shift=0.0
    )
    slides = [c.slide.path for c in written]
    write_tiles([slides[0]], root / "tiles", TileConfig(mpp_um=1.0, tile_size_px=64, max_tiles=16))
    cfg = dataclasses.replace(
        load_config(ROOT / "configs" / "tiny.yaml", TrainConfig), epochs=1, samples_per_epoch=8
    )
    run = train(cfg, root / "tiles", root / "run", progress=False)
    trained = load_trained(run)
    for slide in slides:
        heatmap_slide(slide, trained, root / "heat", CFG)
    return {"root": root, "cohort": root / "cohort", "run": run, "heat": root / "heat"}


def test_cohort_truth_formats_agree(cohort: dict[str, Path]) -> None:
    manifest = json.loads((cohort["cohort"] / "cohort.json").read_text())
    abnormal = [s for s in manifest["slides"] if s["label"] == 1]
    assert [len(s["anomalies"]) for s in abnormal] == [1, 2]
    assert [s["size"] for s in abnormal] == ["small", "medium"]
    assert [s["stain_shift"] for s in manifest["slides"]] == [0.0] * 4
    for entry in abnormal:
        geojson = read_region(entry["truth"]["geojson"], slide_size_l0=(1024, 1024)).geometry
        xml = read_region(entry["truth"]["xml"], slide_size_l0=(1024, 1024)).geometry
        mask = read_region(entry["truth"]["mask"], slide_size_l0=(1024, 1024)).geometry
        # XML: the same polygons, to float precision
        assert shapely.symmetric_difference(geojson, xml).area < 1e-6 * geojson.area
        # mask at 1/16: exact at pixel centres, so it differs only in a band one mask pixel wide
        band = geojson.length * 16
        assert shapely.symmetric_difference(geojson, mask).area < band
        assert shapely.intersection(geojson, mask).area / shapely.union(geojson, mask).area > 0.8


def test_validate_writes_numbers_plots_and_a_threshold_file(cohort: dict[str, Path]) -> None:
    out = cohort["root"] / "val"
    result = validate_slides(
        [cohort["heat"]],
        [cohort["cohort"] / "truth" / "geojson"],
        out,
        labels_csv=cohort["cohort"] / "labels.csv",
        choose_threshold="youden",
    )
    assert result["n_slides"] == 4 and result["n_truth_regions"] == 3
    assert result["tile"]["n_positive"] > 0 and 0.0 <= result["tile"]["auroc"] <= 1.0
    for key in ("auprc", "f1_max"):
        assert 0.0 < result["tile"][key] <= 1.0
    assert 0.0 <= result["pixel"]["auroc"] <= 1.0 and 0.0 <= result["pixel"]["aupro"] <= 1.0
    assert 0.0 <= result["pixel"]["dice"] <= 1.0 and result["pixel"]["iou"] <= result["pixel"]["dice"]
    assert set(result["region"]["sensitivity_at"]) == {"0.25", "0.5", "1.0", "2.0", "4.0", "8.0"}
    assert result["region"]["froc"] == pytest.approx(
        np.mean(list(result["region"]["sensitivity_at"].values()))
    )
    assert result["region"]["hit_rule"] == "peak" and "overlap" in result["region"]["other_rule"]
    assert set(result["slide"]["auroc"]) == {"max", "topk_mean", "area_above_mm2"}
    assert result["slide"]["n_abnormal"] == 2 and result["slide"]["label_source"] == ["labels"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["model_sha256"] == model_digest(load_trained(cohort["run"]))
    assert on_disk["threshold"]["value"] == result["chosen_threshold"]["threshold"]
    assert "youden" in on_disk["threshold"]["source"] and on_disk["protocol"]["region_hit"] == "peak"
    with (out / "per_slide.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["slide"] for r in rows] == ["abnormal-1", "abnormal-2", "normal-1", "normal-2"]
    assert [int(r["truth_regions"]) for r in rows] == [1, 2, 0, 0]
    png = (out / "plots.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "| tile" in (out / "metrics.md").read_text()
    # the youden threshold maximises TPR - FPR over the tile scores
    record = read_calibration(out / CALIBRATION_NAME, model_sha256=on_disk["model_sha256"])
    assert record["threshold"] == on_disk["threshold"]["value"] and record["method"] == "youden"
    at = result["tile"]["at_threshold"]
    j = at["sensitivity"] + at["specificity"] - 1
    other = validate_slides(
        [cohort["heat"]],
        [cohort["cohort"] / "truth" / "geojson"],
        cohort["root"] / "val-t",
        threshold=float(np.mean(record["score_range"])),
        plots=False,
    )["tile"]["at_threshold"]
    assert other["sensitivity"] + other["specificity"] - 1 <= j + 1e-12


def test_the_three_truth_formats_give_the_same_metrics(cohort: dict[str, Path]) -> None:
    truth = cohort["cohort"] / "truth"
    runs = {
        name: validate_slides([cohort["heat"]], [truth / name], cohort["root"] / f"val-{name}", plots=False)
        for name in ("geojson", "xml", "mask")
    }
    assert runs["xml"]["tile"] == runs["geojson"]["tile"]
    assert runs["xml"]["pixel"] == runs["geojson"]["pixel"]
    # the mask loses the truth's slivers thinner than its 8 µm pixels: tiles touching an outline only
    n_geojson = runs["geojson"]["tile"]["n_positive"]
    assert abs(runs["mask"]["tile"]["n_positive"] - n_geojson) <= max(2, 0.2 * n_geojson)
    assert runs["mask"]["n_truth_regions"] == runs["geojson"]["n_truth_regions"]
    assert runs["mask"]["pixel"]["auroc"] == pytest.approx(runs["geojson"]["pixel"]["auroc"], abs=0.05)


def test_a_chosen_threshold_round_trips_into_heatmap(cohort: dict[str, Path]) -> None:
    out = cohort["root"] / "val-fpr"
    result = validate_slides(
        [cohort["heat"]],
        [cohort["cohort"] / "truth" / "geojson"],
        out,
        choose_threshold="fpr:0.05",
        plots=False,
    )
    chosen = result["chosen_threshold"]["threshold"]
    assert result["tile"]["at_threshold"]["fp"] / result["tile"]["n_negative"] <= 0.05
    trained = load_trained(cohort["run"])
    slide = cohort["cohort"] / "slides" / "abnormal-2.tiff"
    cfg = dataclasses.replace(CFG, threshold_file=str(out / CALIBRATION_NAME))
    again = heatmap_slide(slide, trained, cohort["root"] / "heat-calibrated", cfg)
    summary = json.loads((again.out_dir / SUMMARY_NAME).read_text())
    assert summary["threshold"]["value"] == chosen
    assert (
        "calibration file" in summary["threshold"]["source"] and "fpr:0.05" in summary["threshold"]["source"]
    )
    record = read_calibration(out / CALIBRATION_NAME)
    tiles = read_feature_collection(again.out_dir / TILES_NAME)["features"]
    # written at float32 precision: back to the exact float32 the heatmap compared
    scores = np.array([f["properties"]["measurements"]["anomaly_score"] for f in tiles], np.float32).astype(
        float
    )
    normalised = np.array([f["properties"]["measurements"]["anomaly_score_normalised"] for f in tiles])
    np.testing.assert_allclose(
        normalised, normalise_scores(scores, chosen, tuple(record["score_range"])), atol=1e-5
    )
    assert ((normalised > 0.5) == (scores > chosen)).all()
    assert (
        sum(f["properties"]["classification"]["name"] == "Anomaly" for f in tiles) == (scores > chosen).sum()
    )
    # the run folder's threshold.json is the default when no threshold is asked for
    (cohort["run"] / CALIBRATION_NAME).write_bytes((out / CALIBRATION_NAME).read_bytes())
    try:
        default = heatmap_slide(slide, trained, cohort["root"] / "heat-default", CFG)
        assert default.threshold == chosen
    finally:
        (cohort["run"] / CALIBRATION_NAME).unlink()
    # a calibration file of another model is refused
    other = json.loads((out / CALIBRATION_NAME).read_text())
    other["model_sha256"] = "0" * 64
    (cohort["root"] / "other.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="chosen for model"):
        heatmap_slide(
            slide,
            trained,
            cohort["root"] / "heat-x",
            dataclasses.replace(CFG, threshold_file=str(cohort["root"] / "other.json")),
        )


def test_validate_cli_and_its_errors(cohort: dict[str, Path]) -> None:
    runner = CliRunner()
    out = cohort["root"] / "val-cli"
    args = [
        "validate",
        str(cohort["heat"]),
        "--truth",
        str(cohort["cohort"] / "truth" / "xml"),
        "--out",
        str(out),
    ]
    result = runner.invoke(
        main,
        [*args, "--choose-threshold", "fps-per-slide:1", "--labels", str(cohort["cohort"] / "labels.csv")],
    )
    assert result.exit_code == 0, result.output
    assert "FROC score" in result.output and "threshold file" in result.output
    assert json.loads((out / "metrics.json").read_text())["region"]["at_threshold"]["fps_per_slide"] <= 1.0
    bad = runner.invoke(main, [*args, "--choose-threshold", "best"])
    assert bad.exit_code != 0 and "youden, fpr:X" in bad.output
    with pytest.raises(DataError, match="matches no slide"):
        validate_slides([cohort["heat"]], [cohort["cohort"] / "truth" / "xml" / "abnormal-1x.xml"], out)
    assert parse_threshold_choice("fpr:0.05") == ("fpr", 0.05)


def test_cohort_has_a_stain_shifted_normal_slide(tmp_path: Path) -> None:
    written = write_cohort(tmp_path, normal=1, abnormal=0, size_px=(1024, 1024), seed=3)
    assert [c.slide.path.name for c in written] == ["normal-1.tiff", "normal-stain-shifted.tiff"]
    shifted = written[1].slide
    assert shifted.stain_shift == 0.5 and written[1].label == 0
    assert shifted.tissue.equals(written[0].slide.tissue)  # the same tissue, restained
    manifest = json.loads((tmp_path / "cohort.json").read_text())
    assert [s["stain_shift"] for s in manifest["slides"]] == [0.0, 0.5]
    with (tmp_path / "labels.csv").open() as handle:
        assert handle.read().splitlines()[1:] == ["normal-1,0", "normal-stain-shifted,0"]
