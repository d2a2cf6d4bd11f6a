"""The whole model (outputs, frozen backbone, config checks), the anomaly-map functions against
hand values and numpy/scipy references, and a golden output of a seeded random-weight model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from wsi_haloae.config import ModelConfig
from wsi_haloae.errors import ConfigError
from wsi_haloae.model import HaloAE, VGGFeatures, anomaly_map, feature_error, image_scores, load_backbone
from wsi_haloae.model.heads import ImageDecoder

TINY = ModelConfig(
    image_size_px=64,
    backbone_weights="random",
    width=0.125,
    block_size=4,
    halo_size=1,
    dim_head=8,
    decoder_first_channels=32,
    decoder_middle_layers=2,
)
GOLDEN = ModelConfig(
    image_size_px=32,
    backbone_weights="random",
    width=0.125,
    block_size=4,
    halo_size=1,
    dim_head=8,
    decoder_first_channels=16,
    decoder_middle_layers=2,
)
EXPECTED = Path(__file__).resolve().parent / "expected" / "haloae_golden.pt"
RECORD = "WSI_HALOAE_RECORD"


@pytest.fixture(scope="module")
def tiny() -> HaloAE:
    torch.manual_seed(0)
    return HaloAE(TINY).eval()


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---- the model


def test_forward_shapes_and_heads_switch(tiny: HaloAE) -> None:
    x = _images(2, 64)
    with torch.no_grad():
        out = tiny(x)
        b_and_c = tiny(x, heads=False)
    assert out.fm.shape == out.fm_hat.shape == (2, 704, 16, 16)
    assert out.image_hat.shape == (2, 3, 64, 64) and out.logits.shape == (2, 2)
    assert b_and_c.image_hat is None and b_and_c.logits is None
    torch.testing.assert_close(b_and_c.fm_hat, out.fm_hat)
    assert (out.image_hat < 0).any()  # the output conv has no ReLU: a normalised image can be negative


def test_normalise_is_imagenet(tiny: HaloAE) -> None:
    pixel = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    assert tiny.normalise(pixel).abs().max() < 1e-6
    white = tiny.normalise(torch.ones(1, 3, 64, 64))[0, :, 0, 0]
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    torch.testing.assert_close(white, expected)


def test_backbone_is_saved_frozen_and_stays_in_eval(tiny: HaloAE) -> None:
    assert "backbone.features.0.weight" in tiny.state_dict()
    assert "mean" not in tiny.state_dict()  # normalisation constants are not weights
    tiny.train()
    try:
        assert tiny.autoencoder.training and not tiny.backbone.training
        out = tiny(_images(2, 64))
        out.logits.sum().backward()
        assert all(p.grad is None for p in tiny.backbone.parameters())
        assert tiny.autoencoder.head[0].weight.grad.abs().sum() > 0
    finally:
        tiny.zero_grad(set_to_none=True)
        tiny.eval()


def test_state_dict_rebuilds_the_same_model(tiny: HaloAE) -> None:
    shell = HaloAE(TINY, backbone=VGGFeatures()).eval()
    shell.load_state_dict(tiny.state_dict())
    x = _images(1, 64, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(shell(x).fm_hat, tiny(x).fm_hat, atol=0, rtol=0)


def test_channels_last_and_bf16_autocast(tiny: HaloAE) -> None:
    x = _images(2, 64, seed=4)
    with torch.no_grad():
        reference = tiny(x)
        model = HaloAE(TINY, backbone=VGGFeatures()).eval()
        model.load_state_dict(tiny.state_dict())
        model = model.to(memory_format=torch.channels_last)
        fast = model(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x)
    torch.testing.assert_close(fast.fm_hat, reference.fm_hat, atol=1e-4, rtol=1e-4)
    assert bf16.fm_hat.dtype == torch.bfloat16 and torch.isfinite(bf16.fm_hat).all()
    error = feature_error(bf16.fm.float(), bf16.fm_hat.float())
    expected = feature_error(reference.fm, reference.fm_hat)
    assert ((error - expected).abs() / expected.abs().max()).max() < 0.1


def test_bad_sizes_raise(tiny: HaloAE) -> None:
    with pytest.raises(ConfigError, match="image_size_px 66 must be a positive multiple of 4"):
        HaloAE(ModelConfig(image_size_px=66), backbone=VGGFeatures())
    with pytest.raises(ConfigError, match="image_size_px 256 gives a 60 px encoded map .* block_size 8"):
        HaloAE(ModelConfig(block_size=8), backbone=VGGFeatures())
    with pytest.raises(ValueError, match=r"expects \(N, 3, 64, 64\) images, got \(1, 3, 32, 32\)"):
        tiny(_images(1, 32))


def test_image_decoder_follows_the_spec_order() -> None:
    decoder = ImageDecoder(704, 380, 4)
    convs = [m for m in decoder.layers if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (704, 380),
        (380, 190),
        (190, 95),
        (95, 47),
        (47, 23),
        (23, 3),
        (3, 3),
    ]
    assert all(c.padding_mode == "reflect" and c.kernel_size == (3, 3) for c in convs)
    kinds = [type(m).__name__ for m in decoder.layers]
    assert kinds[-7:] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Upsample", "Conv2d", "Upsample"]


# ---- anomaly maps


def test_feature_error_and_scores_by_hand() -> None:
    fm = torch.zeros(1, 2, 2, 2)
    fm_hat = torch.tensor([[[[1.0, 0.0], [2.0, 0.0]], [[3.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(feature_error(fm, fm_hat), torch.tensor([[[5.0, 0.0], [2.0, 0.0]]]))
    maps = torch.tensor([[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, -1.0]]])
    mean, peak = image_scores(maps)
    torch.testing.assert_close(mean, torch.tensor([3.0, -0.25]))
    torch.testing.assert_close(peak, torch.tensor([6.0, 0.0]))


def test_anomaly_map_smoothing_by_hand() -> None:
    # size_px = F: the bilinear resize is the identity, only the [1, 2, 1]/4 kernel acts
    impulse = torch.zeros(1, 5, 5)
    impulse[0, 2, 2] = 1.0
    centre = anomaly_map(impulse, 5)[0]
    torch.testing.assert_close(centre[1:4, 1:4], torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0)
    assert centre.sum().item() == pytest.approx(1.0)
    corner = torch.zeros(1, 5, 5)
    corner[0, 0, 0] = 1.0
    # reflect-101 (OpenCV's default border): the corner keeps 0.5 x 0.5, not 0.75 x 0.75
    expected = torch.tensor([[0.25, 0.125], [0.125, 0.0625]])
    torch.testing.assert_close(anomaly_map(corner, 5)[0, :2, :2], expected)
    # constant error stays constant; |A - mean_map| with mean 1 over zero error gives ones
    torch.testing.assert_close(anomaly_map(torch.full((2, 4, 4), 3.0), 16), torch.full((2, 16, 16), 3.0))
    relative = anomaly_map(torch.zeros(1, 4, 4), 16, torch.ones(16, 16))
    torch.testing.assert_close(relative, torch.ones(1, 16, 16))


def test_the_median_reference_keeps_the_ranking_that_outliers_invert_under_the_mean() -> None:
    # nine training tiles reconstructed with error 1, one (a tissue edge) with error 100
    training = anomaly_map(torch.tensor([1.0] * 9 + [100.0])[:, None, None].expand(10, 4, 4), 8)
    mean_map, median_map = training.mean(0), training.median(0).values
    # a normal tile (error 1) and an anomaly (error 5)
    tiles = torch.tensor([1.0, 5.0])[:, None, None].expand(2, 4, 4)
    by_mean = image_scores(anomaly_map(tiles, 8, mean_map))[0]
    by_median = image_scores(anomaly_map(tiles, 8, median_map))[0]
    torch.testing.assert_close(by_mean, torch.tensor([9.9, 5.9]))  # the normal tile scores higher
    torch.testing.assert_close(by_median, torch.tensor([0.0, 4.0]))


def test_anomaly_map_upsampling_by_hand() -> None:
    # error[y, x] = 8 y + 4 x on 2 x 2, resized to 4 x 4 with half-pixel centres: each axis reads
    # sources -0.25, 0.25, 0.75, 1.25, clamped to [0, 1] -> t = (0, 0.25, 0.75, 1), A = 8 t_y + 4 t_x.
    # The [1, 2, 1]/4 kernel keeps linear parts and, with reflect-101 edges, maps t to
    # s = (0.5 t0 + 0.5 t1, ..., 0.5 t2 + 0.5 t3) = (0.125, 0.3125, 0.6875, 0.875).
    error = torch.tensor([[[0.0, 4.0], [8.0, 12.0]]])
    s = torch.tensor([0.125, 0.3125, 0.6875, 0.875])
    torch.testing.assert_close(anomaly_map(error, 4)[0], 8 * s[:, None] + 4 * s[None, :])
    assert anomaly_map(error, 4)[0, 0].tolist() == [1.5, 2.25, 3.75, 4.5]


def _bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) weights of 1-D linear interpolation with half-pixel centres, edges clamped."""
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        src = min(max((i + 0.5) * in_size / out_size - 0.5, 0.0), in_size - 1)
        lo = int(np.floor(src))
        hi = min(lo + 1, in_size - 1)
        matrix[i, lo] += 1 - (src - lo)
        matrix[i, hi] += src - lo
    return matrix


