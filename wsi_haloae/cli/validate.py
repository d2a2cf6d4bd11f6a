"""`wsi-haloae validate`: metrics of slide heatmaps against annotations
(`wsi_haloae.validation.slides.validate_slides`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("validate")
@click.argument("out_dirs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--truth",
    "truth",
    multiple=True,
    required=True,
    help="Ground truth: a file (QuPath .geojson, ASAP .xml, mask .png/.tif, .zarr label; "
    "PATH[:CLASS][@DOWNSAMPLE]), a folder of them (matched to slides by stem) or a CSV slide,truth. Repeatable.",
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="CSV slide,label (0/1 or normal/abnormal) for slide-level AUROC (default: from the truth).",
)
@click.option(
    "--truth-class", "truth_classes", multiple=True, help="Keep only this annotation class (repeatable)."
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option(
    "--min-overlap",
    type=float,
    default=0.0,
    show_default=True,
    help="A tile is positive when more than this fraction of it lies in the truth.",
)
@click.option("--top-k", type=int, default=5, show_default=True, help="Tiles in the top-k-mean slide score.")
@click.option("--threshold", type=float, help="Operating threshold (default: the heatmaps' own).")
@click.option(
    "--choose-threshold",
    metavar="youden|fpr:X|fps-per-slide:N",
    help="Choose the threshold on this cohort and write OUT/threshold.json for heatmap --threshold-file.",
)
@click.option(
    "--region-hit",
    type=click.Choice(["peak", "overlap"]),
    default="peak",
    show_default=True,
    help="FROC hit rule: the detection's peak in a truth region, or any overlap (both are reported).",
)
def validate_command(
    out_dirs: tuple[Path, ...],
    truth: tuple[str, ...],
    labels_csv: Path | None,
    truth_classes: tuple[str, ...],
    out: Path,
    min_overlap: float,
    top_k: int,
    threshold: float | None,
    choose_threshold: str | None,
    region_hit: str,
) -> None:
    """Tile, pixel, region (FROC) and slide metrics of heatmap folders OUT_DIRS against annotations."""
    from ..validation.slides import validate_slides, validation_table

    result = validate_slides(
        out_dirs,
        truth,
        out,
        labels_csv=labels_csv,
        truth_classes=truth_classes or None,
        min_overlap=min_overlap,
        top_k=top_k,
        threshold=threshold,
        choose_threshold=choose_threshold,
        region_hit=region_hit,
    )
    click.echo(validation_table(result), nl=False)
    if result["chosen_threshold"] is not None:
        click.echo(f"threshold file: {result['chosen_threshold']['file']}")
    click.echo(f"-> {out}")


COMMANDS: list[click.Command] = [validate_command]
