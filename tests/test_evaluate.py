import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_auc_score

from wsi_haloae.cli import main
from wsi_haloae.config import TrainConfig, load_config, replace
from wsi_haloae.errors import ConfigError, DataError
from wsi_haloae.model.anomaly import anomaly_map, feature_error, image_scores
from wsi_haloae.training.checkpoint import TrainedModel, load_trained
from wsi_haloae.training.data import read_tile
from wsi_haloae.training.train import train
from wsi_haloae.validation.evaluate import (
    METRICS,
    PAPER_HALOAE,
    benchmark_table,
    evaluate_mvtec,
    official_auroc,
    score_set,
)
from wsi_haloae.validation.mvtec import OBJECTS, TEXTURES
from wsi_haloae.validation.synth_mvtec import TEXTURE_DEFECTS, make_offline_mvtec

REPO = Path(__file__).resolve().parents[1]
N_GOOD, N_PER_DEFECT = 4, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny offline MVTec category: 64 px crops of scikit-image's brick texture."""
    root = tmp_path_factory.mktemp("mvtec")
    make_offline_mvtec(
        root, categories=["brick"], n_train=8, n_test_good=N_GOOD, n_test_defect=N_PER_DEFECT, size_px=64
    )
    return root


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One short epoch: the tests check the evaluation, not what the model learnt.
    cfg = replace(load_config(REPO / "configs" / "tiny.yaml", TrainConfig), epochs=1, samples_per_epoch=8)
    return train(cfg, data / "brick", tmp_path_factory.mktemp("run") / "run", progress=False)


@pytest.fixture(scope="module")
def trained(run: Path) -> TrainedModel:
    return load_trained(run)


@pytest.fixture(scope="module")
def both(
    trained: TrainedModel, data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict, dict]:
    """Both protocols evaluated into one output folder."""
    out = tmp_path_factory.mktemp("eval")
    honest = evaluate_mvtec(trained, data, "brick", out, batch_size=5)
    official = evaluate_mvtec(trained, data, "brick", out, protocol="official", batch_size=5)
    return out, honest, official


def _blocks(result: dict) -> dict[str, dict]:
    return {"overall": result["overall"], **result["per_defect"]}


