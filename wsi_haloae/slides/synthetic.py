"""Synthetic pyramidal whole-slide images with planted anomalies, for tests and benchmarks.

A slide is a pure function of its parameters (size, mpp, seed, tissue layout, anomaly count): the
layout (tissue blobs, anomaly outlines) is drawn once from the seed, and every pixel is computed
from its own level-0 coordinates, so any region renders on its own and tiles join seamlessly.

- Tissue: H&E-like stroma (pink, with fibres and slow colour drift) dotted with dark purple
  nuclei, on a near-white background. `tissue="blobs"` lays one smooth blob in each cell of a
  coarse grid, each blob clear of its cell's border, so the slide's corners and the strips between
  blobs are background; `tissue="full"` makes every pixel tissue.
- Anomalies, each inside one blob of tissue and a few hundred µm across, cycle through three kinds:
  "foreign" (a cross-hatched grey-green texture), "stain" (a dark blue or brown blob), "fold"
  (tissue overlaid on a shifted copy of itself, darker). A pixel shows an anomaly exactly when its
  centre lies inside the anomaly's polygon, so the polygons are the exact ground truth.
- Artefacts (optional, `artefacts=("pen", "blur", "fold")`), what slide QC must catch rather
  than the model: "pen" (a marker stroke, blue or green ink multiplying whatever is under it, over
  tissue and glass), "blur" (a patch of tissue out of focus: Gaussian-blurred), "fold" (tissue
  folded over itself twice: three layers of stain, darker). As with anomalies, a pixel shows an
  artefact exactly when its centre lies in the artefact's polygon. They are drawn from a
  generator of their own, so a slide without artefacts is byte-identical to one written before
  they existed.

Shapes are polygons star-shaped about their centre (one vertex per angle step), which makes the
point-in-polygon test a constant-time, vectorised check: find the angular sector, test one edge.
Every coordinate here is in level-0 pixels (x right, y down) unless its name says µm.

The file is a tiled, JPEG-compressed, pyramidal BigTIFF that OpenSlide (`generic-tiff`) and
tiffslide both read with every level and the mpp. Writing streams: level 0 is rendered tile by
tile, and each lower level is built into a raw scratch file next to the output while the level
above is written, so memory stays at a few tiles and strips whatever the slide size.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Literal, get_args

import numpy as np
import tifffile
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon, box, mapping
from tqdm import tqdm

from ..annotations import ANOMALY_CLASS, write_feature_collection
from ..errors import ConfigError, OutputError

log = logging.getLogger(__name__)

AnomalyKind = Literal["foreign", "stain", "fold"]
ANOMALY_KINDS: tuple[AnomalyKind, ...] = get_args(AnomalyKind)
ArtefactKind = Literal["pen", "blur", "fold"]
ARTEFACT_KINDS: tuple[ArtefactKind, ...] = get_args(ArtefactKind)
TissueLayout = Literal["blobs", "full"]

TILE_PX = 256
JPEG_QUALITY = 90
MIN_LEVEL_PX = 1024  # pyramid levels halve until the longer side is below this
NOMINAL_MPP_UM = 0.5  # scale of the textures of a slide written without mpp
MIN_SIDE_PX = 16
_WORKERS = min(8, os.cpu_count() or 1)  # threads rendering, and threads JPEG-encoding, tiles

BACKGROUND_RGB = (240.0, 240.0, 240.0)
_STROMA_LIGHT = np.array([244, 206, 224], np.float32)
_STROMA_DEEP = np.array([206, 112, 164], np.float32)
_NUCLEUS = np.array([78, 42, 122], np.float32)
_STAINS = (np.array([46, 60, 140], np.float32), np.array([116, 70, 36], np.float32))  # blue, brown
_FOREIGN_LIGHT = np.array([172, 186, 136], np.float32)
_FOREIGN_DARK = np.array([88, 112, 78], np.float32)

# texture scales in µm, so a slide looks the same at any mpp
_DRIFT_PERIOD_UM = 300.0
_MOTTLE_PERIOD_UM = 40.0
_WARP_PERIOD_UM = 25.0
_FIBRE_PERIOD_UM = 7.0
_NUCLEUS_CELL_UM = 12.0
_NUCLEUS_RADIUS_UM = (1.8, 3.2)
_NUCLEUS_EDGE_UM = 0.6
_ANOMALY_RADIUS_UM = (100.0, 200.0)
_BLOB_CELL_UM = 8000.0  # tissue blobs are at most ~7 mm across, as on a real slide
# Artefacts. Ink transmits these fractions of red, green and blue (blue and green markers).
_PEN_INKS = (np.array([0.15, 0.5, 0.8], np.float32), np.array([0.3, 0.72, 0.45], np.float32))
_PEN_WIDTH_UM = 150.0  # a fine marker's stroke
_BLUR_SIGMA_UM = 2.5  # Gaussian point-spread of the out-of-focus patch
_BLUR_RADIUS_UM = (120.0, 200.0)
_FOLD_WIDTH_UM = (100.0, 160.0)
_FOLD_LENGTH_UM = (300.0, 500.0)
_FOLD_DARKEN = 0.4  # the compressed double fold scatters light too
_SALT_ARTEFACTS = 7919  # the artefacts' own random generator: [seed, this]

# hash salts: one independent random field each
_SALT_DRIFT, _SALT_MOTTLE, _SALT_WARP, _SALT_GRAIN, _SALT_NUCLEI, _SALT_STAIN = range(1, 7)


@dataclass(frozen=True)
class StarShape:
    """A polygon star-shaped about `centre_l0`: vertex k lies at angle 2πk/n from the x axis
    (towards +y) and distance `radii_px[k]` from the centre. Level-0 px."""

    centre_l0: tuple[float, float]
    radii_px: tuple[float, ...]

    @cached_property
    def _offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertex offsets from the centre, with the first vertex repeated at the end."""
        radii = np.asarray(self.radii_px + self.radii_px[:1])
        angles = 2 * np.pi * np.arange(len(radii)) / len(self.radii_px)
        return radii * np.cos(angles), radii * np.sin(angles)

    @cached_property
    def polygon(self) -> Polygon:
        dx, dy = self._offsets
        cx, cy = self.centre_l0
        return Polygon(np.stack([cx + dx[:-1], cy + dy[:-1]], axis=1))

    @cached_property
    def bounds(self) -> tuple[float, float, float, float]:
        """(min_x, min_y, max_x, max_y)."""
        return tuple(float(v) for v in self.polygon.bounds)  # type: ignore[return-value]

    def contains(self, x_l0: np.ndarray, y_l0: np.ndarray) -> np.ndarray:
        """Which points of the grid x_l0 (w,) × y_l0 (h,) lie inside: an (h, w) bool array."""
        vx, vy = self._offsets
        n = len(self.radii_px)
        dx = (np.asarray(x_l0, np.float64) - self.centre_l0[0])[None, :]
        dy = (np.asarray(y_l0, np.float64) - self.centre_l0[1])[:, None]
        sector = np.floor(np.arctan2(dy, dx) * (n / (2 * np.pi))).astype(np.int64) % n
        # Rounding may put a point next to a vertex's ray in the neighbouring sector; harmless, as
        # both edges meet at that vertex and agree along its ray.
        ax, ay, bx, by = vx[sector], vy[sector], vx[sector + 1], vy[sector + 1]
        # inside when on the centre's side of the sector's edge a->b
        return (bx - ax) * (dy - ay) - (by - ay) * (dx - ax) > 0


