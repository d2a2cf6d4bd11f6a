"""Regions a pathologist drew, read into level-0-pixel shapely geometries.

Four sources, picked by the file's extension:

- QuPath GeoJSON (`.geojson`, `.json`): a FeatureCollection, a bare array of Features, a single
  Feature or a bare geometry. Polygons (with holes) and MultiPolygons (also inside a
  GeometryCollection) are areas; points and lines are skipped with a warning. A feature's class is
  `properties.classification.name` (QuPath's own field; unclassified features have none).
- ASAP / Camelyon16 XML (`.xml`): `<ASAP_Annotations><Annotations><Annotation Type="Polygon"
  PartOfGroup="Tumor"><Coordinates><Coordinate Order X Y/>`; the group is the class. Polygons,
  splines (taken as their control polygon) and rectangles are areas; dots and point sets are
  skipped. Camelyon16's group `_2` marks normal islands inside tumour: exclude it yourself
  (`--exclude file.xml:_2`).
- A binary mask image (`.png`, `.tif`, `.tiff`): nonzero pixels are inside (or, with a class
  `mask.png:2`, pixels equal to 2). One mask pixel covers `downsample` level-0 pixels a side: give
  it as `mask.png@16`, or it is inferred from the slide's dimensions (level-0 size / mask size
  per axis; the inferred value is logged).
- An OME-Zarr label (a `.zarr` folder: an image with `multiscales` metadata, read at its first,
  finest dataset, or a plain 2-D array), read like a mask image.

A region is named in the command line as `PATH[:CLASS[,CLASS...]][@DOWNSAMPLE]`; a path that
exists as given is taken whole (so a file name may hold ':' or '@').

Every coordinate is in the slide's level-0 pixel frame (x right, y down, origin top left).
Files whose areas lie wholly outside the slide (exported in micrometres or at a lower pyramid
level, or made for another slide) raise AnnotationError, as do malformed files and class filters
that select nothing. `fraction_inside` gives the share of tile footprints (level-0 boxes) inside
a region, the quantity the tile selection thresholds.
"""

from __future__ import annotations

import json
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape

from ..errors import AnnotationError

log = logging.getLogger(__name__)

