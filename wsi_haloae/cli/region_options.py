"""The options that choose tiles by regions a pathologist drew, shared by `tile` and `heatmap`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

REGION_HELP = (
    "QuPath GeoJSON (file.geojson, or file.geojson:Class[,Class] for some classes), ASAP/Camelyon "
    "XML (file.xml[:Group]), a mask image or OME-Zarr label (mask.png@16: level-0 px per mask px; "
    "inferred from the slide when left out). {stem} in the path is each slide's file name without extension."
)


def region_options(
    command: Callable[..., Any], *, min_inside_default: float | None = 0.5
) -> Callable[..., Any]:
    """Add --include, --exclude, --min-inside and --tissue-mask to a click command
    (`min_inside_default` None: left to the command's config file, default 0.5)."""
    options = [
        click.option(
            "--include",
            multiple=True,
            metavar="REGION",
            help=f"Use only tiles inside this region (repeatable: their union). {REGION_HELP}",
        ),
        click.option(
            "--exclude",
            multiple=True,
            metavar="REGION",
            help="Leave out tiles inside this region (repeatable).",
        ),
        click.option(
            "--min-inside",
            type=float,
            default=min_inside_default,
            show_default=min_inside_default is not None,
            help="Keep tiles with at least this fraction of their area inside the included minus the excluded regions.",
        ),
        click.option(
            "--tissue-mask",
            metavar="REGION",
            help="Tissue outline or mask to use instead of the built-in tissue detection (--min-tissue applies to it).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
