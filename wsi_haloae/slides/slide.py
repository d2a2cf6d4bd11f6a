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
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from ..errors import SlideError

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
        if not self.path.is_file():
            raise SlideError(f"slide {self.path} is not a file; pass the slide file itself")
        self._handle: Any = _open_backend(self.path, backend)
        try:
            self._read_metadata()
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

    def require_mpp(self, assume_mpp_um: float | None = None) -> tuple[float, float]:
        """Level-0 (x, y) µm/px: the file's own, else (assume_mpp_um, assume_mpp_um).

        The file's value wins when both exist. Raises SlideError when neither exists.
        """
        if self.mpp_um is not None:
            return self.mpp_um
        if assume_mpp_um is not None:
            if not assume_mpp_um > 0:
                raise SlideError(
                    f"--assume-mpp {assume_mpp_um} for {self.path} must be a positive µm/px, e.g. 0.25"
                )
            return (float(assume_mpp_um), float(assume_mpp_um))
        raise SlideError(
            f"slide {self.path} has no mpp (microns per pixel) metadata; "
            "pass --assume-mpp 0.25 or tile by --level"
        )

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
                rgb = _rgba_on_white(np.asarray(handle.read_region(location, level, (width_px, height_px))))
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
    if backend == "openslide":
        import openslide

        try:
            # OpenSlide, not open_slide(): the latter would silently open a PNG as a one-level "slide".
            return openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideError(_unreadable_message(path, "OpenSlide")) from None
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(
                f"cannot open slide {path} ({exc}); the file may be truncated or corrupt"
            ) from None
    import tiffslide

    try:
        return tiffslide.TiffSlide(path)
    except Exception:
        raise SlideError(_unreadable_message(path, "tiffslide")) from None


def _unreadable_message(path: Path, library: str) -> str:
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        return f"cannot read slide {path} ({exc.strerror}); check its permissions"
    if magic in _TIFF_MAGICS:
        return (
            f"slide {path} is a TIFF that {library} cannot read: truncated or corrupt, or not a "
            "tiled slide; copy it again, or convert it to a tiled pyramidal TIFF"
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
