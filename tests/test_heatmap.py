"""The `heatmap` job end to end: a tiny model trained here on a normal synthetic slide scores a
slide with planted anomalies; outputs read back by ome-zarr and geopandas; resume after a kill
gives identical files; the lock; the real CMU slide; bad inputs through the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file
from shapely.geometry import box

from wsi_haloae.annotations import read_feature_collection
from wsi_haloae.cli import main
from wsi_haloae.config import HeatmapConfig, TrainConfig, load_config
from wsi_haloae.errors import OutputError
from wsi_haloae.heatmaps import pyramid
from wsi_haloae.heatmaps.heatmap import (
    OVERLAY_NAME,
    REGIONS_NAME,
    SCORES_NAME,
    STORE_NAME,
    SUMMARY_NAME,
    TILES_NAME,
    TOP_TILES_NAME,
    heatmap_slide,
    output_lock,
)
from wsi_haloae.slides.synthetic import SyntheticSlide
from wsi_haloae.slides.tiles import TileConfig, write_tiles
from wsi_haloae.training.checkpoint import MODEL_FILE, TrainedModel, load_trained
from wsi_haloae.training.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# The tiny model's 64-px tiles at 1 µm/px (128 level-0 px) on the 2048 x 1536 slide: a 16 x 12
# grid, a 192 x 256 heatmap at 4 µm/px; 12-row bands, so tile rows straddle band edges.
CFG = HeatmapConfig(mpp_um=1.0, workers=0, batch_size=8, chunk_px=12, min_region_um2=500.0)
# Coarser, for the resume tests: 2 µm/px tiles (8 x 6 grid), a 96 x 128 heatmap in 24 bands of 4
# rows, batches of 2 tiles (not the model's 1 µm/px: allowed explicitly)
COARSE = dataclasses.replace(CFG, mpp_um=2.0, chunk_px=4, batch_size=2, allow_mpp_mismatch=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(
    synthetic_slide_factory: Callable[..., SyntheticSlide], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny model, briefly trained on tiles of a slide without anomalies."""
    normal = synthetic_slide_factory(2048, 1536, mpp_um=0.5, tissue="blobs", anomalies=0, seed=5)
    folder = tmp_path_factory.mktemp("heatmap_run")
    write_tiles([normal.path], folder / "tiles", TileConfig(mpp_um=1.0, tile_size_px=64, max_tiles=16))
    cfg = dataclasses.replace(load_config(TINY, TrainConfig), epochs=1, samples_per_epoch=8)
    return train(cfg, folder / "tiles", folder / "run", progress=False)


@pytest.fixture(scope="module")
def trained(run_dir: Path) -> TrainedModel:
    return load_trained(run_dir)


