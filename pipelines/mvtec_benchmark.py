"""Train and evaluate HaloAE on MVTec-AD categories, then tabulate them beside the paper's Table 1.

    .venv/bin/python pipelines/mvtec_benchmark.py /data/mvtec --out bench/mvtec
    .venv/bin/python pipelines/mvtec_benchmark.py OFFLINE --categories histology,brick \\
        --config configs/tiny.yaml --out bench/offline

For each category, OUT/CATEGORY/run/ is the training run and OUT/CATEGORY/<protocol>/ its
evaluation (`wsi_haloae.validation.evaluate.evaluate_mvtec`). Resumable: a category whose
OUT/CATEGORY/<protocol>/metrics.json exists is skipped, a half-trained run continues from its last
epoch, and a finished run is evaluated without retraining (so a second protocol costs no training).
The table goes to OUT/table1-<protocol>.md and to standard output.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import click

from wsi_haloae.config import TrainConfig, load_config, replace
from wsi_haloae.errors import DataError, WsiHaloaeError
from wsi_haloae.model.device import resolve_device
from wsi_haloae.training.checkpoint import MODEL_FILE, load_trained
from wsi_haloae.training.train import train
from wsi_haloae.validation.evaluate import METRICS_FILE, PROTOCOLS, benchmark_table, evaluate_mvtec
from wsi_haloae.validation.mvtec import CATEGORIES, mvtec_index

PAPER_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "haloae-paper.yaml"
log = logging.getLogger("mvtec_benchmark")


@click.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--categories", help="Comma-separated categories (default: every category folder under ROOT).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=PAPER_CONFIG,
    show_default="configs/haloae-paper.yaml",
    help="TrainConfig YAML.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("mvtec-benchmark"),
    show_default=True,
    help="Output folder.",
)
@click.option("--epochs", type=int, help="Override the config's number of epochs.")
@click.option("--backbone-weights", help="VGG19 weights: imagenet, random (tests only) or a .pth path.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="honest", show_default=True)
@click.option("--device", help="auto, cpu, cuda or cuda:N (default: the config's).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Test images per forward pass.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def main(
    root: Path,
    categories: str | None,
    config_path: Path,
    out: Path,
    epochs: int | None,
    backbone_weights: str | None,
    protocol: str,
    device: str | None,
    batch_size: int,
    progress: bool,
) -> None:
    """Train and evaluate each category of ROOT (MVTec-AD layout); print the Table-1-style summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = replace(load_config(config_path, TrainConfig), epochs=epochs, device=device)
        if backbone_weights is not None:
            cfg = dataclasses.replace(cfg, model=replace(cfg.model, backbone_weights=backbone_weights))
        names = _categories(root, categories)
        for name in names:  # a wrong name fails now, not after hours of training the others
            mvtec_index(root, name)
        results = {}
        for name in names:
            metrics = out / name / protocol / METRICS_FILE
            if metrics.is_file():
                log.info("%s: finished (%s exists), skipped", name, metrics)
            else:
                run = out / name / "run"
                if not (run / MODEL_FILE).is_file():
                    train(cfg, root / name, run, resume=True, progress=progress)
                trained = load_trained(run, resolve_device(cfg.device))
                evaluate_mvtec(
                    trained,
                    root,
                    name,
                    out / name,
                    protocol=protocol,  # type: ignore[arg-type]
                    batch_size=batch_size,
                    progress=progress,
                )
            results[name] = json.loads(metrics.read_text())
    except WsiHaloaeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    table = benchmark_table(results)
    (out / f"table1-{protocol}.md").write_text(table)
    click.echo(table)


def _categories(root: Path, given: str | None) -> list[str]:
    """The categories asked for, or every folder of ROOT with a train/ folder: MVTec's order first."""
    if given is not None:
        names = [c.strip() for c in given.split(",") if c.strip()]
    else:
        found = {p.name for p in root.iterdir() if (p / "train").is_dir()}
        names = [c for c in CATEGORIES if c in found] + sorted(found - set(CATEGORIES))
    if not names:
        raise DataError(f"no category folder (with a train/ folder) under {root}; pass the data set root")
    return names


if __name__ == "__main__":
    main()
