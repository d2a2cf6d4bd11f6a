from pathlib import Path

import pytest

from wsi_haloae.config import ModelConfig, TrainConfig, from_dict, load_config, replace
from wsi_haloae.errors import ConfigError


def test_defaults_are_the_paper_model() -> None:
    cfg = TrainConfig()
    assert cfg.model.image_size_px == 256
    assert cfg.model.attention == "masked"
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size) == (1e-4, 1e-5, 4)


def test_nested_yaml_maps_onto_dataclasses(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nmodel:\n  image_size_px: 64\n  attention: uniform\n  width: 1\n")
    cfg = load_config(path, TrainConfig)
    assert cfg.epochs == 3
    assert cfg.model.image_size_px == 64 and cfg.model.attention == "uniform"
    assert isinstance(cfg.model.width, float) and cfg.model.width == 1.0


@pytest.mark.parametrize(
    "text, words",
    [
        ("epoch: 3\n", "unknown key 'epoch'"),
        ("model:\n  atention: masked\n", "unknown key 'model.atention'"),
        ("model:\n  attention: fast\n", "choose one of masked, uniform"),
        ("epochs: three\n", "'epochs' must be an integer"),
        ("loss_cls: 1\n", "'loss_cls' must be true or false"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("epochs: [1,\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_key_and_fix(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("(", r"\(")) as info:
        load_config(path, TrainConfig)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", TrainConfig)


def test_replace_checks_types() -> None:
    cfg = replace(TrainConfig(), epochs=5, seed=None)
    assert cfg.epochs == 5 and cfg.seed == 0
    with pytest.raises(ConfigError):
        replace(TrainConfig(), epochs="many")
    assert from_dict(ModelConfig, {}) == ModelConfig()
