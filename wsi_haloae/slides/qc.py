"""Slide artefacts that are not pathology: pen ink, out-of-focus tissue and folds, found by
classical measures on each tile at the tile's own resolution (no model, no download).

They are the usual "anomalies" of a real slide, so the `tile` job leaves them out of training and
the `heatmap` job reports them as their own class ("Artefact: pen", ...) instead of as anomalies.

Each tile (RGB uint8, as the model sees it) gets three measures, each over a mask of the pixels
it concerns:

- pen: the share of the tile's pixels that are ink. Ink is saturated (HSV saturation at least
  `PEN_MIN_SATURATION`) with a hue H&E never has: green to cyan-blue, `PEN_HUES_DEG`. Eosin
  (pink, 300-350 deg) and haematoxylin (purple, 255-290 deg) stay outside, as do brown DAB-like
  stains (about 25 deg). Black ink is very dark and grey (`PEN_BLACK_MAX_VALUE`,
  `PEN_BLACK_MAX_SATURATION`): darker than the densest haematoxylin, greyer than a fold.
- fold: tissue lying on itself is two or three layers of stain, so it is dark throughout, over
  areas far wider than a nucleus. Pixels of H&E hue (`HNE_HUES_DEG`) with optical density
  (-log10 of R*G*B, over 3) of at least `FOLD_MIN_OD` are dark; a pixel is "solid dark" when
  `FOLD_SOLID` of the `FOLD_MIN_WIDTH_UM` window around it is dark (nuclei, 5-10 µm, are not);
  the measure is the share of the tile that is solid dark.
- blur: the variance of the Laplacian (3 x 3, grey levels 0-255) in `BLUR_BLOCK_PX` blocks of
  H&E tissue away from the tissue's edge (the tissue/glass edge is sharp even when the tissue is
  not); the measure is the share of such blocks at most `BLUR_MAX_LAPLACIAN_VAR`.

Thresholds, calibrated on a 4096 px synthetic slide at 0.5 µm/px (seed 2, six anomalies, two pen
strokes, a blur patch and a fold; 128 px tiles) and checked on CMU-1-Small-Region:

- `PEN_MIN_FRACTION` 0.05: tiles a stroke covers at least half of measure 0.5-1.0; clean tissue
  0.000, the anomalies at most 0.015 (a blue stain has hue 231 deg, just outside `PEN_HUES_DEG`),
  CMU-1's tissue 0.005 median. CMU-1 does carry green tissue-marking dye on a torn edge: one
  256-px tile measures 0.051 and is flagged, correctly.
- `FOLD_MIN_OD` 0.55, `FOLD_MIN_FRACTION` 0.25: fold tiles measure 0.42-0.90, clean tissue 0,
  the anomalies (the two-layer "fold" anomaly is paler and left to the model) at most 0.21, and
  CMU-1's dense keratin at most 0.21 at 128 px (0.11 at 256 px). Lower thresholds flag that keratin.
- `BLUR_MAX_LAPLACIAN_VAR` 20 with `BLUR_MIN_FRACTION` 0.3: in-focus tissue blocks measure
  hundreds (synthetic and CMU-1), blocks under a 2.5 µm Gaussian blur under 5; a tile half in
  the blur patch has 0.38-1.0 of its blocks blurred, clean tiles none. The Laplacian's variance
  grows as tiles get coarser, so blur QC is calibrated for tiles at about 0.25-1 µm/px.
- A tile needs `MIN_TISSUE_PX_FRACTION` of H&E tissue pixels for the fold and blur measures
  (NaN otherwise); pen counts every pixel, since ink on glass is ink too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .grid import TileGrid
from .slide import Slide

log = logging.getLogger(__name__)

ARTEFACT_KINDS = ("pen", "fold", "blur")  # when several fire on one tile, the first one names it
ARTEFACT_LABEL = "Artefact: {kind}"  # QuPath class name of an artefact tile

PEN_HUES_DEG = (90.0, 228.0)
PEN_MIN_SATURATION = 0.35
PEN_BLACK_MAX_VALUE = 0.2
PEN_BLACK_MAX_SATURATION = 0.35
PEN_MIN_FRACTION = 0.05
FOLD_MIN_OD = 0.55
FOLD_SOLID = 0.9
FOLD_MIN_WIDTH_UM = 12.0
FOLD_MIN_FRACTION = 0.25
BLUR_MAX_LAPLACIAN_VAR = 20.0
# tissue pixels for the fold and blur measures: coloured or dark, unlike the grey-white glass
TISSUE_MIN_SATURATION = 0.1
TISSUE_MAX_VALUE = 0.7
MIN_TISSUE_PX_FRACTION = 0.1
EDGE_EROSION_PX = 3  # the Laplacian's support plus the JPEG block's ringing
HNE_HUES_DEG = (240.0, 15.0)  # purple through pink to red: hue >= 240 or hue <= 15
BLUR_BLOCK_PX = 32
BLUR_MIN_BLOCK_TISSUE = 0.5
BLUR_MIN_FRACTION = 0.3


@dataclass(frozen=True)
class TileQC:
    """QC of some tiles of a grid: `indices` (K,) int64 grid positions; per tile the measures
    `pen_fraction`, `fold_fraction`, `blur_fraction` (NaN when too little tissue to measure) and
    `kind` (K,) object: "" for a clean tile, else the artefact kind ("pen", "fold", "blur")."""

    indices: np.ndarray
    pen_fraction: np.ndarray
    fold_fraction: np.ndarray
    blur_fraction: np.ndarray
    kind: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def is_artefact(self) -> np.ndarray:
        return self.kind != ""

    def counts(self) -> dict[str, int]:
        """Artefact tiles per kind (every kind listed, zeros included)."""
        return {kind: int((self.kind == kind).sum()) for kind in ARTEFACT_KINDS}


def tile_measures(
    images: np.ndarray, mpp_um: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pen_fraction, fold_fraction, blur_fraction), each (N,) float64, of (N, H, W, 3) uint8 tiles
    at `mpp_um` µm/px (None: 0.5); NaN where a tile has too little H&E tissue to measure."""
    # the window that tells a fold from nuclei is in µm: its side in this tile's pixels
    window_px = int(np.clip(round(FOLD_MIN_WIDTH_UM / (mpp_um or 0.5)), 3, 64))
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    count = len(images)
    pen = np.zeros(count)
    fold = np.full(count, np.nan)
    blur = np.full(count, np.nan)
    for n, image in enumerate(images):
        # channel by channel: reductions over a trailing axis of 3 are slow in numpy
        r, g, b = (image[..., c].astype(np.float32) / 255.0 for c in range(3))
        value = np.maximum(np.maximum(r, g), b)
        chroma = value - np.minimum(np.minimum(r, g), b)
        saturation = chroma / np.maximum(value, 1e-6)
        hue = _hue_deg(r, g, b, value, chroma)
        coloured_ink = (
            (saturation >= PEN_MIN_SATURATION) & (hue >= PEN_HUES_DEG[0]) & (hue <= PEN_HUES_DEG[1])
        )
        black_ink = (value <= PEN_BLACK_MAX_VALUE) & (saturation <= PEN_BLACK_MAX_SATURATION)
        pen[n] = float((coloured_ink | black_ink).mean())
        # H&E-coloured tissue only: ink, and stains of other colours, are neither folds nor blur
        hne = (saturation >= TISSUE_MIN_SATURATION) & ((hue >= HNE_HUES_DEG[0]) | (hue <= HNE_HUES_DEG[1]))
        if hne.mean() < MIN_TISSUE_PX_FRACTION:
            continue
        density = -np.log10(np.maximum(r * g * b, 1.0 / 255**3)) / 3
        dark = hne & (density >= FOLD_MIN_OD)
        # solid dark: nearly every pixel of the window around it is dark (nuclei are smaller)
        solid = ndimage.uniform_filter(dark.astype(np.float32), size=window_px, mode="nearest")
        fold[n] = float((solid >= FOLD_SOLID).mean())
        blur[n] = _blur_fraction(0.299 * r + 0.587 * g + 0.114 * b, hne)
    return pen, fold, blur


