"""`wsi-haloae tile`: cut slides into tissue tiles plus a manifest (calls `wsi_haloae.tiles.write_tiles`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("tile")
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Output folder (one sub-folder per slide)."
)
@click.option("--mpp", "mpp_um", type=float, help="Tile resolution in µm/px [default: 0.5].")
@click.option("--level", type=int, help="Tile at this pyramid level's own resolution instead of --mpp.")
@click.option(
    "--assume-mpp", "assume_mpp_um", type=float, help="µm/px to use for slides whose metadata has none."
)
@click.option(
    "--tile-size", "tile_size_px", type=int, default=256, show_default=True, help="Tile side in px."
)
@click.option("--stride", "stride_px", type=int, help="Step between tiles in px [default: the tile size].")
@click.option(
    "--min-tissue",
    type=float,
    default=0.5,
    show_default=True,
    help="Keep tiles with at least this tissue fraction.",
)
@click.option(
    "--format", "image_format", type=click.Choice(["png", "jpeg"]), default="png", show_default=True
)
@click.option("--max-tiles", type=int, help="Sample at most this many tiles across all slides.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --max-tiles sample.")
@click.option(
    "--workers",
    type=int,
    default=0,
    show_default=True,
    help="Tile reader processes (0 = read in this process).",
)
@click.option(
    "--backend", type=click.Choice(["openslide", "tiffslide"]), default="openslide", show_default=True
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def tile_command(
    slides: tuple[Path, ...],
    out: Path,
    mpp_um: float | None,
    level: int | None,
    assume_mpp_um: float | None,
    tile_size_px: int,
    stride_px: int | None,
    min_tissue: float,
    image_format: str,
    max_tiles: int | None,
    seed: int,
    workers: int,
    backend: str,
    progress: bool,
) -> None:
    """Write the tissue tiles of SLIDE... as images, with a manifest.csv per slide, under --out.

    Re-running the same command resumes: finished slides are skipped, written tiles kept.
    """
    from ..errors import ConfigError
    from ..tiles import TileConfig, write_tiles

    if mpp_um is not None and level is not None:
        raise ConfigError(f"--mpp {mpp_um} and --level {level} both set the resolution; give only one")
    cfg = TileConfig(
        mpp_um=mpp_um,
        level=level,
        assume_mpp_um=assume_mpp_um,
        tile_size_px=tile_size_px,
        stride_px=stride_px,
        min_tissue=min_tissue,
        image_format=image_format,  # type: ignore[arg-type]
        max_tiles=max_tiles,
        seed=seed,
        workers=workers,
        backend=backend,  # type: ignore[arg-type]
    )
    for result in write_tiles(slides, out, cfg, progress=progress):
        state = "already done" if result.skipped else f"{result.written} written"
        click.echo(f"{result.slide}: {result.tiles} tiles ({state}) -> {result.manifest}")


COMMANDS: list[click.Command] = [tile_command]
