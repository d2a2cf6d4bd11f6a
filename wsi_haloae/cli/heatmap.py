"""`wsi-haloae heatmap`: anomaly heatmaps of slides (`wsi_haloae.heatmaps.heatmap.heatmap_slides` for one
slide, `wsi_haloae.cohort.heatmap_cohort` for a cohort)."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import click

from .cohort_options import cohort_options
from .region_options import region_options


@click.command("heatmap")
@click.argument("slides", nargs=-1, required=True)
@click.option(
    "--model",
    "run",
    required=True,
    type=click.Path(path_type=Path),
    help="Training run folder (with model.safetensors) or the model file itself.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder; each slide gets OUT/<slide name>/.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="HeatmapConfig YAML (e.g. configs/heatmap.yaml); options below override it.",
)
@click.option(
    "--mpp",
    "mpp_um",
    type=float,
    help="Tile resolution in µm/px (default: the model's training resolution; another needs "
    "--allow-mpp-mismatch).",
)
@click.option("--level", type=int, help="Tile at this pyramid level instead of a target mpp.")
@click.option("--assume-mpp", "assume_mpp_um", type=float, help="µm/px of slides whose file does not say.")
@click.option(
    "--slide-mpp", "slide_mpp_um", type=float, help="The slides' level-0 µm/px, overriding their metadata."
)
@click.option(
    "--allow-mpp-mismatch", is_flag=True, help="Score at an --mpp/--level other than the model's (warned)."
)
@click.option("--allow-upsample", is_flag=True, help="Allow tiles finer than the slide's level 0.")
@click.option(
    "--allow-non-brightfield", is_flag=True, help="Score slides that do not look like brightfield (warned)."
)
@click.option(
    "--stride", "stride_px", type=int, help="Tile stride in px (default: the tile size; less overlaps)."
)
@click.option("--min-tissue", type=float, help="Minimum tissue fraction of a scored tile (default 0.5).")
@click.option("--batch-size", type=int, help="Tiles per batch (default: chosen to fit the device).")
@click.option(
    "--workers", type=int, help="Tile reader processes (default: all cores but two on CUDA, 0 on the CPU)."
)
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option(
    "--backend", type=click.Choice(["openslide", "tiffslide"]), help="Slide reader (default openslide)."
)
@click.option(
    "--compile/--no-compile", "compile_model", default=None, help="torch.compile the model (default: no)."
)
@click.option(
    "--cuda-graphs/--no-cuda-graphs",
    default=None,
    help="Replay the model as a CUDA graph (CUDA; exclusive with --compile; default: no).",
)
@click.option(
    "--tile-reader",
    type=click.Choice(["auto", "slide", "jpeg"]),
    help="jpeg: decode the file's JPEG tiles on the device; slide: OpenSlide reads; auto (default): jpeg on CUDA when the grid is the file's tiles.",
)
@click.option("--no-bf16", is_flag=True, help="Run in float32 on CUDA too.")
@click.option(
    "--threshold",
    type=float,
    help="Anomaly threshold (default: the model's high percentile of its training tile scores).",
)
@click.option(
    "--threshold-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="threshold.json from `wsi-haloae validate --choose-threshold` (default: the model folder's, if any).",
)
@cohort_options
@partial(region_options, min_inside_default=None)
@click.option(
    "--artefacts",
    type=click.Choice(["report", "off"]),
    help="Pen, fold and blur QC: report artefact tiles as their own class (default) or skip it.",
)
@click.option(
    "--normalisation",
    type=click.Choice(["median", "mean"]),
    help="Score |map - training map| against the median training map (default) or the mean (the paper's).",
)
@click.option(
    "--tissue-aware/--no-tissue-aware",
    default=None,
    help="Score tiles from their tissue pixels only (default) or from every pixel (the old scores).",
)
@click.option(
    "--also-export",
    "also_export",
    multiple=True,
    type=click.Choice(["qupath"]),
    help="Also write heatmap.ome.tif (pyramidal OME-TIFF, µm scale) and heatmap_overlay.png for QuPath/Fiji.",
)
@click.option(
    "--plain-geojson", is_flag=True, help="Write tiles.geojson uncompressed (default: tiles.geojson.gz)."
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
def heatmap_command(
    slides: tuple[str, ...],
    run: Path,
    out: Path,
    config_path: Path | None,
    mpp_um: float | None,
    level: int | None,
    assume_mpp_um: float | None,
    slide_mpp_um: float | None,
    allow_mpp_mismatch: bool,
    allow_upsample: bool,
    allow_non_brightfield: bool,
    stride_px: int | None,
    min_tissue: float | None,
    batch_size: int | None,
    workers: int | None,
    device: str | None,
    backend: str | None,
    compile_model: bool | None,
    cuda_graphs: bool | None,
    tile_reader: str | None,
    no_bf16: bool,
    threshold: float | None,
    threshold_file: Path | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    min_inside: float | None,
    tissue_mask: str | None,
    artefacts: str | None,
    normalisation: str | None,
    tissue_aware: bool | None,
    scheduler: str | None,
    dask_workers: int | None,
    dashboard: str,
    also_export: tuple[str, ...],
    plain_geojson: bool,
    progress: bool,
) -> None:
    """Score SLIDES with a trained model: heatmap pyramid, QuPath GeoJSON, overlay, summary.

    SLIDES are slide files, glob patterns or CSV lists (a `slide` or `path` column). Many slides
    run as a cohort on dask and get OUT/cohort.csv; a rerun skips finished slides.
    """
    from ..config import HeatmapConfig, load_config, replace
    from .fail_fast import check_slides_open

    cfg = load_config(config_path, HeatmapConfig) if config_path is not None else HeatmapConfig()
    if level is not None and mpp_um is None:  # a level on the command line replaces the preset's mpp
        cfg = dataclasses.replace(cfg, mpp_um=None)
    elif mpp_um is not None and level is None:
        cfg = dataclasses.replace(cfg, level=None)
    cfg = replace(
        cfg,
        mpp_um=mpp_um,
        level=level,
        assume_mpp_um=assume_mpp_um,
        slide_mpp_um=slide_mpp_um,
        allow_mpp_mismatch=allow_mpp_mismatch or None,
        allow_upsample=allow_upsample or None,
        allow_non_brightfield=allow_non_brightfield or None,
        stride_px=stride_px,
        min_tissue=min_tissue,
        batch_size=batch_size,
        workers=workers,
        device=device,
        backend=backend,
        compile=compile_model,
        cuda_graphs=cuda_graphs,
        tile_reader=tile_reader,
        threshold=threshold,
        threshold_file=None if threshold_file is None else str(threshold_file),
        normalisation=normalisation,
        tissue_aware=tissue_aware,
        bf16=False if no_bf16 else None,
        include=include or None,
        exclude=exclude or None,
        min_inside=min_inside,
        tissue_mask=tissue_mask,
        artefacts=artefacts,
        tiles_gzip=False if plain_geojson else None,
    )
    if len(slides) == 1 and scheduler is None:  # a cohort records a bad slide and goes on instead
        check_slides_open(
            slides, cfg.backend, assume_mpp_um=cfg.assume_mpp_um, slide_mpp_um=cfg.slide_mpp_um
        )  # before the heavy imports: a bad file fails in a second

    from ..cohort import expand_slides, heatmap_cohort
    from ..heatmaps.heatmap import heatmap_slides

    paths = expand_slides(slides)
    if scheduler is not None or len(paths) > 1:
        rows = heatmap_cohort(
            paths,
            run,
            out,
            cfg,
            scheduler=scheduler or "local",
            n_workers=dask_workers,
            dashboard_address=dashboard,
            progress=progress,
        )
        done = sum(row.status == "done" for row in rows)
        click.echo(
            f"{len(rows)} slides: {done} scored now, {len(rows) - done} already done -> {out / 'cohort.csv'}"
        )
        _export(also_export, paths, out)
        return
    for result in heatmap_slides(paths, run, out, cfg, progress=progress):
        click.echo(
            f"{result.slide.name}: {result.tiles} tiles, {result.anomalous_tiles} above "
            f"{result.threshold:.4g}, {result.regions} regions -> {result.out_dir} "
            f"({result.computed_tiles} scored now, {result.seconds:.1f} s)"
        )
    _export(also_export, paths, out)


def _export(kinds: tuple[str, ...], paths: list[Path], out: Path) -> None:
    """The `--also-export` files of every finished slide folder."""
    if "qupath" not in kinds:
        return
    from ..heatmaps.export import export_qupath

    for path in paths:
        folder = out / Path(path).stem
        if (folder / "summary.json").is_file():
            written = export_qupath(folder)
            click.echo(f"{Path(path).name}: for QuPath/Fiji -> {', '.join(str(p) for p in written)}")


COMMANDS: list[click.Command] = [heatmap_command]
