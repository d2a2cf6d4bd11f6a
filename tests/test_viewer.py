"""Viewer endpoints: Deep Zoom geometry and pixels against openslide's own DeepZoomGenerator,
heatmap tile colours against the OME-Zarr values, the hover lookup, and refusal of every path
that would leave the output folder."""

from __future__ import annotations

import http.client
import io
import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import zarr
from click.testing import CliRunner
from openslide.deepzoom import DeepZoomGenerator
from outputs_fixture import HIGH, HOT, LOW, PX_TO_L0, THRESHOLD, make_output_folder
from PIL import Image

from wsi_haloae.cli import main
from wsi_haloae.heatmaps.colours import score_colours
from wsi_haloae.slides.slide import open_slide
from wsi_haloae.viewer.server import make_server, start_in_thread
from wsi_haloae.viewer.tiles import DeepZoom, SlideTiles


@pytest.fixture(scope="module")
def folder(small_slide, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("viewer")
    (root / "secret.txt").write_text("TOP SECRET next to the output folder")
    return make_output_folder(root / "out", small_slide.path, artefact_tiles=(0, 3))


@pytest.fixture(scope="module")
def server(folder):
    server = make_server(folder, port=0)
    start_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()
    server.data.close()


def _get(server, path: str) -> tuple[int, bytes, str]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("GET", path)  # sent as is: no client-side normalisation of the path
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, response.getheader("Content-Type", "")


@pytest.mark.parametrize("size", [(2048, 1536), (2501, 1777)], ids=["small", "odd"])
def test_deepzoom_geometry_matches_openslide(synthetic_slide_factory, size) -> None:
    path = synthetic_slide_factory(*size, mpp_um=0.5, tissue="blobs", seed=2).path
    reference = DeepZoomGenerator(openslide.OpenSlide(str(path)), tile_size=254, overlap=1)
    with open_slide(path) as slide:
        ours = DeepZoom.for_slide(slide)
        assert slide.level_count >= 2  # the reads below cross slide levels
        assert ours.level_count == reference.level_count
        assert ours.level_dimensions == reference.level_dimensions
        assert ours.level_tiles == reference.level_tiles
        assert ours.tile_count == reference.tile_count
        for level in range(ours.level_count):
            cols, rows = ours.level_tiles[level]
            for col in range(cols):
                for row in range(rows):
                    read = ours.tile(level, col, row)
                    want = reference.get_tile_coordinates(level, (col, row))
                    assert (read.location_l0, read.slide_level, read.size_at_level) == want, (level, col, row)
                    assert read.tile_size == reference.get_tile_dimensions(level, (col, row))
        with pytest.raises(ValueError, match="outside"):
            ours.tile(ours.level_count - 1, *ours.level_tiles[-1])

        tiles = SlideTiles(slide)
        top = ours.level_count - 1
        # at a non-integer level downsample (1.999 on the odd slide) OpenSlide reads at a sub-pixel
        # offset that `Slide.read_region` rounds to the level's pixel grid (slides/slide.py)
        integer = all(float(d).is_integer() for d in slide.level_downsamples)
        tolerance = 1.5 if integer else 8.0
        for level, col, row in [(top, 0, 0), (top, 1, 1), (top - 1, 1, 0), (top - 3, 0, 0)]:
            got = np.asarray(tiles.tile(level, col, row)).astype(int)
            want = np.asarray(reference.get_tile(level, (col, row)).convert("RGB")).astype(int)
            # ours is exactly get_tile_dimensions; DeepZoomGenerator's PIL thumbnail() keeps the
            # aspect ratio and may come out a pixel short on one side
            assert got.shape[1::-1] == reference.get_tile_dimensions(level, (col, row))
            assert abs(got.shape[0] - want.shape[0]) <= 1 and abs(got.shape[1] - want.shape[1]) <= 1
            h, w = min(got.shape[0], want.shape[0]), min(got.shape[1], want.shape[1])
            got, want = got[:h, :w], want[:h, :w]
            assert np.abs(got - want).mean() < tolerance, (level, col, row)
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9


def _expected_heatmap_tile(folder: Path, level: int, col: int, row: int, deepzoom: DeepZoom) -> np.ndarray:
    """Straight from the zarr: the level-0 heatmap pixel under each tile pixel's centre."""
    group = zarr.open_group(folder / "heatmap.ome.zarr", mode="r")
    scores = np.where(group["labels/tissue/0"][:] > 0, group["0"][:], np.nan)
    downsample = deepzoom.downsample(level)
    assert downsample <= PX_TO_L0  # zoomed in at least to heatmap resolution: level 0 is sampled
    read = deepzoom.tile(level, col, row)
    width, height = read.tile_size
    x = read.box_l0[0] + (np.arange(width) + 0.5) * downsample
    y = read.box_l0[1] + (np.arange(height) + 0.5) * downsample
    out = np.full((height, width), np.nan, np.float32)
    rr, cc = (y // PX_TO_L0).astype(int), (x // PX_TO_L0).astype(int)
    ok_r, ok_c = rr < scores.shape[0], cc < scores.shape[1]
    out[np.ix_(ok_r, ok_c)] = scores[np.ix_(rr[ok_r], cc[ok_c])]
    return out


def test_heatmap_tiles_have_the_zarr_values_colours(server, folder) -> None:
    data = server.data
    deepzoom = data.slide_tiles.deepzoom
    top = deepzoom.level_count - 1
    colours = data.colours(THRESHOLD)
    assert colours == score_colours(THRESHOLD, data._coarse)
    for level, col, row in [(top, 1, 1), (top - 1, 0, 0), (top - 3, 0, 0), (top - 4, 0, 0), (top - 5, 0, 0)]:
        status, body, kind = _get(server, f"/heatmap/{level}/{col}_{row}.png?threshold={THRESHOLD}")
        assert status == 200 and kind == "image/png"
        got = np.asarray(Image.open(io.BytesIO(body)))
        expected = (
            _expected_heatmap_tile(folder, level, col, row, deepzoom)
            if deepzoom.downsample(level) <= PX_TO_L0
            else None
        )
        if expected is not None:
            np.testing.assert_array_equal(got, colours.rgba(expected))
        else:  # coarser than the heatmap: a hot pixel must still show, low tissue must not
            assert got[..., 3].max() == 255
    # the hot box at full resolution: every pixel over tissue has the colour of HIGH, nothing else is tinted
    hot = _expected_heatmap_tile(folder, top, 1, 1, deepzoom)
    status, body, _ = _get(server, f"/heatmap/{top}/1_1.png")
    rgba = np.asarray(Image.open(io.BytesIO(body)))
    assert (hot == HIGH).sum() > 5000 and (hot == LOW).sum() > 1000  # the box is over tissue
    assert (rgba[..., 3][hot == HIGH] == 255).all() and (
        rgba[..., 3][(hot == LOW) | np.isnan(hot)] == 0
    ).all()
    assert tuple(rgba[hot == HIGH][0]) == tuple(colours.rgba(np.array([HIGH]))[0])
    # another threshold renders other tiles: below 0.3 the low tissue is tinted too
    status, body, _ = _get(server, f"/heatmap/{top}/1_1.png?threshold=0.1")
    assert (np.asarray(Image.open(io.BytesIO(body)))[..., 3][hot == LOW] == 255).all()


def test_slide_tiles_and_info(server, small_slide) -> None:
    status, body, kind = _get(server, "/slide/11/0_0.jpeg")
    assert status == 200 and kind == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (255, 255)
    info = json.loads(_get(server, "/api/info")[1])
    assert (info["slide"]["width"], info["slide"]["height"]) == (2048, 1536)
    assert info["deepzoom"] == {"tile_size": 254, "overlap": 1, "levels": 12}
    assert info["threshold"]["value"] == THRESHOLD and info["artefacts"] == 2
    assert len(info["colours"]["stops"]) == 11 and "regions.geojson" in info["files"]
    assert _get(server, "/slide/11/99_0.jpeg")[0] == 404
    assert _get(server, "/slide/11/0_0.png")[0] == 404
    assert _get(server, "/")[0] == 200
    osd = _get(server, "/static/openseadragon/openseadragon.min.js")
    assert osd[0] == 200 and b"openseadragon 6.1.1" in osd[1][:200]
    assert b"Redistribution and use" in _get(server, "/static/openseadragon/LICENSE.txt")[1]


def test_hover_lookup_gives_heatmap_and_tile_scores(server) -> None:
    rows, cols = HOT
    x, y = (cols.start + 2) * PX_TO_L0 + 3, (rows.start + 2) * PX_TO_L0 + 3
    at = json.loads(_get(server, f"/api/at?x={x}&y={y}")[1])
    group_mask = zarr.open_group(server.data.folder / "heatmap.ome.zarr", mode="r")["labels/tissue/0"][:]
    if group_mask[rows.start + 2, cols.start + 2]:
        assert at["heatmap"] == pytest.approx(HIGH)
    assert at["tile"] is None or (at["tile"]["x"] <= x < at["tile"]["x"] + 128)
    assert json.loads(_get(server, "/api/at?x=0.5&y=0.5")[1])["heatmap"] is None  # background corner
    assert _get(server, "/api/at?x=nan&y=1")[0] == 400
    artefacts = json.loads(_get(server, "/api/artefacts")[1])
    assert artefacts["size"] == 128 and len(artefacts["tiles"]) == 2


@pytest.mark.parametrize(
    "path",
    [
        "/static/../summary.json",
        "/static/../../secret.txt",
        "/static/%2e%2e/%2e%2e/secret.txt",
        "/static/..%2f..%2fsecret.txt",
        "/static/%2E%2E%2F%2E%2E%2Fsecret.txt",
        "/static/%252e%252e/%252e%252e/secret.txt",
        "/static/..\\..\\secret.txt",
        "/static/%5c..%5c..%5csecret.txt",
        "/files/../secret.txt",
        "/files/..%2fsecret.txt",
        "/files/tile_scores.npz",
        "/files/heatmap.ome.zarr/zarr.json",
        "/../secret.txt",
        "//etc/passwd",
        "/static//etc/passwd",
        "/static/%00secret.txt",
        "/slide/../../secret.txt",
        "/heatmap/0/..%2f..%2fsecret.txt",
    ],
)
def test_paths_outside_the_viewer_files_are_refused(server, path: str) -> None:
    status, body, _ = _get(server, path)
    assert status in (403, 404), (path, status)
    assert b"SECRET" not in body and b"root:" not in body and b"wsi_haloae" not in body


def test_only_reads_are_served(server) -> None:
    host, port = server.server_address[:2]
    for method in ("POST", "PUT", "DELETE"):
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request(method, "/files/regions.geojson", body=b"x")
        assert connection.getresponse().status == 501
        connection.close()
    assert server.server_address[0] == "127.0.0.1"


def test_view_command_errors_in_one_line(tmp_path, folder) -> None:
    result = CliRunner().invoke(main, ["view", str(tmp_path)])
    assert result.exit_code != 0 and result.output.startswith("error: ") and "summary.json" in result.output
    moved = CliRunner().invoke(main, ["view", str(folder), "--slide", str(tmp_path / "gone.tiff")])
    assert moved.exit_code != 0 and "gone.tiff" in moved.output
