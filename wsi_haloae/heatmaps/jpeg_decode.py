"""Tiles at GPU speed: a slide's JPEG tile bytes decoded in batches by torchvision, on the device.

OpenSlide decodes one tile at a time on a CPU core (~1 ms per 256-px tile): 2,500 tiles/s would
need a dozen cores doing nothing else. When the grid's tiles are the file's own JPEG tiles
(`slides.jpeg_tiles.JpegTiles.for_grid`), `JpegTileReader` instead reads their compressed bytes
(a few tens of kB each, `os.pread` in threads) and decodes each batch with
`torchvision.io.decode_jpeg` on the engine's device: nvJPEG on CUDA, libjpeg-turbo on the CPU.

Pixels: the CPU decode of those bytes is exactly what OpenSlide's `read_region` returns on the
synthetic slides and on Aperio SVS (measured max abs difference 0, `tests/test_jpeg_tiles.py`);
nvJPEG's IDCT and chroma upsampling may differ from libjpeg-turbo by a level or two
(`JPEG_DECODER_TOLERANCE`), which the GPU test checks. Padding of tiles at the level's right and
bottom border, and tiles missing from the file, come back white, as OpenSlide paints them.

`tile_reader` "auto" picks this reader on CUDA whenever the grid allows it, and OpenSlide reads
(`slides.tiles.iter_tiles`) otherwise: on the CPU the model, not decoding, is the bottleneck, and
OpenSlide's reads keep CPU runs byte-identical to earlier ones.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from ..errors import ConfigError, SlideError
from ..slides.grid import TileGrid
from ..slides.jpeg_tiles import JpegTiles
from ..slides.slide import Slide

log = logging.getLogger(__name__)

TileReader = Literal["auto", "slide", "jpeg"]
TILE_READERS: tuple[TileReader, ...] = ("auto", "slide", "jpeg")
# Largest difference, in 8-bit levels, between two conforming JPEG decoders of one stream
# (IDCT and chroma upsampling are not bit-exact across libjpeg-turbo and nvJPEG).
JPEG_DECODER_TOLERANCE = 2
_READ_THREADS = 4
_PREFETCH_BATCHES = 2


def select_reader(
    slide: Slide, grid: TileGrid, indices: np.ndarray, device: torch.device, requested: TileReader
) -> tuple[JpegTiles | None, str]:
    """(JPEG tiles or None, the reader's name "jpeg" or "slide") for `requested`.

    "slide" always reads through OpenSlide/tiffslide; "jpeg" decodes the file's JPEG tiles and
    raises ConfigError naming the reason when the grid does not allow it; "auto" is "jpeg" on
    CUDA when allowed, else "slide" (the reason logged)."""
    if requested not in TILE_READERS:
        raise ConfigError(f"tile reader {requested!r} must be one of {', '.join(TILE_READERS)}")
    if requested == "slide" or (requested == "auto" and device.type != "cuda"):
        return None, "slide"
    tiles, reason = JpegTiles.for_grid(slide, grid, indices)
    if tiles is not None:
        return tiles, "jpeg"
    if requested == "jpeg":
        raise ConfigError(
            f"{slide.path}: cannot decode the file's JPEG tiles directly: {reason}; use --tile-reader "
            "slide (or auto), or tile at the file's own tile size and level"
        )
    log.info("%s: reading tiles with %s: %s", slide.path, slide.backend, reason)
    return None, "slide"


def decode_streams(
    streams: list[bytes | None], tiles: JpegTiles, file_tiles: np.ndarray, device: torch.device
) -> Tensor:
    """Decode standalone JPEG `streams` of `file_tiles` on `device`: (N, H, W, 3) uint8, with the
    padding beyond the level border and missing tiles (None) white, like OpenSlide."""
    width, height = tiles.tile_px
    out = torch.full((len(streams), 3, height, width), 255, dtype=torch.uint8, device=device)
    present = [i for i, s in enumerate(streams) if s is not None]
    if present:
        data = [torch.frombuffer(bytearray(streams[i]), dtype=torch.uint8) for i in present]  # type: ignore[arg-type]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            raise SlideError(
                f"{tiles.path}: a JPEG tile does not decode ({exc}); the file may be corrupt, copy it again"
            ) from None
        for i, image in zip(present, decoded):
            if tuple(image.shape) != (3, height, width):
                raise SlideError(
                    f"{tiles.path}: tile {int(file_tiles[i])} decodes to {tuple(image.shape)}, not "
                    f"(3, {height}, {width}); read this slide with --tile-reader slide"
                )
            out[i] = image
    for i, tile in enumerate(file_tiles.tolist()):
        valid_w, valid_h = tiles.valid_px(tile)
        if valid_w < width:
            out[i, :, :, valid_w:] = 255
        if valid_h < height:
            out[i, :, valid_h:, :] = 255
    return out.permute(0, 2, 3, 1)


class JpegTileReader:
    """Batches of grid tiles `indices` decoded from the file's JPEG tiles on `device`, in order.

    Iterating yields (indices (N,) int64, images (N, S, S, 3) uint8 on `device`); the bytes of
    the next `_PREFETCH_BATCHES` batches are read ahead in threads. On the CPU the threads also
    decode (libjpeg-turbo releases the GIL). `close()` stops the threads.
    """

    def __init__(
        self,
        tiles: JpegTiles,
        slide: Slide,
        grid: TileGrid,
        indices: np.ndarray,
        *,
        batch_size: int,
        device: torch.device,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size} must be at least 1")
        indices = np.asarray(indices, np.int64)
        file_tiles = tiles.file_tiles(slide, grid, indices)
        if file_tiles is None:
            raise ConfigError(f"{slide.path}: grid tiles are not on the file's tile grid")
        self.tiles, self.device = tiles, device
        self._batches = [
            (indices[s : s + batch_size], file_tiles[s : s + batch_size])
            for s in range(0, len(indices), batch_size)
        ]
        self._fd = os.open(tiles.path, os.O_RDONLY)
        self._pool = ThreadPoolExecutor(max_workers=_READ_THREADS, thread_name_prefix="wsi-haloae-jpeg")

    def _read(self, file_tiles: np.ndarray) -> list[bytes | None]:
        return [self.tiles.tile_stream(self._fd, tile) for tile in file_tiles.tolist()]

    def _read_and_decode_cpu(self, file_tiles: np.ndarray) -> Tensor:
        return decode_streams(self._read(file_tiles), self.tiles, file_tiles, self.device)

    def __iter__(self) -> Iterator[tuple[np.ndarray, Tensor]]:
        cuda = self.device.type == "cuda"
        work = self._read if cuda else self._read_and_decode_cpu
        pending: deque[Future] = deque()
        upcoming = iter(self._batches)
        for batch in upcoming:
            pending.append(self._pool.submit(work, batch[1]))
            if len(pending) > _PREFETCH_BATCHES:
                break
        for indices, file_tiles in self._batches:
            result = pending.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(self._pool.submit(work, following[1]))
            images = decode_streams(result, self.tiles, file_tiles, self.device) if cuda else result
            yield indices, images

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
