"""The resolution a model learns at, recorded so that `heatmap` can score at the same one.

Tiles on disk have a pixel size (µm/px, from the `tile` manifests, or declared with
`train --tile-mpp` for a plain image folder) and a side in px; the model reads them resized to its
`image_size_px`. The model's input therefore has an effective pixel size of

    model_mpp_um = tile_mpp_um * tile_size_px / input_size_px

(256-px tiles at 0.5 µm/px fed to a 64-px model: 2 µm/px). `TrainingResolution` holds these
numbers; `checkpoint.save_trained` stores it with the model.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .data import MANIFEST_NAME

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
# Tiles of one training set whose µm/px differ by more than this are not one resolution.
MPP_RTOL = 0.02


@dataclass(frozen=True)
class TrainingResolution:
    """How the training tiles were sampled, and so the model's input resolution.

    `tile_mpp_um`: µm/px of the tiles on disk, None when unknown (stated by `source`);
    `tile_size_px`: their side on disk; `input_size_px`: the side the model reads them at.
    """

    tile_mpp_um: float | None
    source: str
    tile_size_px: int
    input_size_px: int

    @property
    def model_mpp_um(self) -> float | None:
        """µm per pixel of the model's input, None when the tiles' µm/px is unknown."""
        if self.tile_mpp_um is None:
            return None
        return self.tile_mpp_um * self.tile_size_px / self.input_size_px

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"model_mpp_um": self.model_mpp_um}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainingResolution:
        return cls(
            tile_mpp_um=None if raw.get("tile_mpp_um") is None else float(raw["tile_mpp_um"]),
            source=str(raw["source"]),
            tile_size_px=int(raw["tile_size_px"]),
            input_size_px=int(raw["input_size_px"]),
        )

    def __str__(self) -> str:
        if self.tile_mpp_um is None:
            return f"{self.tile_size_px}-px tiles of unknown µm/px ({self.source}) read at {self.input_size_px} px"
        return (
            f"{self.model_mpp_um:.4g} µm/px ({self.tile_size_px}-px tiles at {self.tile_mpp_um:.4g} µm/px, "
            f"{self.source}, read at {self.input_size_px} px)"
        )


def training_resolution(
    source: str | Path, paths: list[Path], input_size_px: int, tile_mpp_um: float | str | None = None
) -> TrainingResolution:
    """The resolution of the training tiles `paths` found in `source` (see `data.find_tiles`).

    Tile manifests give µm/px and tile size; mixed µm/px or sizes are a DataError, and so is a
    `tile_mpp_um` (--tile-mpp) that contradicts them. A plain image folder takes `tile_mpp_um`:
    a number, or "unknown" to record that it is not known; None there is recorded as unknown
    with a warning (the CLI asks for one of the two). An MVTec-AD category is unknown: its
    photographs have no µm/px.
    """
    source = Path(source)
    declared = _declared(tile_mpp_um)
    manifests = _manifests(source)
    if manifests:
        mpp, size = _from_manifests(manifests)
        if declared is not None and declared != UNKNOWN and (mpp is None or not _close(mpp, declared)):
            raise DataError(
                f"--tile-mpp {declared:g} contradicts the tile manifests under {source} "
                f"({'no µm/px' if mpp is None else f'{mpp:g} µm/px'}); drop --tile-mpp"
            )
        if mpp is None:
            found = "tiles cut by --level from slides without mpp"
            if isinstance(declared, float):
                mpp = declared
            return TrainingResolution(mpp, "--tile-mpp" if mpp is not None else found, size, input_size_px)
        return TrainingResolution(mpp, "tile manifests", size, input_size_px)
    size = _image_size(paths, source)
    if (source / "train" / "good").is_dir() and declared is None:
        return TrainingResolution(None, "MVTec-AD category (no µm/px)", size, input_size_px)
    if declared is None:
        log.warning(
            "%s has no tile manifests, so the µm/px of its tiles is unknown and `heatmap` will need --mpp; "
            "pass --tile-mpp to record it",
            source,
        )
        return TrainingResolution(None, "plain image folder, not declared", size, input_size_px)
    if declared == UNKNOWN:
        return TrainingResolution(None, "declared unknown (--tile-mpp unknown)", size, input_size_px)
    return TrainingResolution(float(declared), "--tile-mpp", size, input_size_px)


def has_manifests(source: str | Path) -> bool:
    """Whether `source` is a manifest CSV or a folder holding `tile` manifests."""
    return bool(_manifests(Path(source)))


def _declared(tile_mpp_um: float | str | None) -> float | str | None:
    if tile_mpp_um is None:
        return None
    if isinstance(tile_mpp_um, str):
        if tile_mpp_um.strip().lower() == UNKNOWN:
            return UNKNOWN
        try:
            tile_mpp_um = float(tile_mpp_um)
        except ValueError:
            raise DataError(
                f"--tile-mpp {tile_mpp_um!r} is neither a µm/px nor 'unknown'; e.g. --tile-mpp 0.5"
            ) from None
    if not (math.isfinite(tile_mpp_um) and 0.05 <= tile_mpp_um <= 200.0):
        raise DataError(
            f"--tile-mpp {tile_mpp_um} is not a plausible tile µm/px; give the µm per tile pixel, e.g. 0.5"
        )
    return float(tile_mpp_um)


def _manifests(source: Path) -> list[Path]:
    if source.is_file():
        return [source] if source.suffix.lower() == ".csv" else []
    if not source.is_dir() or (source / "train" / "good").is_dir():
        return []
    return sorted(source.rglob(MANIFEST_NAME))


def _from_manifests(manifests: list[Path]) -> tuple[float | None, int]:
    """The one (µm/px or None, tile size) of the manifests' rows; DataError when they differ."""
    seen: dict[tuple[str, str], Path] = {}
    for manifest in manifests:
        try:
            with manifest.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    seen.setdefault((row.get("mpp_um") or "", row.get("tile_size_px") or ""), manifest)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(
                f"manifest {manifest} cannot be read ({exc}); re-create it with `wsi-haloae tile`"
            )
    if not seen:
        raise DataError(f"the manifests {manifests[0]}... list no tiles; tile slides with `wsi-haloae tile`")
    values = [(float(mpp) if mpp else None, int(size) if size else 0) for mpp, size in seen]
    mpps = {mpp for mpp, _ in values}
    sizes = {size for _, size in values}
    (first_mpp, first_size), first_manifest = values[0], next(iter(seen.values()))
    for (mpp, size), manifest in zip(values, seen.values()):
        if (mpp is None) != (first_mpp is None) or (
            mpp is not None and first_mpp is not None and not _close(mpp, first_mpp)
        ):
            raise DataError(
                f"the training tiles mix resolutions: {_mpp(first_mpp)} in {first_manifest}, {_mpp(mpp)} in "
                f"{manifest}; a model learns one resolution: re-tile every slide with the same --mpp"
            )
        if size != first_size:
            raise DataError(
                f"the training tiles mix sizes: {first_size} px in {first_manifest}, {size} px in {manifest}; "
                "re-tile every slide with the same --tile-size"
            )
    if 0 in sizes:
        raise DataError(f"manifest {first_manifest} has no tile_size_px; re-create it with `wsi-haloae tile`")
    mpp_values = [m for m in mpps if m is not None]
    return (sum(mpp_values) / len(mpp_values) if mpp_values else None), first_size


def _image_size(paths: list[Path], source: Path) -> int:
    """The side of the (square) images `paths`, read from their headers; DataError if they differ."""
    sizes: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.setdefault(image.size, path)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"tile {path} cannot be read as an image ({exc}); remove or replace it") from None
        if len(sizes) > 1:
            (a, path_a), (b, path_b) = list(sizes.items())[:2]
            raise DataError(
                f"the training images in {source} differ in size ({a[0]}x{a[1]} px {path_a}, "
                f"{b[0]}x{b[1]} px {path_b}), so their resolution is not one; resize them to one size"
            )
    (width, height), path = next(iter(sizes.items()))
    if width != height:
        log.warning(
            "%s: training images are %dx%d px, not square; they are resized to squares", source, width, height
        )
    return max(width, height)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=MPP_RTOL)


def _mpp(value: float | None) -> str:
    return "no µm/px" if value is None else f"{value:g} µm/px"