@dataclass(frozen=True)
class PlantedAnomaly:
    """One planted anomaly: its kind and its outline (`polygon`, level-0 px)."""

    kind: AnomalyKind
    shape: StarShape

    @property
    def polygon(self) -> Polygon:
        return self.shape.polygon


@dataclass(frozen=True)
class PlantedArtefact:
    """One planted artefact: its kind and its outline (`polygon`, level-0 px)."""

    kind: ArtefactKind
    polygon: Polygon


@dataclass(frozen=True)
class SyntheticSlide:
    """A written synthetic slide and its exact truth.

    `size` is the level-0 (width, height) in px; `mpp_um` the µm/px stored in the file (None when
    written without); `tissue` the tissue region (Polygon or MultiPolygon, level-0 px) and
    `tissue_shapes` its blobs (empty for `layout="full"`); `anomalies` the planted anomalies and
    `artefacts` the planted artefacts.
    """

    path: Path
    size: tuple[int, int]
    mpp_um: float | None
    seed: int
    layout: TissueLayout
    tissue: Polygon | MultiPolygon
    tissue_shapes: tuple[StarShape, ...]
    anomalies: tuple[PlantedAnomaly, ...]
    artefacts: tuple[PlantedArtefact, ...] = ()

    @property
    def texture_mpp_um(self) -> float:
        """The µm/px the textures and anomaly sizes were drawn at."""
        return NOMINAL_MPP_UM if self.mpp_um is None else self.mpp_um


def write_synthetic_slide(
    path: str | Path,
    width_px: int,
    height_px: int,
    *,
    mpp_um: float | None = 0.5,
    anomalies: int = 0,
    seed: int = 0,
    tissue: TissueLayout = "blobs",
    artefacts: Iterable[ArtefactKind] = (),
    progress: bool = False,
) -> SyntheticSlide:
    """Write a synthetic pyramidal slide of width_px × height_px level-0 px to `path`.

    `mpp_um` is stored in the file (None writes no resolution, for testing slides without mpp;
    the textures then use 0.5 µm/px). `anomalies` are planted in the tissue, kinds cycling
    foreign, stain, fold; `artefacts` lists the artefacts to plant (one per entry, e.g.
    ("pen", "blur", "fold")), clear of the anomalies. Levels halve down to a longer side below 1024 px. The file appears at
    `path` only once complete; scratch space of about width × height bytes is used next to it.

    Raises ConfigError for bad parameters (or anomalies that do not fit the tissue) and
    OutputError when the file cannot be written.
    """
    path = Path(path)
    slide = plan_synthetic_slide(
        path,
        width_px,
        height_px,
        mpp_um=mpp_um,
        anomalies=anomalies,
        seed=seed,
        tissue=tissue,
        artefacts=artefacts,
    )
    sizes = _level_sizes(width_px, height_px)
    total_tiles = sum(math.ceil(w / TILE_PX) * math.ceil(h / TILE_PX) for w, h in sizes)
    partial = path.with_name(f".{path.name}.partial")
    start = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.levels-") as scratch,
            tifffile.TiffWriter(partial, bigtiff=True) as writer,
            tqdm(total=total_tiles, unit="tile", desc=path.name, disable=not progress) as bar,
        ):
            levels = [_ScratchLevel(Path(scratch) / f"level{i}.raw", size) for i, size in enumerate(sizes)]
            below = levels[1] if len(levels) > 1 else None
            tiles: Iterable[np.ndarray] = _level0_tiles(slide, below, bar)
            for level, size in enumerate(sizes):
                writer.write(tiles, **_page_options(slide, level, size))
                if level > 0:
                    levels[level].remove()
                if below is not None:
                    below.close()
                    above, below = below, levels[level + 2] if level + 2 < len(levels) else None
                    tiles = _level_tiles(above, below, bar)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputError(
            f"cannot write {path} ({exc.strerror or exc}); choose a writable folder with room for the slide"
        ) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    log.info(
        "wrote %s: %d x %d px, %d levels, %d tiles in %.1f s (%.0f tiles/s)",
        path,
        width_px,
        height_px,
        len(sizes),
        total_tiles,
        seconds,
        total_tiles / max(seconds, 1e-9),
    )
    return slide


