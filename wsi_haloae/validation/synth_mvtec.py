"""An offline MVTec-format benchmark made from real images: histology tiles and scikit-image textures.

MVTec AD cannot be downloaded here, so this writes categories in its exact layout (read back by
`mvtec.mvtec_index`):

    OUT/CATEGORY/train/good/000.png, test/good/000.png, test/<defect>/000.png,
    OUT/CATEGORY/ground_truth/<defect>/000_mask.png (255 = defect), OUT/CATEGORY/crops.csv

- `histology`: tissue tiles of the slides passed in, read at level 0 (size_px x size_px level-0
  pixels per image), with artefacts pathologists know: pen ink, out-of-focus blur, tissue folds,
  air bubbles and a foreign (IHC, DAB-brown) stain.
- `brick`, `grass`, `gravel`: crops of scikit-image's shipped textures (grey, written as RGB), with
  scratches, holes, patches of another texture and colour stains.

Honesty rules from model-spec.md ("Evaluation"):
- Train and test images come from disjoint regions of each source image (the first half along its
  longer side is for training, the second for testing), so no pixel of a test image was seen in
  training. `crops.csv` records every image's crop box in source pixels for checking.
- Test defects are unlike HaloAE's Cut&Paste training damage: none copies a patch of the same image
  to another place. Foreign material comes from another image; a fold darkens by overlaying
  (multiplying) shifted tissue; a bubble refracts the tissue beneath it in place.
- Masks are the exact footprint of each defect: pixels outside the mask are left untouched.

Every random choice comes from a generator seeded by (seed, category name), so a category's
output depends only on its own arguments and the seed, byte for byte.
"""

from __future__ import annotations

import csv
import logging
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
import openslide
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from skimage import data as skdata
from skimage import draw
from skimage.filters import threshold_otsu
from tqdm import tqdm

from ..errors import DataError, OutputError, SlideError

log = logging.getLogger(__name__)

HISTOLOGY = "histology"
TEXTURES: dict[str, Callable[[], NDArray[np.uint8]]] = {
    "brick": skdata.brick,
    "grass": skdata.grass,
    "gravel": skdata.gravel,
}
DEFAULT_CATEGORIES = (HISTOLOGY, "brick", "grass", "gravel")
HISTOLOGY_DEFECTS = ("pen_ink", "blur", "fold", "bubble", "foreign_stain")
TEXTURE_DEFECTS = ("scratch", "hole", "foreign_texture", "colour_stain")
CROPS_FILE = "crops.csv"

# Share of each source image, along its longer side, that holds the training crops.
TRAIN_FRACTION = 0.5
# A histology tile is kept when at least this share of it is tissue.
MIN_TISSUE_FRACTION = 0.75
# Tissue masks are computed on a thumbnail whose longer side is at most this many pixels.
_THUMBNAIL_PX = 2048
# Marker colours (RGB) seen on slides; ink absorbs, so strokes multiply the tissue's colour.
_PEN_COLOURS = ((40, 70, 170), (30, 130, 70), (35, 35, 40), (180, 40, 50))
# Stain colours (RGB) for texture categories: rust, blue ink, red.
_STAIN_COLOURS = ((150, 75, 20), (40, 90, 170), (170, 30, 40))

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in source pixels, x1 and y1 exclusive
Tile = NDArray[np.float64]  # (S, S, 3), values 0-255
Defect = Callable[[Tile, np.random.Generator], tuple[Tile, NDArray[np.bool_]]]


@dataclass(frozen=True)
class Crop:
    """One written image: where it came from (level-0 pixels for slides) and how it was flipped."""

    image: str  # path relative to the category folder
    split: str
    defect_type: str
    source: str  # slide path, or e.g. "skimage.data.brick"
    x0: int
    y0: int
    x1: int
    y1: int
    flip_x: bool
    flip_y: bool


@dataclass
class _Source:
    """An image to crop from: `read(x_l0, y_l0, size_px)` returns (size_px, size_px, 3) uint8."""

    name: str
    width: int
    height: int
    read: Callable[[int, int, int], NDArray[np.uint8]]
    tissue: NDArray[np.bool_] | None = None  # thumbnail tissue mask of a slide
    downsample: float = 1.0  # level-0 pixels per tissue-mask pixel


