from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from wsi_haloae.errors import ConfigError, DataError
from wsi_haloae.training.data import (
    MANIFEST_NAME,
    EpochSampler,
    TileDataset,
    TripletDataset,
    find_tiles,
    read_tile,
    seeded_generator,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def _write_image(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> np.ndarray:
    rng = np.random.default_rng(seed)
    channels = {"RGB": (3,), "L": (), "RGBA": (4,)}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], *channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)
    return pixels


@pytest.fixture
def tile_folder(tmp_path: Path) -> Path:
    """Seven tiles (PNG and JPEG, nested, grey and RGBA among them) and two files that are not tiles."""
    root = tmp_path / "tiles"
    for i in range(4):
        _write_image(root / "slide_a" / f"t{i}.png", (32, 32), seed=i)
    _write_image(root / "slide_b" / "t0.JPG", (40, 30), seed=10)
    _write_image(root / "slide_b" / "deep" / "grey.png", (32, 32), seed=11, mode="L")
    _write_image(root / "slide_b" / "alpha.png", (32, 32), seed=12, mode="RGBA")
    (root / "notes.txt").write_text("not a tile")
    (root / "slide_a" / "thumb.tif").write_bytes(b"II*\x00")
    return root


def test_folder_is_searched_recursively_for_png_and_jpeg(tile_folder: Path) -> None:
    paths = find_tiles(tile_folder)
    assert [p.relative_to(tile_folder).as_posix() for p in paths] == [
        "slide_a/t0.png",
        "slide_a/t1.png",
        "slide_a/t2.png",
        "slide_a/t3.png",
        "slide_b/alpha.png",
        "slide_b/deep/grey.png",
        "slide_b/t0.JPG",
    ]


def test_manifest_paths_are_relative_to_the_manifest(tile_folder: Path) -> None:
    from wsi_haloae.slides import tiles

    assert MANIFEST_NAME == tiles.MANIFEST_NAME and "path" in tiles.MANIFEST_COLUMNS  # what `tile` writes
    manifest = tile_folder / "slide_a" / "manifest.csv"
    manifest.write_text("slide,path,x,y\na.svs,t2.png,0,0\na.svs,t0.png,256,0\n")
    assert find_tiles(manifest) == [tile_folder / "slide_a" / "t2.png", tile_folder / "slide_a" / "t0.png"]
    # A folder with manifests uses them (only the tiles they list), at any depth.
    (tile_folder / "slide_b" / "manifest.csv").write_text("path\ndeep/grey.png\n")
    assert len(find_tiles(tile_folder)) == 3


def test_mvtec_category_uses_train_good(tmp_path: Path) -> None:
    root = tmp_path / "bottle"
    for i in range(5):
        _write_image(root / "train" / "good" / f"{i:03d}.png", (16, 16), seed=i)
    for split, count in (("test/good", 3), ("test/broken", 2), ("ground_truth/broken", 2)):
        for i in range(count):
            _write_image(root / split / f"{i:03d}.png", (16, 16), seed=20 + i)
    paths = find_tiles(root)
    assert len(paths) == 5 and all(p.parent == root / "train" / "good" for p in paths)


def test_hazelnut_toy_category(shared_data: Path) -> None:
    paths = find_tiles(shared_data / "hazelnut_toy")
    assert len(paths) == 28
    tile = read_tile(paths[0], 64)
    assert tile.shape == (3, 64, 64) and tile.dtype == torch.float32
    assert 0.0 <= tile.min() and tile.max() <= 1.0 and tile.std() > 0.01


@pytest.mark.parametrize(
    "layout, words",
    [
        ("missing", "does not exist"),
        ("empty", "no PNG/JPEG tiles"),
        ("no_path_column", "has no 'path' column"),
        ("missing_tile", "lists 1 missing tile(s)"),
        ("not_csv", "not a manifest CSV"),
    ],
)
def test_bad_sources_raise_one_line(tmp_path: Path, layout: str, words: str) -> None:
    source = tmp_path / "src"
    if layout == "empty":
        (source / "sub").mkdir(parents=True)
        (source / "sub" / "readme.txt").write_text("x")
    elif layout == "no_path_column":
        source.mkdir()
        _write_image(source / "a.png", (8, 8), seed=0)
        source = source / "manifest.csv"
        source.write_text("file\na.png\n")
    elif layout == "missing_tile":
        source.mkdir()
        _write_image(source / "a.png", (8, 8), seed=0)
        (source / "manifest.csv").write_text("path\na.png\nb.png\n")
    elif layout == "not_csv":
        source = tmp_path / "a.png"
        _write_image(source, (8, 8), seed=0)
    with pytest.raises(DataError) as info:
        find_tiles(source)
    message = str(info.value)
    assert words in message and "\n" not in message and str(tmp_path) in message


