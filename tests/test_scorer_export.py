"""`export`: the tile scorer as ONNX (run with onnxruntime) and TorchScript, against the PyTorch
scorer on the CPU. Measured max abs difference (tiny config, random weights): about 3e-8 on maps
whose values reach 5e-2, i.e. float32 rounding; the tests allow 1e-5."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from wsi_haloae.cli import main
from wsi_haloae.config import TrainConfig, load_config
from wsi_haloae.errors import ConfigError
from wsi_haloae.heatmaps.scorer_export import check_export, export_scorer
from wsi_haloae.model.haloae import HaloAE
from wsi_haloae.training.checkpoint import MODEL_FILE, load_trained, save_trained

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(TINY, TrainConfig)
    torch.manual_seed(0)
    model = HaloAE(cfg.model).eval()
    maps = {
        "mean": torch.linspace(0.0, 0.01, 64 * 64).reshape(64, 64),
        "median": torch.linspace(0.01, 0.0, 64 * 64).reshape(64, 64),
    }
    folder = tmp_path_factory.mktemp("export-run")
    save_trained(folder / MODEL_FILE, model, cfg, maps, {k: torch.arange(10.0) for k in maps})
    return folder


def test_onnx_matches_pytorch_with_onnxruntime(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the test and export extras")
    trained = load_trained(run_dir, "cpu")
    path = export_scorer(trained, tmp_path / "scorer.onnx", batch_size=3, normalisation="mean")
    differences = check_export(trained, path, normalisation="mean")
    assert set(differences) == {"maps", "score_mean", "score_max"}
    assert max(differences.values()) < 1e-5, differences
    # the normalisation is baked in: scored against the other map, the maps differ
    other = check_export(trained, path, normalisation="median")
    assert other["maps"] > 1e-3


def test_cli_exports_torchscript_and_checks_it(run_dir: Path) -> None:
    result = CliRunner().invoke(
        main, ["-q", "export", str(run_dir), "--format", "torchscript", "--batch-size", "2"]
    )
    assert result.exit_code == 0, result.output
    assert (run_dir / "scorer.pt").is_file()
    line = result.output.splitlines()[-1]
    assert line.startswith("max abs difference to PyTorch: maps ")
    assert max(float(part.split()[-1]) for part in line.split(":")[1].split(",")) < 1e-5


def test_bad_options_fail_with_one_line(run_dir: Path, tmp_path: Path) -> None:
    trained = load_trained(run_dir, "cpu")
    with pytest.raises(ConfigError, match="batch size 0 must be at least 1"):
        export_scorer(trained, tmp_path / "x.onnx", batch_size=0)
    with pytest.raises(ConfigError, match="format 'tflite' must be one of onnx, torchscript"):
        export_scorer(trained, tmp_path / "x.onnx", format="tflite")  # type: ignore[arg-type]
    result = CliRunner().invoke(main, ["export", str(tmp_path / "missing")])
    assert result.exit_code != 0 and result.output.startswith("error: ")


def test_bench_cpu_counts_flops_and_compares_with_matmul() -> None:
    from wsi_haloae.bench import benchmark_cpu, format_cpu_bench

    (row,) = benchmark_cpu([("tiny", load_config(TINY, TrainConfig))], batch_size=1, batches=1)
    # VGG19 to relu3_4 on a 64-px tile alone is 0.9 GMAC = 1.8 GFLOP (model-spec: 14.6 GMAC at 256 px)
    assert 1.8 < row.gflop_per_tile < 2.5
    assert row.tiles == 1 and row.seconds > 0 and row.matmul_gflops > 0
    table = format_cpu_bench([row])
    assert "| tiny | 64 |" in table and "model / matmul" in table
