"""Block B: pooled features against the official upsample-then-average formulation, the official
padding variant, and every way of choosing weights (never touching the network)."""

from __future__ import annotations

import logging
import time
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsi_haloae.errors import BackboneWeightsError
from wsi_haloae.model.backbone import BackboneWeights, VGGFeatures, load_backbone

SIZE = 32  # fm is 8 x 8


@pytest.fixture(scope="module")
def backbone() -> VGGFeatures:
    return load_backbone("random")


def _convs(backbone: VGGFeatures) -> list[nn.Conv2d]:
    return [m for m in backbone.features if isinstance(m, nn.Conv2d)]


def _upsample_then_average(maps: list[torch.Tensor], size: int) -> torch.Tensor:
    """The official aggregation: each map resized to the image (nearest), 4 x 4 mean, stride 4."""
    resized = [F.interpolate(m, size=(size, size), mode="nearest") for m in maps]
    return torch.cat([F.avg_pool2d(m, 4) for m in resized], dim=1)


def test_pooled_features_equal_upsample_then_average(backbone: VGGFeatures) -> None:
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    taps, h = [], x
    for index, layer in enumerate(backbone.features):
        h = layer(h)
        if index in (1, 6, 11, 17):  # relu1_1, relu2_1, relu3_1, relu3_4
            taps.append(h)
    assert [tuple(t.shape[1:]) for t in taps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (256, 8, 8)]
    with torch.no_grad():
        fm = backbone(x)
    assert fm.shape == (2, 704, 8, 8)
    torch.testing.assert_close(fm, _upsample_then_average(taps, SIZE), atol=1e-6, rtol=1e-5)


def _official_vgg_reference(backbone: VGGFeatures, x: torch.Tensor) -> torch.Tensor:
    """The official VGG19 forward written out: every conv unpadded after a reflection pad, and
    relu1_1/relu2_1/relu3_1 returned padded."""
    pad = nn.ReflectionPad2d(1)
    c = _convs(backbone)

    def conv(i: int, t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, c[i].weight, c[i].bias)

    relu1_1 = pad(F.relu(conv(0, pad(x))))
    pool1 = F.max_pool2d(F.relu(conv(1, relu1_1)), 2)
    relu2_1 = pad(F.relu(conv(2, pad(pool1))))
    pool2 = F.max_pool2d(F.relu(conv(3, relu2_1)), 2)
    relu3_1 = pad(F.relu(conv(4, pad(pool2))))
    relu3_2 = pad(F.relu(conv(5, relu3_1)))
    relu3_3 = pad(F.relu(conv(6, relu3_2)))
    relu3_4 = F.relu(conv(7, relu3_3))
    sides = [m.shape[-1] for m in (relu1_1, relu2_1, relu3_1, relu3_4)]
    assert sides == [SIZE + 2, SIZE // 2 + 2, SIZE // 4 + 2, SIZE // 4]
    return _upsample_then_average([relu1_1, relu2_1, relu3_1, relu3_4], x.shape[-1])


def test_official_features_reproduce_the_official_vgg(backbone: VGGFeatures) -> None:
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        official = backbone(x, "official")
        pooled = backbone(x)
        expected = _official_vgg_reference(backbone, x)
    torch.testing.assert_close(official, expected, atol=1e-6, rtol=1e-5)
    assert official.shape == pooled.shape
    assert not torch.allclose(official[:, :64], pooled[:, :64], atol=1e-3)  # the padded relu1_1 differs


def test_frozen_and_always_in_eval(backbone: VGGFeatures) -> None:
    assert not any(p.requires_grad for p in backbone.parameters())
    parent = nn.Sequential(backbone)
    parent.train()
    assert parent.training and not backbone.training
    assert list(backbone.state_dict())[:2] == ["features.0.weight", "features.0.bias"]
    assert len(backbone.state_dict()) == 16  # 8 convolutions: torchvision features[0:18]


def test_random_weights_warn_every_time_and_are_seeded(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="wsi_haloae.model.backbone"):
        first = load_backbone("random")
        second = load_backbone("random")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "RANDOM" in r.getMessage()]
    assert len(warnings) == 2
    torch.manual_seed(123)  # its own seed: the global RNG does not change the weights
    third = load_backbone("random")
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]) and torch.equal(value, third.state_dict()[key])
    conv0 = first.features[0].weight
    assert conv0.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)  # Kaiming, fan_out


def test_weights_names() -> None:
    assert BackboneWeights.of("imagenet") is BackboneWeights.IMAGENET1K_V1
    assert BackboneWeights.of("random") is BackboneWeights.RANDOM
    assert BackboneWeights.of("/models/vgg19.pth") is BackboneWeights.FILE


def test_imagenet_offline_without_cache_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    started = time.perf_counter()
    with pytest.raises(BackboneWeightsError) as info:
        load_backbone("imagenet")
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert "\n" not in message
    assert "vgg19-dcbb9e9d.pth" in message and "connected machine" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_imagenet_read_from_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backbone: VGGFeatures
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cached.parent.mkdir(parents=True)
    torch.save(backbone.state_dict(), cached)
    loaded = load_backbone("imagenet")
    assert torch.equal(loaded.features[16].weight, backbone.features[16].weight)


def test_local_file_loads_a_torchvision_state_dict(tmp_path: Path, backbone: VGGFeatures) -> None:
    state = dict(backbone.state_dict())
    state["features.19.weight"] = torch.zeros(512, 256, 3, 3)  # the rest of torchvision's VGG19 is ignored
    state["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loaded = load_backbone(str(path))
    assert torch.equal(loaded.features[0].weight, backbone.features[0].weight)
    assert not any(p.requires_grad for p in loaded.parameters())


def _bad_files(tmp_path: Path, backbone: VGGFeatures) -> dict[str, tuple[Path, str]]:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    missing_key = tmp_path / "missing.pth"
    torch.save({k: v for k, v in backbone.state_dict().items() if k != "features.7.weight"}, missing_key)
    wrong_shape = tmp_path / "wrong.pth"
    torch.save({**backbone.state_dict(), "features.5.weight": torch.zeros(128, 64, 1, 1)}, wrong_shape)
    return {
        "absent": (tmp_path / "absent.pth", "does not exist"),
        "garbage": (garbage, "cannot be read as a state dict"),
        "tensor": (tensor, "holds a Tensor, not a state dict"),
        "missing key": (missing_key, "has no 'features.7.weight'"),
        "wrong shape": (wrong_shape, "'features.5.weight' is (128, 64, 1, 1), VGG19 needs (128, 64, 3, 3)"),
    }


def test_bad_local_files_raise_one_line_errors(tmp_path: Path, backbone: VGGFeatures) -> None:
    for name, (path, words) in _bad_files(tmp_path, backbone).items():
        with pytest.raises(BackboneWeightsError) as info:
            load_backbone(str(path))
        message = str(info.value)
        assert words in message and str(path) in message and "\n" not in message, name
