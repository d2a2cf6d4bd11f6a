"""Whole-slide images behind one small reader: OpenSlide or tiffslide, the same pixels from either.

Coordinates are level-0 pixels (x right, y down, origin top left) unless a name says otherwise;
sizes are (width, height). A region read at level L starts at the level-L pixel
floor(x_l0 / downsample_L), so both backends return the same pixels for the same call (wherever
the level's downsample is an integer), and pixels outside the slide, or transparent in the file,
come back white.

A `Slide` holds an open file handle and a decoded-tile cache: use one per process. Pickling a
`Slide` sends only (path, backend), and the copy reopens the file in the receiving process.
"""

from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from ..errors import SlideError
from ..files import slide_stem

log = logging.getLogger(__name__)

Backend = Literal["openslide", "tiffslide"]
BACKENDS: tuple[str, ...] = get_args(Backend)

# what each backend reads, for the error that meets a file it cannot read
SUPPORTED_FORMATS = {
    "OpenSlide": "Aperio .svs, Hamamatsu .ndpi/.vms, Leica .scn, MIRAX .mrxs, Philips or generic tiled "
    "pyramidal .tiff, Sakura .svslide, Ventana .bif, Zeiss .czi, DICOM WSI",
    "tiffslide": "Aperio .svs, Hamamatsu .ndpi, Leica .scn, generic tiled pyramidal .tiff",
}
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PROBE_PX = 16  # side of the regions read on open to prove the file decodes
_LEVEL_TOLERANCE = 1e-3  # a level whose downsample exceeds the request by this fraction still counts
_THUMBNAIL_STRIP_BYTES = 64 << 20  # bounds the memory of a thumbnail of a single-level giant slide
# Level-0 pixel sizes of real slide scans lie between ~0.1 µm/px (100x oil) and a few µm/px (1.25x
# overviews). A value outside this range is a metadata error, such as a 72-dpi TIFF tag (352.8 µm/px).
MPP_PLAUSIBLE_UM = (0.05, 20.0)
_DICOM_MAGIC_OFFSET = 128
_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def open_slide(path: str | Path, backend: Backend = "openslide") -> Slide:
    """Open the whole-slide image at `path` with `backend` and check that its pixels decode.

    Raises SlideError (one line naming the file and the fix) when the file is missing, is not a
    slide the backend reads, or is truncated or corrupt.
    """
    return Slide(path, backend)