@pytest.fixture(scope="module")
def done(
    small_slide: SyntheticSlide, trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The output folder of one uninterrupted run on the slide with planted anomalies."""
    out = tmp_path_factory.mktemp("heatmap_out")
    result = heatmap_slide(small_slide.path, trained, out, CFG)
    assert result.out_dir == out / small_slide.path.stem
    return result.out_dir


@pytest.fixture(scope="module")
def done_coarse(
    small_slide: SyntheticSlide, trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An uninterrupted run with the `COARSE` settings."""
    return heatmap_slide(small_slide.path, trained, tmp_path_factory.mktemp("coarse"), COARSE).out_dir


def _level0(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(folder / STORE_NAME, mode="r")
    return group["0"][:], group["labels/tissue/0"][:]


def test_outputs_exist_and_describe_the_run(
    done: Path, small_slide: SyntheticSlide, trained: TrainedModel
) -> None:
    for name in (
        STORE_NAME,
        TILES_NAME,
        REGIONS_NAME,
        OVERLAY_NAME,
        TOP_TILES_NAME,
        SCORES_NAME,
        SUMMARY_NAME,
    ):
        assert (done / name).exists(), name
    assert TILES_NAME.endswith(".gz") and (done / TILES_NAME).read_bytes()[:2] == b"\x1f\x8b"
    assert not (done / ".resume").exists()
    summary = json.loads((done / SUMMARY_NAME).read_text())
    assert (summary["grid"]["columns"], summary["grid"]["rows"], summary["grid"]["tile_size_l0"]) == (
        16,
        12,
        128,
    )
    # one heatmap px per 4 tile px: 8 level-0 px, 4 µm
    assert summary["heatmap"]["shape_yx"] == [192, 256] and summary["heatmap"]["mpp_um_yx"] == [4.0, 4.0]
    assert summary["heatmap"]["px_to_l0"] == 8.0 and summary["heatmap"]["levels"] == 1
    # tissue-aware by default: the training scores made from tissue pixels only
    assert summary["threshold"]["value"] == pytest.approx(
        trained.threshold(normalisation="median", tissue_aware=True)
    )
    assert summary["threshold"]["source"] == "percentile 99 of 16 training tile scores (tissue_median)"
    assert summary["fingerprint"]["tissue_aware"] is True
    tiles = summary["tiles"]
    assert tiles["grid"] == 192 and 0 < tiles["anomalous"] < tiles["tissue"] < 192
    assert summary["run"]["computed_tiles"] == tiles["tissue"] and summary["run"]["bands_resumed"] == 0
    assert set(summary["timings_s"]) >= {
        "tissue_s",
        "inference_s",
        "pyramid_s",
        "regions_s",
        "overlay_s",
        "total_s",
    }
    scores = np.load(done / SCORES_NAME)
    assert len(scores["score_mean"]) == tiles["tissue"] and (scores["tissue_fraction"] >= 0.5).all()
    assert tiles["anomalous"] == int((scores["score_mean"] > summary["threshold"]["value"]).sum())
    assert summary["scores"]["tile_mean"]["max"] == pytest.approx(float(scores["score_mean"].max()))
    assert np.all(scores["score_max"] >= scores["score_mean"])


def test_planted_anomalies_score_above_normal_tissue(done: Path, small_slide: SyntheticSlide) -> None:
    scores = np.load(done / SCORES_NAME)
    anomalies = [a.polygon for a in small_slide.anomalies]
    tiles = [box(x, y, x + 128, y + 128) for x, y in zip(scores["x_l0"], scores["y_l0"])]
    overlap = np.array([max(t.intersection(a).area for a in anomalies) / t.area for t in tiles])
    anomalous, normal = scores["score_mean"][overlap > 0.5], scores["score_mean"][overlap == 0]
    assert len(anomalous) >= 3 and len(normal) > 50
    assert anomalous.mean() > 2 * normal.mean()
    assert anomalous.max() > np.percentile(normal, 95)
    # the heatmap agrees: computed pixels inside the anomalies outscore the others
    heat, mask = _level0(done)
    centres_x, centres_y = np.arange(256) * 8.0 + 4.0, np.arange(192) * 8.0 + 4.0  # level-0 px
    inside = np.zeros(heat.shape, bool)
    for anomaly in small_slide.anomalies:
        inside |= anomaly.shape.contains(centres_x, centres_y)
    computed = mask > 0
    assert np.mean(heat[inside & computed]) > 2 * np.mean(heat[~inside & computed])


def test_store_reads_back_with_ome_zarr(done: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(done / STORE_NAME)))())
    image = nodes[0]
    assert [tuple(level.shape) for level in image.data] == [(192, 256)]
    # heatmap px = 8 slide px of 0.5 µm: centres move by (4.0 - 0.5) / 2 onto the slide pixels' centres
    assert image.metadata["coordinateTransformations"] == [
        [{"type": "scale", "scale": [4.0, 4.0]}, {"type": "translation", "translation": [1.75, 1.75]}]
    ]
    assert [axis["unit"] for axis in image.metadata["axes"]] == ["micrometer", "micrometer"]
    heat, mask = _level0(done)
    np.testing.assert_array_equal(np.asarray(image.data[0]), heat)
    labels = [node for node in nodes if node.metadata.get("name") == "tissue"]
    assert labels and np.array_equal(np.asarray(labels[0].data[0]), mask)
    assert np.isnan(heat[mask == 0]).all() and np.isfinite(heat[mask == 1]).all()
    assert 0.2 < mask.mean() < 0.43  # computed tissue: at most the blobs' 43 % of the slide


