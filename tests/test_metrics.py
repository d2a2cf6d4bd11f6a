"""Metrics against scikit-learn, a slow PRO reference written from the definition, and hand values."""

from __future__ import annotations

import numpy as np
import pytest
from reference.pro_reference import reference_aupro, reference_pro_curve
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from wsi_haloae.errors import DataError
from wsi_haloae.validation.metrics import (
    aupro,
    auroc,
    f1_max,
    image_auroc,
    pixel_auroc,
    pr_curve,
    pro_curve,
    roc_curve,
)


def _labels(rng: np.random.Generator, n: int, p: float = 0.3) -> np.ndarray:
    y = (rng.random(n) < p).astype(int)
    y[:2] = (0, 1)
    return y


def _auroc_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    n = 400
    y = _labels(rng, n)
    return {
        "random": (rng.normal(size=n) + y, y),
        "many_ties": (rng.integers(0, 4, size=n).astype(np.float64) + y, y),
        "constant": (np.full(n, 3.25), y),
        # Large raw errors with differences far below float32 resolution: must stay distinct.
        "huge_tiny_differences": (1e8 + rng.integers(0, 50, size=n) * 1e-7 + y * 2e-7, y),
        "huge_float32": ((1e8 + rng.integers(0, 50, size=n) * 16 + y * 32).astype(np.float32), y),
        "huge_magnitudes": (rng.choice([-1e300, -1.0, 0.0, 1e-300, 1e300], size=n), y),
        "integers": (rng.integers(-3, 3, size=n) + 2 * y, y),
        "bool_labels": (rng.normal(size=n), y.astype(bool)),
        "inverted": (-rng.normal(size=n) - 3 * y, y),
    }


@pytest.mark.parametrize("case", list(_auroc_cases()))
def test_auroc_equals_sklearn(case: str) -> None:
    scores, labels = _auroc_cases()[case]
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_keeps_differences_a_sigmoid_or_float32_would_erase() -> None:
    scores = 1e8 + np.array([0.0, 1e-6, 2e-6, 3e-6])
    labels = np.array([0, 0, 1, 1])
    assert auroc(scores, labels) == 1.0
    assert auroc(np.full(4, 1e8), labels) == 0.5


def test_auroc_hand_values() -> None:
    # Pairs (pos, neg): (2 > 1) 1, (2 = 2) 1/2, (3 > 1) 1, (3 > 2) 1 -> 3.5 / 4.
    assert auroc([1.0, 2.0, 2.0, 3.0], [0, 0, 1, 1]) == 0.875


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_auroc_single_class_is_a_data_error(labels: list[int]) -> None:
    with pytest.raises(DataError, match="both normal and anomalous"):
        auroc([0.1, 0.2, 0.3], labels)


def test_auroc_rejects_nan_and_bad_labels() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        auroc([0.1, 0.2], [0, 2])


@pytest.mark.parametrize("case", ["random", "many_ties", "huge_tiny_differences"])
def test_roc_curve_equals_sklearn(case: str) -> None:
    scores, labels = _auroc_cases()[case]
    fpr, tpr, thresholds = roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-15)
    np.testing.assert_array_equal(thresholds[1:], sk_thresholds[1:])
    assert thresholds[0] == np.inf


def _brute_force_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    best_f1, best_t = -1.0, None
    for t in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= t
        tp = int((predicted & (labels == 1)).sum())
        fp = int((predicted & (labels == 0)).sum())
        fn = int((~predicted & (labels == 1)).sum())
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
        if f1 > best_f1 + 1e-12:
            best_f1, best_t = f1, t
    return best_f1, best_t


@pytest.mark.parametrize("case", ["random", "many_ties", "constant", "huge_tiny_differences", "inverted"])
def test_f1_max_equals_brute_force(case: str) -> None:
    scores, labels = _auroc_cases()[case]
    f1, threshold = f1_max(scores, labels)
    ref_f1, ref_threshold = _brute_force_f1(scores, labels)
    assert f1 == pytest.approx(ref_f1, abs=1e-12)
    assert threshold == ref_threshold


def test_f1_max_and_pr_curve_hand_values() -> None:
    scores = [0.9, 0.8, 0.8, 0.3, 0.1]
    labels = [1, 0, 1, 1, 0]
    precision, recall, thresholds = pr_curve(scores, labels)
    np.testing.assert_array_equal(thresholds, [0.9, 0.8, 0.3, 0.1])
    np.testing.assert_allclose(precision, [1.0, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 1.0, 1.0])
    # At 0.3: TP 3, FP 1, FN 0 -> F1 = 6 / 7, better than 0.9 (1/2) and 0.8 (2/3).
    assert f1_max(scores, labels) == (pytest.approx(6 / 7), 0.3)
    with pytest.raises(DataError, match="none of the 3 samples is anomalous"):
        f1_max([0.1, 0.2, 0.3], [0, 0, 0])


