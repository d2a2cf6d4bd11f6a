"""`wsi-haloae demo`: the whole path offline on synthetic slides (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Folder for the slides, tiles, model and heatmap.",
)
@click.option("--size", "size_px", type=int, default=4096, show_default=True, help="Slide side in px.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def demo_command(out: Path, size_px: int, seed: int, progress: bool) -> None:
    """Synthetic slides → tiles → train `tiny` → heatmap → tile-level AUROC, offline on a CPU."""
    from ..demo import run_demo

    result = run_demo(out, size_px=size_px, seed=seed, progress=progress)
    click.echo(f"model:        {result.run_dir}")
    click.echo(f"heatmap:      {result.heatmap_dir / 'heatmap.ome.zarr'}")
    click.echo(f"overlay:      {result.heatmap_dir / 'overlay.png'}")
    click.echo(
        f"QuPath:       {result.heatmap_dir / 'regions.geojson'}, {result.heatmap_dir / 'tiles.geojson.gz'}"
    )
    click.echo(f"ground truth: {result.ground_truth[1]}")
    click.echo(
        f"tile-level AUROC against the planted anomalies: {result.tile_auroc:.3f} "
        f"({result.anomalous_tiles} anomalous of {result.tiles} tissue tiles)"
    )
    click.echo("note: the demo uses a random (untrained) VGG19 backbone; real runs use ImageNet weights.")


COMMANDS = [demo_command]
