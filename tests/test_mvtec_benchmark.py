import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from wsi_haloae.config import TrainConfig, load_config, replace, to_dict
from wsi_haloae.validation.synth_mvtec import make_offline_mvtec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmark():
    path = REPO / "pipelines" / "mvtec_benchmark.py"
    spec = importlib.util.spec_from_file_location("mvtec_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config with one short epoch: the test checks the pipeline, not the model."""
    cfg = replace(load_config(REPO / "configs" / "tiny.yaml", TrainConfig), epochs=1, samples_per_epoch=8)
    path = tmp_path_factory.mktemp("config") / "tiny-1.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("offline")
    make_offline_mvtec(root, categories=["brick"], n_train=6, n_test_good=3, n_test_defect=1, size_px=64)
    return root


def test_help(benchmark) -> None:
    result = CliRunner().invoke(benchmark.main, ["--help"])
    assert result.exit_code == 0 and "--protocol" in result.output and "--backbone-weights" in result.output


def test_trains_evaluates_tabulates_and_resumes(benchmark, data: Path, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = [str(data), "--config", str(config), "--out", str(out), "--no-progress"]
    runner = CliRunner()
    result = runner.invoke(benchmark.main, args)
    assert result.exit_code == 0, result.output
    metrics = out / "brick" / "honest" / "metrics.json"
    model = out / "brick" / "run" / "model.safetensors"
    overall = json.loads(metrics.read_text())["overall"]
    table = (out / "table1-honest.md").read_text()
    assert table in result.output
    ours = f"| not in MVTec AD | brick | – | {100 * overall['image_auroc']:.1f} | – |"
    assert ours in table and "honest protocol" in table

    # A finished category is skipped: nothing is retrained or re-evaluated.
    stamps = metrics.stat().st_mtime_ns, model.stat().st_mtime_ns
    result = runner.invoke(benchmark.main, args)
    assert result.exit_code == 0, result.output
    assert (metrics.stat().st_mtime_ns, model.stat().st_mtime_ns) == stamps

    # Another protocol reuses the trained model.
    result = runner.invoke(benchmark.main, [*args, "--protocol", "official"])
    assert result.exit_code == 0, result.output
    assert model.stat().st_mtime_ns == stamps[1]
    assert json.loads((out / "brick" / "official" / "metrics.json").read_text())["protocol"] == "official"
    assert "official protocol" in (out / "table1-official.md").read_text()

    # A run stopped after its last epoch, before the model was written, resumes without retraining.
    model.unlink()
    metrics.unlink()
    result = runner.invoke(benchmark.main, args)
    assert result.exit_code == 0, result.output
    assert model.is_file() and metrics.is_file()
    assert len((out / "brick" / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_unknown_category_is_one_line(benchmark, data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(benchmark.main, [str(data), "--categories", "carpet", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: MVTec category folder") and result.output.count("\n") == 1
