"""Training tiles: where they come from, how they are read, and the Cut&Paste triplets drawn from them.

Three layouts are accepted as a tile source (`find_tiles`):
- a tile manifest CSV written by `wsi-haloae tile` (its `path` column is relative to the CSV's
  folder), or a folder holding such manifests (`manifest.csv`, at any depth: all of them are read);
- an MVTec-AD category folder (its `train/good` images);
- any folder of PNG/JPEG images, searched recursively.

Every random choice of a training sample (which tile, its colour augmentation, its Cut&Paste damage)
comes from a `torch.Generator` seeded by `(seed, epoch, sample index)` alone. Samples therefore do not
depend on the number of DataLoader workers, on the order they are drawn in, or on whether the run
was resumed, which is what makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError, DataError
from .augment import hed_jitter
from .cutpaste import make_triplet

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST_NAME = "manifest.csv"  # as `slides.tiles.write_tiles` names it (a test checks they agree)

# Tags that keep the tile-order stream and the per-sample stream of one seed independent.
_ORDER_STREAM = 0
_SAMPLE_STREAM = 1


def find_tiles(source: str | Path) -> list[Path]:
    """The training images of a manifest CSV, a folder of manifests, an MVTec category or an image folder.

    Returns the image paths sorted (manifest rows keep their order). Raises DataError (one line
    naming the path and the fix) when the source is missing, empty, or a manifest is malformed or
    lists files that do not exist.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(
            f"tile source {source} does not exist; pass a tile folder, a manifest CSV or an MVTec category"
        )
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise DataError(f"tile source {source} is a file but not a manifest CSV; pass its folder instead")
        return _read_manifest(source)
    if (source / "train" / "good").is_dir():
        paths = _images_under(source / "train" / "good")
        where = f"{source / 'train' / 'good'} (MVTec-AD category)"
    else:
        manifests = sorted(source.rglob(MANIFEST_NAME))
        if manifests:
            paths = [p for m in manifests for p in _read_manifest(m)]
            log.info("reading %d tile manifest(s) under %s", len(manifests), source)
            where = f"the manifests under {source}"
        else:
            paths = _images_under(source)
            where = str(source)
    if not paths:
        raise DataError(
            f"no PNG/JPEG tiles in {where}; tile slides first with `wsi-haloae tile` or pass another folder"
        )
    return paths


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_manifest(manifest: Path) -> list[Path]:
    try:
        with manifest.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise DataError(
                    f"manifest {manifest} has no 'path' column; re-create it with `wsi-haloae tile`"
                )
            paths = [manifest.parent / row["path"] for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"manifest {manifest} cannot be read ({exc}); re-create it with `wsi-haloae tile`"
        ) from None
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"manifest {manifest} lists {len(missing)} missing tile(s), e.g. {missing[0]}; "
            "re-run `wsi-haloae tile` into that folder"
        )
    return paths


def read_tile(path: Path, size_px: int) -> Tensor:
    """One image as a float RGB tensor (3, size_px, size_px) in [0, 1].

    Grey, palette and RGBA images become RGB (grey is replicated, alpha dropped); the image is
    resized with PIL's antialiased bilinear filter when its size differs. Unreadable → DataError.
    """
    try:
        with Image.open(path) as image:
            # JPEG decodes straight at a reduced scale (1/2 .. 1/8) when the target is much smaller.
            image.draft(None, (size_px, size_px))
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(f"tile {path} cannot be read as an image ({exc}); remove or replace it") from None
    if rgb.size != (size_px, size_px):
        rgb = rgb.resize((size_px, size_px), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(rgb).copy())  # (S, S, 3) uint8
    return pixels.permute(2, 0, 1).float().div_(255.0)


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator whose state depends only on `seed` and `keys` (non-negative integers).

    numpy's SeedSequence mixes the integers, so neighbouring keys give unrelated streams. It pads
    its input with zeros, so the number of keys goes in too: (1, 2) and (1, 2, 0) must differ.
    """
    if seed < 0:
        raise ConfigError(f"seed is {seed}; use a seed >= 0")
    state = np.random.SeedSequence([seed, len(keys), *keys]).generate_state(2, np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return generator


class TileDataset(Dataset[Tensor]):
    """The tiles as they are (no augmentation): item i is `read_tile(paths[i], size_px)`, (3, S, S)."""

    def __init__(self, paths: list[Path], size_px: int) -> None:
        self.paths = paths
        self.size_px = size_px

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return read_tile(self.paths[index], self.size_px)


class TripletDataset(Dataset[tuple[Tensor, Tensor]]):
    """Cut&Paste training samples, addressed by `(epoch, index)` with 0 <= index < samples_per_epoch.

    Each epoch draws `samples_per_epoch` tiles from the training set, repeated as often as needed,
    each repetition in a fresh random order (so every tile is seen equally often). A sample is the
    drawn tile, augmented (`"jitter"`: brightness/contrast/saturation/hue ± `colour_jitter`,
    `"hed"`: HED stain perturbation of σ `hed_sigma`, `"none"`), then given its two Cut&Paste copies
    (`make_triplet`): images (3, 3, S, S) = [original, Cut&Paste-normal, Cut&Paste-scar] in [0, 1],
    labels (3,) = [0, 1, 1].
    Use with `EpochSampler`.
    """

    def __init__(
        self,
        tiles: TileDataset,
        *,
        samples_per_epoch: int,
        seed: int,
        augment: Literal["jitter", "hed", "none"] = "jitter",
        colour_jitter: float = 0.1,
        hed_sigma: float = 0.03,
    ) -> None:
        if samples_per_epoch < 1:
            raise ConfigError(f"samples_per_epoch is {samples_per_epoch}; it must be at least 1")
        self.tiles = tiles
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.augment = augment
        self.colour_jitter = colour_jitter
        self.hed_sigma = hed_sigma
        self._order: tuple[int, Tensor] | None = None  # (epoch, tile indices), cached per process

    def __len__(self) -> int:
        return self.samples_per_epoch

    def tile_order(self, epoch: int) -> Tensor:
        """(samples_per_epoch,) int64 tile indices drawn in `epoch`."""
        if self._order is None or self._order[0] != epoch:
            generator = seeded_generator(self.seed, _ORDER_STREAM, epoch)
            n = len(self.tiles)
            repeats = -(-self.samples_per_epoch // n)
            order = torch.cat([torch.randperm(n, generator=generator) for _ in range(repeats)])
            self._order = (epoch, order[: self.samples_per_epoch])
        return self._order[1]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, index = key
        tile = self.tiles[int(self.tile_order(epoch)[index])]
        generator = seeded_generator(self.seed, _SAMPLE_STREAM, epoch, index)
        if self.augment == "jitter":  # make_triplet jitters the original before damaging it
            return make_triplet(tile, generator, jitter=self.colour_jitter)
        if self.augment == "hed":
            tile = hed_jitter(tile, self.hed_sigma, generator)
        return make_triplet(tile, generator, jitter=0.0)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields the keys `(epoch, 0) .. (epoch, samples_per_epoch - 1)` of the current `epoch`.

    It lives in the main process, so setting `epoch` before iterating a DataLoader reaches
    persistent workers too (they receive the keys, not the sampler).
    """

    def __init__(self, samples_per_epoch: int) -> None:
        self.samples_per_epoch = samples_per_epoch
        self.epoch = 0

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in range(self.samples_per_epoch)])
