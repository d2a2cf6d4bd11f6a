"""The tile grid of a slide: where tiles lie and how to read them, without reading a pixel.

Three planes appear here, each named in the code: level-0 pixels (`_l0`: the slide's full
resolution, the frame of every coordinate we store), pixels of the read level (`read_`: the
pyramid level we ask the slide for) and output pixels (`tile_size_px`, `stride_px`: the tiles the
model sees, at the target resolution). `TileGrid.from_geometry` is the pure arithmetic;
`TileGrid.for_slide` feeds it a slide's metadata.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, SlideError

if TYPE_CHECKING:
    from .slide import Slide

log = logging.getLogger(__name__)

DEFAULT_MPP_UM = 0.5
DEFAULT_TILE_SIZE_PX = 256
# Scanners report "20x" as 0.499 or 0.5028 µm/px: a target that close to a pyramid level is read
# from that level as is, instead of resampling every tile by a fraction of a percent.
MPP_RTOL = 0.02
# Reading finer than level 0 enlarges every tile (blurred, invented detail): a target more than
# this fraction finer than the slide is refused unless asked for (`allow_upsample`).
UPSAMPLE_RTOL = 0.05
TOO_SMALL_FIX = "use a smaller --tile-size or a finer --mpp"


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of square tiles over a slide, in row-major order.

    Tile `i` covers level-0 pixels `[x, x + tile_size_l0) x [y, y + tile_size_l0)` with
    `(x, y) = coordinates()[i]`; it is read at pyramid level `level` as a `read_size_px` square
    and resized to `tile_size_px` when the two differ. Only tiles fully inside the slide are on
    the grid. `mpp_um` is the output resolution in µm/px (None when the slide has no mpp).
    """

    slide_size_l0: tuple[int, int]  # (width, height) of level 0
    level: int
    level_downsample: float  # level-0 px per read-level px
    read_size_px: int
    tile_size_px: int
    tile_size_l0: int
    stride_l0: int
    mpp_um: float | None

    @classmethod
    def from_geometry(
        cls,
        slide_size_l0: tuple[int, int],
        level_downsamples: Sequence[float],
        slide_mpp_um: float | None,
        *,
        mpp_um: float | None = None,
        level: int | None = None,
        tile_size_px: int = DEFAULT_TILE_SIZE_PX,
        stride_px: int | None = None,
        allow_upsample: bool = False,
        too_small_fix: str = TOO_SMALL_FIX,
    ) -> TileGrid:
        """The grid for a slide described by its numbers alone.

        Target resolution: either `mpp_um` (µm per output pixel; needs `slide_mpp_um`) or a pyramid
        `level` (tiles at that level's own resolution); neither means `DEFAULT_MPP_UM`.
        `stride_px` (output px, default `tile_size_px`) below the tile size makes tiles overlap.
        For an mpp target the read level is the coarsest one at least as fine as the target
        (within `MPP_RTOL`), so tiles are only ever downsampled; a target finer than level 0 by
        more than `UPSAMPLE_RTOL` is a SlideError unless `allow_upsample` (then a logged warning).
        Raises ConfigError for bad options and SlideError when not one tile fits the slide (its
        message ends with `too_small_fix`).
        """
        if mpp_um is not None and level is not None:
            raise ConfigError(f"give either a target mpp ({mpp_um}) or a level ({level}), not both")
        if tile_size_px < 1:
            raise ConfigError(f"tile size {tile_size_px} px must be at least 1")
        stride_px = tile_size_px if stride_px is None else stride_px
        if stride_px < 1:
            raise ConfigError(f"stride {stride_px} px must be at least 1")

        if level is not None:
            if not 0 <= level < len(level_downsamples):
                raise ConfigError(
                    f"level {level} does not exist: this slide has levels 0 to {len(level_downsamples) - 1}"
                )
            read_level = level
            downsample = float(level_downsamples[level])  # level-0 px per output px
        else:
            mpp_um = DEFAULT_MPP_UM if mpp_um is None else mpp_um
            if not mpp_um > 0:
                raise ConfigError(f"target mpp {mpp_um} must be positive")
            if slide_mpp_um is None:
                raise SlideError(
                    "the slide has no mpp; pass the slide's mpp (--assume-mpp) or tile by --level"
                )
            downsample = mpp_um / slide_mpp_um
            read_level = _finest_level_not_coarser(level_downsamples, downsample)
            if abs(downsample / level_downsamples[read_level] - 1.0) <= MPP_RTOL:
                downsample = float(level_downsamples[read_level])
            elif downsample < 1.0 - UPSAMPLE_RTOL:
                enlarge = f"{mpp_um:g} µm/px is {1 / downsample:.2f}x finer than the slide's level 0 "
                enlarge += f"({slide_mpp_um:g} µm/px): every tile would be enlarged and blurred"
                if not allow_upsample:
                    raise SlideError(
                        f"{enlarge}; use --mpp {slide_mpp_um:.4g} or coarser, or pass --allow-upsample"
                    )
                log.warning("%s (--allow-upsample)", enlarge)

        level_downsample = float(level_downsamples[read_level])
        tile_size_l0 = max(1, round(tile_size_px * downsample))
        read_size_px = max(1, round(tile_size_l0 / level_downsample))
        stride_l0 = max(1, round(stride_px * downsample))
        width_l0, height_l0 = (int(v) for v in slide_size_l0)
        if tile_size_l0 > min(width_l0, height_l0):
            raise SlideError(
                f"the slide ({width_l0} x {height_l0} level-0 px) is smaller than one tile "
                f"({tile_size_l0} level-0 px); {too_small_fix}"
            )
        out_mpp_um = None if slide_mpp_um is None else slide_mpp_um * downsample
        return cls(
            slide_size_l0=(width_l0, height_l0),
            level=read_level,
            level_downsample=level_downsample,
            read_size_px=read_size_px,
            tile_size_px=tile_size_px,
            tile_size_l0=tile_size_l0,
            stride_l0=stride_l0,
            mpp_um=out_mpp_um,
        )

    @classmethod
    def for_slide(
        cls,
        slide: Slide,
        *,
        mpp_um: float | None = None,
        level: int | None = None,
        tile_size_px: int = DEFAULT_TILE_SIZE_PX,
        stride_px: int | None = None,
        assume_mpp_um: float | None = None,
        slide_mpp_um: float | None = None,
        allow_upsample: bool = False,
        too_small_fix: str = TOO_SMALL_FIX,
    ) -> TileGrid:
        """The grid of an open slide (its dimensions, levels and mpp; no pixel is read).

        The slide's µm/px follows `Slide.require_mpp`: `slide_mpp_um` overrides the file's,
        `assume_mpp_um` stands in for a missing one, an implausible file value is an error.
        Options as in `from_geometry`; errors name the slide.
        """
        level0_mpp_um = _isotropic_mpp(slide, assume_mpp_um, slide_mpp_um)
        try:
            return cls.from_geometry(
                slide.dimensions,
                slide.level_downsamples,
                level0_mpp_um,
                mpp_um=mpp_um,
                level=level,
                tile_size_px=tile_size_px,
                stride_px=stride_px,
                allow_upsample=allow_upsample,
                too_small_fix=too_small_fix,
            )
        except SlideError as exc:
            raise SlideError(f"{slide.path}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{slide.path}: {exc}") from None

    @property
    def columns(self) -> int:
        """Tiles per row."""
        return (self.slide_size_l0[0] - self.tile_size_l0) // self.stride_l0 + 1

    @property
    def rows(self) -> int:
        """Tiles per column."""
        return (self.slide_size_l0[1] - self.tile_size_l0) // self.stride_l0 + 1

    @property
    def needs_resize(self) -> bool:
        """Whether tiles read at `level` must be resized to `tile_size_px`."""
        return self.read_size_px != self.tile_size_px

    def __len__(self) -> int:
        return self.columns * self.rows

    def coordinates(self) -> np.ndarray:
        """Level-0 (x, y) origins of every tile, row-major: (N, 2) int64, N = rows * columns."""
        xs = np.arange(self.columns, dtype=np.int64) * self.stride_l0
        ys = np.arange(self.rows, dtype=np.int64) * self.stride_l0
        grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
        return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)

    def __str__(self) -> str:
        mpp = "unknown mpp" if self.mpp_um is None else f"{self.mpp_um:.4g} µm/px"
        resize = f" -> {self.tile_size_px}" if self.needs_resize else ""
        return (
            f"TileGrid: {self.columns} x {self.rows} = {len(self)} tiles of {self.tile_size_px} px "
            f"({mpp}) on a {self.slide_size_l0[0]} x {self.slide_size_l0[1]} slide; read at level "
            f"{self.level} as {self.read_size_px} px{resize}; footprint {self.tile_size_l0}, "
            f"stride {self.stride_l0} level-0 px"
        )


def _finest_level_not_coarser(level_downsamples: Sequence[float], downsample: float) -> int:
    """The coarsest level (levels run finest first) whose downsample is at most `downsample`,
    within MPP_RTOL; level 0 when the target is finer than the slide."""
    best = 0
    for index, level_downsample in enumerate(level_downsamples):
        if level_downsample <= downsample * (1.0 + MPP_RTOL):
            best = index
    return best


def _isotropic_mpp(slide: Slide, assume_mpp_um: float | None, slide_mpp_um: float | None) -> float | None:
    """The slide's µm/px (x and y averaged) by the resolution rules, or None when none is known."""
    if slide.mpp_um is None and assume_mpp_um is None and slide_mpp_um is None:
        return None
    mpp_x, mpp_y = slide.require_mpp(assume_mpp_um, slide_mpp_um)
    if not math.isclose(mpp_x, mpp_y, rel_tol=MPP_RTOL):
        log.warning("%s has anisotropic pixels (%g x %g µm); tiles use their mean", slide.path, mpp_x, mpp_y)
    return (mpp_x + mpp_y) / 2.0