def plan_synthetic_slide(
    path: str | Path,
    width_px: int,
    height_px: int,
    *,
    mpp_um: float | None = 0.5,
    anomalies: int = 0,
    seed: int = 0,
    tissue: TissueLayout = "blobs",
    artefacts: Iterable[ArtefactKind] = (),
) -> SyntheticSlide:
    """The layout `write_synthetic_slide` would write, without writing it (same arguments)."""
    if width_px < MIN_SIDE_PX or height_px < MIN_SIDE_PX:
        raise ConfigError(
            f"synthetic slide size {width_px}x{height_px} px is too small; "
            f"use at least {MIN_SIDE_PX}x{MIN_SIDE_PX}"
        )
    if max(width_px, height_px) >= 2**31:
        raise ConfigError(
            f"synthetic slide size {width_px}x{height_px} px is too large; keep each side below 2^31"
        )
    if mpp_um is not None and not 0 < mpp_um <= 100:
        raise ConfigError(f"mpp {mpp_um} must be a µm/px in (0, 100], e.g. 0.5")
    if anomalies < 0:
        raise ConfigError(f"anomalies {anomalies} must be 0 or more")
    if seed < 0:
        raise ConfigError(f"seed {seed} must be 0 or more")
    if tissue not in get_args(TissueLayout):
        raise ConfigError(f"tissue layout {tissue!r} must be one of {', '.join(get_args(TissueLayout))}")
    rng = np.random.default_rng(seed)
    texture_mpp = NOMINAL_MPP_UM if mpp_um is None else mpp_um
    if tissue == "full":
        shapes: tuple[StarShape, ...] = ()
        region: Polygon | MultiPolygon = box(0, 0, width_px, height_px)
    else:
        shapes = _tissue_blobs(rng, width_px, height_px, texture_mpp)
        region = shapes[0].polygon if len(shapes) == 1 else MultiPolygon([s.polygon for s in shapes])
    planted = _plant_anomalies(rng, anomalies, width_px, height_px, texture_mpp, shapes)
    kinds = tuple(artefacts)
    for kind in kinds:
        if kind not in ARTEFACT_KINDS:
            raise ConfigError(f"artefact {kind!r} must be one of {', '.join(ARTEFACT_KINDS)}")
    marks = _plant_artefacts(seed, kinds, width_px, height_px, texture_mpp, region, planted) if kinds else ()
    return SyntheticSlide(
        Path(path), (width_px, height_px), mpp_um, seed, tissue, region, shapes, planted, marks
    )


def render_region(slide: SyntheticSlide, x_l0: int, y_l0: int, size_px: tuple[int, int]) -> np.ndarray:
    """The exact level-0 pixels of `slide` (before JPEG) in the box of `size_px` (width, height)
    whose top-left pixel is (x_l0, y_l0): an (height, width, 3) uint8 RGB array. Defined beyond
    the slide's edges too."""
    rgb = _render_base(slide, x_l0, y_l0, size_px)
    if slide.artefacts:
        rgb = _render_artefacts(slide, rgb, x_l0, y_l0, size_px)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _render_base(slide: SyntheticSlide, x_l0: int, y_l0: int, size_px: tuple[int, int]) -> np.ndarray:
    """Tissue, background and anomalies of the box (no artefacts): (height, width, 3) float."""
    width_px, height_px = size_px
    x = x_l0 + np.arange(width_px) + 0.5
    y = y_l0 + np.arange(height_px) + 0.5
    u_um, v_um = x * slide.texture_mpp_um, y * slide.texture_mpp_um
    tissue = np.full((height_px, width_px), slide.layout == "full")
    for shape in slide.tissue_shapes:
        _paint(tissue, shape, x, y)
    if not tissue.any():
        rgb = _background(x, y, slide.seed)
    else:
        texture = _tissue_texture(u_um, v_um, slide.seed)
        rgb = texture if tissue.all() else np.where(tissue[..., None], texture, _background(x, y, slide.seed))
        for index, anomaly in enumerate(slide.anomalies):
            inside = np.zeros_like(tissue)
            if _paint(inside, anomaly.shape, x, y):
                look = _anomaly_texture(anomaly.kind, index, u_um, v_um, slide.seed, texture)
                rgb = np.where(inside[..., None], look, rgb)
    return rgb


def anomaly_mask(
    slide: SyntheticSlide, x_l0: int, y_l0: int, size_px: int | tuple[int, int], downsample: int = 1
) -> np.ndarray:
    """Exact anomaly truth for the box of `size_px` (width, height, or one int for a square)
    pixels of `downsample` level-0 px each, whose top-left corner is (x_l0, y_l0) in level 0.

    Returns an (height, width) bool array: True where the pixel's centre, at level-0
    (x_l0 + (i + 0.5) * downsample, ...), lies inside an anomaly. With downsample 1 these are
    exactly the pixels `render_region` draws as anomalous.
    """
    width_px, height_px = (size_px, size_px) if isinstance(size_px, int) else size_px
    if downsample < 1:
        raise ValueError(f"downsample {downsample} must be at least 1")
    x = x_l0 + (np.arange(width_px) + 0.5) * downsample
    y = y_l0 + (np.arange(height_px) + 0.5) * downsample
    mask = np.zeros((height_px, width_px), bool)
    for anomaly in slide.anomalies:
        _paint(mask, anomaly.shape, x, y)
    return mask


