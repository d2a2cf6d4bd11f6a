"""Which grid tiles to use, from regions a pathologist drew (`--include`, `--exclude`,
`--tissue-mask`) and a per-slide cap (`--max-tiles-per-slide`).

The rule is that of `--min-tissue`, applied to a drawn area instead of the detected tissue: a
tile is kept when at least `min_inside` of its level-0 footprint lies inside the selected area

    selected = (union of the include regions, or the whole slide when none) - (union of the excludes)

computed exactly on the polygons (`annotations.read.fraction_inside`). Tissue is still required:
the tissue fraction (from the built-in mask or from `--tissue-mask`, itself any region file)
must reach `min_tissue` first. Each kept tile records the fraction inside and the include
regions it overlaps, which the `tile` job writes to its manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely

from ..annotations.read import Region, fraction_inside, read_region, tile_boxes, union
from ..errors import ConfigError, NoTissueError, SlideError
from .grid import TileGrid
from .inputs import check_input
from .qc import qc_tiles
from .tissue import TileSelection, TissueMask, detect_tissue, select_tiles

if TYPE_CHECKING:
    from .slide import Slide
    from .tiles import TileConfig

log = logging.getLogger(__name__)

DEFAULT_MIN_INSIDE = 0.5
REGION_SEPARATOR = ";"  # between region names in a manifest cell


@dataclass(frozen=True)
class RegionFilter:
    """Include and exclude regions of one slide, read and checked against its size."""

    include: tuple[Region, ...]
    exclude: tuple[Region, ...]

    def inside_fraction(self, boxes: np.ndarray) -> np.ndarray:
        """Share of each footprint inside the selected area: (N,) float64 in [0, 1]."""
        if self.include:
            area = union(self.include)
            if self.exclude:
                area = area.difference(union(self.exclude))
            return fraction_inside(area, boxes)
        if self.exclude:
            return 1.0 - fraction_inside(union(self.exclude), boxes)
        return np.ones(len(boxes))


def load_region_filter(
    include: Sequence[str], exclude: Sequence[str], slide_size_l0: tuple[int, int], slide_stem: str = ""
) -> RegionFilter | None:
    """Read the `include` and `exclude` region specs for a slide; None when both are empty.
    `{stem}` in a spec is the slide's file name without extension (one annotation file per slide)."""
    if not include and not exclude:
        return None
    return RegionFilter(
        tuple(read_region(for_slide(spec, slide_stem), slide_size_l0=slide_size_l0) for spec in include),
        tuple(read_region(for_slide(spec, slide_stem), slide_size_l0=slide_size_l0) for spec in exclude),
    )


def for_slide(spec: str, slide_stem: str) -> str:
    """`spec` with `{stem}` replaced by the slide's stem: `annotations/{stem}.geojson:Stroma`."""
    return spec.replace("{stem}", slide_stem)


@dataclass(frozen=True)
class RegionTiles:
    """The tiles a region filter kept, with per-tile facts for the manifest: `selection` (the
    kept grid tiles and their tissue fractions), `inside_fraction` (K,) the share of each
    footprint in the selected area and `regions` (K,) the include regions each overlaps."""

    selection: TileSelection
    inside_fraction: np.ndarray
    regions: list[str]


