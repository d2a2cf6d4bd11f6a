import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wsi_haloae.config import TrainConfig, load_config, replace, to_dict
from wsi_haloae.errors import CheckpointError, ConfigError, OutputError
from wsi_haloae.model.haloae import HaloAE
from wsi_haloae.training.checkpoint import (
    MODEL_FILE,
    TrainedModel,
    load_train_state,
    load_trained,
    save_train_state,
    save_trained,
)

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def cfg() -> TrainConfig:
    return load_config(TINY, TrainConfig)


@pytest.fixture(scope="module")
def model(cfg: TrainConfig) -> HaloAE:
    torch.manual_seed(0)
    return HaloAE(cfg.model)


@pytest.fixture
def saved(tmp_path: Path, cfg: TrainConfig, model: HaloAE) -> Path:
    """A run folder with a model.safetensors of the tiny model: mean map 0..1 ramp, 5 scores."""
    size = cfg.model.image_size_px
    mean_map = torch.linspace(0, 1, size * size).reshape(size, size)
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    save_trained(
        tmp_path / "run" / MODEL_FILE,
        model,
        cfg,
        {"mean": mean_map, "median": mean_map.flip(1)},
        {"mean": scores, "median": scores * 2},
    )
    return tmp_path / "run"


def test_trained_model_round_trip(saved: Path, cfg: TrainConfig, model: HaloAE) -> None:
    trained = load_trained(saved)
    assert isinstance(trained, TrainedModel) and trained.run_dir == saved
    assert trained.config == cfg and not trained.model.training
    for (key, expected), (other_key, loaded) in zip(
        model.state_dict().items(), trained.model.state_dict().items()
    ):
        assert key == other_key and torch.equal(expected, loaded), key
    assert trained.mean_map.shape == (64, 64) and trained.mean_map[-1, -1] == 1.0
    assert trained.median_map[-1, 0] == 1.0 and trained.reference_map("median") is trained.median_map
    assert trained.train_scores["mean"].tolist() == [1.0, 2.0, 3.0, 4.0, 10.0]
    assert trained.train_scores["median"].tolist() == [2.0, 4.0, 6.0, 8.0, 20.0]
    # the file alone is accepted too; its metadata says what it is
    assert load_trained(saved / MODEL_FILE).config == cfg
    with safe_open(str(saved / MODEL_FILE), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "wsi-haloae/model/2" and json.loads(metadata["config"]) == to_dict(cfg)
    assert not list(saved.glob(".*tmp"))  # no temporary file left behind


def test_loaded_model_computes_what_the_saved_one_did(saved: Path, model: HaloAE) -> None:
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        expected = model(images, heads=False).fm_hat
        loaded = load_trained(saved).model(images, heads=False).fm_hat
    assert torch.equal(expected, loaded)


def test_threshold_is_a_percentile_of_training_scores(saved: Path, cfg: TrainConfig) -> None:
    trained = load_trained(saved)
    assert trained.threshold(50) == 3.0 and trained.threshold(50, "median") == 6.0
    assert trained.threshold(90) == pytest.approx(np.percentile([1, 2, 3, 4, 10], 90))  # 7.6
    assert trained.threshold() == pytest.approx(np.percentile([1, 2, 3, 4, 10], cfg.score_percentile))
    with pytest.raises(ConfigError, match="between 0 and 100"):
        trained.threshold(101)


def _assert_one_line(info: pytest.ExceptionInfo, *words: str) -> None:
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


def test_missing_run_folder_or_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_trained(tmp_path / "nowhere")
    _assert_one_line(info, str(tmp_path / "nowhere"), "missing")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError) as info:
        load_trained(tmp_path / "empty_run")
    _assert_one_line(info, "empty_run", "without model.safetensors")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_model_file(saved: Path, damage: str) -> None:
    file = saved / MODEL_FILE
    data = file.read_bytes()
    file.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not a safetensors file" * 10, "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError) as info:
        load_trained(saved)
    if damage == "garbage":
        _assert_one_line(info, str(file), "is not a model file (a text file")
    else:
        _assert_one_line(info, str(file), "corrupt or truncated", "re-train")


def _rewrite(
    file: Path, *, config: dict | None = None, extra: dict | None = None, drop: str | None = None
) -> None:
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if config is not None:
        metadata["config"] = json.dumps(config)
    tensors.update(extra or {})
    tensors.pop(drop, None)
    save_file(tensors, str(file), metadata=metadata)


def test_config_that_does_not_match_the_weights(saved: Path, cfg: TrainConfig) -> None:
    wider = to_dict(replace(cfg, model=to_dict(replace(cfg.model, width=0.25))))
    _rewrite(saved / MODEL_FILE, config=wider)
    with pytest.raises(CheckpointError) as info:
        load_trained(saved)
    _assert_one_line(info, "weights do not match the config", "in the file")


def test_unknown_config_key_and_unknown_tensor(saved: Path, cfg: TrainConfig) -> None:
    _rewrite(saved / MODEL_FILE, config={**to_dict(cfg), "learning_rate": 1.0})
    with pytest.raises(CheckpointError) as info:
        load_trained(saved)
    _assert_one_line(info, "unknown key 'learning_rate'", "re-train")
    _rewrite(saved / MODEL_FILE, config=to_dict(cfg), extra={"stray": torch.zeros(2)})
    with pytest.raises(CheckpointError) as info:
        load_trained(saved)
    _assert_one_line(info, "unknown tensor 'stray'")


def test_missing_weight_or_mean_map(saved: Path, model: HaloAE) -> None:
    key = next(iter(model.state_dict()))
    _rewrite(saved / MODEL_FILE, drop=f"model.{key}")
    with pytest.raises(CheckpointError) as info:
        load_trained(saved)
    _assert_one_line(info, f"missing weight '{key}'")
    _rewrite(saved / MODEL_FILE, drop="mean_map")
    with pytest.raises(CheckpointError) as info:
        load_trained(saved)
    _assert_one_line(info, "lacks mean_map")


def _train_state(model: HaloAE, cfg: TrainConfig) -> dict:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "config": to_dict(cfg),
        "rng": torch.get_rng_state(),
    }


def test_train_state_loads_with_weights_only(tmp_path: Path, model: HaloAE, cfg: TrainConfig) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    save_train_state(path, _train_state(model, cfg))
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and raw["config"] == to_dict(cfg) and raw["format"] == "wsi-haloae/train-state/1"
    state = load_train_state(path)
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    assert not list(path.parent.glob(".*tmp"))


def test_failed_write_keeps_the_previous_checkpoint(
    tmp_path: Path, model: HaloAE, cfg: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_train_state(path, _train_state(model, cfg))
    before = path.read_bytes()

    def disk_full(obj, handle):  # writes half, then fails as a full disk would
        handle.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OutputError, match="cannot write .*last.pt .No space left on device"):
        save_train_state(path, {**_train_state(model, cfg), "epoch": 4})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "not_ours", "pickled_code"])
def test_bad_train_state(tmp_path: Path, model: HaloAE, cfg: TrainConfig, damage: str) -> None:
    path = tmp_path / "last.pt"
    if damage != "missing":
        save_train_state(path, _train_state(model, cfg))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "not_ours":
        torch.save({"weights": torch.zeros(1)}, path)
    elif damage == "pickled_code":  # weights_only refuses arbitrary objects
        torch.save({"format": "wsi-haloae/train-state/1", "model": Path("x")}, path)
    with pytest.raises(CheckpointError) as info:
        load_train_state(path)
    _assert_one_line(info, str(path))
