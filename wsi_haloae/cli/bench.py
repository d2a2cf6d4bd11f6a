"""`wsi-haloae bench ...`: throughput tables of this machine (calls `wsi_haloae.bench`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click


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


@bench_group.command("heatmap")
@click.option("--size", default="8192x8192", show_default=True, help="Synthetic slide size, WIDTHxHEIGHT px.")
@click.option(
    "--slide",
    "slide_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Time this slide instead of writing a synthetic one (e.g. one kept from an earlier run).",
)
@click.option("--model", "run", type=click.Path(path_type=Path), help="Trained run folder to time.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TrainConfig YAML of an untrained model to time instead (e.g. configs/haloae-paper.yaml).",
)
@click.option("--backbone-weights", help="With --config: VGG19 weights (random avoids a download).")
@click.option("--batch-size", type=int, help="Tiles per batch (default: chosen to fit the device).")
@click.option(
    "--workers", type=int, help="Tile reader processes (default: all cores but two on CUDA, 0 on the CPU)."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model.")
@click.option("--cuda-graphs", is_flag=True, help="Replay the model as a CUDA graph (CUDA).")
@click.option("--no-bf16", is_flag=True, help="Run in float32 on CUDA too.")
@click.option(
    "--baseline-tiles", type=int, default=64, show_default=True, help="Tiles for the batch-1 fp32 baseline."
)
def bench_heatmap_command(
    size: str,
    slide_path: Path | None,
    run: Path | None,
    config_path: Path | None,
    backbone_weights: str | None,
    batch_size: int | None,
    workers: int | None,
    device: str,
    compile_model: bool,
    cuda_graphs: bool,
    no_bf16: bool,
    baseline_tiles: int,
) -> None:
    """Tiles/s of `heatmap` end to end and per stage on a synthetic slide, against batch-1 fp32."""
    from ..bench import benchmark_heatmap, format_heatmap_bench, provenance
    from ..config import TrainConfig, load_config, replace
    from ..errors import ConfigError

    config = None
    if config_path is not None:
        config = load_config(config_path, TrainConfig)
        if backbone_weights is not None:
            config = dataclasses.replace(
                config, model=replace(config.model, backbone_weights=backbone_weights)
            )
    elif backbone_weights is not None:
        raise ConfigError("--backbone-weights applies to --config only; a trained model carries its own")
    bench = benchmark_heatmap(
        slide_path,
        size_px=parse_size(size),
        run=run,
        config=config,
        batch_size=batch_size,
        workers=workers,
        device=device,
        compile=compile_model,
        cuda_graphs=cuda_graphs,
        bf16=not no_bf16,
        baseline_tiles=baseline_tiles,
    )
    accelerator = "no GPU"
    if bench.device.startswith("cuda"):
        import torch

        accelerator = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    click.echo(provenance(accelerator))
    click.echo(format_heatmap_bench(bench))


@bench_group.command("cpu")
@click.option(
    "--config",
    "config_paths",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TrainConfig YAML to time (repeatable) [default: configs/haloae-paper.yaml and configs/tiny.yaml].",
)
@click.option("--batch-size", type=int, default=2, show_default=True)
@click.option("--batches", type=int, default=2, show_default=True, help="Timed batches per config.")
@click.option("--threads", type=int, help="torch threads (default: torch's own).")
def bench_cpu_command(
    config_paths: tuple[Path, ...], batch_size: int, batches: int, threads: int | None
) -> None:
    """Tiles/s of the scorer on the CPU (fp32), and its FLOP rate against a plain matmul's."""
    import torch

    from ..bench import benchmark_cpu, format_cpu_bench, provenance
    from ..config import TrainConfig, load_config
    from ..errors import ConfigError

    if batch_size < 1 or batches < 1:
        raise ConfigError(f"--batch-size {batch_size} and --batches {batches} must be at least 1")
    if threads is not None:
        torch.set_num_threads(threads)
    if not config_paths:
        root = Path(__file__).resolve().parents[2] / "configs"
        config_paths = (root / "haloae-paper.yaml", root / "tiny.yaml")
    configs = [(path.stem, load_config(path, TrainConfig)) for path in config_paths]
    rows = benchmark_cpu(configs, batch_size=batch_size, batches=batches)
    click.echo(provenance(f"no GPU, {torch.get_num_threads()} torch threads"))
    click.echo(format_cpu_bench(rows))


COMMANDS: list[click.Command] = [bench_group]
