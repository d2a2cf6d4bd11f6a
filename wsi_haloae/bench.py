"""Throughput benchmarks of the library's engines, as plain functions returning table rows.

`benchmark_tiling` answers: how many tiles per second does `iter_tiles` deliver with N worker
processes, against N times a plain single-process `read_region` loop over the same tiles?
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .grid import DEFAULT_TILE_SIZE_PX, TileGrid
from .slide import open_slide
from .synthetic import write_synthetic_slide
from .tiles import DEFAULT_BATCH_SIZE, iter_tiles, read_tile

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
