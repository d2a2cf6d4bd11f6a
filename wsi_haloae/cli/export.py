"""`wsi-haloae export`: a trained model's tile scorer as one ONNX or TorchScript file
(`wsi_haloae.heatmaps.export`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--format", "export_format", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (default: RUN/scorer.onnx or RUN/scorer.pt).",
)
@click.option(
    "--batch-size", type=int, default=8, show_default=True, help="Tiles per call, fixed in the file."
)
@click.option(
    "--normalisation",
    type=click.Choice(["median", "mean"]),
    default="median",
    show_default=True,
    help="Training map the anomaly maps are made relative to (baked into the file).",
)
@click.option("--check/--no-check", default=True, show_default=True, help="Run the file against PyTorch.")
def export_command(
    run: Path, export_format: str, out: Path | None, batch_size: int, normalisation: str, check: bool
) -> None:
    """Export the scorer of RUN: uint8 tiles in, anomaly maps and tile scores out."""
    from ..heatmaps.scorer_export import check_export, export_scorer
    from ..training.checkpoint import load_trained

    trained = load_trained(run, "cpu")
    if out is None:
        out = trained.run_dir / ("scorer.onnx" if export_format == "onnx" else "scorer.pt")
    path = export_scorer(
        trained,
        out,
        format=export_format,
        batch_size=batch_size,
        normalisation=normalisation,  # type: ignore[arg-type]
    )
    click.echo(f"wrote {path} ({export_format}, batch {batch_size}, {normalisation} normalisation)")
    if check:
        differences = check_export(
            trained,
            path,
            format=export_format,
            normalisation=normalisation,
            batch_size=batch_size,  # type: ignore[arg-type]
        )
        click.echo(
            "max abs difference to PyTorch: " + ", ".join(f"{k} {v:.2e}" for k, v in differences.items())
        )


COMMANDS: list[click.Command] = [export_command]
