"""Cohort throughput: slides/hour of `heatmap` over many small slides, in this process and on
local dask clusters of 1, 2, ... workers.

    .venv/bin/python pipelines/bench_cohort.py --slides 8 --size 4096 --workers 1,2

Writes `--slides` synthetic slides (with anomalies) and trains the `tiny` model briefly on a
normal one (or times `--model RUN`), then runs the whole cohort once per setting into a fresh
output folder, cluster start-up and model loading included. Prints a Markdown table for
docs/scaling.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path

import click

from wsi_haloae.bench import available_cpus
from wsi_haloae.cohort import heatmap_cohort
from wsi_haloae.config import HeatmapConfig, TrainConfig, load_config
from wsi_haloae.slides.synthetic import write_synthetic_slide
from wsi_haloae.slides.tiles import TileConfig, write_tiles
from wsi_haloae.training.train import train

ROOT = Path(__file__).resolve().parents[1]


@click.command()
@click.option("--slides", "count", default=8, show_default=True, help="Slides in the cohort.")
@click.option(
    "--size", default=4096, show_default=True, help="Side of each synthetic slide, px at 0.5 µm/px."
)
@click.option(
    "--workers", default="1,2", show_default=True, help="Local cluster sizes to time, comma-separated."
)
@click.option(
    "--model", "run", type=click.Path(exists=True, path_type=Path), help="Trained run folder to time."
)
@click.option("--mpp", default=1.0, show_default=True, help="Tile resolution, µm/px.")
@click.option(
    "--keep", type=click.Path(file_okay=False, path_type=Path), help="Keep slides and outputs here."
)
def main(count: int, size: int, workers: str, run: Path | None, mpp: float, keep: Path | None) -> None:
    logging.basicConfig(level=logging.WARNING)
    folder = keep or Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    slides = []
    for seed in range(count):
        path = folder / "slides" / f"slide-{seed:03d}.tiff"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_synthetic_slide(path, size, size, anomalies=2, seed=100 + seed)
        slides.append(path)
    if run is None:
        normal = write_synthetic_slide(folder / "normal.tiff", 2048, 2048, seed=99).path
        write_tiles([normal], folder / "tiles", TileConfig(mpp_um=mpp, tile_size_px=64, max_tiles=64))
        cfg = dataclasses.replace(
            load_config(ROOT / "configs" / "tiny.yaml", TrainConfig), epochs=1, samples_per_epoch=16
        )
        run = train(cfg, folder / "tiles", folder / "run", progress=False)

    heatmap_cfg = HeatmapConfig(mpp_um=mpp, device="cpu", workers=0)
    settings = [("none", None)] + [("local", int(n)) for n in workers.split(",")]
    rows = []
    for scheduler, n_workers in settings:
        out = folder / f"out-{scheduler}-{n_workers or 0}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        result = heatmap_cohort(
            slides, run, out, heatmap_cfg, scheduler=scheduler, n_workers=n_workers, dashboard_address=":0"
        )
        seconds = time.perf_counter() - started
        tiles = sum(row.tiles or 0 for row in result)
        label = (
            "in this process (--scheduler none)"
            if scheduler == "none"
            else f"LocalCluster, {n_workers} CPU worker(s)"
        )
        rows.append((label, seconds, count / seconds * 3600, tiles / seconds))
    print(
        f"date {datetime.date.today()}, {platform.node()}, {available_cpus()} CPU cores, no GPU; "
        f"{count} slides of {size}x{size} px at 0.5 µm/px, tiny model, {mpp} µm/px tiles, "
        f"{tiles // count} tissue tiles/slide"
    )
    print()
    print("| setting | seconds | slides/hour | tiles/s |")
    print("|---|---:|---:|---:|")
    for label, seconds, per_hour, per_s in rows:
        print(f"| {label} | {seconds:.1f} | {per_hour:.0f} | {per_s:.1f} |")
    if keep is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