class Slide:
    """An open whole-slide image: pyramid geometry, physical pixel size and pixel reads.

    Attributes (level 0 is full resolution; sizes are (width, height) in px):
        path, backend: what was opened, and with which library.
        dimensions: level-0 size.
        level_count, level_dimensions, level_downsamples: the pyramid, finest level first;
            a level-L pixel spans level_downsamples[L] level-0 pixels.
        mpp_um: level-0 (x, y) pixel size in µm/px, or None when the file does not say.
        objective_power: scanner magnification (e.g. 20.0), or None.
        vendor: the format the backend recognised (e.g. "aperio", "generic-tiff"), or None.
    """

    def __init__(self, path: str | Path, backend: Backend = "openslide") -> None:
        self.path = Path(path)
        self.backend = backend
        if backend not in BACKENDS:
            raise SlideError(
                f"unknown slide backend {backend!r} for {self.path}; use one of {', '.join(BACKENDS)}"
            )
        if not self.path.exists():
            raise SlideError(f"slide {self.path} does not exist; check the path")
        self.name: str = slide_stem(self.path)
        file = _dicom_series_file(self.path, backend) if self.path.is_dir() else self.path
        self._handle: Any = _open_backend(file, backend)
        try:
            self._read_metadata()
            self._read_pixel_format(file)
            self._probe()
        except BaseException:
            self.close()
            raise

    def _read_metadata(self) -> None:
        handle, prefix = self._handle, self.backend
        try:
            props = dict(handle.properties)
            self.dimensions: tuple[int, int] = _size(handle.dimensions)
            self.level_count: int = int(handle.level_count)
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
                _size(d) for d in handle.level_dimensions
            )
            self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in handle.level_downsamples)
        except Exception as exc:
            raise SlideError(
                f"cannot read the pyramid of {self.path} ({exc}); "
                "the file may be truncated or corrupt, copy it again"
            ) from None
        mpp_x, mpp_y = _positive(props.get(f"{prefix}.mpp-x")), _positive(props.get(f"{prefix}.mpp-y"))
        self.mpp_um: tuple[float, float] | None = None if mpp_x is None or mpp_y is None else (mpp_x, mpp_y)
        self.mpp_source: str | None = None if self.mpp_um is None else f"{prefix} metadata"
        if self.mpp_um is None:  # neither backend reads an OME-TIFF's pixel size: its OME-XML has it
            self.mpp_um = _ome_mpp(props.get("tiff.ImageDescription"))
            self.mpp_source = None if self.mpp_um is None else "OME-XML PhysicalSizeX/Y"
        self._properties = props
        self.objective_power: float | None = _positive(props.get(f"{prefix}.objective-power"))
        vendor = props.get(f"{prefix}.vendor")
        self.vendor: str | None = str(vendor) if vendor else None
        if self.level_count < 1 or min(self.dimensions) < 1:
            raise SlideError(
                f"slide {self.path} has no image pixels ({self.dimensions}); the file may be corrupt"
            )

    def _probe(self) -> None:
        """Decode three small regions, so a truncated or corrupt file fails here rather than
        mid-job: a corner of the smallest level and the first and last level-0 corners, whose
        tiles usually sit at both ends of the file."""
        width, height = self.dimensions
        last = self.level_count - 1
        probes = [
            (0, 0, last),
            (0, 0, 0),
            (max(0, width - _PROBE_PX), max(0, height - _PROBE_PX), 0),
        ]
        for x_l0, y_l0, level in probes:
            self.read_region(x_l0, y_l0, level, (_PROBE_PX, _PROBE_PX))

    def __repr__(self) -> str:
        mpp = "no mpp" if self.mpp_um is None else f"mpp {self.mpp_um[0]:g}x{self.mpp_um[1]:g} µm"
        size = f"{self.dimensions[0]}x{self.dimensions[1]} px"
        return (
            f"Slide({str(self.path)!r}, backend={self.backend!r}, {size}, {self.level_count} levels, {mpp})"
        )

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open_slide, (str(self.path), self.backend))

    def require_mpp(
        self, assume_mpp_um: float | None = None, slide_mpp_um: float | None = None, *, quiet: bool = False
    ) -> tuple[float, float]:
        """Level-0 (x, y) µm/px by the resolution rules (logged unless `quiet`):

        `slide_mpp_um` (--slide-mpp) overrides the file's value; otherwise the file's value is used
        when it is plausible (`MPP_PLAUSIBLE_UM`) and is an error when it is not; `assume_mpp_um`
        (--assume-mpp) only fills a missing value, and a warning says when the file's value made
        it unused. Raises SlideError (naming the value and the fix) when no usable value exists.
        """
        for option, value in (("--slide-mpp", slide_mpp_um), ("--assume-mpp", assume_mpp_um)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise SlideError(f"{option} {value} for {self.path} must be a positive µm/px, e.g. 0.25")
            if value is not None and not plausible_mpp(value):
                raise SlideError(
                    f"{option} {value:g} for {self.path} is outside the plausible "
                    f"{MPP_PLAUSIBLE_UM[0]:g}-{MPP_PLAUSIBLE_UM[1]:g} µm/px of a slide scan; "
                    "give the µm per level-0 pixel, e.g. 0.25 (40x) or 0.5 (20x)"
                )
        say = (lambda *args: None) if quiet else log.warning
        if slide_mpp_um is not None:
            if self.mpp_um is None:
                (log.debug if quiet else log.info)("%s: using --slide-mpp %g µm/px", self.path, slide_mpp_um)
            else:
                say(
                    "%s: --slide-mpp %g µm/px overrides the file's %s µm/px (%s)",
                    self.path,
                    slide_mpp_um,
                    _mpp_text(self.mpp_um),
                    self.mpp_source,
                )
            return (float(slide_mpp_um), float(slide_mpp_um))
        if self.mpp_um is not None:
            if not all(plausible_mpp(v) for v in self.mpp_um):
                raise SlideError(
                    f"slide {self.path} says its pixels are {_mpp_text(self.mpp_um)} µm ({self.mpp_source}), "
                    f"outside the plausible {MPP_PLAUSIBLE_UM[0]:g}-{MPP_PLAUSIBLE_UM[1]:g} µm/px of a slide "
                    "scan (a screen-dpi tag?); pass --slide-mpp with its true µm/px, e.g. --slide-mpp 0.25"
                )
            if assume_mpp_um is not None:
                say(
                    "%s: --assume-mpp %g not used: the file says %s µm/px (%s); "
                    "pass --slide-mpp to override the file",
                    self.path,
                    assume_mpp_um,
                    _mpp_text(self.mpp_um),
                    self.mpp_source,
                )
            return self.mpp_um
        if assume_mpp_um is not None:
            (log.debug if quiet else log.info)(
                "%s: the file has no mpp; assuming --assume-mpp %g µm/px", self.path, assume_mpp_um
            )
            return (float(assume_mpp_um), float(assume_mpp_um))
        raise SlideError(
            f"slide {self.path} has no mpp (microns per pixel) metadata; "
            "pass --assume-mpp 0.25 (its µm per level-0 pixel) or tile by --level"
        )

    def _read_pixel_format(self, file: Path) -> None:
        """Whether the file's JPEG frames must be converted from YCbCr (`ycbcr_frames`), and
        where `pixel_format` later reads the channels and photometric interpretation."""
        props = self._properties
        self._file = file
        self._pixel_format: tuple[str | None, int | None] | None = None
        self.ycbcr_frames = False
        if (
            self.backend == "openslide"
            and props.get("dicom.PhotometricInterpretation") == "RGB"
            and props.get("dicom.TransferSyntaxUID") == JPEG_BASELINE_UID
            and _first_dicom_frame_is_ycbcr(file)
        ):
            # OpenSlide trusts the label and decodes the frames as RGB, which gives YCbCr values
            # (glass ~ (242, 128, 128)); the file is at fault, its JPEG frames say YCbCr.
            self.ycbcr_frames = True
            log.warning(
                "%s: the file labels its JPEG frames RGB but they are YCbCr (JFIF); "
                "converting them to RGB as they are read",
                self.path,
            )

    @property
    def photometric(self) -> str | None:
        """The photometric interpretation the file states (DICOM or TIFF tag), None if unknown."""
        return self._read_format()[0]

    @property
    def channels(self) -> int | None:
        """Samples per pixel (planes of one image for a multi-page TIFF such as a qptiff), None if unknown."""
        return self._read_format()[1]

    def _read_format(self) -> tuple[str | None, int | None]:
        if self._pixel_format is None:
            props, photometric, channels = self._properties, None, None
            if "dicom.PhotometricInterpretation" in props:
                photometric = str(props["dicom.PhotometricInterpretation"])
                channels = _int_or_none(props.get("dicom.SamplesPerPixel"))
            elif _magic(self._file)[:4] in _TIFF_MAGICS:
                try:
                    import tifffile

                    with tifffile.TiffFile(self._file) as tif:
                        page = tif.pages.first
                        photometric, channels = page.photometric.name, int(page.samplesperpixel)
                        if channels == 1 and len(tif.series) and tif.series[0].ndim >= 3:
                            channels = int(min(tif.series[0].shape))  # planes of one image (qptiff)
                except Exception as exc:  # informative only: the backend already read the file
                    log.debug("%s: cannot read its TIFF tags with tifffile (%s)", self.path, exc)
            self._pixel_format = (photometric, channels)
        return self._pixel_format

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed `downsample` (level 0 below 1).

        A level within 0.1 % above the request still counts: scanners store e.g. 4.0003 for a
        nominal 4.
        """
        best = 0
        for level, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * (1 + _LEVEL_TOLERANCE):
                best = level
        return best

    def read_region(self, x_l0: int, y_l0: int, level: int, size_px: tuple[int, int]) -> np.ndarray:
        """Pixels of `level` in the box of `size_px` (width, height) level-L pixels whose top-left
        pixel is floor(x_l0 / downsample), floor(y_l0 / downsample), downsample being the level's.

        Returns an (height, width, 3) uint8 RGB array. Pixels outside the slide, and transparent
        pixels of the file, are composited onto white (255). Raises SlideError for a level the
        slide lacks, or when the file fails to decode (truncated or corrupt).

        Both backends return the same pixels wherever the level's downsample is an integer. Where
        it is not (a level of odd size, many scanners' lower levels), OpenSlide interpolates at a
        sub-pixel offset of at most half a level pixel, which tiffslide does not.
        """
        handle = self._require_open()
        width_px, height_px = (int(v) for v in size_px)
        if width_px < 1 or height_px < 1:
            raise ValueError(f"size_px {size_px} must be positive (width, height)")
        if not 0 <= level < self.level_count:
            raise SlideError(
                f"slide {self.path} has levels 0..{self.level_count - 1}; level {level} does not exist"
            )
        downsample = self.level_downsamples[level]
        x_l, y_l = math.floor(x_l0 / downsample), math.floor(y_l0 / downsample)
        level_width, level_height = self.level_dimensions[level]
        if x_l >= level_width or y_l >= level_height or x_l + width_px <= 0 or y_l + height_px <= 0:
            return np.full((height_px, width_px, 3), 255, np.uint8)
        try:
            if self.backend == "openslide":
                # OpenSlide divides the level-0 location by the downsample and paints at the
                # sub-pixel remainder: exact for integer downsamples, nearest for others.
                location = (round(x_l * downsample), round(y_l * downsample))
                rgba = np.asarray(handle.read_region(location, level, (width_px, height_px)))
                if self.ycbcr_frames:  # convert before compositing: padding is transparent, not YCbCr
                    rgba = np.concatenate([ycbcr_to_rgb(rgba[..., :3]), rgba[..., 3:]], axis=2)
                rgb = _rgba_on_white(rgba)
            else:
                location = (_truncating_location(x_l, downsample), _truncating_location(y_l, downsample))
                raw = handle.read_region(location, level, (width_px, height_px), as_array=True)
                rgb = _tiffslide_rgb(raw, x_l, y_l, (level_width, level_height))
        except Exception as exc:
            raise SlideError(
                f"cannot read {width_px}x{height_px} px at level {level} ({x_l0}, {y_l0}) of {self.path} "
                f"({type(exc).__name__}: {exc}); the file may be truncated or corrupt, copy it again"
            ) from None
        return rgb

    def thumbnail(self, max_size_px: int) -> np.ndarray:
        """The whole slide as an (h, w, 3) uint8 RGB array, aspect kept, its longest side
        max_size_px (or the slide's own size when smaller). One thumbnail pixel spans
        dimensions[0] / w level-0 pixels in x and dimensions[1] / h in y.

        Read from the coarsest level fine enough, in strips, so memory stays bounded even for a
        slide without a pyramid.
        """
        if max_size_px < 1:
            raise ValueError(f"max_size_px {max_size_px} must be positive")
        width, height = self.dimensions
        downsample = max(1.0, max(width, height) / max_size_px)
        out_size = (max(1, round(width / downsample)), max(1, round(height / downsample)))
        level = self.best_level_for_downsample(downsample)
        level_width, level_height = self.level_dimensions[level]
        level_downsample = self.level_downsamples[level]
        factor = max(1, int(downsample / level_downsample))
        rows = max(factor, _THUMBNAIL_STRIP_BYTES // (3 * level_width) // factor * factor)
        strips = []
        for y_l in range(0, level_height, rows):
            strip = self.read_region(
                0, math.ceil(y_l * level_downsample), level, (level_width, min(rows, level_height - y_l))
            )
            strips.append(np.asarray(Image.fromarray(strip).reduce(factor)))
        reduced = Image.fromarray(np.concatenate(strips, axis=0))
        if reduced.size == out_size:
            return np.asarray(reduced)
        # a partial last block of `reduce` covers less than `factor` pixels: map the true extent
        extent = (0.0, 0.0, level_width / factor, level_height / factor)
        return np.asarray(reduced.resize(out_size, Image.Resampling.BOX, box=extent))

    def close(self) -> None:
        """Release the file; later reads raise ValueError. Closing twice is harmless."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except Exception as exc:
                log.debug("closing %s raised %s", self.path, exc)

    def _require_open(self) -> Any:
        if self._handle is None:
            raise ValueError(f"slide {self.path} is closed")
        return self._handle


def _open_backend(path: Path, backend: str) -> Any:
    """The backend's handle of `path`; SlideError saying why not, never blaming corruption for a
    metadata problem, and naming the other backend when that one reads the file."""
    magic = _magic(path)
    if backend == "openslide":
        import openslide

        try:
            # OpenSlide, not open_slide(): the latter would silently open a PNG as a one-level "slide".
            return openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            reason = None
        except (openslide.OpenSlideError, OSError) as exc:
            reason = _first_line(exc)
        if magic[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
            what = f"({reason})" if reason else "(not a VL Whole Slide Microscopy image)"
            raise SlideError(
                f"OpenSlide cannot use the DICOM file {path} {what}: its metadata lacks or has values "
                "OpenSlide needs for a DICOM WSI (SOP class VL Whole Slide Microscopy, ImageType "
                "ORIGINAL|DERIVED\\PRIMARY\\VOLUME\\NONE, 8-bit 3-sample JPEG, JPEG 2000 or "
                "uncompressed frames); fix the metadata or export the slide again (tiffslide does not read DICOM)"
            ) from None
        if magic[:4] in _TIFF_MAGICS and _tiffslide_reads(path):
            raise SlideError(
                f"OpenSlide does not read {path} ({reason or 'a TIFF of a layout it does not know'}), "
                "but tiffslide does: pass --backend tiffslide"
            ) from None
        if reason is None:
            raise SlideError(_unreadable_message(path, "OpenSlide")) from None
        if magic[:4] in _TIFF_MAGICS:
            raise SlideError(
                f"OpenSlide cannot open slide {path} ({reason}) and tiffslide cannot read it either: the "
                "file may be truncated or corrupt (compare its size with the original's) or not a tiled slide"
            ) from None
        raise SlideError(
            f"OpenSlide cannot open slide {path} ({reason}); check that the files a slide of its format "
            "keeps beside it (e.g. a MIRAX folder) are all there"
        ) from None
    if magic[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        raise SlideError(
            f"{path} is a DICOM file; tiffslide does not read DICOM, OpenSlide does: pass --backend openslide"
        )
    import tiffslide

    try:
        return tiffslide.TiffSlide(path)
    except Exception:
        if _openslide_reads(path):
            raise SlideError(
                f"tiffslide does not read {path}, but OpenSlide does: pass --backend openslide"
            ) from None
        raise SlideError(_unreadable_message(path, "tiffslide")) from None


def _tiffslide_reads(path: Path) -> bool:
    """Whether tiffslide opens `path` and decodes its first and last level-0 corners."""
    try:
        import tiffslide

        with tiffslide.TiffSlide(path) as other:
            width, height = other.dimensions
            for x, y in ((0, 0), (max(0, width - _PROBE_PX), max(0, height - _PROBE_PX))):
                other.read_region((x, y), 0, (_PROBE_PX, _PROBE_PX), as_array=True)
    except Exception:
        return False
    return True


def _openslide_reads(path: Path) -> bool:
    try:
        import openslide

        return openslide.OpenSlide.detect_format(str(path)) is not None
    except Exception:
        return False


def _magic(path: Path) -> bytes:
    """The first 132 bytes of `path` (TIFF magic at 0, DICOM's 'DICM' at 128); b'' if unreadable."""
    try:
        with path.open("rb") as handle:
            return handle.read(_DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return b""


def _dicom_series_file(folder: Path, backend: str) -> Path:
    """The file to open for a DICOM series given as its folder (OpenSlide finds the other files of
    the series next to it); SlideError when the folder holds no DICOM file or the backend is tiffslide."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and _magic(p)[_DICOM_MAGIC_OFFSET:] == b"DICM")
    if not files:
        raise SlideError(
            f"slide {folder} is a folder without DICOM files; pass the slide file itself, "
            "or the folder of a DICOM WSI series"
        )
    if backend != "openslide":
        raise SlideError(
            f"{folder} is a DICOM series; tiffslide does not read DICOM, OpenSlide does: pass --backend openslide"
        )
    # the largest file is the finest level's; OpenSlide reads the whole series from any of them
    return max(files, key=lambda p: (p.stat().st_size, p.name))


def _unreadable_message(path: Path, library: str) -> str:
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        return f"cannot read slide {path} ({exc.strerror}); check its permissions"
    if magic in _TIFF_MAGICS:
        return (
            f"slide {path} is a TIFF that neither {library} nor the other backend can read: truncated or "
            "corrupt (if it is a copy, compare its size with the original's), or not a tiled slide (convert "
            "it to a tiled pyramidal TIFF)"
        )
    return f"{path} is not a whole-slide image {library} can read; pass one of: {SUPPORTED_FORMATS[library]}"


def _truncating_location(index: int, downsample: float) -> int:
    """The level-0 coordinate that tiffslide's int(coordinate / downsample), which truncates
    towards zero, maps to exactly level pixel `index`."""
    scaled = index * downsample
    return math.ceil(scaled) if index >= 0 else math.floor(scaled)


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide's non-premultiplied RGBA, alpha-blended onto white, as RGB uint8."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _tiffslide_rgb(raw: np.ndarray, x_l: int, y_l: int, level_size: tuple[int, int]) -> np.ndarray:
    """tiffslide's padded read as RGB, with the padding (outside the level) set to white."""
    if raw.ndim == 2:
        raw = raw[..., None]
    rgb = np.repeat(raw, 3, axis=2) if raw.shape[2] == 1 else raw[..., :3]
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height_px, width_px = rgb.shape[:2]
    level_width, level_height = level_size
    inside_x = slice(max(0, -x_l), max(0, min(width_px, level_width - x_l)))
    inside_y = slice(max(0, -y_l), max(0, min(height_px, level_height - y_l)))
    if inside_x.stop - inside_x.start < width_px or inside_y.stop - inside_y.start < height_px:
        inside = np.zeros((height_px, width_px), dtype=bool)
        inside[inside_y, inside_x] = True
        rgb[~inside] = 255
    if raw.shape[2] == 4:
        rgb = _rgba_on_white(np.concatenate([rgb, raw[..., 3:]], axis=2))
    return rgb


def _size(value: Any) -> tuple[int, int]:
    width, height = value
    return (int(width), int(height))


def _positive(value: Any) -> float | None:
    """A positive finite number from a metadata property, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


JPEG_BASELINE_UID = "1.2.840.10008.1.2.4.50"


def plausible_mpp(mpp_um: float) -> bool:
    """Whether `mpp_um` µm/px lies in `MPP_PLAUSIBLE_UM`, the range of real slide scans."""
    return MPP_PLAUSIBLE_UM[0] <= mpp_um <= MPP_PLAUSIBLE_UM[1]


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Full-range (JFIF) YCbCr uint8 (..., 3) to RGB uint8, as a JPEG decoder would convert it."""
    y, cb, cr = (ycbcr[..., i].astype(np.float32) for i in range(3))
    cb, cr = cb - 128.0, cr - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _first_dicom_frame_is_ycbcr(file: Path, max_bytes: int = 16 << 20) -> bool:
    """Whether the first JPEG frame of a DICOM file codes YCbCr: it has a JFIF APP0 segment or
    component ids 1, 2, 3 (ITU T.81 / JFIF), and no Adobe APP14 segment saying RGB (transform 0)."""
    data, start = b"", -1
    try:
        with file.open("rb") as handle:
            while start < 0 and len(data) < max_bytes:  # header and offset table, then the frame
                chunk = handle.read(1 << 20)
                if not chunk:
                    break
                data += chunk
                pixel_data = data.find(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
                start = data.find(b"\xff\xd8\xff", pixel_data) if pixel_data >= 0 else -1
            data += handle.read(1 << 16)  # the frame's header segments
    except OSError:
        return False
    if start < 0:
        return False
    jfif, adobe_transform, component_ids = False, None, None
    pos = start + 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE0 and body.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            adobe_transform = body[11]
        elif marker in (0xC0, 0xC1, 0xC2) and len(body) >= 6 + 3 * body[5]:
            component_ids = tuple(body[6 + 3 * i] for i in range(body[5]))
            break
        pos += 2 + length
    if component_ids is None or len(component_ids) != 3:
        return False
    if adobe_transform is not None:
        return adobe_transform != 0
    return jfif or component_ids == (1, 2, 3)


def _ome_mpp(description: Any) -> tuple[float, float] | None:
    """(x, y) µm/px from OME-XML (the first Pixels element's PhysicalSizeX/Y and their units), or None."""
    if not description or "<OME" not in str(description):
        return None
    try:
        root = ElementTree.fromstring(str(description).encode())
    except ElementTree.ParseError:
        match = re.search(r"<Pixels\b[^>]*>", str(description))
        if match is None:
            return None
        root = ElementTree.fromstring(match.group(0).rstrip(">").rstrip("/") + "/>")
    pixels = (
        root
        if root.tag.endswith("Pixels")
        else next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
    )
    if pixels is None:
        return None
    values = []
    for axis in ("X", "Y"):
        size = _positive(pixels.get(f"PhysicalSize{axis}"))
        scale = _OME_UNITS_UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if size is None or scale is None:
            return None
        values.append(size * scale)
    return (values[0], values[1])


def _mpp_text(mpp_um: tuple[float, float]) -> str:
    return f"{mpp_um[0]:g}" if math.isclose(*mpp_um) else f"{mpp_um[0]:g} x {mpp_um[1]:g}"


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