@pytest.mark.parametrize("protocol", ["honest", "official"])
def test_outputs_are_written_and_labelled(both: tuple[Path, dict, dict], protocol: str) -> None:
    out, *_ = both
    folder = out / protocol
    stored = json.loads((folder / "metrics.json").read_text())
    assert stored["protocol"] == protocol
    assert sorted(p.name for p in folder.iterdir()) == sorted(stored["files"])
    assert set(stored["per_defect"]) == set(TEXTURE_DEFECTS)
    assert (stored["overall"]["n_good"], stored["overall"]["n_defect"]) == (N_GOOD, N_PER_DEFECT * 4)
    for name, block in _blocks(stored).items():
        if name != "overall":
            assert (block["n_good"], block["n_defect"]) == (N_GOOD, N_PER_DEFECT)
        for metric in METRICS:
            assert 0.0 <= block[metric] <= 1.0, (name, metric, block[metric])
    assert f"{protocol} protocol" in (folder / "metrics.md").read_text()
    for plot in ("roc.png", "pro.png", "examples.png"):
        with Image.open(folder / plot) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_honest_scores_match_an_independent_computation(
    both: tuple[Path, dict, dict], trained: TrainedModel, data: Path
) -> None:
    out, honest, _ = both
    assert (honest["normalisation"], honest["image_score"], honest["pixel_resolution"]) == (
        "mean map of the training images",
        "mean",
        "full",
    )
    assert not honest["label_flipping"] and all(not b["flipped"] for b in _blocks(honest).values())
    with (out / "honest" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # The model run by hand through its public API on the images as training reads them.
    images = torch.stack([read_tile(data / "brick" / r["image"], 64) for r in rows])
    with torch.no_grad():
        output = trained.model(images, heads=False)
    maps = anomaly_map(feature_error(output.fm, output.fm_hat), 64, trained.mean_map)
    expected = image_scores(maps)[0].numpy()
    scores = np.array([float(r["score"]) for r in rows])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    labels = np.array([int(r["label"]) for r in rows])
    assert honest["overall"]["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    assert honest["overall"]["image_f1_max"] == pytest.approx(f1.max(), abs=1e-12)
    # Pixel AUROC over the defect-free images plus one defect type, at full (here 64 px) resolution.
    truth = data / "brick" / "ground_truth" / "hole"
    masks = [
        np.asarray(Image.open(truth / f"{Path(r['image']).stem}_mask.png")) > 0
        if r["defect_type"] == "hole"
        else np.zeros((64, 64), dtype=bool)
        for r in rows
    ]
    keep = [i for i, r in enumerate(rows) if r["defect_type"] in ("good", "hole")]
    pixel = roc_auc_score(np.concatenate([masks[i].ravel() for i in keep]), maps[keep].numpy().ravel())
    assert honest["per_defect"]["hole"]["pixel_auroc"] == pytest.approx(pixel, abs=1e-6)


def test_official_protocol_makes_its_choices(both: tuple[Path, dict, dict]) -> None:
    _, honest, official = both
    assert official["normalisation"] == "mean map of the defect-free test images"
    assert official["pixel_resolution"] == "128x128" and official["label_flipping"]
    assert official["image_score"] == "mean" and official["checkpoints"] == 1
    assert official["map_order"] == "feature-first"
    assert "not reproduced" in official["protocol_description"]
    for block in _blocks(official).values():  # flipping means no image AUROC is ever below 0.5
        assert block["image_auroc"] >= 0.5
    # Another normalisation map and resolution: the pixel numbers must differ from the honest ones.
    assert official["overall"]["pixel_auroc"] != honest["overall"]["pixel_auroc"]


def test_label_flipping_really_flips() -> None:
    """Scores that rank every normal sample above every anomaly: honest 0, official 1 for the
    image AUROC; the pixel AUROC is never flipped (the official code flips image AUROC only)."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 6 + [1] * 4)
    scores = np.where(labels == 1, rng.uniform(0, 1, 10), rng.uniform(2, 3, 10))
    masks = [np.zeros((8, 8), dtype=bool) for _ in range(10)]
    for k in masks[6:]:
        k[2:5, 3:6] = True
    maps = [np.where(k, 0.1, 1.0) + 0.01 * rng.random((8, 8)) for k in masks]
    honest = score_set(scores, labels, maps, masks)
    official = score_set(scores, labels, maps, masks, flip_labels=True)
    assert (honest["image_auroc"], honest["pixel_auroc"], honest["flipped"]) == (0.0, 0.0, [])
    assert (official["image_auroc"], official["pixel_auroc"]) == (1.0, 0.0)
    assert official["flipped"] == ["image_auroc"]
    for metric in ("aupro", "image_f1_max", "pixel_f1_max"):  # not part of the official flipping
        assert official[metric] == honest[metric]
    assert official_auroc(0.3) == (0.7, True)
    assert official_auroc(0.5) == (0.5, False) and official_auroc(0.8) == (0.8, False)


def test_benchmark_table_reproduces_the_paper_means() -> None:
    # Our numbers set to the paper's: every mean row must show the paper's printed means, twice.
    def result(image: float, pixel: float, pro: float) -> dict:
        return {"protocol": "honest", "overall": {"image_auroc": image, "pixel_auroc": pixel, "aupro": pro}}

    results = {name: result(i / 100, p / 100, 0.5) for name, (i, p) in PAPER_HALOAE.items()}
    results["histology"] = result(0.8125, 0.9, 0.7)
    lines = benchmark_table(results).splitlines()
    cells = [[c.strip() for c in line.split("|")[2:-1]] for line in lines if line.startswith("| ")]
    rows = {c[0]: c[1:] for c in cells}
    assert rows["**mean textures** (5 of 5)"] == ["91.7", "91.7", "88.1", "88.1", "50.0"]
    assert rows["**mean objects** (10 of 10)"] == ["92.2", "92.2", "92.7", "92.7", "50.0"]
    assert rows["**mean** (15 of 15)"] == ["92.0", "92.0", "91.2", "91.2", "50.0"]
    assert rows["carpet"] == ["69.7", "69.7", "89.4", "89.4", "50.0"]
    assert rows["histology"] == ["–", "81.2", "–", "90.0", "70.0"]
    order = [c[0] for c in cells[2:]]
    assert order[:5] == list(TEXTURES) and order[6:16] == list(OBJECTS) and order[-1] == "histology"
    assert "honest protocol" in lines[0]


def test_benchmark_table_partial_run_compares_like_with_like() -> None:
    results = {
        "carpet": {"protocol": "official", "overall": {"image_auroc": 0.5, "pixel_auroc": 0.5, "aupro": 0.5}},
        "grid": {"protocol": "official", "overall": {"image_auroc": 1.0, "pixel_auroc": 1.0, "aupro": 1.0}},
    }
    table = benchmark_table(results)
    paper = [f"{np.mean([PAPER_HALOAE['carpet'][i], PAPER_HALOAE['grid'][i]]):.1f}" for i in (0, 1)]
    assert f"| **mean textures** (2 of 5) | {paper[0]} | 75.0 | {paper[1]} | 75.0 | 75.0 |" in table
    assert "objects" not in table.split("\n", 1)[1] and "official protocol" in table
    with pytest.raises(ValueError, match="mix protocols"):
        benchmark_table({**results, "tile": {**results["grid"], "protocol": "honest"}})


def test_cli_evaluate(run: Path, data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["evaluate", "--data", str(data), "--category", "brick", "--model", str(run), "--no-progress"]
    result = runner.invoke(
        main, [*args, "--out", str(tmp_path), "--protocol", "official", "--batch-size", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "brick, official protocol: image AUROC" in result.output
    assert json.loads((tmp_path / "official" / "metrics.json").read_text())["protocol"] == "official"

    for bad in (["--category", "carpet"], ["--data", str(tmp_path / "nowhere")]):
        result = runner.invoke(main, [*args, "--out", str(tmp_path), *bad])
        assert result.exit_code == 2
        assert result.output.count("\n") == 1 and result.output.startswith("error: MVTec category folder")


def test_the_median_normalisation_is_its_own_labelled_run(
    both: tuple[Path, dict, dict], trained: TrainedModel, data: Path
) -> None:
    out, honest, _ = both
    median = evaluate_mvtec(trained, data, "brick", out, normalisation="median", batch_size=5)
    assert median["normalisation"] == "median map of the training images"
    assert json.loads((out / "honest-median" / "metrics.json").read_text()) == median
    assert json.loads((out / "honest" / "metrics.json").read_text()) == honest  # left as it was
    with (out / "honest-median" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    images = torch.stack([read_tile(data / "brick" / r["image"], 64) for r in rows])
    with torch.no_grad():
        output = trained.model(images, heads=False)
    maps = anomaly_map(feature_error(output.fm, output.fm_hat), 64, trained.median_map)
    np.testing.assert_allclose([float(r["score"]) for r in rows], image_scores(maps)[0].numpy(), rtol=1e-5)
    with pytest.raises(ConfigError, match="official protocol normalises by the mean"):
        evaluate_mvtec(trained, data, "brick", out, protocol="official", normalisation="median")


def test_mask_of_the_wrong_size_is_refused(trained: TrainedModel, data: Path, tmp_path: Path) -> None:
    shutil.copytree(data / "brick", tmp_path / "brick")
    mask = tmp_path / "brick" / "ground_truth" / "hole" / "000_mask.png"
    Image.open(mask).resize((32, 32)).save(mask)
    with pytest.raises(DataError, match="000_mask.png is 32 x 32 px but its image .* is 64 x 64"):
        evaluate_mvtec(trained, tmp_path, "brick", tmp_path / "out")


@pytest.fixture
def hazelnut(shared_data: Path) -> Path:
    if not (shared_data / "hazelnut_toy").is_dir():
        pytest.skip(f"{shared_data / 'hazelnut_toy'} not found")
    return shared_data


def test_real_photographs_at_full_resolution(trained: TrainedModel, hazelnut: Path, tmp_path: Path) -> None:
    """Intel's hazelnut toy set: masks named like their images, one image of 512 x 522 px."""
    result = evaluate_mvtec(trained, hazelnut, "hazelnut_toy", tmp_path)
    assert (result["overall"]["n_good"], result["overall"]["n_defect"]) == (6, 17)
    assert list(result["per_defect"]) == ["colour"]
    assert all(0.0 <= result["overall"][m] <= 1.0 for m in METRICS)