def artefact_mask(
    slide: SyntheticSlide,
    x_l0: int,
    y_l0: int,
    size_px: int | tuple[int, int],
    downsample: int = 1,
    kinds: Iterable[ArtefactKind] = ARTEFACT_KINDS,
) -> np.ndarray:
    """Exact artefact truth, as `anomaly_mask` is for anomalies: (height, width) bool, True where
    the pixel's centre lies inside an artefact of one of `kinds`."""
    width_px, height_px = (size_px, size_px) if isinstance(size_px, int) else size_px
    x = x_l0 + (np.arange(width_px) + 0.5) * downsample
    y = y_l0 + (np.arange(height_px) + 0.5) * downsample
    mask = np.zeros((height_px, width_px), bool)
    wanted = set(kinds)
    for artefact in slide.artefacts:
        if artefact.kind in wanted:
            mask |= _inside_polygon(artefact.polygon, x, y)
    return mask


def write_ground_truth(slide: SyntheticSlide, out_dir: str | Path, downsample: int = 16) -> tuple[Path, Path]:
    """Write the anomaly truth of `slide` to `out_dir`: returns (mask_png, geojson).

    - `<stem>_anomaly_mask.png`: 8-bit, 255 where `anomaly_mask` at `downsample` is True, of
      ceil(width / downsample) × ceil(height / downsample) px;
    - `<stem>_anomalies.geojson`: a FeatureCollection of the anomaly polygons in level-0 px, as
      QuPath annotations classified "Anomaly" (name "Anomaly <n> (<kind>)", measurement area_um2).
    """
    out_dir = Path(out_dir)
    width_px, height_px = slide.size
    mask = anomaly_mask(
        slide, 0, 0, (math.ceil(width_px / downsample), math.ceil(height_px / downsample)), downsample
    )
    mask_path = out_dir / f"{slide.path.stem}_anomaly_mask.png"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(mask_path)
    except OSError as exc:
        raise OutputError(
            f"cannot write {mask_path} ({exc.strerror or exc}); choose a writable folder"
        ) from None
    name, colour = ANOMALY_CLASS
    area_scale = slide.texture_mpp_um**2
    features = [
        {
            "type": "Feature",
            "id": str(
                uuid.uuid5(
                    uuid.NAMESPACE_URL, f"wsi-haloae:synthetic:{slide.path.name}:{slide.seed}:{number}"
                )
            ),
            "geometry": mapping(anomaly.polygon),
            "properties": {
                "objectType": "annotation",
                "name": f"{name} {number} ({anomaly.kind})",
                "classification": {"name": name, "color": list(colour)},
                "measurements": {"area_um2": anomaly.polygon.area * area_scale},
            },
        }
        for number, anomaly in enumerate(slide.anomalies, start=1)
    ]
    geojson_path = write_feature_collection(out_dir / f"{slide.path.stem}_anomalies.geojson", features)
    return mask_path, geojson_path


# --- layout ---------------------------------------------------------------------------------


def _star(
    rng: np.random.Generator,
    centre: tuple[float, float],
    semi_axes: tuple[float, float],
    roughness: float,
    n: int,
) -> StarShape:
    """An axis-aligned ellipse whose radius wobbles by at most ±roughness (harmonics 2 to 6)."""
    theta = 2 * np.pi * np.arange(n) / n
    a, b = semi_axes
    radii = a * b / np.hypot(b * np.cos(theta), a * np.sin(theta))
    harmonics = np.arange(2, 7)
    amplitudes = rng.uniform(0, 1, len(harmonics)) / harmonics
    amplitudes *= roughness / amplitudes.sum()
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    radii *= 1 + (amplitudes[:, None] * np.cos(harmonics[:, None] * theta + phases[:, None])).sum(axis=0)
    return StarShape((float(centre[0]), float(centre[1])), tuple(float(r) for r in radii))


def _tissue_blobs(
    rng: np.random.Generator, width_px: int, height_px: int, mpp_um: float
) -> tuple[StarShape, ...]:
    """One blob per cell of a grid of cells about min(width, height) / 2 wide (1024 px to 8 mm).

    A blob reaches at most 0.448 of its cell from its centre, which moves at most 0.032 of the
    cell from the cell's centre, so every blob keeps 2 % of the cell clear along the cell's border.
    """
    cell_px = float(np.clip(min(width_px, height_px) / 2, 1024, _BLOB_CELL_UM / mpp_um))
    columns, rows = max(1, round(width_px / cell_px)), max(1, round(height_px / cell_px))
    cell_w, cell_h = width_px / columns, height_px / rows
    roughness = 0.12
    blobs = []
    for row in range(rows):
        for column in range(columns):
            semi_axes = (cell_w * rng.uniform(0.34, 0.40), cell_h * rng.uniform(0.34, 0.40))
            jitter = 0.5 - 0.40 * (1 + roughness) - 0.02
            centre = (
                (column + 0.5 + rng.uniform(-jitter, jitter)) * cell_w,
                (row + 0.5 + rng.uniform(-jitter, jitter)) * cell_h,
            )
            blobs.append(_star(rng, centre, semi_axes, roughness, n=256))
    return tuple(blobs)


