"""Outlines as GeoJSON that QuPath imports (File > Import objects, or drag and drop).

The one place that knows the GeoJSON schema: the heatmap outputs (`heatmaps.regions`) and the
synthetic slides' ground truth (`slides.synthetic`) both write through it.

Every coordinate is in the slide's level-0 pixel frame (x right, y down, origin top left), which
is QuPath's own frame for objects. The feature fields follow QuPath's GeoJSON reader
(`qupath.lib.io.PathObjectTypeAdapters` / `QuPathTypeAdapters` in the qupath repository):

- `"id"`: a UUID string (QuPath 0.4+ keeps it as the object's ID);
- `properties.objectType`: `"annotation"` for regions a pathologist edits, `"detection"` for the
  many scored tiles (far lighter in QuPath);
- `properties.classification`: `{"name": ..., "color": [r, g, b]}`;
- `properties.measurements`: an object of name -> number (QuPath 0.4+; older versions wrote a
  list of `{"name", "value"}`, which QuPath still reads). JSON has no NaN, so a NaN measurement is
  left out, which QuPath shows as missing.

IDs are UUID-5s derived from an `id_namespace` (say, the slide name and the model run) and the
object's position, so rerunning on the same inputs writes an identical file. Two different slides
or models never share an ID; the same file imported twice into one image gives objects with equal
IDs (QuPath does not ask; it adds the copies, so delete the old objects before re-importing).

A path ending in `.gz` is written gzip-compressed (QuPath 0.4+ imports `.geojson.gz` as it is),
with a zero timestamp in the gzip header so reruns stay byte-identical.
"""

from __future__ import annotations

import gzip
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import mapping

from ..files import write_atomically

log = logging.getLogger(__name__)

ANOMALY_CLASS = ("Anomaly", (215, 48, 39))  # QuPath classification name and RGB colour
NORMAL_CLASS = ("Normal", (69, 117, 180))
COORD_DECIMALS = 2  # level-0 px: a hundredth of a pixel is far below any viewer's precision


def write_feature_collection(path: str | Path, features: Sequence[Mapping[str, Any]]) -> Path:
    """Write `features` as one GeoJSON FeatureCollection at `path`, atomically (temporary file in
    the same folder, then rename), so a reader never sees half a file."""
    path = Path(path)
    text = json.dumps(
        {"type": "FeatureCollection", "features": list(features)}, allow_nan=False, separators=(",", ":")
    )
    data = text.encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    write_atomically(path, data)
    log.info("wrote %d features to %s", len(features), path)
    return path


def read_feature_collection(path: str | Path) -> dict[str, Any]:
    """The GeoJSON object in `path` (gzip-compressed when the name ends in `.gz`)."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return json.loads(data)


def float32_value(value: float) -> float:
    """`value` at float32 precision, as the shortest decimal that reads back as that float32
    (0.1 rather than 0.10000000149011612), so measurements cost a few bytes each in JSON."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def classification(name_rgb: tuple[str, tuple[int, int, int]]) -> dict[str, Any]:
    name, rgb = name_rgb
    return {"name": name, "color": list(rgb)}


def feature(feature_id: uuid.UUID, geometry: shapely.Geometry, properties: dict[str, Any]) -> dict[str, Any]:
    if "measurements" in properties:
        properties["measurements"] = {
            name: float(value) for name, value in properties["measurements"].items() if np.isfinite(value)
        }
    return {
        "type": "Feature",
        "id": str(feature_id),
        "geometry": geometry_json(geometry),
        "properties": properties,
    }


def geometry_json(geometry: shapely.Geometry) -> dict[str, Any]:
    # RFC 7946 ring order (exterior counter-clockwise, holes clockwise) for strict GeoJSON readers
    oriented = shapely.orient_polygons(geometry, exterior_cw=False)
    return mapping(shapely.transform(oriented, lambda xy: np.round(xy, COORD_DECIMALS)))


def id_namespace_uuid(id_namespace: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"wsi-haloae:{id_namespace}")
