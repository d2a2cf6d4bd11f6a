"""OME-Zarr heatmap pyramid: read back by ome-zarr, masked downsampling, resume byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_haloae.errors import OutputError
from wsi_haloae.heatmaps.pyramid import HeatmapStore, masked_mean_2x2, pyramid_shapes, read_level

SHAPE = (2300, 900)  # three levels: 2300 -> 1150 -> 575 rows (max side <= 1024 stops)
MPP = (2.0, 2.5)  # anisotropic so a y/x swap in the scales shows
CHUNK = 256
FINGERPRINT = {"checkpoint": "run-1/best.safetensors", "slide": "a.svs", "tile_size_px": 256}


def _heatmap(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.gamma(2.0, 1.0, SHAPE).astype(np.float32)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    # an off-centre disc of tissue plus scattered holes, so 2x2 blocks are full, partial and empty
    mask = ((yy - 1000) ** 2 + (xx - 400) ** 2 < 700**2) & (rng.random(SHAPE) > 0.2)
    return scores, mask


def _write(path: Path, scores: np.ndarray, mask: np.ndarray, bands: list[int], fingerprint=FINGERPRINT):
    store = HeatmapStore.open(path, SHAPE, MPP, chunk_px=CHUNK, fingerprint=fingerprint)
    for band in bands:
        y0 = band * CHUNK
        store.write_band(y0, scores[y0 : y0 + CHUNK], mask[y0 : y0 + CHUNK])
    return store


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _reference_mean_2x2(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slow and obvious: loop over output pixels, average the computed ones of each 2x2 block."""
    h, w = -(-scores.shape[0] // 2), -(-scores.shape[1] // 2)
    out = np.full((h, w), np.nan, np.float32)
    out_mask = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            block_scores = scores[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            block_mask = mask[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].astype(bool)
            if block_mask.any():
                out[i, j] = np.float32(block_scores[block_mask].astype(np.float64).mean())
                out_mask[i, j] = True
    return out, out_mask


def test_pyramid_shapes_halve_until_max_side_fits() -> None:
    assert pyramid_shapes((2300, 900)) == [(2300, 900), (1150, 450), (575, 225)]
    assert pyramid_shapes((1024, 10)) == [(1024, 10)]
    assert pyramid_shapes((1025, 3)) == [(1025, 3), (513, 2)]
    assert pyramid_shapes((5000, 5000), max_px=600) == [
        (5000, 5000),
        (2500, 2500),
        (1250, 1250),
        (625, 625),
        (313, 313),
    ]


def test_masked_mean_matches_slow_reference_on_odd_shapes() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(37, 23)).astype(np.float32)
    mask = rng.random((37, 23)) > 0.4
    got, got_mask = masked_mean_2x2(scores, mask)
    want, want_mask = _reference_mean_2x2(scores, mask)
    assert got.shape == (19, 12) and got.dtype == np.float32
    np.testing.assert_array_equal(got_mask.astype(bool), want_mask)
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    # a hand value: block (0, 0) with one masked-out pixel averages the other three
    tiny, tiny_mask = masked_mean_2x2(np.array([[1, 2], [3, 100]], np.float32), np.array([[1, 1], [1, 0]]))
    assert tiny[0, 0] == pytest.approx(2.0) and tiny_mask[0, 0] == 1


def test_store_reads_back_through_ome_zarr(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    scores, mask = _heatmap()
    path = tmp_path / "slide.ome.zarr"
    store = _write(path, scores, mask, list(range(9)))
    store.finalize()
    assert store.complete

    nodes = list(Reader(parse_url(str(path)))())
    image = next(n for n in nodes if n.load(Multiscales) and not n.load(Label))
    label = next(n for n in nodes if n.load(Label))
    expected_shapes = [(2300, 900), (1150, 450), (575, 225)]
    for node in (image, label):
        assert [tuple(level.shape) for level in node.data] == expected_shapes
        assert [axis["name"] for axis in node.metadata["axes"]] == ["y", "x"]
        assert {axis["unit"] for axis in node.metadata["axes"]} == {"micrometer"}
        scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
        assert scales == [[2.0, 2.5], [4.0, 5.0], [8.0, 10.0]]

    level0 = np.asarray(image.data[0])
    assert level0.dtype == np.float32
    np.testing.assert_array_equal(level0, np.where(mask, scores, np.nan))
    np.testing.assert_array_equal(np.asarray(label.data[0]), mask.astype(np.uint8))

    want1, want1_mask = _reference_mean_2x2(np.where(mask, scores, np.nan), mask)
    np.testing.assert_allclose(np.asarray(image.data[1]), want1, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(np.asarray(label.data[1]).astype(bool), want1_mask)
    want2, _ = _reference_mean_2x2(want1, want1_mask)
    np.testing.assert_allclose(np.asarray(image.data[2]), want2, rtol=1e-6, equal_nan=True)

    coarse_scores, coarse_mask = read_level(path, -1)
    np.testing.assert_allclose(coarse_scores, want2, rtol=1e-6, equal_nan=True)
    assert coarse_mask.dtype == bool and coarse_mask.shape == (575, 225)


def test_store_is_valid_ngff_0_5(tmp_path: Path) -> None:
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    scores, mask = _heatmap()
    path = tmp_path / "slide.ome.zarr"
    _write(path, scores, mask, list(range(9))).finalize()
    group = zarr.open_group(path, mode="r")
    assert Image.from_zarr(group).attributes.ome.version == "0.5"
    ImageLabel.from_zarr(group["labels/tissue"])
    assert group["0"].metadata.dimension_names == ("y", "x")
    assert group["0"].chunks == (CHUNK, CHUNK)


def test_resume_gives_the_same_bytes_as_one_run(tmp_path: Path) -> None:
    scores, mask = _heatmap(seed=1)
    order = [4, 0, 8, 2, 6, 1, 7, 3, 5]  # the engine may deliver bands in any order

    whole = tmp_path / "whole.ome.zarr"
    _write(whole, scores, mask, order).finalize()

    resumed = tmp_path / "resumed.ome.zarr"
    first = _write(resumed, scores, mask, order[:4])
    del first  # the "kill"
    # a band whose chunks landed but whose completion was never recorded, with wrong data
    torn = zarr.open_group(resumed, mode="r+")
    torn["0"][6 * CHUNK : 7 * CHUNK, :] = np.float32(-1.0)

    partial, partial_mask = read_level(resumed, 0)
    untouched = slice(1 * CHUNK, 2 * CHUNK)  # band 1 was never written: reads as fill
    assert np.isnan(partial[untouched]).all() and not partial_mask[untouched].any()

    store = HeatmapStore.open(resumed, SHAPE, MPP, chunk_px=CHUNK, fingerprint=dict(FINGERPRINT))
    assert store.bands_done() == {0, 2, 4, 8}
    assert not store.complete
    for band in sorted(set(range(store.band_count)) - store.bands_done()):
        y0 = band * CHUNK
        store.write_band(y0, scores[y0 : y0 + CHUNK], mask[y0 : y0 + CHUNK])
    store.finalize()

    whole_files, resumed_files = _files(whole), _files(resumed)
    assert sorted(whole_files) == sorted(resumed_files)
    assert len(whole_files) > 20
    for name, data in whole_files.items():
        assert resumed_files[name] == data, name
    for level in range(3):
        a_scores, a_mask = read_level(whole, level)
        b_scores, b_mask = read_level(resumed, level)
        assert a_scores.tobytes() == b_scores.tobytes() and a_mask.tobytes() == b_mask.tobytes()

    reopened = HeatmapStore.open(resumed, SHAPE, MPP, chunk_px=CHUNK, fingerprint=FINGERPRINT)
    assert reopened.complete and reopened.bands_done() == set(range(9))


def test_reopen_with_other_run_is_refused(tmp_path: Path) -> None:
    scores, mask = _heatmap()
    path = tmp_path / "slide.ome.zarr"
    _write(path, scores, mask, [0, 1])
    with pytest.raises(OutputError, match="fingerprint .keys slide: .a.svs. -> .b.svs.*delete it or choose"):
        HeatmapStore.open(path, SHAPE, MPP, chunk_px=CHUNK, fingerprint={**FINGERPRINT, "slide": "b.svs"})
    with pytest.raises(OutputError, match="shape_yx"):
        HeatmapStore.open(path, (2300, 901), MPP, chunk_px=CHUNK, fingerprint=FINGERPRINT)
    with pytest.raises(OutputError, match="chunk_px"):
        HeatmapStore.open(path, SHAPE, MPP, chunk_px=512, fingerprint=FINGERPRINT)

    other = tmp_path / "not-a-store"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    with pytest.raises(OutputError, match="not a wsi-haloae heatmap store"):
        HeatmapStore.open(other, SHAPE, MPP, chunk_px=CHUNK, fingerprint=FINGERPRINT)
    a_file = tmp_path / "file.ome.zarr"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a wsi-haloae heatmap store"):
        HeatmapStore.open(a_file, SHAPE, MPP, chunk_px=CHUNK, fingerprint=FINGERPRINT)


def test_bad_bands_and_early_finalize_are_refused(tmp_path: Path) -> None:
    scores, mask = _heatmap()
    path = tmp_path / "slide.ome.zarr"
    store = _write(path, scores, mask, [0])
    with pytest.raises(ValueError, match="multiple of 256"):
        store.write_band(100, scores[100:356], mask[100:356])
    with pytest.raises(ValueError, match=r"must be \(256, 900\)"):
        store.write_band(256, scores[256:500], mask[256:500])
    with pytest.raises(ValueError, match=r"must be \(252, 900\)"):  # last band is 2300 - 2048 rows
        store.write_band(2048, scores[2048:2304, :800], mask[2048:2304, :800])
    with pytest.raises(OutputError, match="lacks 8 of 9 bands"):
        store.finalize()
    with pytest.raises(OutputError, match="not finalized"):
        read_level(path, 1)


def test_store_killed_before_its_arrays_were_made_still_resumes(tmp_path: Path) -> None:
    import shutil

    scores, mask = _heatmap()
    path = tmp_path / "slide.ome.zarr"
    HeatmapStore.open(path, SHAPE, MPP, chunk_px=CHUNK, fingerprint=FINGERPRINT)
    shutil.rmtree(path / "0")
    shutil.rmtree(path / "labels")  # as if killed right after the group's zarr.json was written
    store = _write(path, scores, mask, list(range(9)))
    store.finalize()
    got, got_mask = read_level(path, 0)
    np.testing.assert_array_equal(got, np.where(mask, scores, np.nan))
    np.testing.assert_array_equal(got_mask, mask)


def test_translation_centres_heatmap_pixels_on_the_slide_pixels_they_cover(tmp_path: Path) -> None:
    """Slide pixel size 0.5 x 0.625 um (so the heatmap's 2.0 x 2.5 um is 4 slide px per heatmap px):
    heatmap pixel (i, j) of level k covers slide pixels [4 * 2**k * i, 4 * 2**k * (i + 1)); a viewer
    that centres pixels puts it at i * scale + translation, which must be the mean of those slide
    pixels' centres (slide pixel n at n * 0.5 um)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader
    from ome_zarr_models.v05.image import Image

    scores, mask = _heatmap()
    path = tmp_path / "slide.ome.zarr"
    _write(path, scores, mask, list(range(9))).finalize(slide_mpp_um_yx=(0.5, 0.625))
    Image.from_zarr(zarr.open_group(path, mode="r"))  # still valid NGFF 0.5
    nodes = list(Reader(parse_url(str(path)))())
    image = next(n for n in nodes if n.load(Multiscales) and not n.load(Label))
    for level, transforms in enumerate(image.metadata["coordinateTransformations"]):
        scale, translation = transforms[0]["scale"], transforms[1]["translation"]
        assert transforms[1]["type"] == "translation"
        span = 4 * 2**level  # slide pixels per heatmap pixel along each axis
        for axis, slide_mpp in enumerate((0.5, 0.625)):
            i = 7  # any heatmap pixel
            covered_centres = (np.arange(span * i, span * (i + 1))) * slide_mpp
            assert i * scale[axis] + translation[axis] == pytest.approx(covered_centres.mean())
