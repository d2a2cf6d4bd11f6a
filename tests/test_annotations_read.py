"""Reading QuPath GeoJSON, ASAP XML, mask images and OME-Zarr labels into level-0 geometries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from wsi_haloae.annotations.read import (
    fraction_inside,
    parse_region_spec,
    read_region,
    tile_boxes,
)
from wsi_haloae.errors import AnnotationError

SLIDE = (4096, 2048)


def _feature(geometry: dict, name: str | None) -> dict:
    properties = {"objectType": "annotation"}
    if name is not None:
        properties["classification"] = {"name": name, "color": [0, 0, 255]}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def write_qupath(path: Path, features: list[dict], layout: str = "collection") -> Path:
    data: object = {"type": "FeatureCollection", "features": features}
    if layout == "array":
        data = features
    elif layout == "single":
        data = features[0]
    path.write_text(json.dumps(data))
    return path


def test_geojson_polygon_with_hole_in_every_layout(tmp_path: Path) -> None:
    ring = {"type": "Polygon", "coordinates": [_square(0, 0, 1024, 1024), _square(256, 256, 768, 768)]}
    for layout in ("collection", "array", "single"):
        path = write_qupath(tmp_path / f"{layout}.geojson", [_feature(ring, "Stroma")], layout)
        region = read_region(path, slide_size_l0=SLIDE)
        assert region.geometry.area == 1024**2 - 512**2
        assert region.classes == ("Stroma",)
    boxes = tile_boxes(np.array([[0, 0], [256, 256], [512, 0], [128, 128], [2048, 0]]), 256)
    np.testing.assert_allclose(fraction_inside(region.geometry, boxes), [1.0, 0.0, 1.0, 0.75, 0.0])


def test_geojson_class_filter_and_multipolygon(tmp_path: Path) -> None:
    multi = {
        "type": "MultiPolygon",
        "coordinates": [[_square(0, 0, 512, 512)], [[*_square(1024, 0, 1536, 512)]]],
    }
    other = {"type": "Polygon", "coordinates": [_square(2048, 0, 2560, 512)]}
    point = {"type": "Point", "coordinates": [10, 10]}
    path = write_qupath(
        tmp_path / "a.geojson",
        [_feature(multi, "Stroma"), _feature(other, "Tumor"), _feature(point, None)],
    )
    assert read_region(f"{path}:Stroma").geometry.area == 2 * 512**2
    assert read_region(f"{path}:Tumor").geometry.area == 512**2
    assert read_region(f"{path}:Stroma,Tumor").geometry.area == 3 * 512**2
    assert read_region(path).classes == ("Stroma", "Tumor")
    with pytest.raises(AnnotationError, match="no area has class Fat; the file's classes are: Stroma, Tumor"):
        read_region(f"{path}:Fat")


def test_asap_xml_groups(tmp_path: Path) -> None:
    path = tmp_path / "camelyon.xml"
    path.write_text(
        """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58"><Coordinates>