GEOJSON_SUFFIXES = (".geojson", ".json")
XML_SUFFIXES = (".xml",)
MASK_SUFFIXES = (".png", ".tif", ".tiff")
ZARR_SUFFIXES = (".zarr",)
AREA_TYPES = ("Polygon", "MultiPolygon")
# ASAP annotation types that enclose an area; "Dot" and "PointSet" do not.
ASAP_AREA_TYPES = ("polygon", "spline", "rectangle")
# A mask may be up to this many of its own pixels larger or smaller than the slide divided by the
# downsample (thumbnails and label pyramids round each level's size up or down).
MASK_SIZE_SLACK_PX = 1.0
# the path ends at a known extension, so class names may hold ':' (QuPath's "Tumor: Positive")
_SPEC = re.compile(
    r"^(?P<path>.+?(?:\.geojson|\.json|\.xml|\.png|\.tiff?|\.zarr)/?)"
    r"(?::(?P<classes>.+?))?(?:@(?P<downsample>[^@:]+))?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RegionSpec:
    """A region named on the command line: `path`, the classes kept (None: all), and a mask's
    downsample (level-0 px per mask px; None: infer it from the slide)."""

    path: Path
    classes: tuple[str, ...] | None = None
    downsample: float | None = None

    def __str__(self) -> str:
        text = str(self.path)
        if self.classes:
            text += ":" + ",".join(self.classes)
        if self.downsample is not None:
            text += f"@{self.downsample:g}"
        return text


@dataclass(frozen=True)
class Region:
    """An area in level-0 pixels read from an annotation file.

    `name` is the spec it was read from (`normal.geojson:Stroma`), `geometry` a valid (Multi)Polygon
    in level-0 px, `classes` the class names it holds (empty when the file has none), and for masks
    `downsample` (sx, sy) level-0 px per mask px with `downsample_source` "given" or "inferred".
    """

    name: str
    path: Path
    geometry: shapely.Geometry
    classes: tuple[str, ...] = ()
    downsample: tuple[float, float] | None = None
    downsample_source: str | None = None


def parse_region_spec(spec: str | Path) -> RegionSpec:
    """`PATH[:CLASS[,CLASS...]][@DOWNSAMPLE]` -> RegionSpec; a path that exists is taken whole."""
    text = str(spec)
    if Path(text).exists() or isinstance(spec, Path):
        return RegionSpec(Path(text))
    match = _SPEC.match(text)
    if match is None:
        raise AnnotationError(f"cannot read the region {text!r}; write it as PATH[:CLASS][@DOWNSAMPLE]")
    classes = match["classes"]
    downsample = match["downsample"]
    parsed_downsample = None
    if downsample is not None:
        try:
            parsed_downsample = float(downsample)
        except ValueError:
            parsed_downsample = math.nan
        if not (math.isfinite(parsed_downsample) and parsed_downsample > 0):
            raise AnnotationError(
                f"{text}: the downsample {downsample!r} must be a positive number, e.g. @16"
            )
    return RegionSpec(
        Path(match["path"]),
        None if classes is None else tuple(name.strip() for name in classes.split(",") if name.strip()),
        parsed_downsample,
    )


def read_region(spec: str | Path | RegionSpec, *, slide_size_l0: tuple[int, int] | None = None) -> Region:
    """Read the region `spec` names into level-0 px.

    `slide_size_l0` (width, height) lets a mask's downsample be inferred and checks that the region
    lies on the slide: AnnotationError when none of it does, a warning when part of it is outside.
    Raises AnnotationError for a missing, malformed or empty file and a class filter that matches
    nothing (naming the classes the file has).
    """
    spec = spec if isinstance(spec, RegionSpec) else parse_region_spec(spec)
    path = spec.path
    if not path.exists():
        raise AnnotationError(f"{path}: annotation file not found")
    suffix = path.suffix.lower()
    downsample = None
    source = None
    if suffix in GEOJSON_SUFFIXES:
        geometry, classes = _select(path, read_geojson(path), spec.classes)
    elif suffix in XML_SUFFIXES:
        geometry, classes = _select(path, read_asap_xml(path), spec.classes)
    elif suffix in MASK_SUFFIXES or suffix in ZARR_SUFFIXES:
        labels = read_label_zarr(path) if suffix in ZARR_SUFFIXES else read_mask_image(path)
        downsample, source = _mask_downsample(path, labels.shape, spec.downsample, slide_size_l0)
        inside = _label_selection(path, labels, spec.classes)
        geometry = mask_to_geometry(inside, downsample)
        classes = spec.classes or ()
        if geometry.is_empty:
            raise AnnotationError(f"{spec}: the mask selects no pixel; check the file or the label value")
    else:
        raise AnnotationError(
            f"{path}: unknown annotation format {suffix or '(no extension)'!r}; use QuPath GeoJSON "
            "(.geojson), ASAP XML (.xml), a mask image (.png, .tif) or an OME-Zarr label (.zarr)"
        )
    region = Region(str(spec), path, geometry, tuple(classes), downsample, source)
    if slide_size_l0 is not None:
        check_on_slide(region, slide_size_l0)
    return region


def read_geojson(path: str | Path) -> list[tuple[str | None, shapely.Geometry]]:
    """The area features of a QuPath GeoJSON file as (class name or None, level-0 geometry)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: not a GeoJSON file ({type(exc).__name__}: {exc})") from None
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and data.get("type") in (*AREA_TYPES, "GeometryCollection"):
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise AnnotationError(
            f"{path}: GeoJSON of type {kind!r} holds no features; export a FeatureCollection "
            "(QuPath: File > Export objects as GeoJSON)"
        )
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: 'features' must be a list of GeoJSON Features")
    areas: list[tuple[str | None, shapely.Geometry]] = []
    skipped = 0
    for number, item in enumerate(features):
        if not isinstance(item, dict) or item.get("type") != "Feature" or "geometry" not in item:
            raise AnnotationError(f"{path}: feature {number} is not a GeoJSON Feature with a geometry")
        try:
            geometry = shape(item["geometry"]) if item["geometry"] is not None else shapely.Polygon()
        except Exception as exc:
            raise AnnotationError(
                f"{path}: feature {number} has a malformed geometry ({type(exc).__name__}: {exc})"
            ) from None
        polygons = _areas(geometry)
        if polygons.is_empty:
            skipped += 1
            continue
        areas.append((_qupath_class(item.get("properties")), _valid(polygons, path, f"feature {number}")))
    if skipped:
        log.warning("%s: skipped %d features without an area (points, lines or empty)", path, skipped)
    return areas


def read_asap_xml(path: str | Path) -> list[tuple[str | None, shapely.Geometry]]:
    """The area annotations of an ASAP / Camelyon16 XML file as (group or None, level-0 polygon)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise AnnotationError(f"{path}: not an XML file ({type(exc).__name__}: {exc})") from None
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"{path}: XML root is <{root.tag}>, not <ASAP_Annotations> (ASAP / Camelyon16)")
    areas: list[tuple[str | None, shapely.Geometry]] = []
    skipped = 0
    for number, annotation in enumerate(root.iter("Annotation")):
        kind = (annotation.get("Type") or "Polygon").lower()
        if kind not in ASAP_AREA_TYPES:
            skipped += 1
            continue
        points = []
        for coordinate in annotation.iter("Coordinate"):
            try:
                order = float(coordinate.get("Order", len(points)))
                # some ASAP exports write decimal commas ("1234,5")
                x = float(coordinate.get("X", "").replace(",", "."))
                y = float(coordinate.get("Y", "").replace(",", "."))
            except ValueError:
                raise AnnotationError(
                    f"{path}: annotation {number} has a coordinate that is not a number: "
                    f"{dict(coordinate.attrib)}"
                ) from None
            points.append((order, x, y))
        points.sort(key=lambda point: point[0])
        if len(points) < 3:
            raise AnnotationError(
                f"{path}: annotation {number} ({annotation.get('Name')}) has {len(points)} coordinates; "
                "a polygon needs at least 3"
            )
        xy = np.asarray([(x, y) for _, x, y in points], dtype=np.float64)
        if not np.isfinite(xy).all():
            raise AnnotationError(f"{path}: annotation {number} has non-finite coordinates")
        if kind == "rectangle":
            polygon = shapely.box(*xy.min(axis=0), *xy.max(axis=0))
        else:
            polygon = shapely.Polygon(xy)
        group = annotation.get("PartOfGroup")
        group = None if group in (None, "", "None") else group
        areas.append((group, _valid(polygon, path, f"annotation {number}")))
    if skipped:
        log.warning("%s: skipped %d annotations without an area (dots, point sets)", path, skipped)
    return areas


