"""Training and heatmap resolutions agree (case 1): the model records how it was trained, and
`heatmap` scores at that resolution unless told otherwise, explicitly."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from wsi_haloae.cli import main
from wsi_haloae.config import HeatmapConfig, TrainConfig, load_config
from wsi_haloae.errors import CheckpointError, ConfigError, DataError
from wsi_haloae.heatmaps.heatmap import SUMMARY_NAME, heatmap_slide
from wsi_haloae.slides.synthetic import SyntheticSlide
from wsi_haloae.slides.tiles import TileConfig, write_tiles
from wsi_haloae.training.checkpoint import MODEL_FILE, load_trained
from wsi_haloae.training.data import find_tiles
from wsi_haloae.training.resolution import TrainingResolution, training_resolution
from wsi_haloae.training.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def slide(synthetic_slide_factory: Callable[..., SyntheticSlide]) -> SyntheticSlide:
    return synthetic_slide_factory(1536, 1536, mpp_um=0.5, tissue="blobs", anomalies=0, seed=11)


@pytest.fixture(scope="module")
def run_dir(slide: SyntheticSlide, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tile` at its defaults (256-px tiles at 0.5 µm/px), then `train --config configs/tiny.yaml`
    (64-px model input), a few steps."""
    folder = tmp_path_factory.mktemp("resolution")
    tiled = CliRunner().invoke(
        main, ["tile", str(slide.path), "--out", str(folder / "tiles"), "--max-tiles", "6", "--no-progress"]
    )
    assert tiled.exit_code == 0, tiled.output
    manifest = (folder / "tiles" / slide.path.stem / "manifest.csv").read_text().splitlines()
    assert manifest[1].split(",")[7:9] == ["256", "0.5"]
    config = folder / "tiny.yaml"
    config.write_text(
        TINY.read_text()
        .replace("epochs: 3", "epochs: 1")
        .replace("samples_per_epoch: 16", "samples_per_epoch: 4")
    )
    trained = CliRunner().invoke(
        main,
        [
            "train",
            "--tiles",
            str(folder / "tiles"),
            "--out",
            str(folder / "run"),
            "--config",
            str(config),
            "--no-progress",
        ],
    )
    assert trained.exit_code == 0, trained.output
    return folder / "run"


def test_the_model_records_its_training_resolution(run_dir: Path) -> None:
    resolution = load_trained(run_dir).resolution
    assert resolution == TrainingResolution(0.5, "tile manifests", 256, 64)
    assert resolution.model_mpp_um == 2.0


def test_heatmap_without_mpp_runs_at_the_models_resolution(
    slide: SyntheticSlide, run_dir: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        main, ["heatmap", str(slide.path), "--model", str(run_dir), "--out", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / slide.path.stem / SUMMARY_NAME).read_text())
    assert summary["resolution"]["model_mpp_um"] == 2.0
    assert summary["resolution"]["heatmap_tile_mpp_um"] == 2.0
    assert summary["resolution"]["source"] == "the model's training resolution"
    assert summary["resolution"]["model_training"]["tile_mpp_um"] == 0.5
    assert summary["grid"]["mpp_um"] == 2.0 and summary["grid"]["tile_size_l0"] == 256  # 64 px x 4


def test_another_mpp_needs_the_flag_and_logs_both(
    slide: SyntheticSlide, run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["heatmap", str(slide.path), "--model", str(run_dir), "--out", str(tmp_path), "--no-progress"]
    refused = CliRunner().invoke(main, [*args, "--mpp", "0.5"])
    assert refused.exit_code == 2
    assert "tiles at 0.5 µm/px (--mpp) but the model was trained at 2 µm/px" in refused.output
    assert "--allow-mpp-mismatch" in refused.output
    assert not (tmp_path / slide.path.stem / SUMMARY_NAME).exists()
    trained = load_trained(run_dir)
    cfg = HeatmapConfig(mpp_um=1.0, allow_mpp_mismatch=True, workers=0)
    with caplog.at_level(logging.WARNING):
        result = heatmap_slide(slide.path, trained, tmp_path, cfg)
    assert "tiles at 1 µm/px (--mpp) but the model was trained at 2 µm/px" in caplog.text
    summary = json.loads((result.out_dir / SUMMARY_NAME).read_text())
    assert (
        summary["resolution"]["heatmap_tile_mpp_um"] == 1.0 and summary["resolution"]["model_mpp_um"] == 2.0
    )
    assert summary["resolution"]["mismatch_allowed"] is True


def test_an_older_model_file_gets_a_one_line_error_or_a_logged_assumption(
    slide: SyntheticSlide, run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "old-run"
    old.mkdir()
    with safe_open(str(run_dir / MODEL_FILE), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    del metadata["training_resolution"]
    save_file(tensors, str(old / MODEL_FILE), metadata=metadata)
    trained = load_trained(old)
    assert trained.resolution is None
    with pytest.raises(
        CheckpointError, match=r"does not record its training resolution.*re-train it, or pass --mpp"
    ):
        heatmap_slide(slide.path, trained, tmp_path / "a", HeatmapConfig(workers=0))
    with caplog.at_level(logging.WARNING):
        heatmap_slide(slide.path, trained, tmp_path / "b", HeatmapConfig(mpp_um=2.0, workers=0))
    assert (
        "training resolution is unknown (an older model file without it): assuming tiles at 2 µm/px"
        in caplog.text
    )


def test_mixed_resolutions_are_refused(slide: SyntheticSlide, tmp_path: Path) -> None:
    write_tiles([slide.path], tmp_path / "tiles" / "a", TileConfig(mpp_um=0.5, tile_size_px=64, max_tiles=2))
    write_tiles([slide.path], tmp_path / "tiles" / "b", TileConfig(mpp_um=1.0, tile_size_px=64, max_tiles=2))
    source = tmp_path / "tiles"
    with pytest.raises(DataError, match=r"mix resolutions: 0\.5 µm/px in .*, 1 µm/px in .*same --mpp"):
        training_resolution(source, find_tiles(source), 64)
    cfg = dataclasses.replace(load_config(TINY, TrainConfig), epochs=1, samples_per_epoch=2)
    with pytest.raises(DataError, match="mix resolutions"):
        train(cfg, source, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / MODEL_FILE).exists()


def test_a_plain_folder_needs_tile_mpp_or_an_explicit_unknown(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((128, 128, 3), 200 + i, np.uint8)).save(folder / f"{i}.png")
    args = ["train", "--tiles", str(folder), "--out", str(tmp_path / "run"), "--config", str(TINY)]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "--tile-mpp" in refused.output
    assert not (tmp_path / "run").exists()
    assert training_resolution(folder, find_tiles(folder), 64, "0.25") == TrainingResolution(
        0.25, "--tile-mpp", 128, 64
    )
    unknown = training_resolution(folder, find_tiles(folder), 64, "unknown")
    assert unknown.tile_mpp_um is None and unknown.model_mpp_um is None and "unknown" in unknown.source
    with pytest.raises(DataError, match="neither a µm/px nor 'unknown'"):
        training_resolution(folder, find_tiles(folder), 64, "fast")


def test_a_model_of_unknown_resolution_needs_mpp(
    slide: SyntheticSlide, run_dir: Path, tmp_path: Path
) -> None:
    trained = dataclasses.replace(
        load_trained(run_dir),
        resolution=TrainingResolution(None, "declared unknown (--tile-mpp unknown)", 128, 64),
    )
    with pytest.raises(ConfigError, match=r"unknown µm/px .*pass --mpp"):
        heatmap_slide(slide.path, trained, tmp_path, HeatmapConfig(workers=0))
