"""Tile-reading throughput: plain read_region against the streaming reader with 1, 2 and N workers.

    .venv/bin/python pipelines/bench_tiling.py                       # synthetic 8192 x 8192 slide
    .venv/bin/python pipelines/bench_tiling.py slide.svs --workers 1,2,4,N

Prints a Markdown block (date, machine, command, table) ready for docs/benchmarks.md. The same
measurement is `wsi-haloae bench tiling`; both call `wsi_haloae.bench.benchmark_tiling`.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import sys
from pathlib import Path

import click

from wsi_haloae.bench import available_cpus, benchmark_tiling, format_tiling_table
from wsi_haloae.cli.bench import parse_size, parse_workers


@click.command()
@click.argument("slide", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--size", default="8192x8192", show_default=True, help="Synthetic slide size when no SLIDE is given."
)
@click.option("--workers", help="Worker counts, N = all cores [default: 1,2,N].")
@click.option(
    "--backend", type=click.Choice(["openslide", "tiffslide"]), default="openslide", show_default=True
)
@click.option("--tile-size", "tile_size_px", type=int, default=256, show_default=True)
def main(slide: Path | None, size: str, workers: str | None, backend: str, tile_size_px: int) -> None:
    """Measure and print the tiling benchmark as Markdown."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = benchmark_tiling(
        slide,
        size_px=parse_size(size),
        workers=parse_workers(workers),
        backend=backend,
        tile_size_px=tile_size_px,
    )
    subject = slide.name if slide else f"synthetic {size} px slide, all tissue, JPEG in 256 px tiles"
    click.echo(f"- date: {datetime.date.today().isoformat()}")
    click.echo(f"- machine: {_cpu_model()}, {available_cpus()} cores, Python {platform.python_version()}")
    click.echo(f"- slide: {subject}; {tile_size_px} px tiles at level 0, backend {backend}")
    click.echo(f"- command: `{' '.join([os.path.relpath(sys.executable), *sys.argv])}`\n")
    click.echo(format_tiling_table(rows))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    main()