def _plant_anomalies(
    rng: np.random.Generator,
    count: int,
    width_px: int,
    height_px: int,
    mpp_um: float,
    blobs: tuple[StarShape, ...],
) -> tuple[PlantedAnomaly, ...]:
    """`count` anomalies, each inside one tissue region, apart from each other by 10 % of their
    size; a few hundred µm across, or smaller where the tissue is small."""
    margin = 0.05 * min(width_px, height_px)
    regions = [b.polygon for b in blobs] or [box(margin, margin, width_px - margin, height_px - margin)]
    areas = np.array([r.area for r in regions])
    planted: list[PlantedAnomaly] = []
    for index in range(count):
        kind = ANOMALY_KINDS[index % len(ANOMALY_KINDS)]
        for _ in range(500):
            region = regions[rng.choice(len(regions), p=areas / areas.sum())]
            min_x, min_y, max_x, max_y = region.bounds
            fit = 0.4 * min(max_x - min_x, max_y - min_y) / 2
            radius = min(rng.uniform(*_ANOMALY_RADIUS_UM) / mpp_um, fit)
            centre = (rng.uniform(min_x, max_x), rng.uniform(min_y, max_y))
            semi_axes = (radius * rng.uniform(0.7, 1.0), radius * rng.uniform(0.7, 1.0))
            shape = _star(rng, centre, semi_axes, roughness=0.25, n=128)
            outline = shape.polygon
            gap = 0.1 * radius
            if region.contains(outline) and all(outline.distance(p.polygon) > gap for p in planted):
                planted.append(PlantedAnomaly(kind, shape))
                break
        else:
            raise ConfigError(
                f"cannot fit {count} anomalies in the tissue of a {width_px}x{height_px} px slide "
                f"(placed {index}); use fewer anomalies or a larger size"
            )
    return tuple(planted)


def _plant_artefacts(
    seed: int,
    kinds: tuple[ArtefactKind, ...],
    width_px: int,
    height_px: int,
    mpp_um: float,
    tissue: Polygon | MultiPolygon,
    anomalies: tuple[PlantedAnomaly, ...],
) -> tuple[PlantedArtefact, ...]:
    """One artefact per entry of `kinds`, clear of the anomalies and of each other: pen strokes
    across the tissue's edge (ink on tissue and on glass), blur patches and folds inside tissue."""
    from shapely import affinity
    from shapely.geometry import LineString, Point

    rng = np.random.default_rng([seed, _SALT_ARTEFACTS])
    taken = [a.polygon.buffer(0.1 * math.sqrt(a.polygon.area)) for a in anomalies]
    inner = tissue.buffer(-0.02 * min(width_px, height_px))
    min_x, min_y, max_x, max_y = tissue.bounds
    # sizes in µm, capped by the size of a tissue blob (a quarter of the slide's short side)
    cap = min(width_px, height_px) / 4
    planted: list[PlantedArtefact] = []
    for number, kind in enumerate(kinds):
        for _ in range(500):
            centre = (rng.uniform(min_x, max_x), rng.uniform(min_y, max_y))
            angle = rng.uniform(0, 180)
            if kind == "pen":
                length = rng.uniform(0.6, 1.0) * cap
                wobble = rng.uniform(-0.08, 0.08, 5) * length
                t = np.linspace(-0.5, 0.5, 5) * length
                line = LineString(np.stack([centre[0] + t, centre[1] + wobble], axis=1))
                outline = affinity.rotate(line, angle, origin=centre).buffer(_PEN_WIDTH_UM / mpp_um / 2)
                fits = outline.intersects(tissue) and not inner.contains(outline)
            elif kind == "blur":
                radius = min(rng.uniform(*_BLUR_RADIUS_UM) / mpp_um, 0.3 * cap)
                outline = affinity.scale(Point(centre).buffer(radius, 32), 1.0, rng.uniform(0.6, 1.0))
                fits = inner.contains(outline)
            else:
                length = min(rng.uniform(*_FOLD_LENGTH_UM) / mpp_um, 0.8 * cap)
                width = min(rng.uniform(*_FOLD_WIDTH_UM) / mpp_um, 0.2 * cap)
                band = box(
                    centre[0] - length / 2,
                    centre[1] - width / 2,
                    centre[0] + length / 2,
                    centre[1] + width / 2,
                )
                outline = affinity.rotate(band, angle, origin=centre)
                fits = inner.contains(outline)
            if fits and not any(outline.intersects(other) for other in taken):
                planted.append(PlantedArtefact(kind, Polygon(outline.exterior)))
                taken.append(outline.buffer(0.05 * cap))
                break
        else:
            raise ConfigError(
                f"cannot fit artefact {number} ({kind}) on a {width_px}x{height_px} px slide; "
                "use fewer artefacts or anomalies, or a larger size"
            )
    return tuple(planted)


def _inside_polygon(polygon: Polygon, x_l0: np.ndarray, y_l0: np.ndarray) -> np.ndarray:
    """Which points of the grid x_l0 (w,) × y_l0 (h,) lie inside `polygon`: (h, w) bool; only the
    window of its bounds is tested."""
    import shapely

    mask = np.zeros((len(y_l0), len(x_l0)), bool)
    min_x, min_y, max_x, max_y = polygon.bounds
    c0, c1 = np.searchsorted(x_l0, min_x), np.searchsorted(x_l0, max_x, side="right")
    r0, r1 = np.searchsorted(y_l0, min_y), np.searchsorted(y_l0, max_y, side="right")
    if c0 < c1 and r0 < r1:
        grid_x, grid_y = np.meshgrid(x_l0[c0:c1], y_l0[r0:r1])
        mask[r0:r1, c0:c1] = shapely.contains_xy(polygon, grid_x, grid_y)
    return mask


