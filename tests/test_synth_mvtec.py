"""The offline MVTec-format generator: a valid tree, exact masks, disjoint regions, determinism."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage
from skimage import data as skdata

from wsi_haloae.errors import DataError, OutputError, SlideError
from wsi_haloae.validation.mvtec import load_image, load_mask, mvtec_index
from wsi_haloae.validation.synth_mvtec import (
    HISTOLOGY_DEFECTS,
    TEXTURE_DEFECTS,
    make_offline_mvtec,
    read_crops,
    split_regions,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SIZE = 32
COUNTS = {"n_train": 4, "n_test_good": 2, "n_test_defect": 2}


@pytest.fixture(scope="module")
def toy_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 320 x 200 "slide" (a PNG, which OpenSlide opens as an ImageSlide): glass, a pink band of tissue."""
    rng = np.random.default_rng(5)
    image = np.full((200, 320, 3), 242.0)
    texture = ndimage.gaussian_filter(rng.random((200, 320)), 2)
    tissue = np.stack([200 + 40 * texture, 90 + 80 * texture, 160 + 40 * texture], axis=-1)
    image[40:170] = tissue[40:170]
    path = tmp_path_factory.mktemp("slide") / "toy_slide.png"
    Image.fromarray(image.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, toy_slide: Path) -> Path:
    out = tmp_path_factory.mktemp("offline")
    folders = make_offline_mvtec(
        out, slides=[toy_slide], size_px=SIZE, seed=3, categories=("histology", "brick"), **COUNTS
    )
    assert folders == [out / "histology", out / "brick"]
    return out


@pytest.mark.parametrize(
    ("category", "defects"), [("histology", HISTOLOGY_DEFECTS), ("brick", TEXTURE_DEFECTS)]
)
def test_tree_is_valid_mvtec(generated: Path, category: str, defects: tuple[str, ...]) -> None:
    index = mvtec_index(generated, category)
    expected = {("train", "good"): 4, ("test", "good"): 2} | {("test", d): 2 for d in defects}
    assert index.counts() == expected
    for sample in index.samples:
        assert load_image(sample.image_path).shape == (SIZE, SIZE, 3)
        if sample.label:
            assert sample.mask_path.name == f"{sample.image_path.stem}_mask.png"
            mask = load_mask(sample.mask_path)
            assert mask.shape == (SIZE, SIZE) and mask.any() and not mask.all()
    # Masks exist for defect images only.
    assert len(list((generated / category / "ground_truth").rglob("*.png"))) == 2 * len(defects)
    assert not (generated / category / "ground_truth" / "good").exists()


def _source_crop(crop) -> np.ndarray:
    source = getattr(skdata, crop.source.removeprefix("skimage.data."))()
    tile = np.repeat(source[crop.y0 : crop.y1, crop.x0 : crop.x1, None], 3, axis=2)
    tile = tile[:, ::-1] if crop.flip_x else tile
    return tile[::-1] if crop.flip_y else tile


def test_masks_are_exact_footprints(generated: Path) -> None:
    category = generated / "brick"
    for crop in read_crops(category):
        written = load_image(category / crop.image)
        original = _source_crop(crop)
        if crop.defect_type == "good":
            np.testing.assert_array_equal(written, original)
            continue
        mask = load_mask(category / "ground_truth" / crop.defect_type / f"{Path(crop.image).stem}_mask.png")
        np.testing.assert_array_equal(written[~mask], original[~mask])
        changed = (written != original).any(axis=-1)
        assert changed[mask].mean() > 0.5, f"{crop.image}: the defect barely changes its footprint"


@pytest.mark.parametrize("category", ["histology", "brick"])
def test_train_and_test_regions_are_disjoint(generated: Path, toy_slide: Path, category: str) -> None:
    crops = read_crops(generated / category)
    width, height = (320, 200) if category == "histology" else (512, 512)
    train_box, test_box = split_regions(width, height)
    assert {c.source for c in crops} == {str(toy_slide) if category == "histology" else "skimage.data.brick"}
    for c in crops:
        box = train_box if c.split == "train" else test_box
        assert box[0] <= c.x0 and box[1] <= c.y0 and c.x1 <= box[2] and c.y1 <= box[3]
        assert (c.x1 - c.x0, c.y1 - c.y0) == (SIZE, SIZE)
    for a in (c for c in crops if c.split == "train"):
        for b in (c for c in crops if c.split == "test"):
            assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0, (a, b)
    # Test images are distinct crops: no two share an origin.
    test_origins = [(c.x0, c.y0) for c in crops if c.split == "test"]
    assert len(set(test_origins)) == len(test_origins)