def test_a_wide_slide_gets_a_pyramid(
    synthetic_slide_factory: Callable[..., SyntheticSlide], trained: TrainedModel, tmp_path: Path
) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    wide = synthetic_slide_factory(33000, 600, mpp_um=0.5, tissue="blobs", seed=1)
    # 4 µm/px tiles span 512 level-0 px; heatmap px 32 level-0 px = 16 µm: 19 x 1032 px, two levels
    result = heatmap_slide(
        wide.path,
        trained,
        tmp_path,
        dataclasses.replace(CFG, mpp_um=4.0, chunk_px=8, min_tissue=0.75, allow_mpp_mismatch=True),
    )
    image = next(iter(Reader(parse_url(str(result.out_dir / STORE_NAME)))()))
    assert [tuple(level.shape) for level in image.data] == [(19, 1032), (10, 516)]
    scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
    assert scales == [[16.0, 16.0], [32.0, 32.0]]
    heat, mask = _level0(result.out_dir)
    # each tile covers 16 x 16 heatmap px, of which the tissue ones (most: min_tissue 0.75) are computed
    assert 5 <= result.tiles <= 40 and 0.7 * result.tiles * 256 < mask.sum() <= result.tiles * 256
    # level 1 is the mean of each 2 x 2 block's computed pixels (rows padded to 20)
    computed = np.pad(mask > 0, ((0, 1), (0, 0))).reshape(10, 2, 516, 2)
    total = np.pad(np.where(mask > 0, heat, 0.0), ((0, 1), (0, 0))).reshape(10, 2, 516, 2).sum(axis=(1, 3))
    count = computed.sum(axis=(1, 3))
    expected = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    np.testing.assert_allclose(np.asarray(image.data[1]), expected, rtol=1e-6)


def test_geojson_reads_back_with_qupath_fields(done: Path) -> None:
    summary = json.loads((done / SUMMARY_NAME).read_text())
    tiles = gpd.read_file(f"/vsigzip/{done / TILES_NAME}")  # GDAL reads gzip through /vsigzip/
    assert len(tiles) == summary["tiles"]["tissue"]
    assert set(tiles["objectType"]) == {"detection"}
    names = [c["name"] for c in tiles["classification"]]
    assert names.count("Anomaly") == summary["tiles"]["anomalous"]
    first = read_feature_collection(done / TILES_NAME)["features"][0]
    assert set(first["properties"]["measurements"]) == {
        "anomaly_score",
        "max_score",
        "tissue_fraction",
        "anomaly_score_normalised",
    }
    with np.load(done / SCORES_NAME) as stored:  # float32 precision, the shortest decimal that keeps it
        score = first["properties"]["measurements"]["anomaly_score"]
        assert np.float32(score) == stored["score_mean"][0] and len(repr(score)) <= 12
    # normalised scores: in [0, 1], the threshold at 0.5 (heatmaps/calibration.py)
    threshold = summary["threshold"]["value"]
    lo, hi = summary["threshold"]["normalised_score_range"]
    for feature in read_feature_collection(done / TILES_NAME)["features"]:
        m = feature["properties"]["measurements"]
        expected = min(1, max(0, 0.5 + (m["anomaly_score"] - threshold) / (hi - lo)))
        assert m["anomaly_score_normalised"] == pytest.approx(expected, abs=1e-5)
    x0, y0, x1, y1 = tiles.geometry.iloc[0].bounds
    assert (x1 - x0, y1 - y0) == (128, 128) and x0 % 128 == 0  # level-0 px
    regions = gpd.read_file(done / REGIONS_NAME)
    assert len(regions) == summary["regions"]["count"] > 0
    assert set(regions["objectType"]) == {"annotation"}
    raw = json.loads((done / REGIONS_NAME).read_text())["features"]
    areas = [feature["properties"]["measurements"]["area_um2"] for feature in raw]
    assert sum(areas) == pytest.approx(summary["regions"]["total_area_um2"]) and min(areas) >= 500.0
    assert all(r["properties"]["measurements"]["max_score"] > summary["threshold"]["value"] for r in raw)
    assert all(r["properties"]["measurements"]["max_score_normalised"] > 0.5 for r in raw)


