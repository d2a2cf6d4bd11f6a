"""The slide-validation metrics (issue 13) against references: scikit-learn for AUROC and AUPRC,
hand-computed cases for FROC, Dice/IoU and the threshold rates."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_haloae.validation.metrics import (
    FROC_RATES,
    at_threshold,
    auprc,
    auroc,
    dice_iou,
    froc_points,
    froc_score,
    pixel_auroc,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tile_auroc_and_auprc_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = rng.normal(labels * 0.8, 1.0).round(1)  # rounding makes ties
    assert auroc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert auprc(scores, labels) == pytest.approx(
        sklearn_metrics.average_precision_score(labels, scores), abs=1e-12
    )


def test_pixel_auroc_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((3, 20, 20)) < 0.1
    maps = (rng.random((3, 20, 20)) + masks * 0.4).astype(np.float32)
    expected = sklearn_metrics.roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-9)


def test_froc_three_slides_by_hand() -> None:
    # slide A: truth a1, a2; slide B: truth b1; slide C: normal. (score, region hit or None)
    detections = [
        (0.9, 1),
        (0.8, None),
        (0.6, 1),
        (0.3, 2),  # A: a1 found twice (best 0.9), a2 at 0.3
        (0.7, None),
        (0.5, 3),
        (0.2, None),  # B
        (0.95, None),
        (0.4, None),  # C
    ]
    fps, sens, thresholds = froc_points(detections, n_truth=3, n_slides=3)
    # thresholds 0.95 0.9 0.8 0.7 0.5 0.4 0.3 0.2 (0.6, a second hit on a1, is no operating point)
    np.testing.assert_allclose(thresholds[1:], [0.95, 0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2])
    np.testing.assert_allclose(fps * 3, [0, 1, 1, 2, 3, 3, 4, 4, 5])
    np.testing.assert_allclose(sens * 3, [0, 0, 1, 1, 1, 2, 2, 3, 3])
    at, mean = froc_score(fps, sens)
    assert list(at) == list(FROC_RATES)
    # 1/4 FP per slide: only (0, 0); 1/2: (1/3, 1/3); 1: (1, 2/3); 2, 4, 8: (4/3, 1)
    assert at == pytest.approx({0.25: 0.0, 0.5: 1 / 3, 1.0: 2 / 3, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0})
    assert mean == pytest.approx(4 / 6)


def test_froc_without_detections_is_zero() -> None:
    fps, sens, _ = froc_points([], n_truth=2, n_slides=4)
    at, mean = froc_score(fps, sens)
    assert mean == 0.0 and set(at.values()) == {0.0}
    with pytest.raises(ValueError, match="truth regions"):
        froc_points([(0.5, None)], n_truth=0, n_slides=1)


def test_dice_and_iou_by_hand() -> None:
    predicted = np.zeros((4, 4), bool)
    truth = np.zeros((4, 4), bool)
    predicted[0, :3] = True  # 3 px
    truth[0, 1:] = True  # 3 px, 2 shared, union 4
    dice, iou = dice_iou(predicted, truth)
    assert dice == pytest.approx(2 * 2 / 6) and iou == pytest.approx(2 / 4)
    assert dice_iou(np.zeros(3, bool), np.zeros(3, bool)) == (1.0, 1.0)
    assert dice_iou(np.ones(3, bool), np.zeros(3, bool)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        dice_iou(np.zeros(3, bool), np.zeros(4, bool))


def test_sensitivity_and_specificity_at_a_threshold() -> None:
    scores = np.array([0.1, 0.4, 0.5, 0.5, 0.9, 0.2])
    labels = np.array([0, 0, 1, 0, 1, 1])
    r = at_threshold(scores, labels, 0.5)  # predicted: 0.5, 0.5, 0.9 -> tp 2, fp 1, fn 1, tn 2
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 1, 1, 2)
    assert r["sensitivity"] == pytest.approx(2 / 3) and r["specificity"] == pytest.approx(2 / 3)
    assert r["precision"] == pytest.approx(2 / 3) and r["f1"] == pytest.approx(2 / 3)
    tn, fp, fn, tp = sklearn_metrics.confusion_matrix(labels, scores >= 0.5).ravel()
    assert (tn, fp, fn, tp) == (2, 1, 1, 2)


def test_aupro_on_valid_pixels_equals_aupro_without_the_others() -> None:
    from wsi_haloae.validation.metrics import aupro

    rng = np.random.default_rng(5)
    mask = np.zeros((12, 12), bool)
    mask[2:5, 2:5] = True
    score = rng.random((12, 12)) + mask
    valid = np.ones((12, 12), bool)
    valid[:, 8:] = False  # outside tissue: left out, however high it scores
    score[:, 8:] = 10.0
    cropped = aupro([score[:, :8]], [mask[:, :8]])
    assert aupro([score], [mask], valid=[valid]) == pytest.approx(cropped)
    assert aupro([score], [mask]) < cropped
