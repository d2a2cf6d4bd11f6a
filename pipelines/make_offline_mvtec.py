"""Write an offline MVTec-format benchmark from real slides and scikit-image textures.

    .venv/bin/python pipelines/make_offline_mvtec.py OUT --slides ../shared/data/CMU-1-Small-Region.svs
    .venv/bin/python pipelines/make_offline_mvtec.py OUT --categories brick --n-train 20 --size-px 64

Each category lands in OUT/<category> in MVTec AD's layout (see `wsi_haloae.validation.synth_mvtec`), read
back here with `wsi_haloae.validation.mvtec.mvtec_index` to print what was written.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from wsi_haloae.errors import WsiHaloaeError
from wsi_haloae.validation.mvtec import mvtec_index
from wsi_haloae.validation.synth_mvtec import DEFAULT_CATEGORIES, HISTOLOGY, make_offline_mvtec


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--slides",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Slide for the histology category (repeat for several).",
)
@click.option(
    "--categories",
    default=",".join(DEFAULT_CATEGORIES),
    show_default=True,
    help="Comma-separated categories to write.",
)
@click.option("--n-train", type=int, default=200, show_default=True, help="Training images per category.")
@click.option(
    "--n-test-good", type=int, default=40, show_default=True, help="Normal test images per category."
)
@click.option("--n-test-defect", type=int, default=10, show_default=True, help="Test images per defect type.")
@click.option("--size-px", type=int, default=256, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def main(
    out: Path,
    slides: tuple[Path, ...],
    categories: str,
    n_train: int,
    n_test_good: int,
    n_test_defect: int,
    size_px: int,
    seed: int,
    progress: bool,
) -> None:
    """Write the categories under OUT and print each one's image counts."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = tuple(c.strip() for c in categories.split(",") if c.strip())
    if HISTOLOGY in names and not slides:
        raise click.UsageError("histology needs --slides; or pass --categories without histology")
    try:
        folders = make_offline_mvtec(
            out,
            slides=slides,
            n_train=n_train,
            n_test_good=n_test_good,
            n_test_defect=n_test_defect,
            size_px=size_px,
            seed=seed,
            categories=names,
            progress=progress,
        )
        indexes = [mvtec_index(folder.parent, folder.name) for folder in folders]
    except WsiHaloaeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    for folder, index in zip(folders, indexes, strict=True):
        counts = ", ".join(f"{split}/{defect} {n}" for (split, defect), n in index.counts().items())
        click.echo(f"{folder}: {counts}")


if __name__ == "__main__":
    main()
