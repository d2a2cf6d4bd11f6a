"""The `wsi-haloae` command line: the only place that knows about click, printing and exit codes.

Each command lives in its own module here and calls one library function; heavy imports (torch,
zarr, dask) happen inside the command, so `--help` stays instant.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from ..errors import WsiHaloaeError
from . import bench, demo, evaluate, heatmap, slides, tile, train, view


class _Group(click.Group):
    """Turns user-facing errors into one stderr line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except WsiHaloaeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(
                "interrupted: finished work is kept; rerun the same command to resume (train: add --resume)",
                err=True,
            )
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="wsi-haloae")
def main(verbose: int, quiet: bool) -> None:
    """Find abnormal regions of whole-slide images with HaloAE, without annotations."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # dask reads this when distributed is first imported, in this process and in its workers
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "debug" if verbose > 1 else "warning")
    for noisy in ("distributed", "PIL", "matplotlib", "asyncio", "numcodecs", "fsspec", "tifffile"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


for _module in (slides, tile, train, heatmap, evaluate, bench, demo, view):
    for _command in _module.COMMANDS:
        main.add_command(_command)
