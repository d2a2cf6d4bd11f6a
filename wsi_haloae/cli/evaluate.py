"""`wsi-haloae evaluate`: score a trained model on an MVTec-AD category (calls `validation.evaluate.evaluate_mvtec`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("evaluate")
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Data set root in MVTec-AD layout (ROOT/CATEGORY/train/good, test/..., ground_truth/...).",
)
@click.option("--category", required=True, help="Category folder under --data, e.g. carpet.")
@click.option(
    "--model",
    "run",
    required=True,
    type=click.Path(path_type=Path),
    help="Training run folder (or its model.safetensors).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder; results go to OUT/<protocol>/.",
)
@click.option(
    "--protocol",
    type=click.Choice(["honest", "official"]),
    default="honest",
    show_default=True,
    help="honest: training-set normalisation, mean score, full-resolution pixels, no label flipping. "
    "official: the official HaloAE scoring's choices, for comparison with the paper.",
)
@click.option(
    "--normalisation",
    type=click.Choice(["mean", "median"]),
    default="mean",
    show_default=True,
    help="honest protocol: make maps relative to the mean (the paper's) or median training map.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Test images per forward pass.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def evaluate_command(
    data: Path,
    category: str,
    run: Path,
    out: Path,
    protocol: str,
    normalisation: str,
    device: str,
    batch_size: int,
    progress: bool,
) -> None:
    """Image AUROC, pixel AUROC, AUPRO and F1-max of a trained model on one MVTec-AD category."""
    from ..model.device import resolve_device
    from ..training.checkpoint import load_trained
    from ..validation.evaluate import evaluate_mvtec, result_folder
    from ..validation.mvtec import mvtec_index

    mvtec_index(data, category)  # a wrong root or category fails here, before the model loads
    trained = load_trained(run, resolve_device(device))
    result = evaluate_mvtec(
        trained,
        data,
        category,
        out,
        protocol=protocol,  # type: ignore[arg-type]
        normalisation=normalisation,  # type: ignore[arg-type]
        batch_size=batch_size,
        progress=progress,
    )
    overall = result["overall"]
    click.echo(
        f"{category}, {protocol} protocol: image AUROC {overall['image_auroc']:.4f}, "
        f"pixel AUROC {overall['pixel_auroc']:.4f}, AUPRO {overall['aupro']:.4f} "
        f"-> {result_folder(out, protocol, normalisation) / 'metrics.json'}"  # type: ignore[arg-type]
    )


COMMANDS: list[click.Command] = [evaluate_command]