def _blur_fraction(grey: np.ndarray, tissue: np.ndarray) -> float:
    """Share of the tile's tissue blocks (`BLUR_BLOCK_PX` squares, mostly tissue away from its
    edge) whose Laplacian variance (grey levels 0-255) is at most `BLUR_MAX_LAPLACIAN_VAR`; NaN
    when no block is."""
    core = ndimage.minimum_filter(tissue, size=2 * EDGE_EROSION_PX + 1, mode="nearest")
    laplacian = ndimage.laplace(grey * 255.0, mode="nearest")
    height, width = core.shape
    block = min(BLUR_BLOCK_PX, height, width)
    rows, cols = height // block, width // block

    def block_sums(values: np.ndarray) -> np.ndarray:
        return values[: rows * block, : cols * block].reshape(rows, block, cols, block).sum(axis=(1, 3))

    weight = core.astype(np.float64)
    count = block_sums(weight)
    measured = count >= BLUR_MIN_BLOCK_TISSUE * block * block
    if not measured.any():
        return float("nan")
    mean = block_sums(laplacian * weight)[measured] / count[measured]
    variance = block_sums(laplacian**2 * weight)[measured] / count[measured] - mean**2
    return float((variance <= BLUR_MAX_LAPLACIAN_VAR).mean())


