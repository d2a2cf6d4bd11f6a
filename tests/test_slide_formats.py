"""Real slides as they come: resolution metadata (plausible, overridden, OME-XML), DICOM WSI
(series folders, YCbCr frames labelled RGB, missing metadata), error texts that name the backend
that reads a file, slide names, and the grid's refusal to upsample. Every file is written here."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from wsi_haloae.cli import main
from wsi_haloae.errors import ConfigError, SlideError
from wsi_haloae.files import check_unique_stems, slide_stem
from wsi_haloae.slides.grid import TileGrid
from wsi_haloae.slides.slide import open_slide, ycbcr_to_rgb

GLASS = (242, 242, 242)
STAIN = (180, 80, 160)

# these files are flat colour fields: blur QC (slides.qc) would rightly call every tile out of focus
NO_QC = ("--artefacts", "off")


def _image(width: int = 1024, height: int = 768) -> np.ndarray:
    """Glass with a stained rectangle, a little noise so JPEG has something to code."""
    rng = np.random.default_rng(0)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = GLASS
    image[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = STAIN
    noise = rng.integers(-3, 4, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def write_tiff(
    path: Path,
    image: np.ndarray,
    *,
    resolution: tuple[float, float] | None = None,
    unit: str = "CENTIMETER",
    description: str | None = None,
) -> Path:
    """A tiled (256 px) JPEG TIFF with a half-size second level; resolution in pixels per `unit`."""
    options: dict = {"tile": (256, 256), "photometric": "rgb", "compression": "jpeg", "metadata": None}
    if resolution is not None:
        options.update(resolution=resolution, resolutionunit=unit)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, description=description, **options)
        tif.write(np.ascontiguousarray(image[::2, ::2]), subfiletype=1, **options)
    return path


def write_dicom_level(
    path: Path,
    image: np.ndarray,
    *,
    photometric: str = "YBR_FULL_422",
    series_uid: str | None = None,
    mpp_um: float = 0.5,
    image_type: bool = True,
    tile_px: int = 256,
) -> Path:
    """One pyramid level as a DICOM VL Whole Slide Microscopy instance (TILED_FULL, JPEG baseline
    frames as PIL writes them: JFIF, YCbCr), labelled `photometric`."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    height, width, _ = image.shape
    frames = []
    for y in range(0, height, tile_px):
        for x in range(0, width, tile_px):
            tile = np.full((tile_px, tile_px, 3), 255, np.uint8)
            part = image[y : y + tile_px, x : x + tile_px]
            tile[: part.shape[0], : part.shape[1]] = part
            buffer = io.BytesIO()
            Image.fromarray(tile).save(buffer, format="JPEG", quality=95)
            frames.append(buffer.getvalue())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    ds.Modality = "SM"
    if image_type:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.Rows = ds.Columns = tile_px
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixFocalPlanes = width, height, 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = width * mpp_um / 1000, height * mpp_um / 1000
    measures = Dataset()
    measures.PixelSpacing = [mpp_um / 1000, mpp_um / 1000]
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).NumberOfFrames == len(frames)
    return path


