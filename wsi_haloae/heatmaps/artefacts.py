"""Artefact tiles in the heatmap outputs: their own class in `tiles.geojson`, their own count in
`summary.json`, and out of the anomaly regions.

The QC (`slides.qc`) runs on the tiles `heatmap` scores. Artefact tiles are still scored (their
scores stay in `tile_scores.npz` and the heatmap, so metrics over all tiles do not change), but:

- in `tiles.geojson` they are classified "Artefact: pen" / "Artefact: fold" / "Artefact: blur"
  (QuPath colours `ARTEFACT_COLOURS`) instead of Anomaly or Normal, with the QC measures added;
- `summary.json` counts them under "artefacts", and the "anomalous" tile count leaves them out;
- heatmap pixels under an artefact tile are left out of `regions.geojson` (`artefact_heat_mask`);
- `artefact_outline` gives their footprints as one geometry, for an overlay to draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely

from ..slides.qc import ARTEFACT_KINDS, ARTEFACT_LABEL, TileQC

# QuPath classification colours: teal ink, brown folds, grey blur
ARTEFACT_COLOURS: dict[str, tuple[int, int, int]] = {
    "pen": (0, 150, 150),
    "fold": (140, 80, 20),
    "blur": (150, 150, 150),
}


def label_artefact_tiles(features: Sequence[dict[str, Any]], qc: TileQC) -> None:
    """Reclassify, in place, the tile features (one per QC'd tile, same order) of artefact tiles
    and add their QC measures (`qc_pen_fraction`, ...) to their measurements."""
    if len(features) != len(qc):
        raise ValueError(f"{len(features)} tile features for {len(qc)} QC'd tiles")
    for item, kind, pen, fold, blur in zip(
        features, qc.kind.tolist(), qc.pen_fraction, qc.fold_fraction, qc.blur_fraction
    ):
        if not kind:
            continue
        properties = item["properties"]
        measurements = properties.setdefault("measurements", {})
        for name, value in (("qc_pen_fraction", pen), ("qc_fold_fraction", fold), ("qc_blur_fraction", blur)):
            if np.isfinite(value):
                measurements[name] = float(value)
        if kind:
            properties["classification"] = {
                "name": ARTEFACT_LABEL.format(kind=kind),
                "color": list(ARTEFACT_COLOURS[kind]),
            }


def artefact_heat_mask(
    shape_yx: tuple[int, int], px_to_l0: float, coords_l0: np.ndarray, tile_size_l0: int, qc: TileQC
) -> np.ndarray:
    """(h, w) bool over a heatmap level of `px_to_l0` level-0 px per pixel: True on pixels whose
    centre lies in an artefact tile's footprint (`coords_l0` (N, 2) are the QC'd tiles' origins)."""
    mask = np.zeros(shape_yx, bool)
    for x_l0, y_l0 in np.asarray(coords_l0)[qc.is_artefact].tolist():
        # pixel j's centre (j + 0.5) * px_to_l0 lies in [x_l0, x_l0 + size)
        x0, x1 = (int(np.ceil(v / px_to_l0 - 0.5)) for v in (x_l0, x_l0 + tile_size_l0))
        y0, y1 = (int(np.ceil(v / px_to_l0 - 0.5)) for v in (y_l0, y_l0 + tile_size_l0))
        mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def artefact_outline(coords_l0: np.ndarray, tile_size_l0: int, qc: TileQC) -> dict[str, shapely.Geometry]:
    """The artefact tiles' footprints, one (Multi)Polygon in level-0 px per kind found."""
    coords = np.asarray(coords_l0, dtype=np.float64)
    outlines = {}
    for kind in ARTEFACT_KINDS:
        picked = coords[qc.kind == kind]
        if len(picked):
            boxes = shapely.box(
                picked[:, 0], picked[:, 1], picked[:, 0] + tile_size_l0, picked[:, 1] + tile_size_l0
            )
            outlines[kind] = shapely.union_all(boxes)
    return outlines


def artefact_summary(qc: TileQC | None) -> dict[str, Any]:
    """The summary's "artefacts" section."""
    if qc is None:
        return {"qc": "off"}
    return {
        "qc": "report",
        "tiles": int(qc.is_artefact.sum()),
        "by_kind": {ARTEFACT_LABEL.format(kind=kind): count for kind, count in qc.counts().items()},
    }
