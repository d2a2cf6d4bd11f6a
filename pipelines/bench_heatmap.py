"""Heatmap throughput: end to end and per stage, against the paper's batch-1 fp32 setting.

    .venv/bin/python pipelines/bench_heatmap.py --size 70000x70000 \
        --config configs/haloae-paper.yaml --backbone-weights random          # the GPU target
    .venv/bin/python pipelines/bench_heatmap.py --size 2048x2048 \
        --config configs/tiny.yaml --device cpu --workers 1                    # CPU smoke

Writing the 70k x 70k synthetic slide takes minutes on few cores; `--slide PATH` times an
existing slide instead (any slide works; it is tiled at level 0).

Prints a Markdown block (date, machine, command, table) ready for docs/benchmarks.md. The same
measurement is `wsi-haloae bench heatmap`; both call `wsi_haloae.heatmap.benchmark_heatmap`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import platform
import sys
from pathlib import Path

import click
import torch

from wsi_haloae.bench import available_cpus
from wsi_haloae.cli.bench import parse_size
from wsi_haloae.config import TrainConfig, load_config, replace
from wsi_haloae.heatmap import benchmark_heatmap, format_heatmap_bench


@click.command()
@click.option("--size", default="8192x8192", show_default=True, help="Synthetic slide size, WIDTHxHEIGHT px.")
@click.option(
    "--slide",
    "slide_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Time this slide instead of writing a synthetic one (e.g. one kept from an earlier run).",
)
@click.option("--model", "run", type=click.Path(exists=True, path_type=Path), help="Trained run folder.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TrainConfig YAML of an untrained model instead.",
)
@click.option("--backbone-weights", help="With --config: VGG19 weights (random avoids a download).")
@click.option("--batch-size", type=int, help="Tiles per batch (default: chosen to fit the device).")
@click.option(
    "--workers", type=int, help="Tile reader processes (default: all cores but two on CUDA, 0 on the CPU)."
)
@click.option("--device", default="auto", show_default=True)
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model.")
@click.option("--no-bf16", is_flag=True, help="float32 on CUDA too.")
@click.option("--baseline-tiles", type=int, default=64, show_default=True)
def main(
    size: str,
    slide_path: Path | None,
    run: Path | None,
    config_path: Path | None,
    backbone_weights: str | None,
    batch_size: int | None,
    workers: int | None,
    device: str,
    compile_model: bool,
    no_bf16: bool,
    baseline_tiles: int,
) -> None:
    """Measure and print the heatmap benchmark as Markdown."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = None
    if config_path is not None:
        config = load_config(config_path, TrainConfig)
        if backbone_weights is not None:
            config = dataclasses.replace(
                config, model=replace(config.model, backbone_weights=backbone_weights)
            )
    bench = benchmark_heatmap(
        slide_path,
        size_px=parse_size(size),
        run=run,
        config=config,
        batch_size=batch_size,
        workers=workers,
        device=device,
        compile=compile_model,
        bf16=not no_bf16,
        baseline_tiles=baseline_tiles,
    )
    gpu = torch.cuda.get_device_name() if bench.device.startswith("cuda") else "no GPU"
    click.echo(f"- date: {datetime.date.today().isoformat()}")
    click.echo(
        f"- machine: {platform.machine()}, {available_cpus()} cores, {gpu}, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
    click.echo(f"- model: {run if run is not None else config_path}")
    click.echo(f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`\n")
    click.echo(format_heatmap_bench(bench))


if __name__ == "__main__":
    main()