def test_read_tile_keeps_pixels_and_makes_rgb(tile_folder: Path) -> None:
    pixels = np.array(Image.open(tile_folder / "slide_a" / "t1.png"))
    tile = read_tile(tile_folder / "slide_a" / "t1.png", 32)
    assert torch.equal(tile, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    grey = read_tile(tile_folder / "slide_b" / "deep" / "grey.png", 32)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    rgba = read_tile(tile_folder / "slide_b" / "alpha.png", 32)
    assert rgba.shape == (3, 32, 32)
    resized = read_tile(tile_folder / "slide_b" / "t0.JPG", 16)  # 40 x 30 -> 16 x 16
    assert resized.shape == (3, 16, 16)


def test_unreadable_tile_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="cannot be read as an image"):
        read_tile(bad, 16)


def _triplets(tile_folder: Path, **kwargs) -> TripletDataset:
    options = {"samples_per_epoch": 17, "seed": 3, "augment": "jitter", "colour_jitter": 0.1}
    options.update(kwargs)
    return TripletDataset(TileDataset(find_tiles(tile_folder), 32), **options)


def test_each_epoch_draws_every_tile_equally_often(tile_folder: Path) -> None:
    dataset = _triplets(tile_folder)  # 17 samples from 7 tiles: each tile 2 or 3 times
    first, second = dataset.tile_order(0), dataset.tile_order(1)
    counts = torch.bincount(first, minlength=7)
    assert counts.sum() == 17 and counts.min() == 2 and counts.max() == 3
    assert sorted(first[:7].tolist()) == list(range(7))  # one full permutation before repeating
    assert not torch.equal(first, second)


def test_samples_depend_only_on_seed_epoch_and_index(tile_folder: Path) -> None:
    dataset = _triplets(tile_folder)
    images, labels = dataset[(1, 5)]
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [0, 1, 1]
    assert 0.0 <= images.min() and images.max() <= 1.0
    fresh = _triplets(tile_folder)
    fresh[(0, 2)], fresh[(2, 9)]  # another access order, other epochs cached meanwhile
    again, _ = fresh[(1, 5)]
    assert torch.equal(images, again)
    other_seed, _ = _triplets(tile_folder, seed=4)[(1, 5)]
    other_index, _ = dataset[(1, 6)]
    assert not torch.equal(images, other_seed) and not torch.equal(images, other_index)
    # The damaged copies differ from the original in a part of the image only. (A scar on a 32 px
    # tile is 1-2 px wide and may land where it came from, so it is checked over ten samples.)
    samples = torch.stack([dataset[(0, i)][0] for i in range(10)])
    changed = (samples[:, 1:] != samples[:, :1]).any(dim=2).float().mean(dim=(2, 3))  # (10, 2)
    assert (changed < 0.5).all()
    assert (changed[:, 0] > 0.01).all() and (changed[:, 1] > 0).sum() >= 8


def test_augmentations(tile_folder: Path) -> None:
    plain = _triplets(tile_folder, augment="none")
    tile = plain.tiles[int(plain.tile_order(0)[4])]
    images, _ = plain[(0, 4)]
    assert torch.equal(images[0], tile)
    jittered, _ = _triplets(tile_folder, augment="jitter")[(0, 4)]
    hed, _ = _triplets(tile_folder, augment="hed", hed_sigma=0.05)[(0, 4)]
    assert not torch.equal(jittered[0], tile) and not torch.equal(hed[0], tile)
    assert not torch.equal(jittered[0], hed[0])


def test_loader_batches_do_not_depend_on_workers(tile_folder: Path) -> None:
    dataset = _triplets(tile_folder, samples_per_epoch=8)
    batches = {}
    for workers in (0, 2):
        sampler = EpochSampler(8)
        sampler.epoch = 1
        loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=workers)
        batches[workers] = [images for images, _ in loader]
    assert [b.shape[0] for b in batches[0]] == [3, 3, 2]
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2]))
    assert torch.equal(batches[0][0][1], dataset[(1, 1)][0])


def test_seeded_generator() -> None:
    draw = lambda *keys: torch.rand(3, generator=seeded_generator(0, *keys))
    assert torch.equal(draw(1, 2), draw(1, 2))
    assert not torch.equal(draw(1, 2), draw(2, 1)) and not torch.equal(draw(1, 2), draw(1, 2, 0))
    with pytest.raises(ConfigError, match="seed is -1"):
        seeded_generator(-1, 0)
