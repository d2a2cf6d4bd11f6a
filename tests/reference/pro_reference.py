"""PRO and AU-PRO straight from their definition: slow, plain loops, the oracle for `wsi_haloae.validation.metrics`.

Definition (MVTec AD's evaluation): every 8-connected ground-truth region of every image is one
unit. At a threshold t a pixel is predicted defective when its score >= t. PRO(t) is the mean,
over all regions, of the fraction of the region predicted defective; FPR(t) is the fraction of all
normal pixels (of all images) predicted defective. The curve starts at (0, 0) (t = +inf) and visits
every threshold in decreasing order; AU-PRO is its trapezoid area from FPR 0 to `fpr_limit`, the
last segment cut at `fpr_limit` by linear interpolation, divided by `fpr_limit`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def reference_pro_curve(maps, masks, thresholds=None):
    """(fpr, pro) lists at +inf and at each threshold (default: every distinct score), decreasing."""
    regions = []
    n_normal = 0
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=bool))
        for r in range(1, n + 1):
            regions.append((i, labelled == r))
        n_normal += int((~np.asarray(mask, dtype=bool)).sum())
    if thresholds is None:
        thresholds = np.unique(np.concatenate([np.ravel(m) for m in maps]))
    fprs, pros = [0.0], [0.0]
    for t in sorted(thresholds, reverse=True):
        false_positives = 0
        for m, mask in zip(maps, masks, strict=True):
            false_positives += int(((np.asarray(m) >= t) & ~np.asarray(mask, dtype=bool)).sum())
        overlaps = []
        for i, region in regions:
            overlaps.append(((np.asarray(maps[i]) >= t) & region).sum() / region.sum())
        fprs.append(false_positives / n_normal)
        pros.append(float(np.mean(overlaps)))
    return fprs, pros


def reference_area(fprs, pros, fpr_limit):
    """Trapezoid area under (fpr, pro) from 0 to fpr_limit, cut by interpolation, over fpr_limit."""
    area = 0.0
    for i in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[i - 1], fprs[i], pros[i - 1], pros[i]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area / fpr_limit


def reference_aupro(maps, masks, fpr_limit=0.3, thresholds=None):
    fprs, pros = reference_pro_curve(maps, masks, thresholds)
    return reference_area(fprs, pros, fpr_limit)
