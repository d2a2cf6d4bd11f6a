"""`wsi-haloae bench ...`: throughput tables of this machine (calls `wsi_haloae.bench`)."""

from __future__ import annotations

from pathlib import Path

import click

from .heatmap import bench_heatmap_command


@click.group("bench")
def bench_group() -> None:
    """Measure how fast this machine runs each stage."""


def parse_size(text: str) -> tuple[int, int]:
    """'8192x8192' -> (8192, 8192): width and height in px."""
    from ..errors import ConfigError

    try:
        width_px, height_px = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r} is not WIDTHxHEIGHT in pixels, e.g. 8192x8192") from None
    if width_px < 1 or height_px < 1:
        raise ConfigError(f"--size {text!r} must be positive")
    return width_px, height_px


def parse_workers(text: str | None) -> list[int] | None:
    """'1,2,N' -> [1, 2, all cores]; None -> None (the library's default)."""
    from ..bench import available_cpus
    from ..errors import ConfigError

    if text is None:
        return None
    counts = []
    for part in text.split(","):
        part = part.strip()
        if part.upper() == "N":
            counts.append(available_cpus())
        elif part.isdigit() and int(part) > 0:
            counts.append(int(part))
        else:
            raise ConfigError(f"--workers {text!r} must list positive worker counts or N, e.g. 1,2,N")
    return sorted(set(counts))


@bench_group.command("tiling")
@click.argument("slide", required=False, type=click.Path(path_type=Path))
@click.option(
    "--size", default="8192x8192", show_default=True, help="Synthetic slide size when no SLIDE is given."
)
@click.option("--workers", help="Worker counts to measure, N = all cores [default: 1,2,N].")
@click.option(
    "--backend", type=click.Choice(["openslide", "tiffslide"]), default="openslide", show_default=True
)
@click.option("--tile-size", "tile_size_px", type=int, default=256, show_default=True)
def tiling_command(
    slide: Path | None, size: str, workers: str | None, backend: str, tile_size_px: int
) -> None:
    """Tiles/s of plain read_region against the streaming reader with 1, 2 and all workers."""
    from ..bench import benchmark_tiling, format_tiling_table, provenance

    rows = benchmark_tiling(
        slide,
        size_px=parse_size(size),
        workers=parse_workers(workers),
        backend=backend,
        tile_size_px=tile_size_px,
    )
    click.echo(provenance())
    click.echo(format_tiling_table(rows))


bench_group.add_command(bench_heatmap_command)  # `bench heatmap` lives with the heatmap command

COMMANDS: list[click.Command] = [bench_group]