def test_rerun_is_a_no_op_and_a_new_threshold_rescores_nothing(
    done: Path, small_slide: SyntheticSlide, trained: TrainedModel, tmp_path: Path
) -> None:
    before = _level0(done)
    again = heatmap_slide(small_slide.path, trained, done.parent, CFG)
    assert (again.computed_tiles, again.bands_resumed) == (0, 0)
    # a copy, so other tests keep the original outputs
    copy = tmp_path / done.name
    shutil.copytree(done, copy)
    lower = heatmap_slide(small_slide.path, trained, tmp_path, dataclasses.replace(CFG, threshold=0.0))
    assert lower.computed_tiles == 0 and lower.anomalous_tiles == lower.tiles
    for expected, got in zip(before, _level0(copy)):
        np.testing.assert_array_equal(expected, got)


def test_resume_after_a_failure_gives_identical_outputs(
    done_coarse: Path,
    small_slide: SyntheticSlide,
    trained: TrainedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written = []
    write_band = pyramid.HeatmapStore.write_band

    def dies_after_twelve(self: pyramid.HeatmapStore, y0: int, scores: np.ndarray, mask: np.ndarray) -> None:
        if len(written) == 12:
            raise KeyboardInterrupt  # what Ctrl-C leaves: some bands written, no summary
        written.append(y0)
        write_band(self, y0, scores, mask)

    monkeypatch.setattr(pyramid.HeatmapStore, "write_band", dies_after_twelve)
    with pytest.raises(KeyboardInterrupt):
        heatmap_slide(small_slide.path, trained, tmp_path, COARSE)
    folder = tmp_path / small_slide.path.stem
    assert not (folder / SUMMARY_NAME).exists() and len(written) == 12
    monkeypatch.setattr(pyramid.HeatmapStore, "write_band", write_band)
    resumed = heatmap_slide(small_slide.path, trained, tmp_path, COARSE)
    # only the tiles touching the 12 unwritten bands (in whole batches) are scored again
    assert resumed.bands_resumed == 12 and 0 < resumed.computed_tiles < resumed.tiles
    _assert_same_outputs(done_coarse, folder)


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_outputs(
    done_coarse: Path, small_slide: SyntheticSlide, run_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "heatmap.yaml"
    config.write_text(
        "mpp_um: 2.0\nallow_mpp_mismatch: true\nworkers: 0\nbatch_size: 2\nchunk_px: 4\nmin_region_um2: 500.0\ndevice: cpu\n"
    )
    command = [
        sys.executable,
        "-c",
        "from wsi_haloae.cli import main; main()",
        "heatmap",
        str(small_slide.path),
        "--model",
        str(run_dir),
        "--out",
        str(tmp_path),
        "--config",
        str(config),
        "--no-progress",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    store = tmp_path / small_slide.path.stem / STORE_NAME
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if _bands_done(store) >= 1:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    result = CliRunner().invoke(main, command[3:])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / small_slide.path.stem / SUMMARY_NAME).read_text())
    assert summary["run"]["bands_resumed"] >= 1
    assert result.stdout == (
        f"{small_slide.path.name}: {summary['tiles']['tissue']} tiles, {summary['tiles']['anomalous']} above "
        f"{summary['threshold']['value']:.4g}, {summary['regions']['count']} regions -> "
        f"{tmp_path / small_slide.path.stem} ({summary['run']['computed_tiles']} scored now, "
        f"{summary['timings_s']['total_s']:.1f} s)\n"
    )
    _assert_same_outputs(done_coarse, tmp_path / small_slide.path.stem)


def test_a_second_writer_is_refused(
    small_slide: SyntheticSlide, trained: TrainedModel, tmp_path: Path
) -> None:
    folder = tmp_path / small_slide.path.stem
    folder.mkdir()
    with output_lock(folder), pytest.raises(OutputError) as info:
        heatmap_slide(small_slide.path, trained, tmp_path, CFG)
    assert str(info.value) == (
        f"another run is writing {folder} (pid {os.getpid()}); wait for it or choose another --out"
    )
    with output_lock(folder):  # released when the holder is done
        pass


def test_the_real_cmu_slide(cmu_slide: Path, trained: TrainedModel, tmp_path: Path) -> None:
    result = heatmap_slide(
        cmu_slide, trained, tmp_path, HeatmapConfig(mpp_um=2.0, workers=0, allow_mpp_mismatch=True)
    )
    summary = json.loads((result.out_dir / SUMMARY_NAME).read_text())
    # 0.499 µm/px slide, 2 µm/px tiles: footprint round(64 x 2 / 0.499) = 257 level-0 px
    assert summary["grid"]["tile_size_l0"] == 257 and (
        summary["grid"]["columns"],
        summary["grid"]["rows"],
    ) == (8, 11)
    px_to_l0 = summary["heatmap"]["px_to_l0"]
    assert px_to_l0 == pytest.approx(4 * 257 / 64)
    assert summary["heatmap"]["shape_yx"] == [int(np.ceil(2967 / px_to_l0)), int(np.ceil(2220 / px_to_l0))]
    assert summary["heatmap"]["mpp_um_yx"][0] == pytest.approx(0.499 * px_to_l0, rel=1e-3)
    assert 10 < result.tiles < 88 and (result.out_dir / OVERLAY_NAME).stat().st_size > 10_000


def test_bench_heatmap_prints_every_stage(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "heatmap",
            "--size",
            "512x384",
            "--config",
            str(TINY),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--batch-size",
            "4",
            "--baseline-tiles",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [
        line.split(" | ")
        for line in result.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    stages = {row[0].lstrip("| "): int(row[1]) for row in rows[1:]}
    # an all-tissue 512 x 384 slide: 8 x 6 tiles of 64 px; transfer and model time as many tiles
    assert stages == {
        "end to end": 48,
        "streaming": 48,
        "read only": 48,
        "host -> device": 48,
        "model only": 48,
        "stitch + write": 48,
        "baseline: batch 1, fp32": 3,
    }
    assert "tile readers: 0. Peak RSS: " in result.stdout


def _bad_inputs(run_dir: Path, slide: Path, no_mpp: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (command-line arguments after `heatmap`, words the error line must hold)"""
    empty = tmp_path / "empty_run"
    empty.mkdir()
    corrupt = tmp_path / "corrupt_run"
    corrupt.mkdir()
    data = (run_dir / MODEL_FILE).read_bytes()
    (corrupt / MODEL_FILE).write_bytes(data[: len(data) // 2])
    mismatched = tmp_path / "mismatched_run"
    mismatched.mkdir()
    with safe_open(str(run_dir / MODEL_FILE), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    config = json.loads(metadata["config"])
    config["model"]["width"] = 0.25  # the weights are the 0.125-width model's
    save_file(tensors, str(mismatched / MODEL_FILE), metadata={**metadata, "config": json.dumps(config)})
    return {
        "wrong model folder": ([str(slide), "--model", str(empty)], "no trained model at"),
        "corrupt checkpoint": ([str(slide), "--model", str(corrupt)], "is corrupt or truncated"),
        "mismatched config": ([str(slide), "--model", str(mismatched)], "weights do not match the config"),
        "missing slide": ([str(tmp_path / "missing.svs"), "--model", str(run_dir)], "missing.svs"),
        "slide without mpp": ([str(no_mpp), "--model", str(run_dir), "--level", "0"], "pass --assume-mpp"),
        "mpp and level": (
            [str(slide), "--model", str(run_dir), "--mpp", "1", "--level", "0"],
            "either a target mpp",
        ),
    }


def test_cli_bad_inputs_give_one_clear_line(
    small_slide: SyntheticSlide, run_dir: Path, broken_files: Path, tmp_path: Path
) -> None:
    cases = _bad_inputs(run_dir, small_slide.path, broken_files / "no_mpp.tiff", tmp_path)
    for name, (arguments, words) in cases.items():
        result = CliRunner().invoke(
            main, ["heatmap", *arguments, "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"]
        )
        assert result.exit_code == 2, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (name, lines)
        assert not list((tmp_path / "out").glob(f"*/{SUMMARY_NAME}")), name


def _assert_same_outputs(expected: Path, got: Path) -> None:
    for array_expected, array_got in zip(_level0(expected), _level0(got)):
        np.testing.assert_array_equal(array_expected, array_got)
    group_expected = zarr.open_group(expected / STORE_NAME, mode="r")
    group_got = zarr.open_group(got / STORE_NAME, mode="r")
    assert dict(group_expected.attrs)["ome"] == dict(group_got.attrs)["ome"]
    for name in (TILES_NAME, REGIONS_NAME):
        assert (expected / name).read_bytes() == (got / name).read_bytes(), name
    with np.load(expected / SCORES_NAME) as a, np.load(got / SCORES_NAME) as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def _bands_done(store: Path) -> int:
    try:
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
        return len(attrs["wsi_haloae"]["bands_done"])
    except (OSError, ValueError, KeyError):
        return 0


def test_also_export_qupath_writes_the_ome_tiff_of_a_finished_run(
    done_coarse: Path, small_slide: SyntheticSlide, run_dir: Path, tmp_path: Path
) -> None:
    import tifffile
    from ome_types import from_xml

    config = tmp_path / "heatmap.yaml"
    config.write_text(
        "mpp_um: 2.0\nallow_mpp_mismatch: true\nworkers: 0\nbatch_size: 2\nchunk_px: 4\nmin_region_um2: 500.0\n"
    )
    command = ["heatmap", str(small_slide.path), "--model", str(run_dir), "--out", str(done_coarse.parent)]
    result = CliRunner().invoke(
        main, [*command, "--config", str(config), "--no-progress", "--also-export", "qupath"]
    )
    assert result.exit_code == 0, result.output
    assert "(0 scored now" in result.output and "heatmap.ome.tif" in result.output  # no rescoring
    summary = json.loads((done_coarse / SUMMARY_NAME).read_text())
    heat, mask = _level0(done_coarse)
    with tifffile.TiffFile(done_coarse / "heatmap.ome.tif") as tif:
        np.testing.assert_array_equal(tif.series[0].levels[0].asarray(), heat)
        pixels = from_xml(tif.ome_metadata).images[0].pixels
    assert [pixels.physical_size_y, pixels.physical_size_x] == summary["heatmap"]["mpp_um_yx"]
    assert (done_coarse / "heatmap_overlay.png").is_file() and (done_coarse / TOP_TILES_NAME).is_file()


def test_plain_tiles_geojson_on_request_without_rescoring(
    done_coarse: Path, small_slide: SyntheticSlide, trained: TrainedModel, tmp_path: Path
) -> None:
    shutil.copytree(done_coarse, tmp_path / done_coarse.name)
    result = heatmap_slide(small_slide.path, trained, tmp_path, dataclasses.replace(COARSE, tiles_gzip=False))
    assert result.computed_tiles == 0
    plain = tmp_path / done_coarse.name / "tiles.geojson"
    assert not (tmp_path / done_coarse.name / TILES_NAME).exists()
    assert json.loads(plain.read_text()) == read_feature_collection(done_coarse / TILES_NAME)
