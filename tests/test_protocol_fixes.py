"""The three MVTec protocol fixes of issue 13, on the audit's own cases: the official image score is
the mean map score (not the better of mean and max), the pixel AUROC is never flipped, the official
post-processing order (normalise and blur at feature resolution, then upsample), and reflection
padding of the VGG convolutions."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_haloae.config import ModelConfig, TrainConfig, from_dict, load_config
from wsi_haloae.model.anomaly import anomaly_map, feature_error, image_scores, reference_at_features
from wsi_haloae.model.backbone import IMAGENET_MEAN, IMAGENET_STD, RELU3_4, load_backbone
from wsi_haloae.model.haloae import HaloAE
from wsi_haloae.slides.synthetic import plan_synthetic_slide, render_region
from wsi_haloae.training.data import TileDataset
from wsi_haloae.training.train import calibrate
from wsi_haloae.validation.evaluate import IMAGE_SCORE, map_order, official_auroc, score_set
from wsi_haloae.validation.metrics import auroc


def _audit_image_scores() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20 defective and 10 good images: the max scores separate them perfectly, the mean scores
    rank 171 of the 200 (defective, good) pairs right: AUROC 0.855."""
    labels = np.array([0] * 10 + [1] * 20)
    good = np.arange(10, dtype=float)  # 0 .. 9
    # good images below each defective one's mean score: 14 above all 10, six partly; sums to 171
    below = [10] * 14 + [9, 8, 7, 4, 2, 1]
    assert sum(below) == 171
    defect_mean = np.array([b - 0.5 for b in below], dtype=float)
    mean_scores = np.concatenate([good, defect_mean])
    max_scores = np.concatenate([good, 100.0 + np.arange(20)])
    return mean_scores, max_scores, labels


def test_official_image_score_is_the_mean_not_the_better_of_mean_and_max() -> None:
    mean_scores, max_scores, labels = _audit_image_scores()
    assert auroc(max_scores, labels) == 1.0  # what best-of-mean/max reported
    assert auroc(mean_scores, labels) == pytest.approx(0.855, abs=1e-12)
    assert IMAGE_SCORE["official"] == "mean" and IMAGE_SCORE["honest"] == "mean"
    maps = [np.full((4, 4), s) for s in mean_scores]
    masks = [np.zeros((4, 4), bool) for _ in labels]
    for k in masks[10:]:
        k[1:3, 1:3] = True
    block = score_set(mean_scores, labels, maps, masks, flip_labels=True)
    assert block["image_auroc"] == pytest.approx(0.855, abs=1e-12) and block["flipped"] == []


def test_a_pixel_auroc_of_0136_stays_0136_under_the_official_protocol() -> None:
    # one 10 x 10 image: 25 defective pixels, 75 normal ones; 0.136 = 255 of 1875 pairs right
    mask = np.zeros((10, 10), bool)
    mask[:5, :5] = True
    score = np.zeros((10, 10))
    normal = np.arange(75, dtype=float)
    # defective pixel i sits above `below[i]` normal pixels; the counts sum to 255
    below = [75, 75, 75] + [2] * 15 + [0] * 7
    assert sum(below) == 255
    score[mask] = np.array(below) - 0.5
    score[~mask] = normal
    labels = np.array([0, 1])
    maps = [np.zeros((10, 10)), score]
    masks = [np.zeros((10, 10), bool), mask]
    honest = score_set(np.array([0.0, 1.0]), labels, maps, masks)
    official = score_set(np.array([0.0, 1.0]), labels, maps, masks, flip_labels=True)
    # the defect-free image adds 100 normal pixels at 0: the reference by hand, pair by pair
    pos = score[mask]
    neg = np.concatenate([score[~mask], np.zeros(100)])
    by_hand = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        pos.size * neg.size
    )
    assert honest["pixel_auroc"] == pytest.approx(by_hand) == official["pixel_auroc"]
    single = score_set(np.array([0.0, 1.0]), labels, [score, score], [mask, mask], flip_labels=True)
    assert single["pixel_auroc"] == pytest.approx(0.136, abs=1e-12)
    assert "pixel_auroc" not in official["flipped"] and "pixel_auroc" not in single["flipped"]
    assert official_auroc(0.136) == (pytest.approx(0.864), True)  # what flipping would have reported