def test_anomaly_map_equals_numpy_scipy_reference() -> None:
    rng = np.random.default_rng(0)
    error = rng.random((3, 8, 8))
    mean_map = rng.random((32, 32))
    m = _bilinear_matrix(32, 8)
    expected = []
    for e in error:
        a = np.abs(m @ e @ m.T - mean_map)
        for axis in (0, 1):  # scipy's "mirror" is OpenCV's reflect-101
            a = ndimage.correlate1d(a, [0.25, 0.5, 0.25], axis=axis, mode="mirror")
        expected.append(a)
    maps = anomaly_map(torch.from_numpy(error).float(), 32, torch.from_numpy(mean_map).float())
    np.testing.assert_allclose(maps.numpy(), np.stack(expected), atol=1e-5)
    plain = anomaly_map(torch.from_numpy(error).float(), 32)
    assert plain.shape == (3, 32, 32) and not torch.allclose(plain, maps)


# ---- golden output


def _golden_run() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = HaloAE(GOLDEN, backbone=load_backbone("random")).eval()
    with torch.no_grad():
        out = model(_images(1, 32, seed=7), heads=False)
    maps = anomaly_map(feature_error(out.fm, out.fm_hat), 32)
    # 16 of the 704 channels keep the file small
    return {"fm_hat": out.fm_hat[0, ::44].contiguous(), "anomaly_map": maps[0].contiguous()}


def test_golden_output_of_a_seeded_model() -> None:
    actual = _golden_run()
    if os.environ.get(RECORD) == "1":
        EXPECTED.parent.mkdir(exist_ok=True)
        torch.save(actual, EXPECTED)
    if not EXPECTED.is_file():
        command = f"{RECORD}=1 pytest tests/test_haloae.py -k golden"
        pytest.fail(f"{EXPECTED} is missing; record it with: {command}")
    expected = torch.load(EXPECTED, weights_only=True)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
        torch.testing.assert_close(actual[key], expected[key], atol=1e-4, rtol=1e-4)
