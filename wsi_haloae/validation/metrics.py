"""Anomaly-detection metrics on raw scores: exact, no binning, no squashing.

Every metric sorts the scores as given (float64, float32 or integer, never cast to a narrower
type, never passed through a sigmoid), so two scores are tied only when they are equal numbers.
HaloAE's raw feature errors are large: tools that squash or bin them collapse distinct scores into
ties and return a silently wrong AUROC (see model-spec.md, "Evaluation").

Conventions: label 1 / True is anomalous (positive), 0 / False is normal; a sample is predicted
anomalous when `score >= threshold`. Pixel metrics take anomaly maps and ground-truth masks either
as arrays of shape (N, H, W) or as sequences of N two-dimensional arrays whose shapes may differ
from image to image (full-resolution MVTec masks are not all the same size); map i and mask i must
have the same shape.

AUPRO follows MVTec AD's own evaluation: each connected ground-truth region (8-connectivity) is one
unit; at every distinct threshold the per-region overlap is averaged over all regions of all
images (PRO) and set against the false-positive rate over all normal pixels; the curve is
integrated with the trapezoid rule up to `fpr_limit` (interpolated at the cut) and divided by
`fpr_limit`, so a perfect map scores 1.0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from ..errors import DataError

Maps = NDArray[np.number] | Sequence[NDArray[np.number]]
Masks = NDArray[np.bool_] | Sequence[NDArray[np.bool_]]

# 8-connectivity: pixels touching at a corner belong to the same defect region.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve, exact, with ties counted as half (as `sklearn.metrics.roc_auc_score`).

    Args:
        scores: (N,) real scores, higher = more anomalous; compared as the exact numbers given.
        labels: (N,) 0/1 or bool, 1 = anomalous.

    Computed as the Mann-Whitney statistic: the fraction of (anomalous, normal) pairs ranked in the
    right order, a tied pair counting 1/2, which equals the trapezoidal area under the ROC curve
    through every distinct threshold. Memory: one sorted copy of the normal scores.

    Raises:
        DataError: only one class is present.
        ValueError: shapes differ, labels are not 0/1, or a score is NaN.
    """
    s, positive = _scores_and_labels(scores, labels)
    return _mann_whitney(s[positive], s[~positive], "auroc")


def roc_curve(
    scores: ArrayLike, labels: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray]:
    """ROC curve through every distinct score.

    Returns:
        (fpr, tpr, thresholds), each of length (number of distinct scores + 1): thresholds in
        decreasing order, the first being +inf (nothing predicted anomalous, the point (0, 0)),
        the last the smallest score (everything predicted anomalous, the point (1, 1)).

    Raises:
        DataError: only one class is present.
    """
    s, positive = _scores_and_labels(scores, labels)
    n_pos = int(positive.sum())
    _require_both_classes(n_pos, positive.size - n_pos, "roc_curve")
    thresholds, tp, fp = _sweep(s, positive)
    fpr = np.concatenate(([0.0], fp / (positive.size - n_pos)))
    tpr = np.concatenate(([0.0], tp / n_pos))
    return fpr, tpr, np.concatenate(([np.inf], thresholds.astype(np.float64)))


def pr_curve(
    scores: ArrayLike, labels: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray]:
    """Precision-recall curve through every distinct score.

    Returns:
        (precision, recall, thresholds), one entry per distinct score, thresholds decreasing (so
        recall is non-decreasing); thresholds keep the scores' dtype.

    Raises:
        DataError: no anomalous sample.
    """
    thresholds, tp, fp, n_pos = _sweep_with_positives("pr_curve", scores, labels)
    return tp / (tp + fp), tp / n_pos, thresholds