def test_histology_tiles_are_tissue(generated: Path) -> None:
    for crop in read_crops(generated / "histology"):
        assert 40 - SIZE / 4 <= crop.y0 and crop.y1 <= 170 + SIZE / 4, crop  # the tissue band, give or take
        if crop.defect_type == "good":
            assert (
                load_image(generated / "histology" / crop.image).mean(axis=(0, 1))[1] < 200
            )  # pink, not glass


def test_split_regions_cut_the_longer_side() -> None:
    assert split_regions(512, 512) == ((0, 0, 256, 512), (256, 0, 512, 512))
    assert split_regions(2220, 2967) == ((0, 0, 2220, 1484), (0, 1484, 2220, 2967))


def test_deterministic_by_seed(tmp_path: Path, toy_slide: Path) -> None:
    def files(seed: int, name: str) -> dict[str, bytes]:
        out = tmp_path / name
        make_offline_mvtec(
            out, slides=[toy_slide], size_px=SIZE, seed=seed, categories=("grass", "histology"), **COUNTS
        )
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    first, again, other = files(7, "a"), files(7, "b"), files(8, "c")
    assert first == again
    assert first.keys() == other.keys()
    assert first["grass/crops.csv"] != other["grass/crops.csv"]
    assert first["histology/test/pen_ink/000.png"] != other["histology/test/pen_ink/000.png"]


def test_histology_from_the_real_slide(tmp_path: Path) -> None:
    slide = SHARED_DATA / "CMU-1-Small-Region.svs"
    if not slide.is_file():
        pytest.skip(f"{slide} is absent")
    (folder,) = make_offline_mvtec(
        tmp_path,
        slides=[slide],
        n_train=6,
        n_test_good=3,
        n_test_defect=1,
        size_px=64,
        categories=("histology",),
    )
    index = mvtec_index(tmp_path, "histology")
    assert len(index.train) == 6 and len(index.test) == 3 + len(HISTOLOGY_DEFECTS)
    for crop in read_crops(folder):
        assert crop.y0 >= 1484 if crop.split == "test" else crop.y1 <= 1484
        rgb = load_image(folder / crop.image).astype(float)
        saturation = (rgb.max(axis=2) - rgb.min(axis=2)) / np.maximum(rgb.max(axis=2), 1)
        assert np.median(saturation) > 0.1, f"{crop.image} looks like glass, not tissue"


def test_bad_requests(tmp_path: Path, toy_slide: Path) -> None:
    with pytest.raises(DataError, match="needs slides"):
        make_offline_mvtec(tmp_path, categories=("histology",), **COUNTS)
    with pytest.raises(DataError, match="unknown offline category 'carpet'"):
        make_offline_mvtec(tmp_path, categories=("carpet",), **COUNTS)
    with pytest.raises(DataError, match=r"only \d+ train crops of 64 px fit .*\(50000 needed\).*more slides"):
        make_offline_mvtec(
            tmp_path,
            slides=[toy_slide],
            categories=("histology",),
            n_train=50000,
            n_test_good=1,
            n_test_defect=1,
            size_px=64,
        )
    with pytest.raises(DataError, match="too small for 300-px crops"):
        make_offline_mvtec(tmp_path, categories=("brick",), size_px=300, **COUNTS)
    (tmp_path / "not_a_slide.svs").write_bytes(b"nothing")
    with pytest.raises(SlideError, match="cannot open slide .*not_a_slide.svs"):
        make_offline_mvtec(
            tmp_path, slides=[tmp_path / "not_a_slide.svs"], categories=("histology",), **COUNTS
        )
    make_offline_mvtec(tmp_path, categories=("gravel",), size_px=16, **COUNTS)
    with pytest.raises(OutputError, match="gravel already exists"):
        make_offline_mvtec(tmp_path, categories=("gravel",), size_px=16, **COUNTS)
    assert not list(tmp_path.glob(".*.partial"))


def test_pipeline_script_prints_what_it_wrote(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_offline_mvtec", REPO / "pipelines" / "make_offline_mvtec.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = [str(tmp_path), "--categories", "gravel", "--n-train", "3", "--n-test-good", "1"]
    result = CliRunner().invoke(
        script.main, [*args, "--n-test-defect", "1", "--size-px", "16", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'gravel'}: train/good 3" in result.output
    assert "test/scratch 1" in result.output
    again = CliRunner().invoke(script.main, [*args, "--size-px", "16", "--no-progress"])
    assert again.exit_code == 2 and "already exists" in again.output
    no_slides = CliRunner().invoke(script.main, [str(tmp_path / "x")])
    assert no_slides.exit_code == 2 and "histology needs --slides" in no_slides.output
