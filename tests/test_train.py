import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from scipy.ndimage import gaussian_filter

import wsi_haloae.training.train as train_module
from wsi_haloae.cli import main
from wsi_haloae.config import TrainConfig, load_config
from wsi_haloae.errors import CheckpointError, ConfigError, OutputError
from wsi_haloae.model.anomaly import anomaly_map, feature_error, image_scores
from wsi_haloae.training.checkpoint import load_trained
from wsi_haloae.training.data import TileDataset, find_tiles
from wsi_haloae.training.losses import ews_weights
from wsi_haloae.training.train import train

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 64 px tiles of smooth pinkish texture, a stand-in for H&E tissue."""
    folder = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    for i in range(8):
        texture = gaussian_filter(rng.random((64, 64)), sigma=3)
        texture = (texture - texture.min()) / (texture.max() - texture.min())
        rgb = np.stack([0.9 - 0.3 * texture, 0.5 - 0.3 * texture, 0.8 - 0.2 * texture], axis=-1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"tile_{i}.png")
    return folder


@pytest.fixture(scope="module")
def tiny() -> TrainConfig:
    return load_config(TINY, TrainConfig)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("term", ["fm", "im"])
def test_training_lowers_the_loss(tiles: Path, tiny: TrainConfig, tmp_path: Path, term: str) -> None:
    """6 epochs of 4 steps: the last epoch's mean loss is clearly below the first's.

    Each reconstruction term is trained alone. Trained jointly for so few steps at this width, the
    image loss's gradient through fm_hat raises L_fm, and the classifier stays at chance (ln 2).
    Measured over seeds 0-2 and 1 or 2 threads: last/first 0.49-0.73 for L_fm, 0.26-0.94 for L_im.
    """
    cfg = dataclasses.replace(
        tiny,
        epochs=6,
        samples_per_epoch=8,
        weighting="equal",
        lr=1e-3,
        augment="none",
        loss_cls=False,
        loss_fm=term == "fm",
        loss_im=term == "im",
    )
    metrics = _metrics(train(cfg, tiles, tmp_path / "run", progress=False))
    losses = [m["loss"] for m in metrics]
    assert [m["epoch"] for m in metrics] == list(range(6))
    assert losses == pytest.approx([m[f"loss_{term}"] for m in metrics])  # α = 1 on the one term
    assert losses[-1] < 0.97 * losses[0], losses


def _kill_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make train() die right after its first checkpoint is on disk, as a killed job would."""
    real_save = train_module.save_train_state

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_train_state", save_then_die)


def test_resume_reproduces_the_uninterrupted_run(
    tiles: Path, tiny: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = dataclasses.replace(tiny, epochs=2, samples_per_epoch=8)
    whole = train(cfg, tiles, tmp_path / "whole", progress=False)

    with monkeypatch.context() as patch:
        _kill_after_first_checkpoint(patch)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tiles, tmp_path / "killed", progress=False)
    assert [m["epoch"] for m in _metrics(tmp_path / "killed")] == [0]
    with pytest.raises(OutputError, match="pass --resume"):
        train(cfg, tiles, tmp_path / "killed", progress=False)
    # resumed with worker processes this time: samples must not depend on them
    resumed = train(
        dataclasses.replace(cfg, workers=2), tiles, tmp_path / "killed", resume=True, progress=False
    )

    expected, actual = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys() and "mean_map" in expected
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    whole_metrics, resumed_metrics = _metrics(whole), _metrics(resumed)
    assert [m["epoch"] for m in resumed_metrics] == [0, 1]
    for a, b in zip(whole_metrics, resumed_metrics):
        assert (a["loss"], a["loss_fm"], a["alpha_cls"]) == (b["loss"], b["loss_fm"], b["alpha_cls"])
    # EWS: our epoch e is the paper's epoch e * 250 / epochs
    for record, paper_epoch in zip(whole_metrics, (0.0, 125.0)):
        alphas = (record["alpha_cls"], record["alpha_fm"], record["alpha_im"])
        assert alphas == pytest.approx(ews_weights(paper_epoch), rel=1e-6)


def test_resume_refuses_a_changed_recipe(tiles: Path, tiny: TrainConfig, tmp_path: Path) -> None:
    cfg = dataclasses.replace(tiny, epochs=1, samples_per_epoch=2)
    train(cfg, tiles, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"trained with lr=0\.0001, not 0\.001"):
        train(dataclasses.replace(cfg, lr=1e-3), tiles, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="model.width"):
        changed = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=0.25))
        train(changed, tiles, tmp_path / "run", resume=True, progress=False)