def classify(pen_fraction: np.ndarray, fold_fraction: np.ndarray, blur_fraction: np.ndarray) -> np.ndarray:
    """Artefact kind per tile from its measures: (N,) object array of "" / "pen" / "fold" / "blur"."""
    kind = np.full(len(pen_fraction), "", dtype=object)
    with np.errstate(invalid="ignore"):
        fired = {
            "pen": pen_fraction >= PEN_MIN_FRACTION,
            "fold": fold_fraction >= FOLD_MIN_FRACTION,
            "blur": blur_fraction >= BLUR_MIN_FRACTION,
        }
    for name in reversed(ARTEFACT_KINDS):  # the first kind in ARTEFACT_KINDS wins
        kind[fired[name]] = name
    return kind


def qc_tiles(
    slide: Slide,
    grid: TileGrid,
    indices: Sequence[int] | np.ndarray,
    *,
    workers: int = 0,
    batch_size: int = 32,
) -> TileQC:
    """Read the tiles `indices` of `grid` (as the model would see them) and find their artefacts."""
    from .tiles import iter_tiles

    indices = np.asarray(indices, dtype=np.int64)
    measures = [np.zeros(0), np.zeros(0), np.zeros(0)]
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for batch in iter_tiles(slide, grid, indices, batch_size=batch_size, workers=workers):
        parts.append(tile_measures(batch.images, grid.mpp_um))
    if parts:
        measures = [np.concatenate([part[i] for part in parts]) for i in range(3)]
    kind = classify(*measures)
    result = TileQC(indices, measures[0], measures[1], measures[2], kind)
    log.info(
        "%s: QC of %d tiles: %s artefact tiles",
        slide.path,
        len(indices),
        ", ".join(f"{n} {k}" for k, n in result.counts().items()) or "no",
    )
    return result


def _hue_deg(
    r: np.ndarray, g: np.ndarray, b: np.ndarray, value: np.ndarray, chroma: np.ndarray
) -> np.ndarray:
    """HSV hue in degrees [0, 360) from float channels (0 where the pixel is grey)."""
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(
        value == r, ((g - b) / safe) % 6, np.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    return np.where(chroma > 0, hue * 60.0, 0.0)
