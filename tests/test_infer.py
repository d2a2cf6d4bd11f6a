"""The inference engine: the scorer against the spec's post-processing, streaming order and bytes
against plain per-batch scoring, reader processes, failures, batch sizing and stage timings."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_haloae.config import TrainConfig, load_config
from wsi_haloae.errors import ConfigError, OutputError
from wsi_haloae.heatmaps import infer
from wsi_haloae.heatmaps.infer import (
    CPU_BATCH_SIZE,
    InferenceEngine,
    TileMaps,
    TileScorer,
    choose_batch_size,
    default_workers,
    time_baseline,
    time_model,
    time_reading,
    time_transfer,
)
from wsi_haloae.model.anomaly import anomaly_map, feature_error
from wsi_haloae.model.haloae import HaloAE
from wsi_haloae.slides.grid import TileGrid
from wsi_haloae.slides.slide import open_slide
from wsi_haloae.slides.synthetic import write_synthetic_slide
from wsi_haloae.slides.tiles import read_tile
from wsi_haloae.training.checkpoint import TrainedModel

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    cfg = load_config(TINY, TrainConfig)
    torch.manual_seed(0)
    model = HaloAE(cfg.model).eval()
    mean_map = torch.linspace(0.0, 0.01, 64 * 64).reshape(64, 64)
    scores = {"mean": torch.arange(10.0), "median": torch.arange(10.0)}
    return TrainedModel(model, cfg, mean_map, mean_map.flip(0), scores, Path("tiny-run"))


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("infer")
    return write_synthetic_slide(folder / "slide.tiff", 512, 384, tissue="full", seed=2).path


@pytest.fixture(scope="module")
def grid(slide_path: Path) -> TileGrid:
    with open_slide(slide_path) as slide:
        return TileGrid.for_slide(slide, level=0, tile_size_px=64)


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)


def test_scorer_follows_the_spec_then_averages_4x4(trained: TrainedModel) -> None:
    images = _images(3)
    with torch.inference_mode():
        maps, score_mean, score_max = TileScorer(trained)(torch.from_numpy(images))
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        output = trained.model(x, heads=False)
        full = anomaly_map(feature_error(output.fm, output.fm_hat), 64, trained.mean_map)
    assert maps.shape == (3, 16, 16) and maps.dtype == torch.float32
    torch.testing.assert_close(maps[1, 2, 3], full[1, 8:12, 12:16].mean())
    torch.testing.assert_close(maps, full.reshape(3, 16, 4, 16, 4).mean(dim=(2, 4)))
    torch.testing.assert_close(score_mean, full.mean(dim=(1, 2)))
    torch.testing.assert_close(score_max, full.amax(dim=(1, 2)))
    assert (score_max > score_mean).all() and (score_mean > 0).all()


def test_run_streams_every_tile_in_order_with_the_bytes_of_plain_scoring(
    trained: TrainedModel, slide_path: Path, grid: TileGrid
) -> None:
    assert len(grid) == 48  # 8 x 6 tiles of 64 px
    indices = np.arange(0, 48, 4)  # 12 tiles: batches of 5, 5, 2
    engine = InferenceEngine(trained, CPU, batch_size=5)
    received: list[TileMaps] = []
    with open_slide(slide_path) as slide:
        stats = engine.run(slide, grid, indices, received.append)
        coords_l0 = grid.coordinates()
        plain = [
            np.stack([read_tile(slide, grid, *coords_l0[i].tolist()) for i in indices[start : start + 5]])
            for start in range(0, 12, 5)
        ]
    assert [len(r) for r in received] == [5, 5, 2]
    assert (stats.tiles, stats.batches) == (12, 3) and stats.seconds > 0 and stats.sink_s >= 0
    np.testing.assert_array_equal(np.concatenate([r.indices for r in received]), indices)
    for result, images in zip(received, plain):
        with torch.inference_mode():
            maps, score_mean, score_max = TileScorer(trained)(torch.from_numpy(images))
        np.testing.assert_array_equal(result.maps, maps.numpy())
        np.testing.assert_array_equal(result.score_mean, score_mean.numpy())
        np.testing.assert_array_equal(result.score_max, score_max.numpy())


def test_reader_processes_give_the_same_bytes_and_leave_their_cores(
    trained: TrainedModel, slide_path: Path, grid: TileGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(infer, "available_cores", lambda: 2)
    engine = InferenceEngine(trained, CPU, batch_size=4)
    threads_seen: set[int] = set()
    score = engine.score

    def score_and_count(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        threads_seen.add(torch.get_num_threads())  # the model runs in the calling thread
        return score(images)

    monkeypatch.setattr(engine, "score", score_and_count)
    indices = np.arange(16, 32)
    results: dict[int, list[TileMaps]] = {0: [], 1: []}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with open_slide(slide_path) as slide:
            engine.run(slide, grid, indices[:4], results[1].append, workers=1)
            # with 2 cores and a reader process, the model gets one thread, then its two back
            assert threads_seen == {1} and torch.get_num_threads() == 2
            # results depend on the model's thread count: one thread in both runs
            torch.set_num_threads(1)
            results[1].clear()
            for workers in (0, 1):
                engine.run(slide, grid, indices, results[workers].append, workers=workers)
    finally:
        torch.set_num_threads(threads)
    for key in ("indices", "maps", "score_mean", "score_max"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(r, key) for r in results[0]]),
            np.concatenate([getattr(r, key) for r in results[1]]),
        )
    assert default_workers(CPU) == 0


def test_a_failing_sink_stops_the_run(trained: TrainedModel, slide_path: Path, grid: TileGrid) -> None:
    calls = []

    def sink(tile_maps: TileMaps) -> None:
        calls.append(len(tile_maps))
        raise OutputError("cannot write band 0 (No space left on device); choose a writable --out")

    engine = InferenceEngine(trained, CPU, batch_size=4)
    with open_slide(slide_path) as slide, pytest.raises(OutputError, match="No space left"):
        engine.run(slide, grid, np.arange(len(grid)), sink)
    assert calls == [4]  # nothing after the failure reaches the sink
    assert not [t for t in threading.enumerate() if t.name == "wsi-haloae-heatmap-writer"]


def test_grid_must_match_the_model(trained: TrainedModel, slide_path: Path) -> None:
    with open_slide(slide_path) as slide:
        big = TileGrid.for_slide(slide, level=0, tile_size_px=128)
        with pytest.raises(ConfigError, match="128 px but the model takes 64 px"):
            InferenceEngine(trained, CPU, batch_size=2).run(slide, big, np.arange(2), lambda _: None)


def test_batch_size_on_cpu(trained: TrainedModel) -> None:
    assert choose_batch_size(TileScorer(trained), CPU) == CPU_BATCH_SIZE == 8
    assert InferenceEngine(trained, CPU).batch_size == 8
    with pytest.raises(ConfigError, match="at least 1"):
        InferenceEngine(trained, CPU, batch_size=0)


def test_stage_timings_count_their_tiles(trained: TrainedModel, slide_path: Path, grid: TileGrid) -> None:
    with open_slide(slide_path) as slide:
        baseline = time_baseline(trained, slide, grid, np.arange(3), CPU)
        reading = time_reading(slide, grid, np.arange(len(grid)), batch_size=8, workers=0)
    engine = InferenceEngine(trained, CPU, batch_size=4)
    transfer, model = time_transfer(engine, 3), time_model(engine, 2)
    assert (baseline.tiles, reading.tiles, transfer.tiles, model.tiles) == (3, 48, 12, 8)
    for timing in (baseline, reading, transfer, model):
        assert timing.seconds > 0 and timing.tiles_per_s == pytest.approx(timing.tiles / timing.seconds)
    assert model.note == "batch 4, fp32"


@pytest.mark.gpu
def test_cuda_engine_agrees_with_the_cpu(trained: TrainedModel, slide_path: Path, grid: TileGrid) -> None:
    on_gpu = copy.deepcopy(trained)  # the engine moves its model to the device
    indices = np.arange(14)  # batches of 6, 6 and a padded 2
    results: dict[str, list[TileMaps]] = {"cpu": [], "fp32": [], "bf16": []}
    with open_slide(slide_path) as slide:
        InferenceEngine(trained, CPU, batch_size=6).run(slide, grid, indices, results["cpu"].append)
        for name, bf16 in (("fp32", False), ("bf16", True)):
            engine = InferenceEngine(on_gpu, torch.device("cuda"), batch_size=6, bf16=bf16)
            assert engine.precision == name
            engine.run(slide, grid, indices, results[name].append, workers=1)
        assert InferenceEngine(on_gpu, torch.device("cuda")).batch_size >= 8  # sized from free memory
    expected = np.concatenate([r.maps for r in results["cpu"]])
    assert [len(r) for r in results["bf16"]] == [6, 6, 2]
    np.testing.assert_allclose(
        np.concatenate([r.maps for r in results["fp32"]]),
        expected,
        rtol=0.05,
        atol=1e-4,  # TF32 convolutions
    )
    bf16_maps = np.concatenate([r.maps for r in results["bf16"]])
    assert np.corrcoef(bf16_maps.ravel(), expected.ravel())[0, 1] > 0.9