def read_mask_image(path: str | Path) -> np.ndarray:
    """A mask or label image as a 2-D integer array (an RGB(A) image: its largest channel)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as exc:
        raise AnnotationError(f"{path}: cannot read the mask image ({type(exc).__name__}: {exc})") from None
    return _as_2d(path, array)


def read_label_zarr(path: str | Path) -> np.ndarray:
    """An OME-Zarr label (its finest multiscale dataset) or a plain 2-D zarr array."""
    path = Path(path)
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Group):
            attrs = dict(node.attrs)
            multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
            if not multiscales:
                raise AnnotationError(
                    f"{path}: zarr group without 'multiscales' metadata; point at an OME-Zarr label "
                    "(e.g. image.zarr/labels/tissue) or a 2-D array"
                )
            node = node[multiscales[0]["datasets"][0]["path"]]
        array = np.asarray(node[...])
    except AnnotationError:
        raise
    except Exception as exc:
        raise AnnotationError(f"{path}: cannot read the zarr label ({type(exc).__name__}: {exc})") from None
    # OME-Zarr axes end in (y, x); leading t, c, z axes of size 1 are squeezed away
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    return _as_2d(path, array)


def mask_to_geometry(inside: np.ndarray, downsample: tuple[float, float]) -> shapely.Geometry:
    """The union of the mask pixels that are True, in level-0 px: pixel (row i, column j) covers
    `[j * sx, (j + 1) * sx) x [i * sy, (i + 1) * sy)`. Exact (no smoothing, no simplification)."""
    sx, sy = downsample
    padded = np.pad(inside.astype(np.int8), ((0, 0), (1, 1)))
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, stops = np.nonzero(steps == -1)
    if rows.size == 0:
        return shapely.Polygon()
    # one box per horizontal run of inside pixels, then their union
    runs = shapely.box(starts * sx, rows * sy, stops * sx, (rows + 1) * sy)
    return shapely.union_all(runs)


def check_on_slide(region: Region, slide_size_l0: tuple[int, int]) -> None:
    """AnnotationError when no part of `region` lies on a slide of `slide_size_l0` (width, height)
    level-0 px; a warning when part of it lies outside."""
    width, height = slide_size_l0
    slide_box = shapely.box(0, 0, width, height)
    x0, y0, x1, y1 = region.geometry.bounds
    if not region.geometry.intersects(slide_box) or region.geometry.intersection(slide_box).area == 0:
        raise AnnotationError(
            f"{region.name}: all coordinates (x {x0:.0f} to {x1:.0f}, y {y0:.0f} to {y1:.0f}) lie outside "
            f"the slide ({width} x {height} level-0 px); annotations must be in level-0 pixels of this "
            "slide (not µm, not a lower pyramid level)"
        )
    outside = 1.0 - region.geometry.intersection(slide_box).area / region.geometry.area
    if outside > 0.01:
        log.warning(
            "%s: %.0f%% of the region lies outside the slide (%d x %d level-0 px); is it for this slide?",
            region.name,
            100 * outside,
            width,
            height,
        )


def tile_boxes(coords_l0: np.ndarray, size_l0: float) -> np.ndarray:
    """Tile footprints as shapely boxes: (N,) from (N, 2) level-0 (x, y) origins and a side."""
    coords_l0 = np.asarray(coords_l0, dtype=np.float64).reshape(-1, 2)
    return shapely.box(coords_l0[:, 0], coords_l0[:, 1], coords_l0[:, 0] + size_l0, coords_l0[:, 1] + size_l0)


def fraction_inside(geometry: shapely.Geometry, boxes: np.ndarray) -> np.ndarray:
    """Share of each footprint's area inside `geometry`: (N,) float64 in [0, 1].

    `boxes` are shapely polygons in level-0 px (`tile_boxes`) or an (N, 4) array of
    (x0, y0, x1, y1). Exact areas; footprints wholly inside or outside skip the intersection.
    """
    boxes = np.asarray(boxes)
    if boxes.dtype != object:
        boxes = shapely.box(*np.asarray(boxes, dtype=np.float64).reshape(-1, 4).T)
    fraction = np.zeros(len(boxes), dtype=np.float64)
    if geometry.is_empty or len(boxes) == 0:
        return fraction
    shapely.prepare(geometry)
    inside = shapely.contains(geometry, boxes)
    fraction[inside] = 1.0
    partial = ~inside & shapely.intersects(geometry, boxes)
    if partial.any():
        pieces = shapely.intersection(boxes[partial], geometry)
        fraction[partial] = np.clip(shapely.area(pieces) / shapely.area(boxes[partial]), 0.0, 1.0)
    return fraction


def union(regions: Iterable[Region]) -> shapely.Geometry:
    """The union of the regions' geometries (empty when there are none)."""
    geometries = [region.geometry for region in regions]
    return shapely.union_all(geometries) if geometries else shapely.Polygon()


