"""`wsi-haloae make-slide` and `wsi-haloae info`: write a synthetic slide, describe any slide
(call `wsi_haloae.slides.synthetic` and `wsi_haloae.slides.slide`)."""

from __future__ import annotations

from pathlib import Path

import click

from .bench import parse_size


@click.command("make-slide")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--size", required=True, help="Level-0 WIDTHxHEIGHT in px, e.g. 20000x20000.")
@click.option("--mpp", "mpp_um", type=float, default=0.5, show_default=True, help="µm/px stored in the file.")
@click.option("--anomalies", type=int, default=0, show_default=True, help="Anomalies to plant in the tissue.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the layout and textures.")
@click.option(
    "--tissue",
    type=click.Choice(["blobs", "full", "sparse"]),
    default="blobs",
    show_default=True,
    help="Tissue blobs on a white background, tissue everywhere, or one small blob in the middle.",
)
@click.option(
    "--ground-truth",
    "ground_truth_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write the anomaly mask PNG (1/16 scale) and GeoJSON here.",
)
@click.option(
    "--stain-shift",
    type=float,
    default=0.0,
    show_default=True,
    help="Restain with other H&E vectors: 0 none, 1 Macenko's reference vectors (range 0-2).",
)
@click.option(
    "--cohort",
    metavar="NORMAL,ABNORMAL",
    help="Write a validation cohort into the folder OUT instead: NORMAL slides without and ABNORMAL "
    "with planted anomalies (several kinds and sizes), a stain-shifted normal slide (--stain-shift, "
    "default 0.5 here), truth as GeoJSON, ASAP XML and masks, labels.csv.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def make_slide(
    out: Path,
    size: str,
    mpp_um: float,
    anomalies: int,
    seed: int,
    tissue: str,
    ground_truth_dir: Path | None,
    stain_shift: float,
    cohort: str | None,
    progress: bool,
) -> None:
    """Write a synthetic pyramidal slide (tiled JPEG BigTIFF) with planted anomalies to OUT."""
    from ..config import in_range
    from ..errors import ConfigError
    from ..slides.synthetic import write_ground_truth, write_synthetic_slide

    if not in_range(mpp_um, "(0, inf)"):
        raise ConfigError(f"--mpp is {mpp_um}, outside its range (0, inf); use a finite number above 0")
    width_px, height_px = parse_size(size)
    if cohort is not None:
        _make_cohort(out, cohort, (width_px, height_px), mpp_um, seed, tissue, stain_shift, progress)
        return
    slide = write_synthetic_slide(
        out,
        width_px,
        height_px,
        mpp_um=mpp_um,
        anomalies=anomalies,
        seed=seed,
        tissue=tissue,  # type: ignore[arg-type]
        progress=progress,
        stain_shift=stain_shift,
    )
    kinds = ", ".join(a.kind for a in slide.anomalies) or "none"
    tissue_percent = 100 * slide.tissue.area / (width_px * height_px)
    click.echo(
        f"{slide.path}: {width_px}x{height_px} px at {mpp_um:g} µm/px, tissue {tissue_percent:.0f}%, "
        f"anomalies: {kinds}"
    )
    if ground_truth_dir is not None:
        mask_path, geojson_path = write_ground_truth(slide, ground_truth_dir)
        click.echo(f"ground truth: {mask_path}, {geojson_path}")


def _make_cohort(
    out: Path,
    cohort: str,
    size_px: tuple[int, int],
    mpp_um: float,
    seed: int,
    tissue: str,
    stain_shift: float,
    progress: bool,
) -> None:
    from ..errors import ConfigError
    from ..slides.synthetic_cohort import COHORT_STAIN_SHIFT, write_cohort

    try:
        normal, abnormal = (int(v) for v in cohort.split(","))
    except ValueError:
        raise ConfigError(f"--cohort {cohort!r} must be NORMAL,ABNORMAL slide counts, e.g. 2,3") from None
    slides = write_cohort(
        out,
        normal=normal,
        abnormal=abnormal,
        size_px=size_px,
        mpp_um=mpp_um,
        seed=seed,
        tissue=tissue,
        stain_shift=stain_shift or COHORT_STAIN_SHIFT,
        progress=progress,
    )
    for c in slides:
        kinds = ", ".join(a.kind for a in c.slide.anomalies) or "none"
        size = f" ({c.size_name})" if c.size_name else ""
        click.echo(f"{c.slide.path}: anomalies: {kinds}{size}")
    click.echo(f"truth: {out / 'truth'} (geojson/, xml/, mask/), labels: {out / 'labels.csv'}")


@click.command("info")
@click.argument("slide_path", metavar="SLIDE", type=click.Path(path_type=Path))
@click.option(
    "--backend", type=click.Choice(["openslide", "tiffslide"]), default="openslide", show_default=True
)
def info(slide_path: Path, backend: str) -> None:
    """Print a slide's size, pyramid levels, µm/px, objective power, vendor, channels, and
    whether it looks like a brightfield slide."""
    from ..slides.inputs import assess_slide
    from ..slides.slide import MPP_PLAUSIBLE_UM, open_slide, plausible_mpp
    from ..slides.tissue import detect_tissue

    with open_slide(slide_path, backend=backend) as slide:  # type: ignore[arg-type]
        width, height = slide.dimensions
        if slide.mpp_um is None:
            mpp = "none in the file (pass --assume-mpp or --slide-mpp)"
        else:
            mpp = f"{slide.mpp_um[0]:g} x {slide.mpp_um[1]:g} µm/px ({slide.mpp_source})"
            if not all(plausible_mpp(v) for v in slide.mpp_um):
                low, high = MPP_PLAUSIBLE_UM
                mpp += f", implausible: outside {low:g}-{high:g} µm/px; override with --slide-mpp"
        power = "unknown" if slide.objective_power is None else f"{slide.objective_power:g}x"
        channels = "unknown" if slide.channels is None else str(slide.channels)
        colour = slide.photometric or "unknown"
        if slide.ycbcr_frames:
            colour += " (its JPEG frames are YCbCr: converted to RGB on reading)"
        click.echo(f"slide: {slide.path}")
        click.echo(f"name: {slide.name}")
        click.echo(f"vendor: {slide.vendor or 'unknown'} (read with {slide.backend})")
        click.echo(f"dimensions: {width} x {height} px")
        click.echo(f"mpp: {mpp}")
        click.echo(f"objective power: {power}")
        click.echo(f"channels: {channels}, photometric: {colour}")
        click.echo(f"input: {assess_slide(slide, detect_tissue(slide, max_size_px=1024)).describe()}")
        click.echo(f"levels: {slide.level_count}")
        for level, ((w, h), downsample) in enumerate(
            zip(slide.level_dimensions, slide.level_downsamples, strict=True)
        ):
            click.echo(f"  level {level}: {w} x {h} px, downsample {downsample:g}")


COMMANDS: list[click.Command] = [make_slide, info]