def make_offline_mvtec(
    out_root: str | Path,
    *,
    slides: Sequence[str | Path] = (),
    n_train: int,
    n_test_good: int,
    n_test_defect: int,
    size_px: int = 256,
    seed: int = 0,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    progress: bool = False,
) -> list[Path]:
    """Write MVTec-format categories under `out_root`; return their folders, in `categories` order.

    Args:
        out_root: parent folder; each category goes to `out_root/<category>`, which must not exist.
        slides: whole-slide images (anything OpenSlide opens, or a plain RGB image) for `histology`.
        n_train: normal training images per category.
        n_test_good: normal test images per category.
        n_test_defect: test images per defect type (5 histology types, 4 texture types).
        size_px: side of every image; crops are size_px source pixels (slide level 0), not resized.
        seed: seed of all random choices (crop positions, flips, defects).
        categories: any of "histology", "brick", "grass", "gravel".
        progress: show a tqdm bar per category.

    Raises:
        DataError: an unknown category, histology without slides, or a source too small for
            size_px or with too little tissue for the counts asked.
        SlideError: a slide cannot be opened.
        OutputError: a category folder already exists.
    """
    out_root = Path(out_root)
    for name in categories:
        if name != HISTOLOGY and name not in TEXTURES:
            raise DataError(f"unknown offline category {name!r}; choose from {', '.join(DEFAULT_CATEGORIES)}")
        if (out_root / name).exists():
            raise OutputError(f"{out_root / name} already exists; delete it or choose another output folder")
    if HISTOLOGY in categories and not slides:
        raise DataError(
            "category 'histology' needs slides: pass at least one slide, or leave 'histology' out"
        )
    if min(n_train, n_test_good, n_test_defect) < 1 or size_px < 8:
        raise DataError(
            f"counts must be >= 1 and size_px >= 8, got n_train={n_train}, n_test_good={n_test_good}, "
            f"n_test_defect={n_test_defect}, size_px={size_px}"
        )

    folders = []
    for name in categories:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if name == HISTOLOGY:
            sources = [_slide_source(Path(p)) for p in slides]
            defects = _histology_defects()
        else:
            sources = [_array_source(f"skimage.data.{name}", TEXTURES[name]())]
            foreign = [TEXTURES[other]() for other in TEXTURES if other != name]
            defects = _texture_defects(foreign)
        folders.append(
            _write_category(
                out_root / name,
                sources,
                defects,
                rng,
                n_train=n_train,
                n_test_good=n_test_good,
                n_test_defect=n_test_defect,
                size_px=size_px,
                progress=progress,
            )
        )
    return folders


def read_crops(category_dir: str | Path) -> list[Crop]:
    """The crop records `make_offline_mvtec` wrote to `category_dir/crops.csv`."""
    path = Path(category_dir) / CROPS_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist; it is written by make_offline_mvtec")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        out.append(
            Crop(
                image=row["image"],
                split=row["split"],
                defect_type=row["defect_type"],
                source=row["source"],
                x0=int(row["x0"]),
                y0=int(row["y0"]),
                x1=int(row["x1"]),
                y1=int(row["y1"]),
                flip_x=row["flip_x"] == "True",
                flip_y=row["flip_y"] == "True",
            )
        )
    return out


def split_regions(width: int, height: int) -> tuple[Box, Box]:
    """(train box, test box) of a width x height source: its longer side cut at TRAIN_FRACTION."""
    if width >= height:
        cut = int(round(width * TRAIN_FRACTION))
        return (0, 0, cut, height), (cut, 0, width, height)
    cut = int(round(height * TRAIN_FRACTION))
    return (0, 0, width, cut), (0, cut, width, height)


