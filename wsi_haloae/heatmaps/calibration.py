"""Threshold calibration files: a threshold chosen on a validation cohort, for `heatmap` to use.

`wsi-haloae validate --choose-threshold ...` writes one (`threshold.json` in its output folder);
`heatmap --threshold-file FILE` uses it, and so does `heatmap` without threshold options when the
model's run folder holds a `threshold.json`. The file:

    {"format": "wsi-haloae/threshold/1", "threshold": 0.0123, "method": "youden",
     "model_sha256": "...", "normalisation": "median",
     "score_range": [lo, hi], "cohort": [...], "at_threshold": {...}}

`score_range` (lo < hi) scales the normalised scores written beside the raw ones:
`normalised = clip(0.5 + (score - threshold) / (hi - lo), 0, 1)` (anomalib's min-max
normalisation around the threshold), so the chosen threshold sits at 0.5. Without a calibration
file the range is the model's own training tile scores (min, max).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..files import write_atomically

CALIBRATION_FORMAT = "wsi-haloae/threshold/1"
CALIBRATION_NAME = "threshold.json"


def write_calibration(path: str | Path, record: dict[str, Any]) -> Path:
    """Write a calibration record (needs threshold, method, model_sha256, normalisation, score_range)."""
    path = Path(path)
    missing = {"threshold", "method", "model_sha256", "normalisation", "score_range"} - set(record)
    if missing:
        raise ValueError(f"calibration record lacks {sorted(missing)}")
    write_atomically(path, (json.dumps({"format": CALIBRATION_FORMAT, **record}, indent=2) + "\n").encode())
    return path


def read_calibration(
    path: str | Path, *, model_sha256: str | None = None, normalisation: str | None = None
) -> dict[str, Any]:
    """Read and check a calibration file; ConfigError when it is unreadable, of another format, or
    made for another model (`model_sha256`) or normalisation than the ones given."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"cannot read the threshold file {path} ({type(exc).__name__}); pass the threshold.json "
            "that `wsi-haloae validate --choose-threshold` wrote"
        ) from None
    if not isinstance(record, dict) or record.get("format") != CALIBRATION_FORMAT:
        raise ConfigError(f"{path} is not a wsi-haloae threshold file (format {CALIBRATION_FORMAT})")
    threshold = record.get("threshold")
    lo, hi = (record.get("score_range") or [math.nan, math.nan])[:2]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (threshold, lo, hi)) or not lo < hi:
        raise ConfigError(f"{path}: threshold and score_range [lo < hi] must be finite numbers")
    if model_sha256 is not None and record.get("model_sha256") != model_sha256:
        raise ConfigError(
            f"{path} was chosen for model {str(record.get('model_sha256'))[:12]}..., not this one "
            f"({model_sha256[:12]}...); rerun `wsi-haloae validate --choose-threshold` on its heatmaps"
        )
    if normalisation is not None and record.get("normalisation") != normalisation:
        raise ConfigError(
            f"{path} was chosen on {record.get('normalisation')}-normalised scores, not {normalisation}; "
            f"pass --normalisation {record.get('normalisation')}"
        )
    return record


def normalise_scores(scores: np.ndarray, threshold: float, score_range: tuple[float, float]) -> np.ndarray:
    """Scores mapped to [0, 1] with `threshold` at 0.5: clip(0.5 + (s - threshold) / (hi - lo), 0, 1)."""
    lo, hi = score_range
    if not hi > lo:
        raise ValueError(f"score_range must have lo < hi, got {score_range}")
    values = np.asarray(scores, dtype=np.float64)
    return np.clip(0.5 + (values - threshold) / (hi - lo), 0.0, 1.0)