def _select(
    path: Path, areas: list[tuple[str | None, shapely.Geometry]], classes: Sequence[str] | None
) -> tuple[shapely.Geometry, tuple[str, ...]]:
    """The union of the areas of the wanted classes, and the class names it holds."""
    if not areas:
        raise AnnotationError(f"{path}: the file holds no areas (polygons); nothing to select")
    present = sorted({name for name, _ in areas if name is not None})
    if classes is not None:
        wanted = set(classes)
        areas = [(name, geometry) for name, geometry in areas if name in wanted]
        if not areas:
            have = ", ".join(present) if present else "none (all unclassified)"
            raise AnnotationError(
                f"{path}: no area has class {', '.join(classes)}; the file's classes are: {have}"
            )
    geometry = shapely.union_all([geometry for _, geometry in areas])
    if geometry.area == 0:
        raise AnnotationError(f"{path}: the selected areas have zero area")
    return geometry, tuple(sorted({name for name, _ in areas if name is not None}))


def _qupath_class(properties: Any) -> str | None:
    if not isinstance(properties, dict):
        return None
    value = properties.get("classification")
    if isinstance(value, dict):
        name = value.get("name")
        if name is None and isinstance(value.get("names"), list):  # QuPath 0.5 derived classes
            name = ": ".join(str(part) for part in value["names"])
        return None if name is None else str(name)
    return None if value is None else str(value)


