"""Cohorts on dask.distributed: real LocalClusters of worker processes, real slides, a real kill."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from distributed import Client, LocalCluster

from wsi_haloae.cli import main
from wsi_haloae.cohort import COHORT_NAME, expand_slides, heatmap_cohort, tile_cohort
from wsi_haloae.config import HeatmapConfig, TrainConfig, load_config
from wsi_haloae.errors import CohortError, ConfigError
from wsi_haloae.heatmaps import heatmap as heatmap_module
from wsi_haloae.heatmaps.heatmap import (
    REGIONS_NAME,
    SCORES_NAME,
    STORE_NAME,
    SUMMARY_NAME,
    TILES_NAME,
    heatmap_slide,
)
from wsi_haloae.slides.synthetic import SyntheticSlide
from wsi_haloae.slides.tiles import MANIFEST_NAME, TileConfig, write_tiles
from wsi_haloae.training.checkpoint import load_trained
from wsi_haloae.training.train import train

ROOT = Path(__file__).resolve().parents[1]
# 64-px tiles at 1 µm/px on 1024-px slides: an 8 x 8 grid of 128 level-0 px, scored in bands of 8 heatmap rows
CFG = HeatmapConfig(mpp_um=1.0, workers=0, batch_size=4, chunk_px=8, min_region_um2=500.0, device="cpu")
# the workers get the tests' torch thread count: CPU results depend on it
cloudpickle.register_pickle_by_value(sys.modules[__name__])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def slides(
    synthetic_slide_factory: Callable[..., SyntheticSlide], tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """Three small slides with anomalies and a corrupt one (the first 20 kB of a slide)."""
    good = [synthetic_slide_factory(1024, 1024, anomalies=1, seed=seed).path for seed in (11, 12, 13)]
    corrupt = tmp_path_factory.mktemp("corrupt") / "corrupt.tiff"
    corrupt.write_bytes(good[0].read_bytes()[:20_000])
    return [*good, corrupt]


@pytest.fixture(scope="module")
def run_dir(
    synthetic_slide_factory: Callable[..., SyntheticSlide], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    normal = synthetic_slide_factory(1024, 1024, anomalies=0, seed=10)
    folder = tmp_path_factory.mktemp("cohort_run")
    write_tiles([normal.path], folder / "tiles", TileConfig(mpp_um=1.0, tile_size_px=64, max_tiles=8))
    cfg = dataclasses.replace(
        load_config(ROOT / "configs" / "tiny.yaml", TrainConfig), epochs=1, samples_per_epoch=4
    )
    return train(cfg, folder / "tiles", folder / "run", progress=False)


@pytest.fixture(scope="module")
def one_by_one(slides: list[Path], run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The good slides run one after another in this process: the reference outputs."""
    out = tmp_path_factory.mktemp("one_by_one")
    trained = load_trained(run_dir)
    for slide in slides[:3]:
        heatmap_slide(slide, trained, out, CFG)
    return out


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / COHORT_NAME).open(newline="") as handle:
        return {Path(row["slide"]).name: row for row in csv.DictReader(handle)}


def _assert_same_outputs(expected: Path, got: Path) -> None:
    for store in ("0", "labels/tissue/0"):
        np.testing.assert_array_equal(
            zarr.open_group(expected / STORE_NAME, mode="r")[store][:],
            zarr.open_group(got / STORE_NAME, mode="r")[store][:],
        )
    for name in (TILES_NAME, REGIONS_NAME):
        assert (expected / name).read_bytes() == (got / name).read_bytes(), name
    with np.load(expected / SCORES_NAME) as a, np.load(got / SCORES_NAME) as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_a_two_worker_cohort_matches_one_by_one_reports_the_corrupt_slide_and_resumes(
    slides: list[Path], run_dir: Path, one_by_one: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("wsi_haloae.cohort.available_cores", lambda: 2)  # one torch thread per worker
    out = tmp_path / "cohort"
    with pytest.raises(CohortError, match=r"1 of 4 slides failed.*corrupt\.tiff.*rerun the same heatmap"):
        heatmap_cohort(slides, run_dir, out, CFG, scheduler="local", n_workers=2, dashboard_address=":0")
    rows = _rows(out)
    assert [rows[s.name]["status"] for s in slides] == ["done", "done", "done", "failed"]
    assert "corrupt.tiff" in rows["corrupt.tiff"]["error"] and not (out / "corrupt" / SUMMARY_NAME).exists()
    for slide in slides[:3]:
        _assert_same_outputs(one_by_one / slide.stem, out / slide.stem)
        row = rows[slide.name]
        scores = np.load(out / slide.stem / SCORES_NAME)
        assert int(row["tiles"]) == len(scores["score_mean"]) > 10
        assert float(row["max_score"]) == pytest.approx(scores["score_max"].max(), rel=1e-5)
        assert float(row["mean_score"]) == pytest.approx(scores["score_mean"].mean(), rel=1e-5)
        assert float(row["anomalous_area_um2"]) >= 0 and float(row["seconds"]) > 0

    stamps = {s.stem: (out / s.stem / SUMMARY_NAME).stat().st_mtime_ns for s in slides[:3]}
    rerun = heatmap_cohort(
        slides[:3], run_dir, out, CFG, scheduler="local", n_workers=2, dashboard_address=":0"
    )
    assert [row.status for row in rerun] == ["skipped"] * 3
    assert stamps == {s.stem: (out / s.stem / SUMMARY_NAME).stat().st_mtime_ns for s in slides[:3]}
    assert _rows(out).keys() == {s.name for s in slides[:3]}


def _die_after_first_band(marker: str) -> None:
    """Installed on every worker: the first band any of them saves kills its process, once."""
    original = heatmap_module._save_band_scores

    def save_then_die(*args, **kwargs):  # type: ignore[no-untyped-def]
        original(*args, **kwargs)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)

    heatmap_module._save_band_scores = save_then_die


