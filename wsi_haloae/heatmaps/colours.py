"""How anomaly scores become colours, the same in the overlay PNG, the browser viewer's tiles and
the QuPath export.

Scores at or below the threshold get no colour at all: the H&E underneath stays as it is, which
is what a pathologist needs to see normal tissue. Scores above it run along a perceptually
uniform colour map (magma by default) from `cmap_low` to its bright end: magma's first quarter is
near-black, which would read as "dark tissue" rather than "anomalous", so the ramp starts at
purple. The ramp spans the threshold to `vmax` (by default the 99th percentile of the scores
above the threshold), linearly, or logarithmically when `vmax` is more than `LOG_RATIO` times
the threshold: anomaly scores are heavy-tailed (the demo's run from 5 to 11,000), and on a
linear ramp every anomaly but the worst would share the first colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib
import numpy as np

LOG_RATIO = 10.0  # vmax / threshold above which the ramp is logarithmic
RAMP_PERCENTILE = 99.0  # of the above-threshold scores: the ramp's top


@dataclass(frozen=True)
class ScoreColours:
    """Scores above `threshold` -> a colour of `cmap` between `cmap_low` and 1 (see module)."""

    threshold: float
    vmax: float
    log: bool = False
    cmap: str = "magma"
    cmap_low: float = 0.3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and math.isfinite(self.vmax) and self.vmax > self.threshold):
            raise ValueError(
                f"colour ramp needs finite vmax > threshold, got {self.vmax} and {self.threshold}"
            )
        if self.log and not self.threshold > 0:
            raise ValueError(f"a logarithmic ramp needs a positive threshold, got {self.threshold}")

    def ramp(self, scores: np.ndarray) -> np.ndarray:
        """Position of each score along the ramp, 0 at the threshold and 1 at `vmax` (clipped);
        NaN for scores at or below the threshold and for NaN scores."""
        values = np.asarray(scores, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.log:
                position = np.log(values / self.threshold) / math.log(self.vmax / self.threshold)
            else:
                position = (values - self.threshold) / (self.vmax - self.threshold)
            above = values > self.threshold
        return np.where(above, np.clip(position, 0.0, 1.0), np.nan)

    def score_at(self, position: float) -> float:
        """The score at ramp `position` (0..1): the inverse of `ramp`."""
        if self.log:
            return self.threshold * (self.vmax / self.threshold) ** position
        return self.threshold + position * (self.vmax - self.threshold)

    def colour_of_position(self, position: np.ndarray) -> np.ndarray:
        """(..., 3) float RGB in [0, 1] of ramp positions (no NaN)."""
        colormap = matplotlib.colormaps[self.cmap]
        return np.asarray(colormap(self.cmap_low + (1.0 - self.cmap_low) * np.asarray(position)))[..., :3]

    def rgba(self, scores: np.ndarray, alpha: float = 1.0) -> np.ndarray:
        """(..., 4) uint8 RGBA: the ramp colour with opacity `alpha` above the threshold, fully
        transparent (0, 0, 0, 0) at or below it and where the score is NaN."""
        position = self.ramp(scores)
        tinted = np.isfinite(position)
        out = np.zeros((*position.shape, 4), np.uint8)
        out[tinted, :3] = np.round(self.colour_of_position(position[tinted]) * 255).astype(np.uint8)
        out[tinted, 3] = round(255 * alpha)
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "threshold": self.threshold,
            "vmax": self.vmax,
            "log": self.log,
            "cmap": self.cmap,
            "cmap_low": self.cmap_low,
        }


def score_colours(threshold: float, scores: np.ndarray, *, cmap: str = "magma") -> ScoreColours:
    """The ramp for `scores` (any shape; NaN ignored): from `threshold` to the `RAMP_PERCENTILE`
    of the scores above it (to twice the threshold's distance from 0, at least 1, when none or
    one is above), logarithmic when that top exceeds `LOG_RATIO` times a positive threshold."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    above = values[np.isfinite(values) & (values > threshold)]
    spread = max(abs(threshold), 1.0)
    vmax = float(np.percentile(above, RAMP_PERCENTILE)) if above.size > 1 else threshold + spread
    if not vmax > threshold * (1 + 1e-6) + 1e-12:
        vmax = threshold + spread
    log = threshold > 0 and vmax > LOG_RATIO * threshold
    return ScoreColours(float(threshold), vmax, log=log, cmap=cmap)