def _areas(geometry: shapely.Geometry) -> shapely.Geometry:
    """The polygonal parts of a geometry (points and lines dropped), as one geometry."""
    parts = [part for part in shapely.get_parts(geometry) if part.geom_type in AREA_TYPES]
    nested = [sub for part in parts for sub in shapely.get_parts(part)]
    if not nested:
        return shapely.Polygon()
    return nested[0] if len(nested) == 1 else shapely.MultiPolygon(nested)


def _valid(geometry: shapely.Geometry, path: Path, what: str) -> shapely.Geometry:
    coords = shapely.get_coordinates(geometry)
    if coords.size and not np.isfinite(coords).all():
        raise AnnotationError(f"{path}: {what} has non-finite coordinates")
    if geometry.is_valid:
        return geometry
    # self-touching or bow-tie outlines are common in hand drawings; repair keeps their area
    log.warning(
        "%s: %s is not a valid polygon (%s); repairing it", path, what, shapely.is_valid_reason(geometry)
    )
    return _areas(shapely.make_valid(geometry))


def _as_2d(path: Path, array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., :3].max(axis=2)
    if array.ndim != 2 or min(array.shape) == 0:
        raise AnnotationError(f"{path}: a mask must be a 2-D image, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise AnnotationError(f"{path}: a mask must hold integers (0 outside), got {array.dtype}")
    return array


def _label_selection(path: Path, labels: np.ndarray, classes: Sequence[str] | None) -> np.ndarray:
    if classes is None:
        return labels != 0
    try:
        values = [int(name) for name in classes]
    except ValueError:
        raise AnnotationError(
            f"{path}: a mask's class must be a label value (mask.png:2), got {','.join(classes)}"
        ) from None
    return np.isin(labels, values)


def _mask_downsample(
    path: Path, shape: tuple[int, ...], given: float | None, slide_size_l0: tuple[int, int] | None
) -> tuple[tuple[float, float], str]:
    """(sx, sy) level-0 px per mask px, given or inferred from the slide, checked against it."""
    height, width = shape[:2]
    if given is not None:
        downsample = (given, given)
        source = "given"
    elif slide_size_l0 is not None:
        downsample = (slide_size_l0[0] / width, slide_size_l0[1] / height)
        source = "inferred"
        log.info(
            "%s: downsample %.4g x %.4g inferred from the slide (%d x %d) and mask (%d x %d) sizes",
            path,
            *downsample,
            *slide_size_l0,
            width,
            height,
        )
    else:
        raise AnnotationError(f"{path}: give the mask's downsample (level-0 px per mask px) as {path}@16")
    if slide_size_l0 is not None:
        for slide_px, mask_px, step in zip(slide_size_l0, (width, height), downsample):
            if abs(slide_px / step - mask_px) > MASK_SIZE_SLACK_PX:
                raise AnnotationError(
                    f"{path}: a {width} x {height} mask at downsample {step:g} covers "
                    f"{width * downsample[0]:.0f} x {height * downsample[1]:.0f} level-0 px, but the slide is "
                    f"{slide_size_l0[0]} x {slide_size_l0[1]}; give the downsample it was made at "
                    f"({path}@{slide_px / mask_px:.4g}?)"
                )
    return downsample, source