def _render_artefacts(
    slide: SyntheticSlide, rgb: np.ndarray, x_l0: int, y_l0: int, size_px: tuple[int, int]
) -> np.ndarray:
    """`rgb` (the base rendering of the box) with the slide's artefacts drawn over it."""
    from scipy import ndimage

    width_px, height_px = size_px
    x = x_l0 + np.arange(width_px) + 0.5
    y = y_l0 + np.arange(height_px) + 0.5
    u_um, v_um = x * slide.texture_mpp_um, y * slide.texture_mpp_um
    pen_count = 0
    for number, artefact in enumerate(slide.artefacts):
        inside = _inside_polygon(artefact.polygon, x, y)
        ink = _PEN_INKS[pen_count % len(_PEN_INKS)]
        pen_count += artefact.kind == "pen"
        if not inside.any():
            continue
        if artefact.kind == "pen":
            look = rgb * ink
        elif artefact.kind == "fold":
            rng = np.random.default_rng([slide.seed, _SALT_ARTEFACTS, number])
            look = rgb
            for _ in range(2):  # two more layers, each shifted by a few µm
                du, dv = rng.uniform(4, 8, 2) * rng.choice([-1, 1], 2)
                look = look * _tissue_texture(u_um + du, v_um + dv, slide.seed) / 255
            look = look * _FOLD_DARKEN
        else:
            # blur the base image around the box, so neighbouring tiles blur seamlessly
            sigma_px = _BLUR_SIGMA_UM / slide.texture_mpp_um
            pad = int(math.ceil(4 * sigma_px))
            padded = _render_base(slide, x_l0 - pad, y_l0 - pad, (width_px + 2 * pad, height_px + 2 * pad))
            blurred = ndimage.gaussian_filter(padded, sigma=(sigma_px, sigma_px, 0), truncate=4.0)
            look = blurred[pad : pad + height_px, pad : pad + width_px]
        rgb = np.where(inside[..., None], look, rgb)
    return rgb


# --- textures ---------------------------------------------------------------------------------