def test_a_worker_killed_mid_slide_has_its_slide_retried_to_identical_outputs(
    slides: list[Path], run_dir: Path, one_by_one: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "killed-once"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.run(_die_after_first_band, str(marker))
        started = time.monotonic()
        rows = heatmap_cohort(slides[:3], run_dir, tmp_path / "out", CFG, scheduler=cluster.scheduler_address)
    assert marker.exists(), "no worker died: the test proved nothing"
    assert [row.status for row in rows] == ["done"] * 3, rows
    assert time.monotonic() - started < 120
    for slide in slides[:3]:
        _assert_same_outputs(one_by_one / slide.stem, tmp_path / "out" / slide.stem)


def test_a_tile_cohort_samples_across_slides_as_write_tiles_does(slides: list[Path], tmp_path: Path) -> None:
    cfg = TileConfig(mpp_um=1.0, tile_size_px=64, max_tiles=40, seed=3)
    with pytest.raises(CohortError, match="1 of 4 slides failed"):
        tile_cohort(slides, tmp_path / "cohort", cfg, scheduler="local", n_workers=2, dashboard_address=":0")
    write_tiles(slides[:3], tmp_path / "alone", cfg)
    rows = _rows(tmp_path / "cohort")
    assert [rows[s.name]["status"] for s in slides] == ["done", "done", "done", "failed"]
    assert sum(int(rows[s.name]["tiles"]) for s in slides[:3]) == 40
    for slide in slides[:3]:
        alone, cohort = tmp_path / "alone" / slide.stem, tmp_path / "cohort" / slide.stem
        assert (alone / MANIFEST_NAME).read_text() == (cohort / MANIFEST_NAME).read_text()
        names = sorted(p.name for p in (alone / "tiles").iterdir())
        assert names == sorted(p.name for p in (cohort / "tiles").iterdir())
        assert all((alone / "tiles" / n).read_bytes() == (cohort / "tiles" / n).read_bytes() for n in names)


def test_slides_come_from_paths_globs_and_csv_lists(slides: list[Path], tmp_path: Path) -> None:
    folder = slides[0].parent
    listing = tmp_path / "list.csv"
    listing.write_text(f"case,slide\na,{slides[0]}\nb,{os.path.relpath(slides[1], tmp_path)}\n")
    assert expand_slides([listing]) == [slides[0], tmp_path / os.path.relpath(slides[1], tmp_path)]
    assert set(expand_slides([str(folder / "*1024x1024.tiff")])) >= set(slides[:3])
    assert expand_slides([slides[3]]) == [slides[3]]
    with pytest.raises(ConfigError, match="no file matches"):
        expand_slides([str(tmp_path / "*.svs")])
    bad = tmp_path / "bad.csv"
    bad.write_text("case,file\na,b.svs\n")
    with pytest.raises(ConfigError, match="'slide' or 'path' column"):
        expand_slides([bad])


def test_cli_cohort_exits_non_zero_with_one_line_and_a_table(
    slides: list[Path], run_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "heatmap.yaml"
    config.write_text("mpp_um: 1.0\nworkers: 0\nbatch_size: 4\nchunk_px: 8\ndevice: cpu\n")
    args = ["heatmap", *map(str, slides[2:]), "--model", str(run_dir), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(
        main, [*args, "--config", str(config), "--scheduler", "none", "--no-progress"]
    )
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: 1 of 2 slides failed") and "cohort.csv" in lines[-1]
    assert [row["status"] for row in _rows(tmp_path / "out").values()] == ["done", "failed"]
    bad = CliRunner().invoke(main, [*args, "--scheduler", "udp://nowhere"])
    assert bad.exit_code == 2 and "is not local, none or a tcp://host:port address" in bad.stderr