def _run(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


# ---- case 2 and 3: plausible mpp, --slide-mpp, --assume-mpp


def test_a_72_dpi_tiff_is_refused_naming_the_value_and_the_fix(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "screen.tif", _image(), resolution=(72, 72), unit="INCH")
    with open_slide(path) as slide:
        assert slide.mpp_um == pytest.approx((352.7778, 352.7778))
        with pytest.raises(SlideError, match=r"352\.778 µm .*outside the plausible 0\.05-20 .*--slide-mpp"):
            slide.require_mpp()
        with pytest.raises(SlideError, match="--slide-mpp"):
            TileGrid.for_slide(slide)
        # --assume-mpp does not fill a value the file has, even a wrong one
        with pytest.raises(SlideError, match="--slide-mpp"):
            slide.require_mpp(assume_mpp_um=0.5)
        grid = TileGrid.for_slide(slide, slide_mpp_um=0.25, tile_size_px=128)
        assert (grid.mpp_um, grid.tile_size_l0) == (0.5, 256)
    result = _run("tile", path, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 2 and "--slide-mpp" in result.output
    assert not (tmp_path / "out" / "screen" / "manifest.csv").exists()


def test_slide_mpp_overrides_and_assume_mpp_says_when_unused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tagged = write_tiff(tmp_path / "tagged.tif", _image(), resolution=(20000, 20000))  # 0.5 µm/px
    bare = write_tiff(tmp_path / "bare.tif", _image())
    with caplog.at_level(logging.INFO), open_slide(tagged) as slide:
        assert slide.require_mpp(assume_mpp_um=0.25) == (0.5, 0.5)
        assert "--assume-mpp 0.25 not used: the file says 0.5 µm/px" in caplog.text
        caplog.clear()
        assert slide.require_mpp(slide_mpp_um=0.25) == (0.25, 0.25)
        assert "--slide-mpp 0.25 µm/px overrides the file's 0.5 µm/px" in caplog.text
        assert caplog.records[-1].levelno == logging.WARNING
    with open_slide(bare) as slide:
        assert slide.mpp_um is None
        with pytest.raises(SlideError, match="no mpp .*--assume-mpp"):
            slide.require_mpp()
        assert slide.require_mpp(assume_mpp_um=0.25) == (0.25, 0.25)
        with pytest.raises(SlideError, match="--slide-mpp 500 .*outside the plausible"):
            slide.require_mpp(slide_mpp_um=500.0)
    result = _run(
        "tile", tagged, "--out", tmp_path / "o", "--assume-mpp", "0.25", "--tile-size", "64", *NO_QC
    )
    assert result.exit_code == 0, result.output
    manifest = (tmp_path / "o" / "tagged" / "manifest.csv").read_text().splitlines()
    assert manifest[1].split(",")[8] == "0.5"  # tiles at the default 0.5 µm/px of the file's own mpp


# ---- case 6: no silent upsampling


def test_reading_finer_than_level_0_needs_a_flag(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SlideError, match=r"0\.25 µm/px is 2\.00x finer .*0\.499.*--allow-upsample"):
        TileGrid.from_geometry((4000, 4000), [1.0, 4.0], 0.499, mpp_um=0.25)
    with caplog.at_level(logging.WARNING):
        grid = TileGrid.from_geometry((4000, 4000), [1.0, 4.0], 0.499, mpp_um=0.25, allow_upsample=True)
    assert (grid.level, grid.read_size_px, grid.tile_size_px) == (0, 128, 256)
    assert "enlarged" in caplog.text
    # within the tolerance (scanners' 0.5 vs 0.499, and up to 5% finer) it is read as is
    assert TileGrid.from_geometry((4000, 4000), [1.0], 0.5, mpp_um=0.49).read_size_px == 251
    assert TileGrid.from_geometry((4000, 4000), [1.0], 0.5, mpp_um=0.499).read_size_px == 256


def test_the_slide_too_small_error_names_a_fix_that_exists() -> None:
    with pytest.raises(SlideError, match="use a smaller --tile-size or a finer --mpp"):
        TileGrid.from_geometry((300, 250), [1.0], 0.5, mpp_um=1.0)
    with pytest.raises(SlideError, match=r"the model's tiles are 64 px") as error:
        TileGrid.from_geometry(
            (300, 250), [1.0], 0.5, mpp_um=4.0, tile_size_px=64, too_small_fix="the model's tiles are 64 px"
        )
    assert "--tile-size" not in str(error.value)


# ---- case 7: OME-TIFF pixel size; names from the real stem


OME = (
    '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
    '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="1024" SizeY="768" '
    'SizeC="3" SizeZ="1" SizeT="1" PhysicalSizeX="{x}" PhysicalSizeY="{y}" PhysicalSizeXUnit="{unit}" '
    'PhysicalSizeYUnit="{unit}"><Channel ID="Channel:0:0" SamplesPerPixel="3"/></Pixels></Image></OME>'
)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_ome_tiff_pixel_size_comes_from_the_ome_xml(tmp_path: Path, backend: str) -> None:
    path = write_tiff(
        tmp_path / "x.ome.tif", _image(), description=OME.format(x=0.499, y=0.499, unit="&#181;m")
    )
    with open_slide(path, backend) as slide:  # type: ignore[arg-type]
        assert slide.mpp_um == (0.499, 0.499) and slide.mpp_source == "OME-XML PhysicalSizeX/Y"
        assert slide.name == "x"
    nm = write_tiff(tmp_path / "nm.ome.tiff", _image(), description=OME.format(x=250, y=250, unit="nm"))
    with open_slide(nm, backend) as slide:  # type: ignore[arg-type]
        assert slide.mpp_um == (0.25, 0.25)
    result = _run("info", path, "--backend", backend)
    assert result.exit_code == 0 and "mpp: 0.499 x 0.499 µm/px (OME-XML PhysicalSizeX/Y)" in result.output
    result = _run(
        "tile", path, "--out", tmp_path / "tiles", "--tile-size", "64", "--backend", backend, *NO_QC
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiles" / "x" / "manifest.csv").is_file()
    assert all(p.name.startswith("x_x") for p in (tmp_path / "tiles" / "x" / "tiles").iterdir())


def test_slide_stems() -> None:
    assert slide_stem("a/x.ome.tif") == "x" and slide_stem("x.OME.TIFF") == "x"
    assert slide_stem("b/case-1.svs") == "case-1" and slide_stem("y.tiff") == "y"
    with pytest.raises(ConfigError, match="share the name 'x'"):
        check_unique_stems([Path("a/x.ome.tif"), Path("b/x.svs")])


# ---- cases 5 and 8: DICOM WSI


def test_a_dicom_series_is_opened_as_its_folder(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from pydicom.uid import generate_uid

    series = tmp_path / "CASE-7"
    series.mkdir()
    uid = generate_uid()
    image = _image()
    write_dicom_level(series / "level0.dcm", image, series_uid=uid)
    write_dicom_level(
        series / "level1.dcm", np.ascontiguousarray(image[::2, ::2]), series_uid=uid, mpp_um=1.0
    )
    with open_slide(series) as slide:
        assert slide.dimensions == (1024, 768) and slide.level_count == 2
        assert slide.vendor == "dicom" and slide.mpp_um == (0.5, 0.5) and slide.name == "CASE-7"
        assert (slide.photometric, slide.channels, slide.ycbcr_frames) == ("YBR_FULL_422", 3, False)
        centre = slide.read_region(512, 384, 0, (1, 1))[0, 0]
        assert np.abs(centre.astype(int) - STAIN).max() <= 8
    result = _run("tile", series, "--out", tmp_path / "tiles", "--tile-size", "64", "--no-progress", *NO_QC)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiles" / "CASE-7" / "manifest.csv").is_file()
    with pytest.raises(
        SlideError, match="tiffslide does not read DICOM, OpenSlide does: pass --backend openslide"
    ):
        open_slide(series, "tiffslide")
    with pytest.raises(SlideError, match="tiffslide does not read DICOM, OpenSlide does"):
        open_slide(series / "level0.dcm", "tiffslide")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SlideError, match="folder without DICOM files"):
        open_slide(empty)


def test_dicom_frames_labelled_rgb_but_coded_ycbcr_are_converted(tmp_path: Path) -> None:
    """OpenSlide decodes JPEG frames as the file's PhotometricInterpretation says: labelled RGB,
    YCbCr-coded (JFIF) frames come out as YCbCr, glass (242, 128, 128). The file is at fault; the
    slide reader sees the JFIF frames and converts them."""
    import openslide

    path = write_dicom_level(tmp_path / "mislabelled.dcm", _image(), photometric="RGB")
    raw = np.asarray(openslide.OpenSlide(str(path)).read_region((0, 0), 0, (4, 4)))[0, 0, :3]
    assert abs(int(raw[0]) - 242) <= 3 and abs(int(raw[1]) - 128) <= 3 and abs(int(raw[2]) - 128) <= 3
    with open_slide(path) as slide:
        assert slide.ycbcr_frames and slide.photometric == "RGB"
        glass = slide.read_region(0, 0, 0, (4, 4))[0, 0]
        stain = slide.read_region(512, 384, 0, (1, 1))[0, 0]
        outside = slide.read_region(1020, 764, 0, (8, 8))[-1, -1]
    assert np.abs(glass.astype(int) - GLASS).max() <= 4
    assert np.abs(stain.astype(int) - STAIN).max() <= 8
    assert tuple(outside) == (255, 255, 255), "padding stays white, it is not converted"
    result = _run("info", path)
    assert result.exit_code == 0 and "YCbCr: converted to RGB" in result.output
    assert "looks like brightfield" in result.output


def test_ycbcr_conversion_matches_a_jpeg_decoder() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    assert np.abs(ycbcr_to_rgb(ycbcr).astype(int) - rgb).max() <= 3  # PIL rounds the forward step


def test_dicom_without_image_type_is_not_called_corrupt(tmp_path: Path) -> None:
    path = write_dicom_level(tmp_path / "no-type.dcm", _image(), image_type=False)
    with pytest.raises(SlideError) as error:
        open_slide(path)
    message = str(error.value)
    assert "corrupt" not in message and "truncated" not in message and "\n" not in message
    assert "metadata" in message and "ImageType" in message and str(path) in message


# ---- case 8: the error names the backend that reads the file; unreadable files fail fast


def test_a_tiff_only_tiffslide_reads_names_tiffslide(tmp_path: Path) -> None:
    """A stripped (untiled) TIFF, as some qptiff and scanner exports are: OpenSlide refuses it."""
    path = tmp_path / "stripped.qptiff"
    tifffile.imwrite(path, _image(512, 512), photometric="rgb", rowsperstrip=64)
    with pytest.raises(SlideError, match="but tiffslide does: pass --backend tiffslide") as error:
        open_slide(path)
    assert "copy it again" not in str(error.value) and "corrupt" not in str(error.value)


def test_unreadable_files_fail_within_seconds(tmp_path: Path) -> None:
    """In a fresh interpreter, as a user runs it: the slide is opened before torch and dask load."""
    junk = tmp_path / "junk.svs"
    junk.write_bytes(np.random.default_rng(0).integers(0, 255, 1 << 20, dtype=np.uint8).tobytes())
    good = write_tiff(tmp_path / "good.tif", _image(), resolution=(20000, 20000)).read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good[: len(good) // 3])
    for command, path in (("tile", junk), ("heatmap", cut)):
        extra = ["--model", str(tmp_path / "no-model")] if command == "heatmap" else []
        started = time.perf_counter()
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "wsi_haloae.cli",
                command,
                str(path),
                "--out",
                str(tmp_path / "out"),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        seconds = time.perf_counter() - started
        assert process.returncode == 2 and str(path) in process.stderr, process.stderr
        # the heavy imports alone take 10-25 s on a busy machine; a slide check takes about one
        assert seconds < 8.0, f"{command} took {seconds:.1f} s to refuse {path.name}"
