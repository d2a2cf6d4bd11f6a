"""Training throughput of HaloAE with bf16 autocast on and off, on this machine's device.

    .venv/bin/python pipelines/bench_train.py --config configs/haloae-paper.yaml --steps 50
    .venv/bin/python pipelines/bench_train.py --config configs/tiny.yaml --steps 4 --workers 0  # CPU smoke

For each bf16 setting it runs `wsi_haloae.training.train.train` for two epochs of `--steps` steps on
synthetic tiles with an untrained backbone (same cost as ImageNet weights, no download): the first
epoch warms up (worker start, cuDNN autotuning), the second is timed. Images/s counts every image
the model sees (3 per Cut&Paste triplet) over the whole loop, data loading included, as written to
the run's metrics.jsonl. bf16 and channels_last apply on CUDA only, so on a CPU both rows run fp32.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from wsi_haloae.config import TrainConfig, load_config, replace
from wsi_haloae.model.device import resolve_device
from wsi_haloae.training.train import train

ROOT = Path(__file__).resolve().parents[1]


def write_synthetic_tiles(folder: Path, count: int, size_px: int, seed: int = 0) -> None:
    """`count` PNG tiles of smooth colour noise, `size_px` square, into `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        noise = gaussian_filter(rng.random((size_px, size_px, 3)), sigma=(size_px / 32, size_px / 32, 0))
        span = noise.max() - noise.min()
        pixels = ((noise - noise.min()) / span * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"tile_{i:03d}.png")


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=ROOT / "configs" / "haloae-paper.yaml",
    show_default=True,
    help="TrainConfig YAML to time.",
)
@click.option("--steps", type=int, default=30, show_default=True, help="Timed steps per bf16 setting.")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, help="DataLoader workers (default: the config's).")
@click.option(
    "--tiles", "tile_count", type=int, default=64, show_default=True, help="Synthetic tiles to draw from."
)
def main(config_path: Path, steps: int, device: str, workers: int | None, tile_count: int) -> None:
    """Print a Markdown table of training images/s with bf16 on and off."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    base = load_config(config_path, TrainConfig)
    base = replace(base, device=device, workers=workers, epochs=2)
    base = dataclasses.replace(
        base, samples_per_epoch=steps * base.batch_size, model=replace(base.model, backbone_weights="random")
    )
    where = resolve_device(device)
    name = torch.cuda.get_device_name(where) if where.type == "cuda" else "CPU"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as scratch:
        tiles = Path(scratch) / "tiles"
        write_synthetic_tiles(tiles, tile_count, base.model.image_size_px)
        for bf16 in (False, True):
            cfg = dataclasses.replace(base, bf16=bf16)
            if where.type == "cuda":
                torch.cuda.reset_peak_memory_stats(where)
            run = train(cfg, tiles, Path(scratch) / f"run_bf16_{bf16}", progress=False)
            timed = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            peak = f"{torch.cuda.max_memory_allocated(where) / 2**30:.1f}" if where.type == "cuda" else "-"
            used = "on" if bf16 and where.type == "cuda" else ("off (CUDA only)" if bf16 else "off")
            rows.append((used, timed["images_per_s"], timed["seconds"], peak))

    click.echo(
        f"HaloAE training, {config_path.name}, {name}, {base.model.image_size_px} px, "
        f"{3 * base.batch_size} images/step, {steps} timed steps, {base.workers} workers"
    )
    click.echo("| bf16 | channels_last | images/s | s/epoch | peak GPU memory (GiB) |")
    click.echo("| --- | --- | --- | --- | --- |")
    channels_last = "on" if base.channels_last and where.type == "cuda" else "off"
    for bf16, images_per_s, seconds, peak in rows:
        click.echo(f"| {bf16} | {channels_last} | {images_per_s:.1f} | {seconds:.2f} | {peak} |")


if __name__ == "__main__":
    main()