def select_in_regions(
    grid: TileGrid,
    selection: TileSelection,
    regions: RegionFilter,
    *,
    min_inside: float = DEFAULT_MIN_INSIDE,
    slide_name: str = "the slide",
) -> RegionTiles:
    """The tiles of `selection` with at least `min_inside` of their footprint in the selected area.

    Raises NoTissueError when none is left (naming the best fraction), ConfigError when
    `min_inside` is outside [0, 1].
    """
    if not 0.0 <= min_inside <= 1.0:
        raise ConfigError(f"min inside {min_inside} must be a fraction between 0 and 1")
    boxes = tile_boxes(grid.coordinates()[selection.indices], grid.tile_size_l0)
    inside = regions.inside_fraction(boxes)
    # a hundredth of a percent of slack: exact polygon areas land a rounding error off a hand count
    keep = np.flatnonzero(inside >= min_inside - 1e-9)
    if keep.size == 0:
        best = float(inside.max()) if inside.size else 0.0
        names = ", ".join(r.name for r in regions.include) or "the slide"
        raise NoTissueError(
            f"{slide_name}: no tissue tile has {min_inside:.0%} of its area inside {names}"
            f"{' minus the excluded regions' if regions.exclude else ''} (the best has {best:.0%}); "
            "check the regions are for this slide, or lower --min-inside"
        )
    touching = [fraction_inside(region.geometry, boxes[keep]) > 0 for region in regions.include]
    names = [
        REGION_SEPARATOR.join(r.name for r, hit in zip(regions.include, column) if hit)
        for column in (zip(*touching) if touching else [()] * keep.size)
    ]
    log.info(
        "%s: %d of %d tissue tiles lie at least %.0f%% inside the selected regions",
        slide_name,
        keep.size,
        len(selection),
        100 * min_inside,
    )
    return RegionTiles(
        TileSelection(selection.indices[keep], selection.tissue_fraction[keep]), inside[keep], names
    )


def select_by_tissue_region(
    grid: TileGrid, tissue: Region, *, min_tissue: float, slide_name: str = "the slide"
) -> TileSelection:
    """The grid tiles with at least `min_tissue` of their footprint inside a user's tissue region
    (`--tissue-mask`, replacing the built-in mask). Raises NoTissueError when none has."""
    if not 0.0 <= min_tissue <= 1.0:
        raise ConfigError(f"min tissue {min_tissue} must be a fraction between 0 and 1")
    fraction = fraction_inside(tissue.geometry, tile_boxes(grid.coordinates(), grid.tile_size_l0))
    keep = np.flatnonzero(fraction >= min_tissue - 1e-9)
    if keep.size == 0:
        raise NoTissueError(
            f"{slide_name}: no tile has {min_tissue:.0%} of its area inside the tissue mask {tissue.name} "
            f"(the best has {float(fraction.max()):.0%}); lower --min-tissue or use smaller tiles"
        )
    log.info("%s: %d of %d tiles inside the tissue mask %s", slide_name, keep.size, len(grid), tissue.name)
    return TileSelection(keep.astype(np.int64), fraction[keep])


def rasterize(
    geometry: shapely.Geometry, shape_hw: tuple[int, int], downsample: tuple[float, float]
) -> np.ndarray:
    """(h, w) bool: which pixels of a raster of `downsample` (sx, sy) level-0 px per pixel have
    their centre inside `geometry` (level-0 px); e.g. a user tissue mask at thumbnail size."""
    height, width = shape_hw
    sx, sy = downsample
    x = (np.arange(width) + 0.5) * sx
    y = (np.arange(height) + 0.5) * sy
    shapely.prepare(geometry)
    grid_x, grid_y = np.meshgrid(x, y)
    return shapely.contains_xy(geometry, grid_x, grid_y)


def cap_per_slide(count: int, max_tiles: int | None, seed: int, slide_name: str) -> np.ndarray:
    """Positions (ascending) of at most `max_tiles` of a slide's `count` tiles, drawn uniformly
    with a generator seeded by `seed` and the slide's name, so a slide always draws the same
    tiles whatever else is in the run. All positions when `max_tiles` is None or not below `count`."""
    if max_tiles is None or max_tiles >= count:
        return np.arange(count, dtype=np.int64)
    if max_tiles < 1:
        raise ConfigError(f"max tiles per slide {max_tiles} must be at least 1")
    rng = np.random.default_rng([seed, zlib.crc32(slide_name.encode())])
    return np.sort(rng.choice(count, size=max_tiles, replace=False)).astype(np.int64)


