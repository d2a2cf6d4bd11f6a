"""Every YAML preset under configs/ loads strictly, and the two named presets say what they claim."""

from pathlib import Path

import pytest

from wsi_haloae import config as config_module
from wsi_haloae.config import TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted([*CONFIGS.rglob("*.yaml"), *CONFIGS.rglob("*.yml")])


def _config_class(path: Path) -> type:
    """A preset named after a config class (heatmap.yaml → HeatmapConfig) is one; the rest train."""
    name = "".join(part.capitalize() for part in path.stem.replace("_", "-").split("-")) + "Config"
    return getattr(config_module, name, TrainConfig)


def test_presets_exist() -> None:
    assert {"haloae-paper.yaml", "tiny.yaml"} <= {p.name for p in PRESETS}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_preset_loads(path: Path) -> None:
    cls = _config_class(path)
    assert isinstance(load_config(path, cls), cls)


def test_paper_preset_is_the_recipe() -> None:
    cfg = load_config(CONFIGS / "haloae-paper.yaml", TrainConfig)
    model = cfg.model
    assert (model.image_size_px, model.width, model.backbone_weights) == (256, 1.0, "imagenet")
    assert (model.block_size, model.halo_size, model.dim_head) == (12, 2, 16)
    assert (model.decoder_first_channels, model.decoder_middle_layers) == (380, 4)
    assert (cfg.epochs, cfg.samples_per_epoch, cfg.batch_size) == (250, 3000, 4)
    assert (cfg.lr, cfg.weight_decay, cfg.weighting, cfg.ews_epochs) == (1e-4, 1e-5, "ews", 250)
    assert (cfg.augment, cfg.colour_jitter) == ("jitter", 0.1)
    assert cfg.loss_cls and cfg.loss_fm and cfg.loss_im


def test_tiny_preset_is_small_and_offline() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml", TrainConfig)
    assert cfg.model.image_size_px == 64 and cfg.model.width <= 0.25
    assert cfg.model.backbone_weights == "random" and cfg.device == "cpu"
    # The feature map after the 5x5 head (S/4 - 4) must tile into attention blocks.
    assert (cfg.model.image_size_px // 4 - 4) % cfg.model.block_size == 0
    assert cfg.epochs * cfg.samples_per_epoch <= 64


@pytest.mark.parametrize("path", sorted((CONFIGS / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_ablation_is_the_paper_recipe_with_one_change(path: Path) -> None:
    from wsi_haloae.config import to_dict

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            out.update(flat(value, f"{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    paper = flat(to_dict(load_config(CONFIGS / "haloae-paper.yaml", TrainConfig)))
    ablation = flat(to_dict(load_config(path, TrainConfig)))
    assert len([k for k in paper if paper[k] != ablation[k]]) == 1
    # the two not in the paper's list say so in their header
    if path.stem in ("no-im", "block-c-cnn"):
        assert "NOT the paper's" in path.read_text()
