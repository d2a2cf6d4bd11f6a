"""Throughput benchmarks of the library's engines, as plain functions returning table rows.

`benchmark_tiling` answers: how many tiles per second does `iter_tiles` deliver with N worker
processes, against N times a plain single-process `read_region` loop over the same tiles?
`benchmark_heatmap`: how many tiles per second does `heatmap` score end to end, how fast is each
of its stages alone, and how does it compare with the paper's batch-1 fp32 setting?
`benchmark_cpu`: tiles/s of the scorer on the CPU against the FLOP rate of a plain matrix product.
`provenance` heads every printed table with its date, machine and command.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path

import numpy as np
import torch

from .config import HeatmapConfig, TrainConfig
from .errors import ConfigError
from .heatmaps.heatmap import SUMMARY_NAME, heatmap_slide, reader_processes
from .heatmaps.infer import (
    InferenceEngine,
    StageTiming,
    leave_cores_to_readers,
    time_baseline,
    time_model,
    time_reading,
    time_transfer,
)
from .model.device import resolve_device
from .model.haloae import HaloAE
from .slides.grid import DEFAULT_TILE_SIZE_PX, TileGrid
from .slides.slide import open_slide
from .slides.synthetic import write_synthetic_slide
from .slides.tiles import DEFAULT_BATCH_SIZE, iter_tiles, read_tile
from .training.checkpoint import MODEL_FILE, TrainedModel, load_trained, save_trained

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TilingBenchRow:
    """One measured reader: `reader` is "read_region" (the plain loop) or "iter_tiles"; `workers`
    0 means in-process. `seconds` is wall time from the call to the last tile, worker start-up
    included, `startup_s` the part before the first batch arrived; `tiles_per_s` = tiles /
    seconds; `efficiency` = tiles_per_s / (max(workers, 1) x the plain loop's tiles_per_s)."""

    reader: str
    workers: int
    tiles: int
    seconds: float
    startup_s: float
    tiles_per_s: float
    efficiency: float


def available_cpus() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def provenance(accelerator: str = "no GPU") -> str:
    """The lines that make a benchmark table citable: date, machine and the command that ran."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return (
        f"- date: {datetime.date.today().isoformat()}\n"
        f"- machine: {_cpu_model()}, {available_cpus()} cores, {accelerator}, "
        f"Python {platform.python_version()}\n"
        f"- command: `{command}`\n"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def benchmark_tiling(
    slide_path: str | Path | None = None,
    *,
    size_px: tuple[int, int] = (8192, 8192),
    workers: Sequence[int] | None = None,
    backend: str = "openslide",
    tile_size_px: int = DEFAULT_TILE_SIZE_PX,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[TilingBenchRow]:
    """Tiles/s of a plain `read_region` loop, then of `iter_tiles` with each worker count.

    Every reader reads the same tiles: the whole level-0 grid of `tile_size_px` tiles of
    `slide_path`, or, when it is None, of a synthetic all-tissue slide of `size_px` (width,
    height) written to a temporary folder. `workers` defaults to 1, 2 and every available core.
    Each reader opens the slide afresh, so no reader profits from another's decoded-tile cache.
    The worker fork server, started once per process, is started (and logged) before timing.
    """
    if workers is None:
        workers = sorted({1, 2, available_cpus()})
    if any(count < 1 for count in workers):
        raise ConfigError(f"worker counts {list(workers)} must all be at least 1")
    if slide_path is not None:
        return _benchmark(Path(slide_path), workers, backend, tile_size_px, batch_size)
    with tempfile.TemporaryDirectory(prefix="wsi-haloae-bench-") as tmp:
        width_px, height_px = size_px
        log.info("writing a %d x %d synthetic slide for the benchmark", width_px, height_px)
        synthetic = write_synthetic_slide(Path(tmp) / "bench.tiff", width_px, height_px, tissue="full")
        return _benchmark(synthetic.path, workers, backend, tile_size_px, batch_size)


def _benchmark(
    path: Path, workers: Sequence[int], backend: str, tile_size_px: int, batch_size: int
) -> list[TilingBenchRow]:
    with open_slide(path, backend=backend) as slide:
        grid = TileGrid.for_slide(slide, level=0, tile_size_px=tile_size_px)
    log.info("benchmarking %s: %s", path, grid)
    coords_l0 = grid.coordinates().tolist()

    with open_slide(path, backend=backend) as slide:
        start = time.perf_counter()
        for x_l0, y_l0 in coords_l0:
            read_tile(slide, grid, x_l0, y_l0)
        seconds = time.perf_counter() - start
    raw_rate = len(coords_l0) / seconds
    rows = [TilingBenchRow("read_region", 0, len(coords_l0), seconds, 0.0, raw_rate, 1.0)]

    with open_slide(path, backend=backend) as slide:
        start = time.perf_counter()
        for _ in iter_tiles(slide, grid, [0], workers=1):
            pass
        log.info("worker fork server and first worker started in %.2f s", time.perf_counter() - start)

    for count in workers:
        with open_slide(path, backend=backend) as slide:
            tiles, startup_s = 0, 0.0
            start = time.perf_counter()
            for batch in iter_tiles(slide, grid, batch_size=batch_size, workers=count):
                if tiles == 0:
                    startup_s = time.perf_counter() - start
                tiles += len(batch)
            seconds = time.perf_counter() - start
        rate = tiles / seconds
        rows.append(
            TilingBenchRow("iter_tiles", count, tiles, seconds, startup_s, rate, rate / (count * raw_rate))
        )
    return rows


def format_tiling_table(rows: Sequence[TilingBenchRow]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| reader | workers | tiles | seconds | of which start-up | tiles/s | efficiency vs N x raw |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.reader} | {row.workers} | {row.tiles} | {row.seconds:.2f} | {row.startup_s:.2f} "
            f"| {row.tiles_per_s:.0f} "
            f"| {row.efficiency:.2f} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class HeatmapBench:
    """The heatmap benchmark: one `StageTiming` per row (end to end, each stage alone, the
    batch-1 fp32 baseline) and the run's setting; peak resident memory, MiB, during the end-to-end
    run: of this process, and of it with its tile reader processes."""

    rows: list[StageTiming]
    slide_size_px: tuple[int, int]
    tile_size_px: int
    device: str
    precision: str
    batch_size: int
    workers: int
    peak_rss_mib: float
    peak_total_rss_mib: float


def benchmark_heatmap(
    slide_path: str | Path | None = None,
    *,
    size_px: tuple[int, int] = (8192, 8192),
    run: str | Path | None = None,
    config: TrainConfig | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    compile: bool = False,
    cuda_graphs: bool = False,
    bf16: bool = True,
    baseline_tiles: int = 64,
    progress: bool = False,
) -> HeatmapBench:
    """Tiles/s of `heatmap_slide` on `slide_path`, or on a synthetic all-tissue slide of `size_px`
    (width, height) written to a temporary folder, tiled at level 0; and of each stage alone.

    The model is the trained one in `run`, or an untrained HaloAE built from `config` (speed does
    not depend on the weights). Rows: end to end (every stage, tissue detection to summary), the
    streaming part alone (read, score, stitch, write, overlapped), read only, host -> device,
    model only, stitch + write (the writer thread's busy time in the streaming run), and the
    paper's setting (batch 1, fp32, nothing overlapped) on the first `baseline_tiles` tiles.
    """
    if (run is None) == (config is None):
        raise ConfigError(
            "benchmark a trained model (--model RUN) or an untrained one (--config YAML), not both"
        )
    torch_device = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="wsi-haloae-bench-") as tmp_name:
        tmp = Path(tmp_name)
        trained = (
            load_trained(run, torch_device)
            if run is not None
            else _untrained(config, tmp / "model", torch_device)
        )
        if slide_path is None:
            log.info("writing a %d x %d synthetic slide for the benchmark", *size_px)
            path = write_synthetic_slide(tmp / "bench.tiff", *size_px, mpp_um=0.5, tissue="full").path
        else:
            path = Path(slide_path)
        cfg = HeatmapConfig(
            level=0,
            allow_mpp_mismatch=True,  # a speed benchmark: level 0, whatever the model was trained at
            batch_size=batch_size,
            workers=workers,
            device=device,
            compile=compile,
            cuda_graphs=cuda_graphs,
            bf16=bf16,
        )
        readers = reader_processes(cfg, torch_device)

        def model_threads() -> AbstractContextManager[None]:
            # on the CPU every model row runs with the threads the streaming run gives the model
            return leave_cores_to_readers(readers) if torch_device.type == "cpu" else nullcontext()

        with open_slide(path) as slide, model_threads():
            slide_size_px = slide.dimensions
            grid = TileGrid.for_slide(slide, level=0, tile_size_px=trained.config.model.image_size_px)
            baseline = time_baseline(
                trained, slide, grid, np.arange(min(baseline_tiles, len(grid))), torch_device
            )
        engine = InferenceEngine(
            trained,
            torch_device,
            batch_size=batch_size,
            bf16=bf16,
            compile=compile,
            cuda_graphs=cuda_graphs,
            normalisation=cfg.normalisation,
            tissue_aware=cfg.tissue_aware,
        )
        with _PeakMemory() as memory:
            heatmap_slide(path, trained, tmp / "out", cfg, progress, engine=engine)
        summary = json.loads((tmp / "out" / path.stem / SUMMARY_NAME).read_text())
        streamed = summary["run"]["inference"]
        tiles = summary["tiles"]["tissue"]
        batches = max(2, min(50, math.ceil(tiles / engine.batch_size)))
        with open_slide(path) as slide:
            reading = time_reading(
                slide, grid, np.arange(len(grid)), batch_size=engine.batch_size, workers=readers
            )
        with model_threads():
            transfer, model_only = time_transfer(engine, batches), time_model(engine, batches)
        rows = [
            StageTiming(
                "end to end",
                tiles,
                summary["timings_s"]["total_s"],
                "tissue, scoring, pyramid, GeoJSON, overlay",
            ),
            StageTiming("streaming", tiles, streamed["seconds"], "read + score + stitch + write, overlapped"),
            reading,
            transfer,
            model_only,
            StageTiming("stitch + write", tiles, streamed["sink_s"], "writer thread busy time"),
            baseline,
        ]
    return HeatmapBench(
        rows=rows,
        slide_size_px=slide_size_px,
        tile_size_px=engine.tile_size_px,
        device=str(torch_device),
        precision=engine.precision,
        batch_size=engine.batch_size,
        workers=readers,
        peak_rss_mib=memory.peak_self_bytes / 2**20,
        peak_total_rss_mib=memory.peak_total_bytes / 2**20,
    )


def format_heatmap_bench(bench: HeatmapBench) -> str:
    """The benchmark as a Markdown table with its setting and peak memory underneath."""
    lines = ["| stage | tiles | seconds | tiles/s | note |", "| --- | ---: | ---: | ---: | --- |"]
    for row in bench.rows:
        lines.append(
            f"| {row.stage} | {row.tiles} | {row.seconds:.2f} | {row.tiles_per_s:.1f} | {row.note} |"
        )
    width, height = bench.slide_size_px
    lines += [
        "",
        (
            f"Slide {width} x {height} px, {bench.tile_size_px}-px tiles; {bench.device}, {bench.precision}, "
            f"batch {bench.batch_size}, tile readers: {bench.workers}. Peak RSS: "
            f"{bench.peak_rss_mib:.0f} MiB (main process), "
            f"{bench.peak_total_rss_mib:.0f} MiB (with the tile readers)."
        ),
    ]
    return "\n".join(lines)


class _PeakMemory(threading.Thread):
    """Samples, every 50 ms while in its block, the resident memory of this process and of this
    process with its children (Linux /proc; zero elsewhere), keeping the peaks in bytes."""

    def __init__(self) -> None:
        super().__init__(name="wsi-haloae-memory", daemon=True)
        self._stop_sampling = threading.Event()
        self.peak_self_bytes = 0
        self.peak_total_bytes = 0

    def __enter__(self) -> _PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_sampling.set()
        self.join()

    def run(self) -> None:
        pid = os.getpid()
        while True:
            own = _rss_bytes(pid)
            children = sum(_rss_bytes(child) for child in _children(pid))
            self.peak_self_bytes = max(self.peak_self_bytes, own)
            self.peak_total_bytes = max(self.peak_total_bytes, own + children)
            if self._stop_sampling.wait(0.05):
                return


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the parent pid is the 2nd field after the ")" closing the command name
            if int(entry.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _untrained(config: TrainConfig, folder: Path, device: torch.device) -> TrainedModel:
    """An untrained HaloAE of `config`, saved and loaded back like a trained one (zero mean map)."""
    torch.manual_seed(config.seed)
    model = HaloAE(config.model).eval()
    size = config.model.image_size_px
    zeros = {name: torch.zeros(size, size) for name in ("mean", "median", "tissue_mean", "tissue_median")}
    save_trained(folder / MODEL_FILE, model, config, zeros, {name: torch.zeros(1) for name in zeros})
    return load_trained(folder, device)


# --- CPU cost ---------------------------------------------------------------------------------

# Tiles of a 70,000 x 70,000 px slide at 256 px (0.5 µm/px, tiled at level 0, all tissue)
SLIDE_70K_TILES = (70_000 // 256) ** 2


@dataclass(frozen=True)
class CpuBenchRow:
    """The scorer of one config on the CPU: FLOP per tile (counted by torch's FLOP counter on
    the forward: convolutions, matrix products, attention), tiles/s on random tiles, and the
    FLOP rate that makes; `matmul_gflops` is the same process's rate on a plain float32 matrix
    product, so `efficiency` says how close the model gets to what the CPU can do at all."""

    config: str
    tile_size_px: int
    gflop_per_tile: float
    batch_size: int
    tiles: int
    seconds: float
    matmul_gflops: float

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0

    @property
    def gflops(self) -> float:
        return self.tiles_per_s * self.gflop_per_tile

    @property
    def efficiency(self) -> float:
        return self.gflops / self.matmul_gflops if self.matmul_gflops > 0 else 0.0


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an fp32 (size x size) @ (size x size) product on the CPU (median of `repeats`,
    after one warm-up), with torch's current thread count."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / float(np.median(times)) / 1e9


def benchmark_cpu(
    configs: Sequence[tuple[str, TrainConfig]], *, batch_size: int = 2, batches: int = 2
) -> list[CpuBenchRow]:
    """One `CpuBenchRow` per (name, config): an untrained model of each (random VGG19; speed does
    not depend on weights), scored on `batches` batches of `batch_size` random uint8 tiles after
    one warm-up batch, fp32, torch's current thread count."""
    from torch.utils.flop_counter import FlopCounterMode

    from .heatmaps.infer import TileScorer

    rows = []
    for name, config in configs:
        rate = matmul_gflops()  # beside each config: on a shared machine the load moves
        torch.manual_seed(config.seed)
        model_cfg = dataclass_replace(config.model, backbone_weights="random")
        model = HaloAE(model_cfg).eval()
        size = model_cfg.image_size_px
        zeros = torch.zeros(size, size)
        trained = TrainedModel(
            model, config, zeros, zeros, {"mean": zeros[0], "median": zeros[0]}, Path(name)
        )
        scorer = TileScorer(trained).eval()
        generator = torch.Generator().manual_seed(0)
        tiles = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, generator=generator)
        with torch.inference_mode():
            counter = FlopCounterMode(display=False)
            with counter:
                scorer(tiles[:1])
            scorer(tiles)  # warm-up
            started = time.perf_counter()
            for _ in range(batches):
                scorer(tiles)
            seconds = time.perf_counter() - started
        rows.append(
            CpuBenchRow(
                config=name,
                tile_size_px=size,
                gflop_per_tile=counter.get_total_flops() / 1e9,
                batch_size=batch_size,
                tiles=batch_size * batches,
                seconds=seconds,
                matmul_gflops=rate,
            )
        )
    return rows


def format_cpu_bench(rows: Sequence[CpuBenchRow]) -> str:
    """The CPU benchmark as a Markdown table, with what a 70k x 70k slide would take."""
    lines = [
        "| config | tile px | GFLOP/tile | batch | tiles | seconds | tiles/s | model GFLOP/s | matmul GFLOP/s | model / matmul |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.config} | {row.tile_size_px} | {row.gflop_per_tile:.1f} | {row.batch_size} | {row.tiles} | "
            f"{row.seconds:.1f} | {row.tiles_per_s:.3f} | {row.gflops:.1f} | {row.matmul_gflops:.1f} | "
            f"{100 * row.efficiency:.0f} % |"
        )
    for row in rows:
        if row.tile_size_px == 256 and row.tiles_per_s > 0:
            hours = SLIDE_70K_TILES / row.tiles_per_s / 3600
            lines.append(
                f"\nA 70,000 x 70,000 px slide ({SLIDE_70K_TILES:,} tiles of 256 px, all tissue) with the "
                f"{row.config} config at this rate: {hours:.0f} h ({hours / 24:.1f} days)."
            )
    return "\n".join(lines)