<Coordinate Order="2" X="512" Y="512"/><Coordinate Order="0" X="0" Y="0"/>
<Coordinate Order="1" X="512" Y="0"/><Coordinate Order="3" X="0" Y="512"/>
</Coordinates></Annotation>
<Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_2" Color="#F4FA58"><Coordinates>
<Coordinate Order="0" X="128,0" Y="128"/><Coordinate Order="1" X="256" Y="128"/>
<Coordinate Order="2" X="256" Y="256"/><Coordinate Order="3" X="128" Y="256"/>
</Coordinates></Annotation>
<Annotation Name="dot" Type="Dot" PartOfGroup="_0"><Coordinates><Coordinate Order="0" X="5" Y="5"/>
</Coordinates></Annotation>
</Annotations><AnnotationGroups><Group Name="_0" PartOfGroup="None"/></AnnotationGroups></ASAP_Annotations>"""
    )
    # coordinates given out of order are sorted by Order: a square, not a bow tie
    assert read_region(f"{path}:_0").geometry.area == 512**2
    assert read_region(f"{path}:_2").geometry.area == 128**2
    assert read_region(path).classes == ("_0", "_2")


def test_mask_image_downsample_given_or_inferred(tmp_path: Path) -> None:
    mask = np.zeros((SLIDE[1] // 16, SLIDE[0] // 16), np.uint8)
    mask[0:16, 0:24] = 255  # level-0 x 0..384, y 0..256
    mask[32:48, 32:48] = 2
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    given = read_region(f"{path}@16", slide_size_l0=SLIDE)
    inferred = read_region(path, slide_size_l0=SLIDE)
    assert (given.downsample_source, inferred.downsample_source) == ("given", "inferred")
    assert given.downsample == inferred.downsample == (16.0, 16.0)
    assert given.geometry.equals(inferred.geometry)
    assert given.geometry.area == (384 * 256) + 256**2
    assert read_region(f"{path}:2@16").geometry.equals(shapely.box(512, 512, 768, 768))
    np.testing.assert_allclose(
        fraction_inside(given.geometry, np.array([[0, 0, 256, 256], [256, 0, 512, 256]])), [1.0, 0.5]
    )
    with pytest.raises(AnnotationError, match="give the downsample it was made at"):
        read_region(f"{path}@32", slide_size_l0=SLIDE)
    with pytest.raises(AnnotationError, match="give the mask's downsample"):
        read_region(path)


def test_ome_zarr_label(tmp_path: Path) -> None:
    import zarr

    root = zarr.open_group(str(tmp_path / "labels.zarr"), mode="w")
    labels = np.zeros((1, SLIDE[1] // 8, SLIDE[0] // 8), np.uint8)
    labels[0, :32, :32] = 1
    root.create_array("0", data=labels)
    root.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}]}]
    region = read_region(tmp_path / "labels.zarr", slide_size_l0=SLIDE)
    assert region.downsample == (8.0, 8.0) and region.downsample_source == "inferred"
    assert region.geometry.equals(shapely.box(0, 0, 256, 256))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("broken.geojson", '{"type": "FeatureCollection", "features": [', "not a GeoJSON file"),
        ("nofeat.geojson", '{"type": "Topology"}', "holds no features"),
        (
            "badgeom.geojson",
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": 3}}]',
            "malformed geometry",
        ),
        (
            "points.geojson",
            '[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}]',
            "holds no areas",
        ),
        ("broken.xml", "<ASAP_Annotations><Annotations>", "not an XML file"),
        ("other.xml", "<Annotations/>", "not <ASAP_Annotations>"),
        ("notes.txt", "hello", "unknown annotation format"),
    ],
)
def test_malformed_files_give_one_clear_error(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message) as caught:
        read_region(path, slide_size_l0=SLIDE)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_other_coordinate_frame_is_an_error(tmp_path: Path) -> None:
    far = {"type": "Polygon", "coordinates": [_square(50_000, 60_000, 52_000, 61_000)]}
    path = write_qupath(tmp_path / "far.geojson", [_feature(far, "Stroma")])
    with pytest.raises(AnnotationError, match=r"all coordinates .* lie outside the slide \(4096 x 2048"):
        read_region(path, slide_size_l0=SLIDE)
    with pytest.raises(AnnotationError, match="annotation file not found"):
        read_region(tmp_path / "missing.geojson")


def test_spec_parsing(tmp_path: Path) -> None:
    assert parse_region_spec("a/normal.geojson:Stroma").classes == ("Stroma",)
    spec = parse_region_spec("m.png:1,2@16")
    assert (spec.path, spec.classes, spec.downsample) == (Path("m.png"), ("1", "2"), 16.0)
    odd = tmp_path / "odd:name@2.geojson"
    odd.write_text("[]")
    assert parse_region_spec(str(odd)).path == odd
    with pytest.raises(AnnotationError, match="must be a positive number"):
        parse_region_spec("m.png@0")


def test_spec_class_names_may_hold_colons() -> None:
    spec = parse_region_spec("cells.geojson:Tumor: Positive,Stroma")
    assert (spec.path, spec.classes, spec.downsample) == (
        Path("cells.geojson"),
        ("Tumor: Positive", "Stroma"),
        None,
    )
    with pytest.raises(AnnotationError, match="write it as PATH"):
        parse_region_spec("notes.txt:Stroma")
