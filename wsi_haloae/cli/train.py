"""`wsi-haloae train`: train HaloAE on tiles into a run folder (calls `wsi_haloae.training.train.train`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click


@click.command("train")
@click.option(
    "--tiles",
    required=True,
    type=click.Path(path_type=Path),
    help="Tile folder (from `wsi-haloae tile`, or any PNG/JPEG folder), a tile manifest CSV, "
    "or an MVTec-AD category folder (its train/good).",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder to write."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TrainConfig YAML (default: the paper's recipe; with --resume: the run's config.yaml).",
)
@click.option(
    "--tile-mpp",
    "tile_mpp",
    help="µm/px of the tiles, or 'unknown': needed for a plain image folder (tile manifests say it).",
)
@click.option("--epochs", type=int, help="Override the number of epochs.")
@click.option(
    "--backbone-weights", help="VGG19 weights: imagenet (default), random (tests only) or a .pth path."
)
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--workers", type=int, help="DataLoader worker processes (0 = load in this process).")
@click.option(
    "--stain-normalisation",
    type=click.Choice(["none", "macenko", "reinhard"]),
    help="Fit a stain normalisation on the tiles after training; store it with the model for heatmap.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def train_command(
    tiles: Path,
    out: Path,
    config_path: Path | None,
    tile_mpp: str | None,
    epochs: int | None,
    backbone_weights: str | None,
    device: str | None,
    workers: int | None,
    stain_normalisation: str | None,
    resume: bool,
    progress: bool,
) -> None:
    """Train HaloAE on normal tiles; writes RUN/model.safetensors, metrics and checkpoints."""
    from ..config import TrainConfig, load_config, replace
    from ..errors import ConfigError, DataError
    from ..training.resolution import has_manifests
    from ..training.train import train

    run_config = out / "config.yaml"
    if config_path is None and resume and run_config.exists():
        config_path = run_config
        # a run's recipe is never empty: an empty or unreadable one must not become the defaults
        if not run_config.is_file() or run_config.stat().st_size == 0:
            raise ConfigError(
                f"{run_config} is empty or not a file (a run that crashed as it started?); pass the "
                "run's recipe with --config, or delete the folder to start over"
            )
    cfg = load_config(config_path, TrainConfig) if config_path is not None else TrainConfig()
    cfg = replace(cfg, epochs=epochs, device=device, workers=workers, stain_normalisation=stain_normalisation)
    if backbone_weights is not None:
        cfg = dataclasses.replace(cfg, model=replace(cfg.model, backbone_weights=backbone_weights))
    if tile_mpp is None and Path(tiles).is_dir() and not has_manifests(tiles):
        if not (Path(tiles) / "train" / "good").is_dir():
            raise DataError(
                f"{tiles} holds no tile manifests, so the µm/px of its images is unknown; pass --tile-mpp "
                "with the µm/px they were cut at (e.g. --tile-mpp 0.5), or --tile-mpp unknown"
            )

    run = train(cfg, tiles, out, resume=resume, progress=progress, tile_mpp_um=tile_mpp)
    click.echo(f"trained model: {run / 'model.safetensors'}")


COMMANDS: list[click.Command] = [train_command]