def test_official_order_smooths_twice_as_wide_as_upsampling_first() -> None:
    impulse = torch.zeros(1, 64, 64)
    impulse[0, 32, 32] = 1.0
    widths = {}
    for order in ("upsample-first", "feature-first"):
        profile = anomaly_map(impulse, 256, None, order)[0].sum(0).double().numpy()
        x = np.arange(256) + 0.5
        p = profile / profile.sum()
        widths[order] = float(np.sqrt((p * (x - (p * x).sum()) ** 2).sum()))
    assert widths["upsample-first"] == pytest.approx(1.80, abs=0.005)
    assert widths["feature-first"] == pytest.approx(3.28, abs=0.005)


def test_feature_first_order_by_hand() -> None:
    # error 5 x 5, reference 1 everywhere: |e - 1| is an impulse of 4, blurred at 5 x 5 (size_px = F:
    # the upsampling is the identity)
    error = torch.ones(1, 5, 5)
    error[0, 2, 2] = 5.0
    k = torch.tensor([0.0, 0.25, 0.5, 0.25, 0.0])
    torch.testing.assert_close(
        anomaly_map(error, 5, torch.ones(5, 5), "feature-first")[0], 4 * torch.outer(k, k)
    )
    # upsample-first blurs at 20 x 20 instead: the peak stays higher, the spread narrower
    assert float(anomaly_map(error, 20, torch.ones(20, 20))[0].max()) > float(
        anomaly_map(error, 20, torch.ones(5, 5), "feature-first")[0].max()
    )
    # a stored (S, S) reference, nearest-upsampled, is averaged back to F exactly
    at_f = torch.arange(25.0).reshape(5, 5)
    stored = reference_at_features(at_f, 20)
    assert stored.shape == (20, 20) and stored[0, 3] == 0.0 and stored[19, 19] == 24.0
    torch.testing.assert_close(
        anomaly_map(error, 20, stored, "feature-first"), anomaly_map(error, 20, at_f, "feature-first")
    )


def test_protocol_orders_and_paper_config() -> None:
    assert map_order("official", "upsample-first") == "feature-first"
    assert map_order("honest", "upsample-first") == "upsample-first"
    assert ModelConfig().map_order == "upsample-first" and ModelConfig().vgg_padding == "zeros"
    paper = load_config("configs/haloae-paper.yaml", TrainConfig)
    assert paper.model.map_order == "feature-first" and paper.model.vgg_padding == "reflect"
    cfg = from_dict(TrainConfig, {"model": {"vgg_padding": "reflect"}})
    assert cfg.model.vgg_padding == "reflect"


def test_reflect_padding_changes_relu3_4_only_near_the_border() -> None:
    logging.disable(logging.WARNING)
    try:
        vgg = load_backbone("random")
    finally:
        logging.disable(logging.NOTSET)
    slide = plan_synthetic_slide("unused.tiff", 1024, 1024, anomalies=0, seed=3, tissue="full")
    tiles = np.stack([render_region(slide, x, y, (128, 128)) for x, y in ((0, 0), (512, 256))])
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        zeros, reflect = (vgg(x, padding=p) for p in ("zeros", "reflect"))
    relu3_4 = slice(704 - 256, 704)  # the last 256 channels of fm
    z, r = zeros[:, relu3_4], reflect[:, relu3_4]
    diff, size = (z - r).abs().mean(1), z.abs().mean(1)
    ring = torch.zeros(32, 32, dtype=torch.bool)
    ring[:2], ring[-2:], ring[:, :2], ring[:, -2:] = True, True, True, True
    assert float(diff[:, ring].mean() / size[:, ring].mean()) > 0.2
    assert float(diff[:, 12:-12, 12:-12].abs().max()) == 0.0
    assert RELU3_4 == 17


def test_calibration_in_the_feature_first_order(tmp_path) -> None:
    """References of raw (F, F) errors, stored block-constant at S; training scores in that order."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"t{i}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    tiny = load_config("configs/tiny.yaml", TrainConfig).model
    logging.disable(logging.WARNING)
    try:
        model = HaloAE(dataclasses.replace(tiny, map_order="feature-first")).eval()
    finally:
        logging.disable(logging.NOTSET)
    tiles = TileDataset(paths, 64)
    references, scores = calibrate(model, tiles, torch.device("cpu"), batch_size=2)
    with torch.no_grad():
        images = torch.stack([tiles[i] for i in range(5)])
        output = model(images, heads=False)
        errors = feature_error(output.fm, output.fm_hat)  # (5, 16, 16)
    torch.testing.assert_close(
        references["mean"], reference_at_features(errors.mean(0), 64), rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(references["median"], reference_at_features(errors.median(0).values, 64))
    expected = image_scores(anomaly_map(errors, 64, references["median"], "feature-first"))[0]
    torch.testing.assert_close(scores["median"], expected, rtol=1e-5, atol=1e-7)