def _sweep_with_positives(
    caller: str, scores: ArrayLike, labels: ArrayLike
) -> tuple[NDArray, NDArray[np.int64], NDArray[np.int64], int]:
    """`_sweep` for curves that divide by the anomalous count: DataError when there is none."""
    s, positive = _scores_and_labels(scores, labels)
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise DataError(
            f"{caller}: none of the {positive.size} samples is anomalous (label 1); add defective samples"
        )
    return (*_sweep(s, positive), n_pos)


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """The best F1 score over all thresholds, and the threshold that reaches it.

    Returns:
        (f1, threshold): predicting `score >= threshold` as anomalous gives F1 = f1; when several
        thresholds reach the maximum, the highest one is returned.

    Raises:
        DataError: no anomalous sample.
    """
    thresholds, tp, fp, n_pos = _sweep_with_positives("f1_max", scores, labels)
    # F1 = 2 TP / (2 TP + FP + FN), with FN = n_pos - TP.
    f1 = 2.0 * tp / (tp + fp + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def image_auroc(maps: Maps, labels: ArrayLike, reduce: Literal["mean", "max"] = "mean") -> float:
    """Image-level AUROC, each image scored by the mean (default, as the spec) or max of its map.

    Args:
        maps: N anomaly maps, (N, H, W) or a sequence of 2-D arrays.
        labels: (N,) 0/1, 1 = defective image.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    scores = np.array(
        [float(m.mean()) if reduce == "mean" else float(m.max()) for m in _images(maps, "maps")]
    )
    return auroc(scores, labels)


def pixel_auroc(maps: Maps, masks: Masks) -> float:
    """Pixel-level AUROC over all pixels of all images, at the resolution of the masks given.

    Args:
        maps: N anomaly maps, (N, H, W) or a sequence of 2-D arrays, each the shape of its mask
            (upsample maps to the full image resolution before calling, as the spec asks).
        masks: N ground-truth masks, True = defective pixel.

    Memory-aware: the pixels are split into one array of normal and one of defective scores (one
    copy of the maps in all, in the maps' own dtype), the normal array is sorted in place and each
    defective score is located in it by binary search. No argsort, no float64 upcast.

    Raises:
        DataError: no defective pixel, or no normal pixel, in the whole set.
        ValueError: maps and masks do not pair up, or a score is NaN.
    """
    pairs = _pairs(maps, masks)
    n_pos = sum(int(k.sum()) for _, k in pairs)
    n_all = sum(k.size for _, k in pairs)
    dtype = np.result_type(*(m.dtype for m, _ in pairs))
    pos = np.empty(n_pos, dtype=dtype)
    neg = np.empty(n_all - n_pos, dtype=dtype)
    i_pos = i_neg = 0
    for m, k in pairs:
        p, n = m[k], m[~k]
        pos[i_pos : i_pos + p.size] = p
        neg[i_neg : i_neg + n.size] = n
        i_pos += p.size
        i_neg += n.size
    return _mann_whitney(pos, neg, "pixel_auroc")


def pro_curve(
    maps: Maps, masks: Masks, valid: Masks | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The per-region-overlap curve: false-positive rate against mean per-region overlap.

    Args:
        maps: N anomaly maps, (N, H, W) or a sequence of 2-D arrays, each the shape of its mask.
        masks: N ground-truth masks, True = defective pixel; images without defects are allowed
            (they contribute normal pixels only).
        valid: optional N masks of the pixels to score (e.g. tissue); the others are left out, and
            defect regions are the 8-connected components of `mask & valid`.

    Returns:
        (fpr, pro), one point per distinct score plus the start (0, 0), in order of decreasing
        threshold, so both are non-decreasing and the last point is (1, 1). fpr is over all normal
        pixels of all images; pro is the mean, over every 8-connected defect region of every image,
        of the fraction of the region at or above the threshold.

    One sort of all pixels (O(P log P)): at each distinct threshold, normal pixels add 1 to the
    false-positive count and each defective pixel adds 1 / (size of its region) to the overlap sum.
    Memory: about 40 bytes per pixel at the peak (sort indices, sorted ids, running sums).

    Raises:
        DataError: the masks hold no defect region, or no normal pixel.
        ValueError: maps and masks do not pair up, or a score is NaN.
    """
    pairs = _pairs(maps, masks)
    keep = None
    if valid is not None:
        valid_list = [np.asarray(v, dtype=bool) for v in _images(valid, "valid")]
        if len(valid_list) != len(pairs) or any(v.shape != k.shape for v, (_, k) in zip(valid_list, pairs)):
            raise ValueError("valid masks must pair up with the maps, one of the same shape each")
        pairs = [(m, k & v) for (m, k), v in zip(pairs, valid_list, strict=True)]
        keep = np.concatenate([v.ravel() for v in valid_list])
    sizes = [m.size for m, _ in pairs]
    scores = np.concatenate([m.ravel() for m, _ in pairs]) if len(pairs) > 1 else pairs[0][0].ravel()
    # Region ids are global over the set: 0 is normal, 1..n_regions are the defect regions.
    region = np.empty(sum(sizes), dtype=np.int32)
    n_regions = 0
    start = 0
    for (_, k), size in zip(pairs, sizes, strict=True):
        labelled, n = ndimage.label(k, structure=_EIGHT_CONNECTED)
        labelled = labelled.ravel()
        region[start : start + size] = np.where(labelled > 0, labelled + n_regions, 0)
        n_regions += n
        start += size
    if n_regions == 0:
        raise DataError(
            f"pro_curve: the {len(pairs)} ground-truth masks hold no defect region; "
            "AUPRO needs test images with annotated defects"
        )
    if keep is not None:
        scores, region = scores[keep], region[keep]
    region_size = np.bincount(region, minlength=n_regions + 1)
    n_normal = int(region_size[0])
    if n_normal == 0:
        raise DataError(
            "pro_curve: every pixel of the ground-truth masks is defective; AUPRO needs normal pixels"
        )
    inv_size = np.zeros(n_regions + 1, dtype=np.float64)
    inv_size[1:] = 1.0 / region_size[1:]

    order = np.argsort(scores)[::-1]
    ends = _group_ends(scores[order])
    region_sorted = region[order]
    del order, region
    fp = np.cumsum(region_sorted == 0, dtype=np.int64)[ends]
    overlap = np.cumsum(inv_size[region_sorted])[ends]
    fpr = np.concatenate(([0.0], fp / n_normal))
    pro = np.concatenate(([0.0], overlap / n_regions))
    return fpr, pro


def aupro(maps: Maps, masks: Masks, fpr_limit: float = 0.3, valid: Masks | None = None) -> float:
    """Normalised area under the PRO curve up to `fpr_limit` (MVTec AD's AU-PRO, default FPR <= 0.3).

    The trapezoid area of `pro_curve` from FPR 0 to `fpr_limit` (the curve linearly interpolated at
    the cut), divided by `fpr_limit`: 1.0 for a perfect map, 0.15 for a constant map at 0.3.

    Raises:
        DataError: as `pro_curve`.
        ValueError: fpr_limit outside (0, 1].
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks, valid)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _area_up_to(x: NDArray[np.float64], y: NDArray[np.float64], x_max: float) -> float:
    """Trapezoid area under the polyline (x, y), x non-decreasing from 0, from x = 0 to x = x_max."""
    inside = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:inside], y[:inside]
    if inside < x.size and xs[-1] < x_max:
        # The cut falls inside the segment from the last point at or below x_max to the next one.
        t = (x_max - x[inside - 1]) / (x[inside] - x[inside - 1])
        xs = np.append(xs, x_max)
        ys = np.append(ys, y[inside - 1] + t * (y[inside] - y[inside - 1]))
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)


def _mann_whitney(pos: NDArray, neg: NDArray, what: str) -> float:
    """AUROC from the anomalous scores `pos` and normal scores `neg`; sorts `neg` in place."""
    _require_both_classes(pos.size, neg.size, what)
    _require_no_nan(pos, what)
    _require_no_nan(neg, what)
    neg.sort()
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.int64)
    below_or_tied = np.searchsorted(neg, pos, side="right").sum(dtype=np.int64)
    # Pairs ranked right count 1, tied pairs 1/2: (below + below_or_tied) / 2 pairs in all.
    return float((int(below) + int(below_or_tied)) / (2 * pos.size * neg.size))


def _sweep(
    scores: NDArray, positive: NDArray[np.bool_]
) -> tuple[NDArray, NDArray[np.int64], NDArray[np.int64]]:
    """Distinct scores in decreasing order with the true/false positives at or above each.

    Equal scores move together: counts are read only at the last sample of each group of ties.
    """
    order = np.argsort(scores)[::-1]
    ordered = scores[order]
    ends = _group_ends(ordered)
    tp = np.cumsum(positive[order], dtype=np.int64)[ends]
    fp = ends + 1 - tp
    return ordered[ends], tp, fp


def _group_ends(ordered: NDArray) -> NDArray[np.intp]:
    """Indices of the last element of each run of equal values in a sorted array."""
    return np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))


def _scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[NDArray, NDArray[np.bool_]]:
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same shape")
    if not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.ravel()
    y = y.ravel()
    if y.dtype != np.bool_:
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError(f"labels must be 0/1 or bool, got values {np.unique(y)[:5].tolist()}")
        y = y == 1
    _require_no_nan(s, "scores")
    return s, y


def _pairs(maps: Maps, masks: Masks) -> list[tuple[NDArray, NDArray[np.bool_]]]:
    """(map, bool mask) per image, checked to pair up; arrays of shape (N, H, W) yield views."""
    map_list = list(_images(maps, "maps"))
    mask_list = list(_images(masks, "masks"))
    if len(map_list) != len(mask_list):
        raise ValueError(f"{len(map_list)} maps but {len(mask_list)} masks")
    if not map_list:
        raise ValueError("no maps given")
    pairs = []
    for i, (m, k) in enumerate(zip(map_list, mask_list, strict=True)):
        if m.shape != k.shape:
            raise ValueError(
                f"map {i} has shape {m.shape} but its mask {k.shape}; resize the map to the mask"
            )
        if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
            raise ValueError(f"map {i} must hold real numbers, got dtype {m.dtype}")
        _require_no_nan(m, f"map {i}")
        pairs.append((m, k if k.dtype == np.bool_ else k != 0))
    return pairs


def _images(arrays: Maps | Masks, name: str) -> Iterator[NDArray]:
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        if a.ndim != 2:
            raise ValueError(f"{name}[{i}] must be a 2-D (H, W) array, got shape {a.shape}")
        yield a


def _require_both_classes(n_pos: int, n_neg: int, what: str) -> None:
    if n_pos == 0 or n_neg == 0:
        present = "anomalous (label 1)" if n_neg == 0 else "normal (label 0)"
        raise DataError(
            f"{what}: all {n_pos + n_neg} samples are {present}; AUROC needs both normal and anomalous "
            "samples: add the missing class to the test set"
        )


def _require_no_nan(a: NDArray, what: str) -> None:
    if np.issubdtype(a.dtype, np.floating) and np.isnan(a).any():
        raise ValueError(f"{what} contain NaN; check the model output that produced them")


# --- added for slide validation (issue 13) ---------------------------------------------------

# Camelyon16's FROC operating points: false positives per slide.
FROC_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def auprc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the precision-recall curve as average precision, exact (as
    `sklearn.metrics.average_precision_score`): sum over distinct thresholds of
    (recall_k - recall_{k-1}) * precision_k, ties moving together.

    Raises:
        DataError: no anomalous sample.
    """
    _, tp, fp, n_pos = _sweep_with_positives("auprc", scores, labels)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def at_threshold(scores: ArrayLike, labels: ArrayLike, threshold: float) -> dict[str, float]:
    """Confusion counts and rates predicting `score >= threshold` as anomalous.

    Returns tp, fp, tn, fn (as floats for JSON) and sensitivity (TP / positives), specificity
    (TN / negatives), precision (TP / predicted positives) and f1; a rate whose denominator is 0
    is NaN (written as null in JSON).
    """
    s, positive = _scores_and_labels(scores, labels)
    predicted = s >= threshold
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    fn = int((~predicted & positive).sum())
    tn = int((~predicted & ~positive).sum())

    def rate(num: int, den: int) -> float:
        return num / den if den else float("nan")

    return {
        "tp": float(tp),
        "fp": float(fp),
        "tn": float(tn),
        "fn": float(fn),
        "sensitivity": rate(tp, tp + fn),
        "specificity": rate(tn, tn + fp),
        "precision": rate(tp, tp + fp),
        "f1": rate(2 * tp, 2 * tp + fp + fn),
    }


def dice_iou(predicted: ArrayLike, truth: ArrayLike) -> tuple[float, float]:
    """Dice (2|P∩T| / (|P| + |T|)) and IoU (|P∩T| / |P∪T|) of two boolean masks of one shape.

    Both empty: (1.0, 1.0) (the prediction is exactly right). Raises ValueError when the shapes
    differ.
    """
    p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
    if p.shape != t.shape:
        raise ValueError(f"predicted {p.shape} and truth {t.shape} masks must have the same shape")
    both = int((p & t).sum())
    either = int((p | t).sum())
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0, 1.0
    return 2.0 * both / total, both / either


def froc_points(
    detections: Sequence[tuple[float, int | None]], n_truth: int, n_slides: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The FROC curve of fixed scored detections, as Camelyon16's evaluation computes it.

    Args:
        detections: over all slides, (score, id of the truth region it hits or None). Region ids
            must be unique across slides. A truth region counts as found at threshold t when any
            detection hitting it scores >= t (its score is the best of them); detections hitting no
            truth region are false positives; further hits on a found region are neither.
        n_truth: truth regions over all slides (found or not); n_slides: slides in the cohort.

    Returns:
        (fps_per_slide, sensitivity, thresholds): one point per distinct score in decreasing
        order, preceded by (0, 0) at threshold +inf.

    Raises:
        ValueError: n_truth or n_slides below 1.
    """
    if n_truth < 1 or n_slides < 1:
        raise ValueError(f"FROC needs truth regions and slides, got {n_truth} regions on {n_slides} slides")
    best: dict[int, float] = {}
    fp_scores = []
    for score, region in detections:
        if region is None:
            fp_scores.append(float(score))
        else:
            best[region] = max(best.get(region, -np.inf), float(score))
    tp_scores = np.array(sorted(best.values()))
    fp_sorted = np.sort(np.array(fp_scores, dtype=np.float64))
    thresholds = np.unique(np.concatenate([tp_scores, fp_sorted]))[::-1]
    n_fp = fp_sorted.size - np.searchsorted(fp_sorted, thresholds, side="left")
    n_tp = tp_scores.size - np.searchsorted(tp_scores, thresholds, side="left")
    return (
        np.concatenate(([0.0], n_fp / n_slides)),
        np.concatenate(([0.0], n_tp / n_truth)),
        np.concatenate(([np.inf], thresholds)),
    )


def froc_score(
    fps_per_slide: ArrayLike, sensitivity: ArrayLike, rates: Sequence[float] = FROC_RATES
) -> tuple[dict[float, float], float]:
    """Sensitivity at each FP rate and their mean (the FROC score, Camelyon16's rates).

    The sensitivity at rate r is the highest sensitivity of a curve point with at most r false
    positives per slide: the best operating point a threshold actually reaches. Camelyon16's
    script instead interpolates linearly (`np.interp`) over its points, taken in the iteration
    order of a Python set, which is ill-defined where points share an FP rate; the step value
    used here is exact and never above the interpolated one.
    """
    fps = np.asarray(fps_per_slide, dtype=np.float64)
    sens = np.asarray(sensitivity, dtype=np.float64)
    if fps.shape != sens.shape or fps.size == 0:
        raise ValueError(f"fps_per_slide {fps.shape} and sensitivity {sens.shape} must be equal, non-empty")
    at = {float(r): float(sens[fps <= r].max(initial=0.0)) for r in rates}
    return at, float(np.mean(list(at.values())))
