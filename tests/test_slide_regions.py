"""Tiles chosen by pathologists' regions (`tile --include/--exclude/--tissue-mask`), against a
hand count of which 256-px tiles of a 2048 x 1024 all-tissue slide each region covers."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_haloae.errors import AnnotationError, NoTissueError
from wsi_haloae.slides.regions import cap_per_slide
from wsi_haloae.slides.tiles import TileConfig, plan_slide, write_tiles

T = 256  # tile footprint, level-0 px (0.5 µm/px tiles on a 0.5 µm/px slide)
CFG = TileConfig(mpp_um=0.5, tile_size_px=T, min_tissue=0.5, artefacts="off", thumbnail_px=512)


@pytest.fixture(scope="module")
def slide(synthetic_slide_factory):
    # 8 x 4 tiles, every one all tissue
    return synthetic_slide_factory(2048, 1024, mpp_um=0.5, tissue="full", seed=5)


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def tiles(*cells: tuple[int, int]) -> set[tuple[int, int]]:
    """Tile origins of (column, row) cells."""
    return {(c * T, r * T) for c, r in cells}


def block(c0: int, c1: int, r0: int, r1: int) -> set[tuple[int, int]]:
    return tiles(*[(c, r) for c in range(c0, c1) for r in range(r0, r1)])


def chosen(slide, tmp_path: Path, **changes) -> set[tuple[int, int]]:
    plan = plan_slide(slide.path, tmp_path, dataclasses.replace(CFG, **changes))
    return {tuple(xy) for xy in plan.grid.coordinates()[plan.selection.indices].tolist()}


@pytest.fixture
def qupath(tmp_path: Path) -> Path:
    """Stroma: a polygon with a hole (outer 0..1152 x 0..1024, hole 256..768 square);
    Tumor: a MultiPolygon (1536..2048 x 0..512, and 0..256 x 768..1024 halved: 0..256 x 896..1024)."""
    stroma = {"type": "Polygon", "coordinates": [square(0, 0, 1152, 1024), square(256, 256, 768, 768)]}
    tumor = {
        "type": "MultiPolygon",
        "coordinates": [[square(1536, 0, 2048, 512)], [square(1280, 896, 1536, 1024)]],
    }
    features = [
        {"type": "Feature", "geometry": g, "properties": {"classification": {"name": n}}}
        for g, n in ((stroma, "Stroma"), (tumor, "Tumor"))
    ]
    path = tmp_path / "slide.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_include_polygon_with_hole_by_class(slide, qupath: Path, tmp_path: Path) -> None:
    # columns 0-3 minus the 2 x 2 hole, plus column 4 (x 1024..1280) half inside
    expected = block(0, 5, 0, 4) - block(1, 3, 1, 3)
    assert chosen(slide, tmp_path, include=(f"{qupath}:Stroma",)) == expected
    named = qupath.with_name(f"{slide.path.stem}.geojson")  # one annotation file per slide
    named.write_text(qupath.read_text())
    assert chosen(slide, tmp_path, include=(f"{tmp_path}/{{stem}}.geojson:Stroma",)) == expected
    assert chosen(slide, tmp_path, include=(f"{qupath}:Stroma",), min_inside=0.6) == expected - block(
        4, 5, 0, 4
    )


def test_include_and_exclude_multipolygon(slide, qupath: Path, tmp_path: Path) -> None:
    # Tumor: 4 whole tiles top right, and tile (5, 3) half covered
    assert chosen(slide, tmp_path, include=(f"{qupath}:Tumor",)) == block(6, 8, 0, 2) | tiles((5, 3))
    assert chosen(slide, tmp_path, include=(f"{qupath}:Tumor",), min_inside=0.75) == block(6, 8, 0, 2)
    everything = block(0, 8, 0, 4)
    # tile (5, 3) keeps half its area outside the excluded Tumor: kept at min_inside 0.5
    assert chosen(slide, tmp_path, exclude=(f"{qupath}:Tumor",)) == everything - block(6, 8, 0, 2)
    assert chosen(slide, tmp_path, exclude=(f"{qupath}:Tumor",), min_inside=0.6) == (
        everything - block(6, 8, 0, 2) - tiles((5, 3))
    )
    # both classes included, Tumor excluded again: Stroma alone
    both = chosen(slide, tmp_path, include=(str(qupath),), exclude=(f"{qupath}:Tumor",))
    assert both == block(0, 5, 0, 4) - block(1, 3, 1, 3)


def test_asap_xml_groups_include_and_exclude(slide, tmp_path: Path) -> None:
    path = tmp_path / "camelyon.xml"

    def annotation(group: str, x0: int, y0: int, x1: int, y1: int) -> str:
        points = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(points))
        return f'<Annotation Name="a" Type="Polygon" PartOfGroup="{group}"><Coordinates>{coords}</Coordinates></Annotation>'

    path.write_text(
        "<ASAP_Annotations><Annotations>"
        + annotation("_0", 512, 0, 1536, 768)  # columns 2-5, rows 0-2
        + annotation("_2", 768, 256, 1024, 512)  # one tile inside it
        + "</Annotations></ASAP_Annotations>"
    )
    got = chosen(slide, tmp_path, include=(f"{path}:_0",), exclude=(f"{path}:_2",))
    assert got == block(2, 6, 0, 3) - tiles((3, 1))


def test_mask_image_with_downsample_16(slide, tmp_path: Path) -> None:
    mask = np.zeros((1024 // 16, 2048 // 16), np.uint8)
    mask[0:16, 0:32] = 255  # tiles (0, 0) and (1, 0)
    mask[16:24, 64:80] = 255  # the top half of tile (4, 1)
    mask[48:64, 112:116] = 255  # a quarter of tile (7, 3)
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    assert chosen(slide, tmp_path, include=(f"{path}@16",)) == tiles((0, 0), (1, 0), (4, 1))
    assert chosen(slide, tmp_path, include=(f"{path}@16",), min_inside=0.25) == tiles(
        (0, 0), (1, 0), (4, 1), (7, 3)
    )
    # the same mask as the tissue mask: --min-tissue applies to it
    assert chosen(slide, tmp_path, tissue_mask=f"{path}@16", min_tissue=1.0) == tiles((0, 0), (1, 0))


def test_manifest_records_the_regions(slide, qupath: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        CFG, include=(f"{qupath}:Stroma", f"{qupath}:Tumor"), max_tiles_per_slide=5, seed=1
    )
    (result,) = write_tiles([slide.path], tmp_path / "out", cfg)
    with result.manifest.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == result.tiles == 5
    for row in rows:
        x, y = int(row["x_l0"]), int(row["y_l0"])
        in_tumor = x >= 1280 and (x >= 1536 or y >= 768)
        assert row["regions"] == f"{qupath}:{'Tumor' if in_tumor else 'Stroma'}"
        assert float(row["region_fraction"]) == (0.5 if x == 1024 or (x, y) == (1280, 768) else 1.0)
    # the cap draws the same tiles again, and other tiles with another seed
    again = write_tiles([slide.path], tmp_path / "again", cfg)[0]
    assert again.manifest.read_text() == result.manifest.read_text()
    assert cap_per_slide(20, 5, 1, "a.tiff").tolist() != cap_per_slide(20, 5, 2, "a.tiff").tolist()
    assert cap_per_slide(3, 5, 1, "a.tiff").tolist() == [0, 1, 2]


def test_regions_selecting_nothing_or_off_the_slide(slide, qupath: Path, tmp_path: Path) -> None:
    with pytest.raises(NoTissueError, match="no tissue tile has 90% of its area inside"):
        chosen(slide, tmp_path, include=(f"{qupath}:Tumor",), exclude=(f"{qupath}:Tumor",), min_inside=0.9)
    far = tmp_path / "far.geojson"  # exported in µm of another, larger slide
    far.write_text(json.dumps({"type": "Polygon", "coordinates": [square(30_000, 0, 31_000, 500)]}))
    with pytest.raises(AnnotationError, match="lie outside the slide"):
        chosen(slide, tmp_path, include=(str(far),))