def _write_category(
    folder: Path,
    sources: list[_Source],
    defects: dict[str, Defect],
    rng: np.random.Generator,
    *,
    n_train: int,
    n_test_good: int,
    n_test_defect: int,
    size_px: int,
    progress: bool,
) -> Path:
    n_test = n_test_good + n_test_defect * len(defects)
    train_spots = _pick_spots(sources, 0, n_train, size_px, rng)
    test_spots = _pick_spots(sources, 1, n_test, size_px, rng)
    jobs = [("train", "good", spot) for spot in train_spots]
    jobs += [("test", "good", spot) for spot in test_spots[:n_test_good]]
    for i, name in enumerate(defects):
        start = n_test_good + i * n_test_defect
        jobs += [("test", name, spot) for spot in test_spots[start : start + n_test_defect]]

    # Written beside the target and renamed at the end, so an interrupted run leaves no half category.
    partial = folder.with_name(f".{folder.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    crops = []
    numbers: dict[tuple[str, str], int] = {}
    for split, defect_type, (source, x, y) in tqdm(jobs, desc=folder.name, disable=not progress):
        flip_x, flip_y = bool(rng.integers(2)), bool(rng.integers(2))
        tile = source.read(x, y, size_px).astype(np.float64)
        tile = tile[:, ::-1] if flip_x else tile
        tile = tile[::-1] if flip_y else tile
        number = numbers[split, defect_type] = numbers.get((split, defect_type), -1) + 1
        image = f"{split}/{defect_type}/{number:03d}.png"
        if defect_type != "good":
            tile, mask = defects[defect_type](tile, rng)
            _save(
                partial / "ground_truth" / defect_type / f"{number:03d}_mask.png", mask.astype(np.uint8) * 255
            )
        _save(partial / image, np.clip(np.rint(tile), 0, 255).astype(np.uint8))
        crops.append(
            Crop(image, split, defect_type, source.name, x, y, x + size_px, y + size_px, flip_x, flip_y)
        )

    with (partial / CROPS_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([field.name for field in fields(Crop)])
        writer.writerows(astuple(c) for c in crops)
    partial.rename(folder)
    log.info("wrote %s: %d train, %d test images from %d source(s)", folder, n_train, n_test, len(sources))
    return folder


def _pick_spots(
    sources: list[_Source], region: int, count: int, size_px: int, rng: np.random.Generator
) -> list[tuple[_Source, int, int]]:
    """`count` distinct crop origins (level-0 px) inside region 0 (train) or 1 (test) of the sources.

    Origins lie on a grid with stride size_px (crops do not overlap); the stride is halved, down
    to 1 px, until enough crops (of enough tissue, for slides) fit. Small sources therefore give
    overlapping crops within a split, never across splits.
    """
    for source in sources:
        box = split_regions(source.width, source.height)[region]
        if box[2] - box[0] < size_px or box[3] - box[1] < size_px:
            raise DataError(
                f"{source.name} ({source.width} x {source.height} px) is too small for {size_px}-px crops in "
                "each half; use a smaller size_px"
            )
    stride = size_px
    while True:
        grids = [_origins(source, region, size_px, stride) for source in sources]
        available = sum(len(g) for g in grids)
        if available >= count or stride == 1:
            break
        stride //= 2
    if available < count:
        split = ("train", "test")[region]
        more = ", or pass more slides" if any(s.tissue is not None for s in sources) else ""
        raise DataError(
            f"only {available} {split} crops of {size_px} px fit the {split} half of "
            f"{', '.join(s.name for s in sources)} ({count} needed); "
            f"ask for fewer images or a smaller size_px{more}"
        )
    which = np.concatenate([np.full(len(g), i) for i, g in enumerate(grids)])
    origins = np.concatenate(grids)
    chosen = rng.choice(available, size=count, replace=False)
    return [(sources[which[i]], int(origins[i, 0]), int(origins[i, 1])) for i in chosen]


def _origins(source: _Source, region: int, size_px: int, stride: int) -> NDArray[np.int64]:
    """(n, 2) crop origins (x, y) on a grid in one region of a source, tissue-only for slides."""
    x0, y0, x1, y1 = split_regions(source.width, source.height)[region]
    xs = np.arange(x0, x1 - size_px + 1, stride)
    ys = np.arange(y0, y1 - size_px + 1, stride)
    if source.tissue is None:
        keep = np.ones((ys.size, xs.size), dtype=bool)
    else:
        # Tissue share of each crop's footprint on the thumbnail, from a summed-area table.
        d = source.downsample
        table = np.pad(source.tissue.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        h, w = source.tissue.shape
        tx0, tx1 = (
            np.minimum(xs / d, w - 1).astype(int),
            np.minimum(np.ceil((xs + size_px) / d), w).astype(int),
        )
        ty0, ty1 = (
            np.minimum(ys / d, h - 1).astype(int),
            np.minimum(np.ceil((ys + size_px) / d), h).astype(int),
        )
        inside = (
            table[np.ix_(ty1, tx1)]
            - table[np.ix_(ty0, tx1)]
            - table[np.ix_(ty1, tx0)]
            + table[np.ix_(ty0, tx0)]
        )
        area = np.outer(ty1 - ty0, tx1 - tx0)
        keep = inside >= MIN_TISSUE_FRACTION * area
    rows, cols = np.nonzero(keep)
    return np.stack([xs[cols], ys[rows]], axis=1).reshape(-1, 2)


def _slide_source(path: Path) -> _Source:
    try:
        slide = openslide.open_slide(str(path))
    except (openslide.OpenSlideError, UnidentifiedImageError, OSError) as exc:
        raise SlideError(
            f"cannot open slide {path} ({exc}); pass a slide OpenSlide reads, or an RGB image"
        ) from None
    width, height = slide.dimensions
    downsample = max(1.0, max(width, height) / _THUMBNAIL_PX)
    thumbnail = slide.get_thumbnail((int(width / downsample), int(height / downsample)))
    tissue = _tissue_mask(np.asarray(thumbnail.convert("RGB")))

    def read(x_l0: int, y_l0: int, size_px: int) -> NDArray[np.uint8]:
        return np.asarray(slide.read_region((x_l0, y_l0), 0, (size_px, size_px)).convert("RGB"))

    # The thumbnail's integer size makes its scale slightly differ from `downsample`: use the true one.
    return _Source(str(path), width, height, read, tissue, width / tissue.shape[1])


def _array_source(name: str, image: NDArray[np.uint8]) -> _Source:
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]

    def read(x: int, y: int, size_px: int) -> NDArray[np.uint8]:
        return rgb[y : y + size_px, x : x + size_px]

    return _Source(name, rgb.shape[1], rgb.shape[0], read)


def _tissue_mask(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Tissue on a brightfield thumbnail: stained pixels are saturated, glass is grey-white.

    The threshold is half Otsu's on saturation (Otsu alone drops pale loose connective tissue),
    closed by one pixel to fill single-pixel gaps.
    """
    value = rgb.max(axis=2).astype(np.float64)
    saturation = (value - rgb.min(axis=2)) / np.maximum(value, 1.0)
    threshold = 0.5 * threshold_otsu(saturation) if np.ptp(saturation) > 0 else 1.0
    return ndimage.binary_closing(saturation > threshold, np.ones((3, 3), dtype=bool))


def _save(path: Path, array: NDArray[np.uint8]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# --- shapes: boolean footprints on an S x S tile ---------------------------------------------------


def _blob(rng: np.random.Generator, side: int, area_fraction: float) -> NDArray[np.bool_]:
    """An irregular, star-shaped blob of about `area_fraction` of the tile, fully inside it."""
    radius = np.sqrt(area_fraction * side * side / np.pi)
    centre = (
        rng.uniform(radius + 1, side - radius - 1, size=2) if side > 2 * radius + 2 else np.full(2, side / 2)
    )
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = sum(rng.uniform(0, 0.15) * np.cos(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    rows = centre[0] + radius * (1 + wobble) * np.sin(angles)
    cols = centre[1] + radius * (1 + wobble) * np.cos(angles)
    mask = np.zeros((side, side), dtype=bool)
    mask[draw.polygon(rows, cols, mask.shape)] = True
    return _at_least_one_pixel(mask, centre)


def _stroke(rng: np.random.Generator, side: int, width_px: float) -> NDArray[np.bool_]:
    """A curved stroke (quadratic Bezier) `width_px` wide, crossing much of the tile."""
    p0, p1, p2 = rng.uniform(0.1 * side, 0.9 * side, size=(3, 2))
    t = np.linspace(0, 1, 8 * side)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    centre_line = np.zeros((side, side), dtype=bool)
    rc = np.clip(np.rint(points).astype(int), 0, side - 1)
    centre_line[rc[:, 0], rc[:, 1]] = True
    return ndimage.distance_transform_edt(~centre_line) <= max(width_px / 2, 0.5)


def _ellipse(rng: np.random.Generator, side: int, radius_fraction: tuple[float, float]) -> NDArray[np.bool_]:
    """A rotated ellipse with radii in `radius_fraction` of the side, its centre inside the tile."""
    radii = np.maximum(rng.uniform(*radius_fraction, size=2) * side, 1.5)
    centre = rng.uniform(0.2 * side, 0.8 * side, size=2)
    mask = np.zeros((side, side), dtype=bool)
    rr, cc = draw.ellipse(
        centre[0], centre[1], radii[0], radii[1], shape=mask.shape, rotation=rng.uniform(0, np.pi)
    )
    mask[rr, cc] = True
    return _at_least_one_pixel(mask, centre)


def _at_least_one_pixel(mask: NDArray[np.bool_], centre: NDArray[np.float64]) -> NDArray[np.bool_]:
    # On tiny tiles a thin polygon can miss every pixel centre; its centre pixel is its footprint then.
    if not mask.any():
        r, c = np.clip(centre.astype(int), 0, mask.shape[0] - 1)
        mask[r, c] = True
    return mask


def _distance_from_centre(mask: NDArray[np.bool_]) -> tuple[NDArray[np.float64], float]:
    """Each pixel's distance to the mask's centroid, and the mask's equivalent radius."""
    rows, cols = np.indices(mask.shape)
    r0, c0 = ndimage.center_of_mass(mask)
    return np.hypot(rows - r0, cols - c0), max(float(np.sqrt(mask.sum() / np.pi)), 1.0)


# --- histology artefacts -------------------------------------------------------------------------


def _histology_defects() -> dict[str, Defect]:
    ihc = skdata.immunohistochemistry().astype(np.float64)
    return {
        "pen_ink": _pen_ink,
        "blur": _blur,
        "fold": _fold,
        "bubble": _bubble,
        "foreign_stain": lambda tile, rng: _foreign_patch(tile, rng, [ihc], (0.05, 0.2)),
    }


def _pen_ink(tile: Tile, rng: np.random.Generator) -> tuple[Tile, NDArray[np.bool_]]:
    side = tile.shape[0]
    mask = _stroke(rng, side, rng.uniform(0.03, 0.08) * side)
    colour = np.array(_PEN_COLOURS[rng.integers(len(_PEN_COLOURS))], dtype=np.float64)
    transmittance = 1 - rng.uniform(0.55, 0.85) * (1 - colour / 255)
    out = tile.copy()
    out[mask] *= transmittance
    return out, mask


def _blur(tile: Tile, rng: np.random.Generator) -> tuple[Tile, NDArray[np.bool_]]:
    side = tile.shape[0]
    mask = _ellipse(rng, side, (0.15, 0.3))
    sigma = max(1.0, rng.uniform(0.012, 0.025) * side)
    out = tile.copy()
    out[mask] = ndimage.gaussian_filter(tile, sigma=(sigma, sigma, 0), mode="reflect")[mask]
    return out, mask


def _fold(tile: Tile, rng: np.random.Generator) -> tuple[Tile, NDArray[np.bool_]]:
    """A band where the section lies doubled: transmittances multiply, so the band darkens."""
    side = tile.shape[0]
    width = max(2.0, rng.uniform(0.08, 0.16) * side)
    angle = rng.uniform(0, np.pi)
    normal = np.array([np.sin(angle), np.cos(angle)])
    rows, cols = np.indices((side, side))
    along_normal = (rows - side / 2) * normal[0] + (cols - side / 2) * normal[1]
    mask = np.abs(along_normal - rng.uniform(-0.25, 0.25) * side) <= width / 2
    shift = np.rint(normal * width).astype(int)
    folded_over = np.roll(tile, shift=tuple(shift), axis=(0, 1))
    out = tile.copy()
    out[mask] = tile[mask] * (folded_over[mask] / 255) * rng.uniform(0.8, 0.9)
    return out, mask


def _bubble(tile: Tile, rng: np.random.Generator) -> tuple[Tile, NDArray[np.bool_]]:
    """A disc with a bright rim; inside, the tissue is magnified towards the centre and washed out."""
    side = tile.shape[0]
    radius = max(3.0, rng.uniform(0.12, 0.25) * side)
    centre = rng.uniform(0.2 * side, 0.8 * side, size=2)
    rows, cols = np.indices((side, side), dtype=np.float64)
    r = np.hypot(rows - centre[0], cols - centre[1])
    mask = r <= radius
    rim = mask & (r > radius - max(1.0, 0.12 * radius))
    # Refraction: a pixel at distance r shows the tissue at r * (0.55 + 0.45 (r/R)^2) from the centre.
    pull = 0.55 + 0.45 * (np.minimum(r, radius) / radius) ** 2
    src = [centre[0] + (rows - centre[0]) * pull, centre[1] + (cols - centre[1]) * pull]
    lens = np.stack(
        [ndimage.map_coordinates(tile[..., c], src, order=1, mode="reflect") for c in range(3)], axis=-1
    )
    out = tile.copy()
    out[mask] = 0.6 * lens[mask] + 0.4 * 245
    out[rim] = 0.15 * tile[rim] + 0.85 * 252
    return out, mask


# --- texture defects -----------------------------------------------------------------------------


def _texture_defects(foreign: list[NDArray[np.uint8]]) -> dict[str, Defect]:
    others = [
        np.repeat(f[..., None], 3, axis=2).astype(np.float64) if f.ndim == 2 else f.astype(np.float64)
        for f in foreign
    ]
    return {
        "scratch": _scratch,
        "hole": _hole,
        "foreign_texture": lambda tile, rng: _foreign_patch(tile, rng, others, (0.04, 0.15)),
        "colour_stain": _colour_stain,
    }


def _scratch(tile: Tile, rng: np.random.Generator) -> tuple[Tile, NDArray[np.bool_]]:
    side = tile.shape[0]
    mask = _stroke(rng, side, rng.uniform(0.006, 0.02) * side)
    value = 235.0 if rng.integers(2) else 20.0
    opacity = 0.85
    out = tile.copy()
    out[mask] = (1 - opacity) * tile[mask] + opacity * value
    return out, mask


def _hole(tile: Tile, rng: np.random.Generator) -> tuple[Tile, NDArray[np.bool_]]:
    """A dark pit, shaded from nearly black at its centre to dim at its edge."""
    mask = _ellipse(rng, tile.shape[0], (0.05, 0.12))
    distance, radius = _distance_from_centre(mask)
    shade = 0.08 + 0.3 * np.clip(distance / (1.5 * radius), 0, 1) ** 2
    out = tile.copy()
    out[mask] = tile[mask] * shade[mask][:, None]
    return out, mask


def _colour_stain(tile: Tile, rng: np.random.Generator) -> tuple[Tile, NDArray[np.bool_]]:
    mask = _blob(rng, tile.shape[0], rng.uniform(0.04, 0.15))
    colour = np.array(_STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))], dtype=np.float64)
    opacity = rng.uniform(0.45, 0.75)
    out = tile.copy()
    out[mask] = (1 - opacity) * tile[mask] + opacity * colour
    return out, mask


def _foreign_patch(
    tile: Tile, rng: np.random.Generator, pool: list[NDArray[np.float64]], area_fraction: tuple[float, float]
) -> tuple[Tile, NDArray[np.bool_]]:
    """A blob of material from another image (never the tile's own source)."""
    side = tile.shape[0]
    mask = _blob(rng, side, rng.uniform(*area_fraction))
    other = pool[rng.integers(len(pool))]
    if min(other.shape[:2]) < side:
        zoom = side / min(other.shape[:2])
        other = ndimage.zoom(other, (zoom, zoom, 1), order=1)
    y = rng.integers(other.shape[0] - side + 1)
    x = rng.integers(other.shape[1] - side + 1)
    out = tile.copy()
    out[mask] = other[y : y + side, x : x + side][mask]
    return out, mask