def test_stored_normalisation_matches_a_per_tile_reference(
    tiles: Path, tiny: TrainConfig, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(tiny, epochs=1, samples_per_epoch=4, weighting="kendall", loss_im=False)
    trained = load_trained(train(cfg, tiles, tmp_path / "run", progress=False))
    record = _metrics(trained.run_dir)[0]
    assert record["alpha_im"] == 0.0 and 0.99 < record["alpha_cls"] < 1.01  # 1/σ² barely moved from 1
    # Reference: one tile at a time, the mean in float64.
    dataset = TileDataset(find_tiles(tiles), 64)
    with torch.no_grad():
        errors = []
        for i in range(len(dataset)):
            output = trained.model(dataset[i][None], heads=False)
            errors.append(feature_error(output.fm, output.fm_hat))
        mean_map = torch.stack([anomaly_map(error, 64)[0].double() for error in errors]).mean(0)
        median_map = torch.stack([anomaly_map(error, 64)[0] for error in errors]).median(0).values
        scores = {
            name: torch.cat(
                [image_scores(anomaly_map(error, 64, trained.reference_map(name)))[0] for error in errors]
            )
            for name in ("mean", "median")
        }
    torch.testing.assert_close(trained.mean_map.double(), mean_map, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(trained.median_map, median_map, rtol=1e-5, atol=1e-7)
    for name in ("mean", "median"):
        torch.testing.assert_close(trained.train_scores[name], scores[name], rtol=1e-5, atol=1e-7)
        assert trained.train_scores[name].shape == (8,)
        assert trained.threshold(100, name) == trained.train_scores[name].max().item()
        # tissue-aware: the same tiles, with their tissue from their own pixels
        tissue_scores = trained.train_scores[f"tissue_{name}"]
        assert tissue_scores.shape == (8,) and torch.isfinite(tissue_scores).all()
        assert trained.threshold(100, name, tissue_aware=True) == tissue_scores.max().item()


def test_cli_train_writes_a_complete_run(
    tiles: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The CLI logs at INFO; under pytest its logging.basicConfig is a no-op, so set the level here.
    caplog.set_level(logging.INFO, logger="wsi_haloae")
    run = tmp_path / "run"
    args = [
        "train",
        "--tiles",
        str(tiles),
        "--out",
        str(run),
        "--config",
        str(TINY),
        "--epochs",
        "1",
        "--tile-mpp",  # a plain image folder: its µm/px is declared
        "0.5",
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"trained model: {run / 'model.safetensors'}" in result.output
    assert load_config(run / "config.yaml", TrainConfig) == dataclasses.replace(
        load_config(TINY, TrainConfig), epochs=1
    )
    assert [m["epoch"] for m in _metrics(run)] == [0]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["config"]["epochs"] == 1
    assert "epoch 1/1" in (run / "train.log").read_text()
    assert load_trained(run).config.epochs == 1

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and again.output.count("\n") == 1 and "pass --resume" in again.output
    # --resume without --config takes the run's own config.yaml; a finished run only re-calibrates
    resumed = CliRunner().invoke(
        main,
        ["train", "--tiles", str(tiles), "--out", str(run), "--resume", "--tile-mpp", "0.5", "--no-progress"],
    )
    assert resumed.exit_code == 0, resumed.output


def test_cli_bad_config_is_one_line(tiles: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "learning_rate: 0.1\n")
    result = CliRunner().invoke(
        main, ["train", "--tiles", str(tiles), "--out", str(tmp_path / "run"), "--config", str(bad)]
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "unknown key 'learning_rate'" in result.output
    assert not (tmp_path / "run").exists()
    missing = CliRunner().invoke(
        main, ["train", "--tiles", str(tmp_path / "none"), "--out", str(tmp_path / "run")]
    )
    assert missing.exit_code == 2 and missing.output.count("\n") == 1 and "does not exist" in missing.output


@pytest.mark.parametrize(
    "change, words",
    [
        ({"batch_size": 0}, "batch_size is 0"),
        ({"loss_cls": False, "loss_fm": False, "loss_im": False}, "keep at least one loss term"),
        ({"device": "tpu:7"}, "not a torch device"),
    ],
)
def test_bad_settings_fail_before_any_work(
    tiles: Path, tiny: TrainConfig, tmp_path: Path, change: dict, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        train(dataclasses.replace(tiny, **change), tiles, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
