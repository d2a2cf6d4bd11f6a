"""The compressed bytes of a slide's JPEG tiles, straight from the TIFF, each a standalone JPEG.

For a tile grid whose tiles are exactly the file's own tiles (same size, on the file's tile
grid, no resize), a tile needs no OpenSlide read at all: its bytes sit at a known offset of one
TIFF page, and a JPEG decoder (the GPU's nvJPEG, or libjpeg-turbo on the CPU) turns them into
the same pixels OpenSlide would return. `JpegTiles.for_grid` checks that and says why not when
it cannot; `tile_stream` returns a tile's bytes as one JPEG stream that decodes on its own:

- TIFF JPEG ("new-style", compression 7) tiles may keep their quantisation and Huffman tables in
  the page's JPEGTables tag, shared by all tiles; the tile's stream is then the tables (without
  their end marker) followed by the tile's bytes (without their start marker).
- Aperio SVS tiles are RGB JPEGs (the TIFF says photometric RGB, the stream has no JFIF
  marker): decoders assume YCbCr for a three-component JPEG without markers and get the colours
  wrong, so an Adobe APP14 marker with transform 0 ("no colour transform") is put after the
  start marker, as libtiff and tifffile decode these files. Photometric YCbCr tiles (this
  project's synthetic slides, with their own JFIF marker) are left as they are.

Which TIFF page holds a pyramid level: the tiled JPEG page whose size is the level's dimensions
(the first such page; OpenSlide's levels of Aperio and generic TIFF files are those pages).
A tile the file leaves out (byte count 0) is reported as missing (`None`): OpenSlide shows it
as white. Reads use `os.pread` on one descriptor: safe from several threads at once.

No torch here; decoding lives in `heatmaps/jpeg_decode.py`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from .grid import TileGrid
from .slide import Slide

JPEG_COMPRESSION = 7  # TIFF "new-style" JPEG
PHOTOMETRIC_RGB = 2
SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# APP14 "Adobe", version 100, flags 0 0, transform 0: the components are R, G, B as they are
ADOBE_RGB_MARKER = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


@dataclass(frozen=True)
class JpegTiles:
    """The JPEG tiles of one pyramid level of a TIFF file.

    `tile_px` (width, height) of the file's tiles; `level_size_px` (width, height) of the level;
    `across` tiles per row; `offsets`, `byte_counts` (tiles,) int64 per file tile, row-major;
    `tables` the page's JPEGTables (b"" when each tile carries its own); `rgb_marker` whether the
    Adobe RGB marker is inserted (see the module docstring).
    """

    path: Path
    page: int
    tile_px: tuple[int, int]
    level_size_px: tuple[int, int]
    across: int
    offsets: np.ndarray
    byte_counts: np.ndarray
    tables: bytes
    rgb_marker: bool

    @classmethod
    def open_level(cls, path: str | Path, level_size_px: tuple[int, int]) -> JpegTiles | str:
        """The JPEG tiles of the level of size `level_size_px` (width, height) in the TIFF at
        `path`, or a one-line reason why that level cannot be read this way."""
        path = Path(path)
        try:
            with tifffile.TiffFile(path) as tif:
                for number, page in enumerate(tif.pages):
                    if (page.imagewidth, page.imagelength) != tuple(level_size_px) or not page.is_tiled:
                        continue
                    if page.compression != JPEG_COMPRESSION:
                        return f"level tiles are compressed with {page.compression.name}, not JPEG"
                    if page.samplesperpixel != 3 or page.planarconfig != 1 or page.bitspersample != 8:
                        return "level tiles are not 8-bit, 3-sample, interleaved"
                    if page.imagedepth != 1 or page.tiledepth != 1:
                        return "level tiles are volumetric"
                    tables = bytes(page.jpegtables or b"")
                    offsets = np.asarray(page.dataoffsets, np.int64)
                    byte_counts = np.asarray(page.databytecounts, np.int64)
                    first = _first_stream(path, offsets, byte_counts)
                    jfif = first is not None and b"JFIF\x00" in first[:64]
                    adobe = first is not None and b"Adobe" in first[:64]
                    return cls(
                        path=path,
                        page=number,
                        tile_px=(int(page.tilewidth), int(page.tilelength)),
                        level_size_px=(int(page.imagewidth), int(page.imagelength)),
                        across=math.ceil(page.imagewidth / page.tilewidth),
                        offsets=offsets,
                        byte_counts=byte_counts,
                        tables=tables,
                        rgb_marker=page.photometric == PHOTOMETRIC_RGB and not jfif and not adobe,
                    )
        except Exception as exc:  # whatever tifffile raises on a file it cannot parse
            return f"not a TIFF file tifffile reads ({type(exc).__name__}: {exc})"
        return f"no tiled TIFF page of {level_size_px[0]} x {level_size_px[1]} px"

    @classmethod
    def for_grid(cls, slide: Slide, grid: TileGrid, indices: np.ndarray) -> tuple[JpegTiles | None, str]:
        """(tiles, "") when every grid tile `indices` is one whole JPEG tile of the file, else
        (None, the reason). Needs no resize, the grid's read size equal to the file's tile size and
        every tile origin on the file's tile grid."""
        if grid.needs_resize:
            return None, f"grid tiles are resized ({grid.read_size_px} -> {grid.tile_size_px} px)"
        level_size = slide.level_dimensions[grid.level]
        tiles = cls.open_level(slide.path, level_size)
        if isinstance(tiles, str):
            return None, tiles
        if tiles.tile_px != (grid.read_size_px, grid.read_size_px):
            return None, (
                f"the file's tiles are {tiles.tile_px[0]} x {tiles.tile_px[1]} px, the grid reads "
                f"{grid.read_size_px} px tiles"
            )
        if len(indices) and tiles.file_tiles(slide, grid, indices) is None:
            return None, "grid tiles are not on the file's tile grid (a stride or origin off it)"
        return tiles, ""

    def file_tiles(self, slide: Slide, grid: TileGrid, indices: np.ndarray) -> np.ndarray | None:
        """File tile numbers (row-major) of grid tiles `indices`, or None when one of them does
        not start on a file tile. Level pixels as `Slide.read_region` computes them."""
        downsample = slide.level_downsamples[grid.level]
        coords_l0 = grid.coordinates()[np.asarray(indices, np.int64)]
        x_l = np.floor(coords_l0[:, 0] / downsample).astype(np.int64)
        y_l = np.floor(coords_l0[:, 1] / downsample).astype(np.int64)
        width, height = self.tile_px
        if (x_l % width).any() or (y_l % height).any():
            return None
        return (y_l // height) * self.across + x_l // width

    def valid_px(self, tile: int) -> tuple[int, int]:
        """(width, height) of file tile `tile` inside the level; the rest of it is padding, which
        OpenSlide shows as white."""
        col, row = tile % self.across, tile // self.across
        width, height = self.tile_px
        return (
            min(width, self.level_size_px[0] - col * width),
            min(height, self.level_size_px[1] - row * height),
        )

    def tile_stream(self, fd: int, tile: int) -> bytes | None:
        """File tile `tile` as a standalone JPEG stream, read from descriptor `fd` of the file;
        None when the file leaves the tile out."""
        count = int(self.byte_counts[tile])
        if count == 0:
            return None
        data = os.pread(fd, count, int(self.offsets[tile]))
        if len(data) != count or data[:2] != SOI:
            raise OSError(f"tile {tile} of {self.path} is truncated or not a JPEG stream")
        return merge_stream(self.tables, data, rgb_marker=self.rgb_marker)


def merge_stream(tables: bytes, data: bytes, *, rgb_marker: bool) -> bytes:
    """One standalone JPEG from shared `tables` (a JPEGTables "abbreviated" stream, or b"") and
    a tile's `data`; with `rgb_marker`, the Adobe "no colour transform" marker after the start."""
    body = data[2:]
    if tables:
        if tables[:2] != SOI or tables[-2:] != EOI:
            raise ValueError("JPEGTables is not an abbreviated JPEG stream (SOI ... EOI)")
        body = tables[2:-2] + body
    return SOI + (ADOBE_RGB_MARKER if rgb_marker else b"") + body


def _first_stream(path: Path, offsets: np.ndarray, byte_counts: np.ndarray) -> bytes | None:
    present = np.flatnonzero(byte_counts > 0)
    if not len(present):
        return None
    with path.open("rb") as handle:
        handle.seek(int(offsets[present[0]]))
        return handle.read(min(int(byte_counts[present[0]]), 256))
