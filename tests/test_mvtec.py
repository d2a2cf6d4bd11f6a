"""The MVTec-AD reader on trees built here (both mask namings, broken layouts) and on hazelnut_toy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_haloae.errors import DataError
from wsi_haloae.validation.mvtec import CATEGORIES, OBJECTS, TEXTURES, load_image, load_mask, mvtec_index

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def hazelnut_root() -> Path:
    if not (SHARED_DATA / "hazelnut_toy").is_dir():
        pytest.skip(f"{SHARED_DATA / 'hazelnut_toy'} is absent")
    return SHARED_DATA


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _tree(root: Path, *, mask_naming: str = "mvtec", image_suffix: str = ".png") -> Path:
    """A category 'toy': train/good 3, test/good 2, test/crack 2, test/stain 1, masks 4x4 squares."""
    category = root / "toy"
    rgb = np.full((16, 16, 3), 120, dtype=np.uint8)
    for i in range(3):
        _write(category / "train" / "good" / f"{i:03d}{image_suffix}", rgb)
    for i in range(2):
        _write(category / "test" / "good" / f"{i:03d}{image_suffix}", rgb)
    for defect, n in (("crack", 2), ("stain", 1)):
        for i in range(n):
            _write(category / "test" / defect / f"{i:03d}{image_suffix}", rgb)
            mask = np.zeros((16, 16), dtype=np.uint8)
            mask[4 * i : 4 * i + 4, 2:6] = 255
            name = f"{i:03d}_mask.png" if mask_naming == "mvtec" else f"{i:03d}.png"
            _write(category / "ground_truth" / defect / name, mask)
    return category


@pytest.mark.parametrize(("mask_naming", "image_suffix"), [("mvtec", ".png"), ("same_name", ".jpg")])
def test_index_of_a_built_tree(tmp_path: Path, mask_naming: str, image_suffix: str) -> None:
    _tree(tmp_path, mask_naming=mask_naming, image_suffix=image_suffix)
    index = mvtec_index(tmp_path, "toy")
    assert index.counts() == {
        ("train", "good"): 3,
        ("test", "crack"): 2,
        ("test", "good"): 2,
        ("test", "stain"): 1,
    }
    assert len(index) == 8 and len(index.train) == 3 and len(index.test) == 5
    assert index.defect_types == ("crack", "stain")
    for sample in index.samples:
        assert sample.image_path.suffix == image_suffix
        assert sample.label == (sample.defect_type != "good")
        if sample.label:
            assert sample.mask_path.parent.name == sample.defect_type
            assert sample.mask_path.name.startswith(sample.image_path.stem)
        else:
            assert sample.mask_path is None
    crack_1 = next(s for s in index.test if s.defect_type == "crack" and s.image_path.stem == "001")
    mask = load_mask(crack_1.mask_path)
    assert mask.shape == (16, 16) and mask.sum() == 16 and mask[4:8, 2:6].all()
    assert "train/good 3" in str(index)


def test_index_of_hazelnut_toy(hazelnut_root: Path) -> None:
    index = mvtec_index(hazelnut_root, "hazelnut_toy")
    assert index.counts() == {("train", "good"): 28, ("test", "colour"): 17, ("test", "good"): 6}
    defective = [s for s in index.test if s.label == 1]
    assert all(s.mask_path.stem == s.image_path.stem for s in defective)
    assert {s.image_path.suffix for s in index.samples} == {".jpg"}
    assert {s.mask_path.suffix for s in defective} == {".png"}
    first = load_mask(defective[0].mask_path)
    assert first.shape == (512, 512) and 0 < first.sum() < first.size
    odd = next(s for s in index.train if s.image_path.name == "01.jpg")  # the one 512 x 522 image
    assert load_image(odd.image_path).shape == (522, 512, 3)
    assert load_image(odd.image_path, 256).shape == (256, 256, 3)


def _remove(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("unknown category", r"does not exist \(categories there: toy\)"),
        ("empty train", "no training image in .*train/good"),
        ("defect in train", "holds crack: MVTec training images are normal only"),
        ("no test", "no test image under"),
        ("no ground_truth", "no ground-truth folder .*ground_truth/stain"),
        ("missing mask", "no mask for .*crack/001.png .* '001_mask.png' or '001.png'"),
        ("misnamed mask", "mask files must follow the same naming"),
    ],
)
def test_bad_layouts_are_data_errors(tmp_path: Path, breakage: str, message: str) -> None:
    category = _tree(tmp_path)
    name = "toy"
    if breakage == "unknown category":
        name = "carpet"
    elif breakage == "empty train":
        for p in (category / "train" / "good").iterdir():
            p.unlink()
    elif breakage == "defect in train":
        (category / "train" / "crack").mkdir()
    elif breakage == "no test":
        _remove(category / "test")
    elif breakage == "no ground_truth":
        _remove(category / "ground_truth" / "stain")
    elif breakage == "missing mask":
        (category / "ground_truth" / "crack" / "001_mask.png").unlink()
    elif breakage == "misnamed mask":
        mask = category / "ground_truth" / "crack" / "001_mask.png"
        mask.rename(mask.with_name("mask_001.png"))
    with pytest.raises(DataError, match=message):
        mvtec_index(tmp_path, name)


def test_load_image_replicates_grey_and_antialiases(tmp_path: Path) -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    _write(tmp_path / "grey.png", checker)
    full = load_image(tmp_path / "grey.png")
    assert full.shape == (64, 64, 3) and full.dtype == np.uint8
    assert (full[..., 0] == checker).all() and (full[..., 2] == checker).all()
    # A one-pixel checkerboard halved averages to mid-grey; without antialiasing it would alias to 0 or 255.
    small = load_image(tmp_path / "grey.png", 32)
    assert small.shape == (32, 32, 3) and np.abs(small.astype(int) - 127.5).max() <= 3
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 1] = 200
    _write(tmp_path / "rgba.png", rgba)
    assert (load_image(tmp_path / "rgba.png") == [0, 200, 0]).all()


def test_load_mask_resizes_by_nearest_neighbour(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4, :4] = 255
    _write(tmp_path / "m.png", mask)
    small = load_mask(tmp_path / "m.png", 4)
    assert small.dtype == np.bool_
    np.testing.assert_array_equal(small, np.kron([[1, 0], [0, 0]], np.ones((2, 2))).astype(bool))
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[0, 0, 2] = 1
    _write(tmp_path / "c.png", colour)
    assert load_mask(tmp_path / "c.png").sum() == 1


def test_unreadable_files_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(DataError, match="does not exist"):
        load_mask(tmp_path / "absent.png")


def test_categories() -> None:
    assert len(CATEGORIES) == 15 and len(TEXTURES) == 5 and len(OBJECTS) == 10
    assert set(TEXTURES) | set(OBJECTS) == set(CATEGORIES) and "hazelnut" in OBJECTS and "carpet" in TEXTURES