def tissue_tiles(
    slide: Slide,
    grid: TileGrid,
    *,
    thumbnail_px: int,
    min_tissue: float,
    tissue_mask: str | None = None,
    allow_non_brightfield: bool = False,
) -> tuple[TissueMask, TileSelection]:
    """The slide's tissue mask (from a `thumbnail_px` thumbnail, or the user's `tissue_mask`
    region) and the grid tiles with at least `min_tissue` of their footprint on tissue: the one
    tissue rule of `tile` and `heatmap`. The input-kind checks (`inputs.check_input`) run on the
    detected mask first. Raises SlideError for an unreadable thumbnail, NoTissueError for none."""
    try:
        detected = detect_tissue(slide, max_size_px=thumbnail_px)
    except (SlideError, ConfigError):
        raise
    except Exception as exc:
        raise SlideError(
            f"{slide.path}: cannot read a thumbnail ({type(exc).__name__}: {exc}); the file may be corrupt"
        ) from exc
    check_input(slide, detected, allow=allow_non_brightfield)
    if tissue_mask is not None:
        return user_tissue(slide, grid, detected, tissue_mask, min_tissue)
    selection = select_tiles(
        grid,
        detected.mask,
        detected.downsample,
        min_tissue=min_tissue,
        slide_name=str(slide.path),
        colourless=detected.colourless,
    )
    return detected, selection


def user_tissue(
    slide: Slide, grid: TileGrid, detected: TissueMask, spec: str, min_tissue: float
) -> tuple[TissueMask, TileSelection]:
    """A user's tissue region (`--tissue-mask`, any region file) in place of the detected mask:
    the mask drawn at the thumbnail's size (for `tissue_mask.png`) and the tiles with at least
    `min_tissue` of their footprint inside it."""
    region = read_region(for_slide(spec, Path(slide.path).stem), slide_size_l0=slide.dimensions)
    mask = rasterize(region.geometry, detected.mask.shape, detected.downsample)
    selection = select_by_tissue_region(grid, region, min_tissue=min_tissue, slide_name=str(slide.path))
    return dataclasses.replace(detected, mask=mask), selection


def refine_selection(
    slide: Slide, grid: TileGrid, selection: TileSelection, cfg: TileConfig
) -> tuple[TileSelection, dict[str, list[str]]]:
    """The `tile` job's steps after tissue: regions, artefact QC, then the per-slide cap.

    Returns the tiles left and the manifest columns they add: `region_fraction` and `regions`
    with include/exclude regions, `artefact` with `artefacts="keep"`.
    """
    name = str(slide.path)
    columns: dict[str, list[str]] = {}
    regions = load_region_filter(cfg.include, cfg.exclude, slide.dimensions, Path(name).stem)
    if regions is not None:
        chosen = select_in_regions(grid, selection, regions, min_inside=cfg.min_inside, slide_name=name)
        selection = chosen.selection
        columns["region_fraction"] = [f"{value:.4f}" for value in chosen.inside_fraction.tolist()]
        columns["regions"] = chosen.regions
    if cfg.artefacts != "off":
        qc = qc_tiles(slide, grid, selection.indices, workers=cfg.workers, batch_size=cfg.batch_size)
        if cfg.artefacts == "keep":
            columns["artefact"] = [str(kind) for kind in qc.kind]
        elif qc.is_artefact.any():
            if qc.is_artefact.all():
                raise NoTissueError(
                    f"{name}: all {len(qc)} tissue tiles are artefacts ({qc.counts()}); "
                    "check the slide, or keep them with --artefacts keep"
                )
            log.info("%s: %d artefact tiles left out (%s)", name, int(qc.is_artefact.sum()), qc.counts())
            selection, columns = _subset(selection, columns, np.flatnonzero(~qc.is_artefact))
    if cfg.max_tiles_per_slide is not None:
        picked = cap_per_slide(len(selection), cfg.max_tiles_per_slide, cfg.seed, Path(name).name)
        selection, columns = _subset(selection, columns, picked)
    return selection, columns


def _subset(
    selection: TileSelection, columns: dict[str, list[str]], positions: np.ndarray
) -> tuple[TileSelection, dict[str, list[str]]]:
    picked = TileSelection(selection.indices[positions], selection.tissue_fraction[positions])
    return picked, {key: [cells[i] for i in positions.tolist()] for key, cells in columns.items()}