def _blob_masks(rng: np.random.Generator, n: int, size: int, n_clean: int) -> np.ndarray:
    """Irregular blobs (thresholded smooth noise, several regions per image); the first n_clean empty."""
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2.5, 2.5))
    masks = noise > np.quantile(noise, 0.88)
    masks[:n_clean] = False
    return masks


def _maps_for(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    return rng.normal(size=masks.shape) + 1.2 * masks


def test_aupro_equals_reference_on_random_blobs() -> None:
    rng = np.random.default_rng(1)
    masks = _blob_masks(rng, 6, 24, n_clean=2)
    maps = _maps_for(rng, masks)
    fpr, pro = pro_curve(maps, masks)
    ref_fpr, ref_pro = reference_pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, ref_pro, atol=1e-9)
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(
            reference_aupro(maps, masks, limit), abs=1e-9
        )
    # Informative maps sit well above the 0.15 of a constant map.
    assert 0.35 < aupro(maps, masks) < 0.8


def test_aupro_equals_reference_with_ties_and_ragged_images() -> None:
    rng = np.random.default_rng(2)
    masks = list(_blob_masks(rng, 5, 20, n_clean=1))
    masks.append(_blob_masks(rng, 1, 28, n_clean=0)[0][:, :17])
    maps = [np.round(_maps_for(rng, m), 1).astype(np.float32) for m in masks]
    value = aupro(maps, masks)
    assert value == pytest.approx(reference_aupro(maps, masks), abs=1e-6)
    # The coarse reference of MVTec's style (a few hundred thresholds) agrees within 1e-3.
    coarse = np.linspace(min(m.min() for m in maps), max(m.max() for m in maps), 400)
    assert value == pytest.approx(reference_aupro(maps, masks, thresholds=coarse), abs=1e-3)


def test_aupro_hand_values() -> None:
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[0, 7:9, 7:9] = True
    perfect = masks.astype(np.float64)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    # One threshold: the curve is the diagonal (0, 0) -> (1, 1); its area to 0.3 is 0.045.
    assert aupro(np.zeros((2, 10, 10)), masks) == pytest.approx(0.15, abs=1e-15)
    # Defects and 18 of the 180 normal pixels at 1: (0, 0) -> (0.1, 1) -> (1, 1); area 0.05 + 0.2.
    noisy = perfect.copy()
    noisy[1, :9, 0] = 1.0
    noisy[1, 0, 1:10] = 1.0
    assert aupro(noisy, masks) == pytest.approx(0.25 / 0.3, abs=1e-12)


def test_pro_regions_are_eight_connected() -> None:
    mask = np.zeros((1, 6, 6), dtype=bool)
    mask[0, 1, 1] = mask[0, 2, 2] = True  # diagonal neighbours: one region of two pixels
    mask[0, 4, 4] = True  # a second region
    scores = np.zeros((1, 6, 6))
    scores[0, 1, 1] = 1.0
    fpr, pro = pro_curve(scores, mask)
    # At threshold 1: regions covered 1/2 and 0 -> PRO 0.25 (with 4-connectivity it would be 1/3).
    np.testing.assert_allclose(fpr, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(pro, [0.0, 0.25, 1.0])


def test_pro_without_defect_region_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no defect region"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), dtype=bool))


def test_pro_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="resize the map"):
        pro_curve(np.zeros((1, 4, 4)), np.ones((1, 8, 8), dtype=bool))


def test_pixel_auroc_equals_sklearn_on_ragged_maps() -> None:
    rng = np.random.default_rng(3)
    masks = [_blob_masks(rng, 1, s, n_clean=0)[0] for s in (16, 24, 20)]
    maps = [np.round(_maps_for(rng, m), 1).astype(np.float32) for m in masks]
    expected = roc_auc_score(
        np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])
    )
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(np.stack(maps[:1]), np.stack(masks[:1])) == pytest.approx(
        roc_auc_score(masks[0].ravel(), maps[0].ravel()), abs=1e-12
    )
    with pytest.raises(DataError, match="normal"):
        pixel_auroc(maps, [np.zeros_like(m) for m in masks])


def test_image_auroc_reduces_each_map() -> None:
    maps = np.zeros((4, 3, 3))
    maps[2, 0, 0] = 4.0  # defective image with a high peak but a low mean
    maps[3] = 0.5
    maps[1] = 0.6  # normal image with a high mean
    labels = [0, 0, 1, 1]
    assert image_auroc(maps, labels, reduce="max") == 0.75
    assert image_auroc(maps, labels, reduce="mean") == 0.5
