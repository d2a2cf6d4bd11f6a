"""Heatmap results as QuPath objects: regions above the threshold (annotations) and scored tiles
(detections), in the slide's level-0 pixel frame; the schema itself lives in `annotations`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box

from ..annotations import (
    ANOMALY_CLASS,
    COORD_DECIMALS,
    NORMAL_CLASS,
    classification,
    feature,
    float32_value,
    id_namespace_uuid,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnomalyRegion:
    """One connected region above threshold.

    `geometry` is a Polygon or MultiPolygon (8-connected pixels touching only at a corner form a
    MultiPolygon) in level-0 pixels, holes kept. `area_um2` counts the region's heatmap pixels
    times their physical area (exact, unaffected by outline simplification); `mean_score` and
    `max_score` are over those pixels.
    """

    geometry: Polygon | MultiPolygon
    area_um2: float
    mean_score: float
    max_score: float


def anomaly_regions(
    heatmap: np.ndarray,
    mask: np.ndarray,
    threshold: float,
    *,
    px_to_l0: float,
    mpp_um: tuple[float, float],
    min_area_um2: float = 0.0,
    simplify_px: float = 1.0,
) -> list[AnomalyRegion]:
    """Outline the computed pixels of `heatmap` scoring above `threshold`, one region per
    8-connected component, in raster order of their first pixel.

    `heatmap` (h, w) float and `mask` (h, w) bool are one heatmap level; one heatmap pixel spans
    `px_to_l0` level-0 pixels, and `mpp_um` is the slide's level-0 (x, y) pixel size in um.
    Outlines follow pixel edges, then are simplified with a tolerance of `simplify_px` heatmap
    pixels (0 keeps the exact staircase). Regions smaller than `min_area_um2` are dropped.
    """
    if heatmap.shape != mask.shape or heatmap.ndim != 2:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} must be the same 2-D shape")
    with np.errstate(invalid="ignore"):
        above = mask.astype(bool) & (heatmap > threshold)
    labels, count = ndimage.label(above, structure=np.ones((3, 3), bool))
    pixel_area_um2 = (px_to_l0 * mpp_um[0]) * (px_to_l0 * mpp_um[1])
    regions = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[window] == index
        area_um2 = float(inside.sum()) * pixel_area_um2
        if area_um2 < min_area_um2:
            continue
        values = heatmap[window][inside].astype(np.float64)
        outline = _pixel_outline(inside, y0=window[0].start, x0=window[1].start)
        if simplify_px > 0:
            outline = outline.simplify(simplify_px, preserve_topology=True)
        geometry = shapely.transform(outline, lambda xy: xy * px_to_l0)
        regions.append(AnomalyRegion(geometry, area_um2, float(values.mean()), float(values.max())))
    log.info(
        "%d regions above %.4g (%d before the %.0f um2 size filter)",
        len(regions),
        threshold,
        count,
        min_area_um2,
    )
    return regions


def region_features(regions: Sequence[AnomalyRegion], *, id_namespace: str) -> list[dict[str, Any]]:
    """QuPath annotations for `regions`, named "Anomaly 1", "Anomaly 2", ... in their order."""
    namespace = id_namespace_uuid(id_namespace)
    features = []
    for number, region in enumerate(regions, start=1):
        bounds = ",".join(f"{v:.{COORD_DECIMALS}f}" for v in region.geometry.bounds)
        features.append(
            feature(
                uuid.uuid5(namespace, f"region:{number}:{bounds}"),
                region.geometry,
                {
                    "objectType": "annotation",
                    "name": f"Anomaly {number}",
                    "classification": classification(ANOMALY_CLASS),
                    "measurements": {
                        "area_um2": region.area_um2,
                        "mean_score": region.mean_score,
                        "max_score": region.max_score,
                    },
                },
            )
        )
    return features


def tile_features(
    coords_l0: np.ndarray,
    tile_size_l0: float,
    measurements: Mapping[str, np.ndarray],
    *,
    threshold: float,
    score_key: str = "anomaly_score",
    id_namespace: str,
) -> list[dict[str, Any]]:
    """QuPath detections, one square per tile, classified "Anomaly" where
    `measurements[score_key] > threshold` and "Normal" elsewhere.

    `coords_l0` (N, 2) holds each tile's top-left corner (x, y) in level-0 pixels and
    `tile_size_l0` its side in level-0 pixels; every array in `measurements` is (N,). Measurements
    are written at float32 precision (the scores are float32 to begin with).
    """
    coords = np.asarray(coords_l0)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords_l0 must be (N, 2) (x, y) pairs, got shape {coords.shape}")
    columns = {name: np.asarray(values, dtype=np.float64) for name, values in measurements.items()}
    for name, values in columns.items():
        if values.shape != (len(coords),):
            raise ValueError(f"measurement {name!r} has shape {values.shape}; expected ({len(coords)},)")
    if score_key not in columns:
        raise ValueError(f"measurements lack the score {score_key!r}; have {sorted(columns)}")
    namespace = id_namespace_uuid(id_namespace)
    features = []
    for i, (x, y) in enumerate(coords.tolist()):
        features.append(
            feature(
                uuid.uuid5(namespace, f"tile:{x}:{y}"),
                box(x, y, x + tile_size_l0, y + tile_size_l0),
                {
                    "objectType": "detection",
                    "classification": classification(
                        ANOMALY_CLASS if columns[score_key][i] > threshold else NORMAL_CLASS
                    ),
                    "measurements": {
                        name: float32_value(values[i])
                        for name, values in columns.items()
                        if np.isfinite(values[i])
                    },
                },
            )
        )
    return features


def _pixel_outline(inside: np.ndarray, *, y0: int, x0: int) -> Polygon | MultiPolygon:
    """Exact outline, along pixel edges, of the set pixels of `inside` (a window whose top-left
    pixel is (y0, x0)), in heatmap-pixel coordinates: pixel (i, j) is the square [j, j+1] x [i, i+1]."""
    # each row's horizontal runs of set pixels become boxes; their union is the outline
    padded = np.pad(inside, ((0, 0), (1, 1))).astype(np.int8)
    steps = np.diff(padded, axis=1)
    start_rows, start_cols = np.nonzero(steps == 1)
    _, end_cols = np.nonzero(steps == -1)  # row-major order pairs each end with its start
    boxes = shapely.box(start_cols + x0, start_rows + y0, end_cols + x0, start_rows + y0 + 1)
    return shapely.union_all(boxes)
