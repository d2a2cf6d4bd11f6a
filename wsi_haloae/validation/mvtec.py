"""The MVTec-AD folder layout read into a plain table of samples, and its images and masks loaded.

Layout of one category (MVTec AD, and what `synth_mvtec` writes):

    ROOT/CATEGORY/train/good/000.png                     normal training images
    ROOT/CATEGORY/test/good/000.png                      normal test images (no mask)
    ROOT/CATEGORY/test/<defect>/000.png                  defective test images
    ROOT/CATEGORY/ground_truth/<defect>/000_mask.png     their masks (non-zero = defect)

Masks named like their image (`ground_truth/<defect>/000.png`, as in Intel's hazelnut toy set) are
accepted too, and images and masks may be PNG, JPEG, BMP or TIFF, mixed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

log = logging.getLogger(__name__)

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = (
    "bottle",
    "cable",
    "capsule",
    "hazelnut",
    "metal_nut",
    "pill",
    "screw",
    "toothbrush",
    "transistor",
    "zipper",
)
CATEGORIES = TEXTURES + OBJECTS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"
_MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class MvtecSample:
    """One image of a category: `label` 1 = defective; `mask_path` is None for good images."""

    split: Literal["train", "test"]
    defect_type: str
    image_path: Path
    mask_path: Path | None
    label: int


@dataclass(frozen=True)
class MvtecIndex:
    """Every sample of one category, train first, then test by defect type, each sorted by file name."""

    root: Path
    category: str
    samples: tuple[MvtecSample, ...]

    @property
    def train(self) -> tuple[MvtecSample, ...]:
        return tuple(s for s in self.samples if s.split == "train")

    @property
    def test(self) -> tuple[MvtecSample, ...]:
        return tuple(s for s in self.samples if s.split == "test")

    @property
    def defect_types(self) -> tuple[str, ...]:
        """Test defect types other than "good", sorted."""
        return tuple(sorted({s.defect_type for s in self.test if s.label == 1}))

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of images per (split, defect type), e.g. {("train", "good"): 28, ...}."""
        out: dict[tuple[str, str], int] = {}
        for s in self.samples:
            out[s.split, s.defect_type] = out.get((s.split, s.defect_type), 0) + 1
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __str__(self) -> str:
        parts = ", ".join(f"{split}/{defect} {n}" for (split, defect), n in self.counts().items())
        return f"MvtecIndex({self.category!r} at {self.root}: {parts})"


def mvtec_index(root: str | Path, category: str) -> MvtecIndex:
    """Index `root/category` (the MVTec-AD layout above), pairing each defective image with its mask.

    Raises:
        DataError: the category folder is missing (the message lists the categories found under
            `root`), `train/good` or `test` is missing or holds no image, `train` holds a folder
            other than `good`, a defect folder has no `ground_truth` folder, or a defective image
            has no mask named `<stem>_mask.<ext>` or `<stem>.<ext>`.
    """
    root = Path(root)
    folder = root / category
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir()) if root.is_dir() else []
        where = f"categories there: {', '.join(found)}" if found else "no MVTec category folder there"
        raise DataError(
            f"MVTec category folder {folder} does not exist ({where}); "
            "check the data root and the category name"
        )

    train_dir = folder / "train"
    if train_dir.is_dir():
        others = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and p.name != GOOD)
        if others:
            raise DataError(
                f"{train_dir} holds {', '.join(others)}: MVTec training images are normal only; "
                f"move them under {folder / 'test'} or remove them"
            )
    train_images = _images_in(train_dir / GOOD)
    if not train_images:
        raise DataError(
            f"no training image in {train_dir / GOOD}: put the normal training images (PNG/JPEG) there"
        )
    samples = [MvtecSample("train", GOOD, p, None, 0) for p in train_images]

    test_dir = folder / "test"
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []
    for defect_dir in defect_dirs:
        images = _images_in(defect_dir)
        if not images:
            log.warning("%s holds no image; skipped", defect_dir)
            continue
        if defect_dir.name == GOOD:
            samples += [MvtecSample("test", GOOD, p, None, 0) for p in images]
        else:
            masks = _pair_masks(images, folder / "ground_truth" / defect_dir.name)
            pairs = zip(images, masks, strict=True)
            samples += [MvtecSample("test", defect_dir.name, p, m, 1) for p, m in pairs]
    if not any(s.split == "test" for s in samples):
        raise DataError(
            f"no test image under {test_dir}: put test images in test/good and test/<defect type>"
        )
    return MvtecIndex(root=root, category=category, samples=tuple(samples))


def load_image(path: str | Path, size_px: int | None = None) -> NDArray[np.uint8]:
    """An image as (H, W, 3) uint8 RGB, grey replicated to three channels, alpha dropped.

    With `size_px`, resized to (size_px, size_px, 3) with antialiasing (PIL's bilinear filter
    widened to the scale factor when shrinking, as torchvision's `antialias=True`); the aspect
    ratio is not kept, as in MVTec AD practice.

    Raises:
        DataError: the file is missing or not an image.
    """
    im = _read(path).convert("RGB")
    if size_px is not None and im.size != (size_px, size_px):
        im = im.resize((size_px, size_px), Image.Resampling.BILINEAR)
    return np.array(im, dtype=np.uint8)


def load_mask(path: str | Path, size_px: int | None = None) -> NDArray[np.bool_]:
    """A ground-truth mask as (H, W) bool (True where any channel is non-zero), at full size or
    resized to (size_px, size_px) by nearest neighbour, so it stays binary.

    Raises:
        DataError: the file is missing or not an image.
    """
    a = np.asarray(_read(path))
    binary = (a != 0).any(axis=-1) if a.ndim == 3 else a != 0
    if size_px is None or binary.shape == (size_px, size_px):
        return binary
    small = Image.fromarray(binary.astype(np.uint8) * 255).resize(
        (size_px, size_px), Image.Resampling.NEAREST
    )
    return np.asarray(small) != 0


def _read(path: str | Path) -> Image.Image:
    """The decoded image; decoding happens here so a truncated file fails with a DataError too."""
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist; re-index the dataset") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); replace or remove the file") from None


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _pair_masks(images: list[Path], mask_dir: Path) -> list[Path]:
    """The mask of each image: `<stem>_mask.<ext>` (MVTec) or else `<stem>.<ext>`, any image suffix."""
    if not mask_dir.is_dir():
        raise DataError(
            f"no ground-truth folder {mask_dir} for the defective images in {images[0].parent}; "
            "MVTec needs one mask per defective image there"
        )
    by_stem: dict[str, Path] = {}
    for mask in _images_in(mask_dir):
        by_stem.setdefault(mask.stem, mask)
    masks = []
    for image in images:
        mask = by_stem.pop(image.stem + _MASK_SUFFIX, None) or by_stem.pop(image.stem, None)
        if mask is None:
            raise DataError(
                f"no mask for {image} in {mask_dir}: mask files must follow the same naming as their "
                f"images, '{image.stem}_mask.png' or '{image.stem}.png' (any image suffix)"
            )
        masks.append(mask)
    if by_stem:
        log.warning(
            "%d masks in %s match no image (e.g. %s); ignored",
            len(by_stem),
            mask_dir,
            next(iter(by_stem.values())).name,
        )
    return masks
