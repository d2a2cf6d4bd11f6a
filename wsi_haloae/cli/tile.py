"""`wsi-haloae tile`: cut slides into tissue tiles plus a manifest (`wsi_haloae.slides.tiles.write_tiles`,
or `wsi_haloae.cohort.tile_cohort` with --scheduler)."""

from __future__ import annotations

from pathlib import Path

import click

from .cohort_options import cohort_options
from .region_options import region_options


@click.command("tile")
@click.argument("slides", nargs=-1, required=True)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Output folder (one sub-folder per slide)."
)
@click.option("--mpp", "mpp_um", type=float, help="Tile resolution in µm/px [default: 0.5].")
@click.option("--level", type=int, help="Tile at this pyramid level's own resolution instead of --mpp.")
@click.option(
    "--assume-mpp", "assume_mpp_um", type=float, help="µm/px to use for slides whose metadata has none."
)
@click.option(
    "--slide-mpp", "slide_mpp_um", type=float, help="The slides' level-0 µm/px, overriding their metadata."
)
@click.option("--allow-upsample", is_flag=True, help="Allow an --mpp finer than the slide's level 0.")
@click.option(
    "--allow-non-brightfield", is_flag=True, help="Tile slides that do not look like brightfield (warned)."
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
    "--max-tiles-per-slide", type=int, help="Keep at most this many tiles of each slide (drawn with --seed)."
)
@region_options
@click.option(
    "--artefacts",
    type=click.Choice(["exclude", "keep", "off"]),
    default="exclude",
    show_default=True,
    help="Pen, fold and blur tiles: leave out, keep (manifest column 'artefact') or skip the QC.",
)
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
@cohort_options
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def tile_command(
    slides: tuple[str, ...],
    out: Path,
    mpp_um: float | None,
    level: int | None,
    assume_mpp_um: float | None,
    slide_mpp_um: float | None,
    allow_upsample: bool,
    allow_non_brightfield: bool,
    tile_size_px: int,
    stride_px: int | None,
    min_tissue: float,
    image_format: str,
    max_tiles: int | None,
    seed: int,
    max_tiles_per_slide: int | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    min_inside: float,
    tissue_mask: str | None,
    artefacts: str,
    workers: int,
    backend: str,
    scheduler: str | None,
    dask_workers: int | None,
    dashboard: str,
    progress: bool,
) -> None:
    """Write the tissue tiles of SLIDE... as images, with a manifest.csv per slide, under --out.

    SLIDES are slide files, glob patterns or CSV lists (a `slide` or `path` column). Re-running
    the same command resumes: finished slides are skipped, written tiles kept. Many slides run as
    a cohort on dask: a failing slide is recorded in OUT/cohort.csv and the others go on.
    """
    from ..config import replace
    from ..errors import ConfigError
    from .fail_fast import check_slides_open

    if len(slides) == 1 and scheduler is None:  # a cohort records a bad slide and goes on instead
        check_slides_open(
            slides, backend, assume_mpp_um=assume_mpp_um, slide_mpp_um=slide_mpp_um, need_mpp=level is None
        )  # before the heavy imports: a bad file fails in a second

    from ..cohort import expand_slides, tile_cohort
    from ..slides.tiles import TileConfig, write_tiles

    if mpp_um is not None and level is not None:
        raise ConfigError(f"--mpp {mpp_um} and --level {level} both set the resolution; give only one")
    cfg = replace(
        TileConfig(),
        mpp_um=mpp_um,
        level=level,
        assume_mpp_um=assume_mpp_um,
        slide_mpp_um=slide_mpp_um,
        allow_upsample=allow_upsample,
        allow_non_brightfield=allow_non_brightfield,
        tile_size_px=tile_size_px,
        stride_px=stride_px,
        min_tissue=min_tissue,
        image_format=image_format,  # type: ignore[arg-type]
        max_tiles=max_tiles,
        seed=seed,
        max_tiles_per_slide=max_tiles_per_slide,
        include=include,
        exclude=exclude,
        min_inside=min_inside,
        tissue_mask=tissue_mask,
        artefacts=artefacts,  # type: ignore[arg-type]
        workers=workers,
        backend=backend,  # type: ignore[arg-type]
    )
    paths = expand_slides(slides)
    if scheduler is not None or len(paths) > 1:
        rows = tile_cohort(
            paths,
            out,
            cfg,
            scheduler=scheduler or "local",
            n_workers=dask_workers,
            dashboard_address=dashboard,
            progress=progress,
        )
        tiles = sum(row.tiles or 0 for row in rows)
        click.echo(f"{len(rows)} slides: {tiles} tiles -> {out / 'cohort.csv'}")
        return
    for result in write_tiles(paths, out, cfg, progress=progress):
        state = "already done" if result.skipped else f"{result.written} written"
        click.echo(f"{result.slide}: {result.tiles} tiles ({state}) -> {result.manifest}")


COMMANDS: list[click.Command] = [tile_command]