def _key(seed: int, salt: int) -> int:
    return (seed * 0x9E3779B1 + salt * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF


def _mix(h: np.ndarray) -> np.ndarray:
    """A 32-bit integer finaliser (xor-shift-multiply): uint32 -> well-mixed uint32."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def _hash(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """Random uint32 per integer lattice point (ix, iy) (broadcast), independent per key."""
    ux = (np.asarray(ix, np.int64) & 0xFFFFFFFF).astype(np.uint32)
    uy = (np.asarray(iy, np.int64) & 0xFFFFFFFF).astype(np.uint32)
    return _mix(_mix(uy ^ np.uint32(key & 0xFFFFFFFF)) + ux)


def _unit(h: np.ndarray) -> np.ndarray:
    """uint32 hash -> float32 uniform in [0, 1)."""
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1 / (1 << 24))


def _value_noise(u_um: np.ndarray, v_um: np.ndarray, period_um: float, key: int) -> np.ndarray:
    """Smooth noise in [0, 1) on the grid u (w,) × v (h,) in µm: random values on a lattice of
    `period_um`, smoothstep-interpolated. Returns (h, w) float32."""

    def axis(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        scaled = t / period_um
        cell = np.floor(scaled)
        frac = (scaled - cell).astype(np.float32)
        cell = cell.astype(np.int64)
        return cell, frac * frac * (3 - 2 * frac), int(cell.min())

    cu, su, u0 = axis(u_um)
    cv, sv, v0 = axis(v_um)
    a, b = cu - u0, cv - v0
    lattice = _unit(_hash(np.arange(a.max() + 2) + u0, (np.arange(b.max() + 2) + v0)[:, None], key))
    upper, lower = lattice[b], lattice[b + 1]
    top = upper[:, a] + (upper[:, a + 1] - upper[:, a]) * su
    bottom = lower[:, a] + (lower[:, a + 1] - lower[:, a]) * su
    return top + (bottom - top) * sv[:, None]


def _nuclei(u_um: np.ndarray, v_um: np.ndarray, seed: int) -> np.ndarray:
    """Nucleus coverage in [0, 1] on the grid u (w,) × v (h,) in µm, (h, w) float32.

    Two staggered lattices of 12 µm cells each hold at most one round nucleus per cell, kept
    inside its cell so each pixel only looks at its own cell; how many cells hold one follows a
    slow "cellularity" field.
    """
    cell_um = _NUCLEUS_CELL_UM
    r_min, r_max = (r / cell_um for r in _NUCLEUS_RADIUS_UM)
    margin = r_max + _NUCLEUS_EDGE_UM / cell_um
    coverage = np.zeros((len(v_um), len(u_um)), np.float32)
    for layer, shift in enumerate((0.0, 0.5)):
        key = _key(seed, _SALT_NUCLEI + 16 * layer)
        su, sv = u_um / cell_um + shift, v_um / cell_um + shift
        cu, cv = np.floor(su).astype(np.int64), np.floor(sv).astype(np.int64)
        u0, v0 = int(cu.min()), int(cv.min())
        a, b = cu - u0, cv - v0
        cells_u, cells_v = np.arange(a.max() + 1) + u0, (np.arange(b.max() + 1) + v0)[:, None]
        centre_u = margin + (1 - 2 * margin) * _unit(_hash(cells_u, cells_v, key))
        centre_v = margin + (1 - 2 * margin) * _unit(_hash(cells_u, cells_v, key + 1))
        radius = r_min + (r_max - r_min) * _unit(_hash(cells_u, cells_v, key + 2))
        cellularity = _value_noise(
            (cells_u + 0.5 - shift) * cell_um, (cells_v[:, 0] + 0.5 - shift) * cell_um, 150.0, key + 3
        )
        present = _unit(_hash(cells_u, cells_v, key + 4)) < 0.15 + 0.6 * cellularity
        shade = 0.75 + 0.25 * _unit(_hash(cells_u, cells_v, key + 5))
        darkness = np.where(present, shade, np.float32(0))
        du = (su - cu).astype(np.float32)[None, :] - centre_u[b][:, a]
        dv = (sv - cv).astype(np.float32)[:, None] - centre_v[b][:, a]
        distance_um = np.sqrt(du * du + dv * dv) * cell_um
        edge = np.clip((radius[b][:, a] * cell_um - distance_um) / _NUCLEUS_EDGE_UM + 0.5, 0, 1)
        np.maximum(coverage, edge * darkness[b][:, a], out=coverage)
    return coverage


def _grain(x_l0: np.ndarray, y_l0: np.ndarray, seed: int, amplitude: float) -> np.ndarray:
    """Per-pixel noise in ±amplitude/2, (h, w) float32."""
    ix, iy = np.floor(x_l0).astype(np.int64), np.floor(y_l0).astype(np.int64)
    return (_unit(_hash(ix, iy[:, None], _key(seed, _SALT_GRAIN))) - 0.5) * amplitude


def _background(x_l0: np.ndarray, y_l0: np.ndarray, seed: int) -> np.ndarray:
    """Near-white glass, (h, w, 3) float32."""
    grey = BACKGROUND_RGB[0] + _grain(x_l0, y_l0, seed, 4.0)
    return np.repeat(grey[..., None], 3, axis=2)


def _tissue_texture(u_um: np.ndarray, v_um: np.ndarray, seed: int) -> np.ndarray:
    """H&E-like tissue on the grid u (w,) × v (h,) in µm: (h, w, 3) float32 RGB."""
    drift = _value_noise(u_um, v_um, _DRIFT_PERIOD_UM, _key(seed, _SALT_DRIFT))
    mottle = _value_noise(u_um, v_um, _MOTTLE_PERIOD_UM, _key(seed, _SALT_MOTTLE))
    warp = _value_noise(u_um, v_um, _WARP_PERIOD_UM, _key(seed, _SALT_WARP))
    along = _along(u_um, v_um, angle=(seed * 0.61803398875 % 1) * math.pi)
    fibre = (0.5 + 0.5 * np.sin(along * np.float32(2 * np.pi / _FIBRE_PERIOD_UM) + 6 * warp)) ** 2
    eosin = np.clip(0.25 + 0.35 * drift + 0.25 * mottle + 0.2 * fibre, 0, 1)
    rgb = _STROMA_LIGHT + (_STROMA_DEEP - _STROMA_LIGHT) * eosin[..., None]
    rgb += (_NUCLEUS - rgb) * _nuclei(u_um, v_um, seed)[..., None]
    # grain on a 0.5 µm lattice: per pixel at 0.5 µm/px, and the same physical look at any mpp
    return rgb + _grain(u_um * 2, v_um * 2, seed, 10.0)[..., None]


def _along(u_um: np.ndarray, v_um: np.ndarray, angle: float) -> np.ndarray:
    """Distance in µm along the direction `angle` (radians from +u towards +v) on the grid
    u (w,) × v (h,): (h, w) float32."""
    cos, sin = math.cos(angle), math.sin(angle)
    return (u_um * cos).astype(np.float32)[None, :] + (v_um * sin).astype(np.float32)[:, None]


def _anomaly_texture(
    kind: AnomalyKind, index: int, u_um: np.ndarray, v_um: np.ndarray, seed: int, tissue: np.ndarray
) -> np.ndarray:
    """The look of anomaly number `index` of `kind` on the grid u (w,) × v (h,) in µm, given the
    tissue texture there: (h, w, 3) float32 RGB."""
    rng = np.random.default_rng([seed, index])
    if kind == "stain":
        colour = _STAINS[index // len(ANOMALY_KINDS) % len(_STAINS)]
        mottle = _value_noise(u_um, v_um, 15.0, _key(seed, _SALT_STAIN + 32 * index))
        structure = tissue.mean(axis=2, keepdims=True) / 255
        return colour * (0.8 + 0.4 * mottle[..., None]) * (0.6 + 0.4 * structure)
    if kind == "foreign":
        angle = rng.uniform(0, math.pi)
        along, across = _along(u_um, v_um, angle), _along(u_um, v_um, angle + math.pi / 2)
        hatch = (0.5 + 0.5 * np.sin(along * np.float32(2 * np.pi / 5))) * (
            0.5 + 0.5 * np.sin(across * np.float32(2 * np.pi / 9))
        )
        return _FOREIGN_DARK + (_FOREIGN_LIGHT - _FOREIGN_DARK) * hatch[..., None]
    shift_u, shift_v = rng.uniform(5, 9, 2) * rng.choice([-1, 1], 2)
    overlay = _tissue_texture(u_um + shift_u, v_um + shift_v, seed)
    return tissue * overlay / 255 * 0.97


def _paint(mask: np.ndarray, shape: StarShape, x_l0: np.ndarray, y_l0: np.ndarray) -> bool:
    """OR the points of grid x_l0 (w,) × y_l0 (h,) (both increasing) inside `shape` into `mask`
    (h, w); returns whether any was inside. Only the window of the shape's bounds is tested."""
    min_x, min_y, max_x, max_y = shape.bounds
    c0, c1 = np.searchsorted(x_l0, min_x), np.searchsorted(x_l0, max_x, side="right")
    r0, r1 = np.searchsorted(y_l0, min_y), np.searchsorted(y_l0, max_y, side="right")
    if c0 >= c1 or r0 >= r1:
        return False
    inside = shape.contains(x_l0[c0:c1], y_l0[r0:r1])
    mask[r0:r1, c0:c1] |= inside
    return bool(inside.any())


# --- writing --------------------------------------------------------------------------------


def _level_sizes(width_px: int, height_px: int) -> list[tuple[int, int]]:
    """(width, height) of each level: level 0, then halved (rounding up) while the longer side
    of the last is at least MIN_LEVEL_PX."""
    sizes = [(width_px, height_px)]
    while max(sizes[-1]) >= MIN_LEVEL_PX:
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes


def _page_options(slide: SyntheticSlide, level: int, size: tuple[int, int]) -> dict[str, object]:
    """tifffile options of one pyramid page: tiled JPEG RGB, and its own resolution."""
    width_px, height_px = size
    options: dict[str, object] = {
        "shape": (height_px, width_px, 3),
        "dtype": np.uint8,
        "tile": (TILE_PX, TILE_PX),
        "compression": "jpeg",
        "compressionargs": {"level": JPEG_QUALITY},
        "photometric": "rgb",
        "subfiletype": 0 if level == 0 else 1,
        "metadata": None,
        # tifffile buffers buffersize bytes of tiles to encode them in parallel: keep that to a
        # few tiles per thread, so memory does not grow with the slide
        "maxworkers": _WORKERS,
        "buffersize": 2 * _WORKERS * TILE_PX * TILE_PX * 3,
    }
    if level == 0:
        options["description"] = (
            f"wsi-haloae synthetic slide: {slide.size[0]}x{slide.size[1]} px, "
            f"mpp {slide.mpp_um}, seed {slide.seed}, tissue {slide.layout}, {len(slide.anomalies)} anomalies"
        )
    if slide.mpp_um is not None:
        mpp_x = slide.mpp_um * slide.size[0] / width_px
        mpp_y = slide.mpp_um * slide.size[1] / height_px
        options["resolution"] = (1e4 / mpp_x, 1e4 / mpp_y)  # px per cm
        options["resolutionunit"] = "CENTIMETER"
    return options


class _ScratchLevel:
    """One pyramid level kept on disk as raw (height, width, 3) uint8 rows while the level above
    is written: filled with halved tiles, in the row-major order they come, one strip of
    TILE_PX / 2 rows at a time, then read back in strips of TILE_PX rows. Memory: one strip."""

    def __init__(self, path: Path, size: tuple[int, int]) -> None:
        self.path = path
        self.width_px, self.height_px = size
        self._file: BinaryIO | None = None
        self._strip = np.empty((0, self.width_px, 3), np.uint8)
        self._strip_y = -1  # the level row where self._strip starts

    def put(self, x: int, y: int, pixels: np.ndarray) -> None:
        """Place (h, w, 3) `pixels` with top-left pixel (x, y), tiles of a strip left to right."""
        if y != self._strip_y:
            rows = min(TILE_PX // 2, self.height_px - y)
            self._strip = np.empty((rows, self.width_px, 3), np.uint8)
            self._strip_y = y
        self._strip[:, x : x + pixels.shape[1]] = pixels
        if x + pixels.shape[1] == self.width_px:
            if self._file is None:
                self._file = self.path.open("wb")
            self._file.write(self._strip.tobytes())

    def close(self) -> None:
        """Finish filling; the level can then be read."""
        if self._file is not None:
            self._file.close()
        if self.path.stat().st_size != self.width_px * self.height_px * 3:
            raise AssertionError(f"scratch level {self.path} is incomplete")

    def strips(self) -> Iterator[tuple[int, np.ndarray]]:
        """(y, rows) for each strip of up to TILE_PX rows, top to bottom."""
        with self.path.open("rb") as handle:
            for y in range(0, self.height_px, TILE_PX):
                rows = min(TILE_PX, self.height_px - y)
                data = np.frombuffer(handle.read(rows * self.width_px * 3), np.uint8)
                yield y, data.reshape(rows, self.width_px, 3)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _halve(pixels: np.ndarray) -> np.ndarray:
    """2 × 2 mean of an (h, w, 3) uint8 array -> (ceil(h/2), ceil(w/2), 3); an odd last row or
    column is averaged with itself."""
    h, w = pixels.shape[:2]
    if h % 2 or w % 2:
        pixels = np.pad(pixels, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    p = pixels.astype(np.uint16)
    total = p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def _tile_origins(width_px: int, height_px: int) -> list[tuple[int, int]]:
    """(x, y) of each tile, row-major, as TIFF stores them."""
    return [(x, y) for y in range(0, height_px, TILE_PX) for x in range(0, width_px, TILE_PX)]


def _level0_tiles(slide: SyntheticSlide, below: _ScratchLevel | None, bar: tqdm) -> Iterator[np.ndarray]:
    """Level-0 tiles, rendered ahead in a thread pool (numpy releases the GIL), each also halved
    into `below`, the next level."""
    width_px, height_px = slide.size

    def render(origin: tuple[int, int]) -> np.ndarray:
        return render_region(slide, origin[0], origin[1], (TILE_PX, TILE_PX))

    origins = _tile_origins(width_px, height_px)
    for (x, y), tile in zip(origins, _ordered_map(render, origins, workers=_WORKERS), strict=True):
        if below is not None:
            inside = tile[: height_px - y, : width_px - x]
            below.put(x // 2, y // 2, _halve(inside))
        bar.update()
        yield tile


def _level_tiles(level: _ScratchLevel, below: _ScratchLevel | None, bar: tqdm) -> Iterator[np.ndarray]:
    """Tiles of a scratch level, row-major, padded to full tiles, each also halved into `below`."""
    for y, strip in level.strips():
        for x in range(0, level.width_px, TILE_PX):
            part = strip[:, x : x + TILE_PX]
            if below is not None:
                below.put(x // 2, y // 2, _halve(part))
            pad = ((0, TILE_PX - part.shape[0]), (0, TILE_PX - part.shape[1]), (0, 0))
            bar.update()
            yield np.pad(part, pad, mode="edge") if any(p[1] for p in pad) else part


def _ordered_map(
    fn: Callable[[tuple[int, int]], np.ndarray], items: list[tuple[int, int]], workers: int
) -> Iterator[np.ndarray]:
    """fn over items in order, computed by `workers` threads at most 2 × workers items ahead."""
    queue = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[np.ndarray]] = deque(
            pool.submit(fn, item) for item in islice(queue, 2 * workers)
        )
        while pending:
            result = pending.popleft().result()
            following = next(queue, None)
            if following is not None:
                pending.append(pool.submit(fn, following))
            yield result
