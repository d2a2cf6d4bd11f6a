"""The options of the commands that run a cohort on dask (`heatmap`, `tile`): one definition."""

from __future__ import annotations

import click

SCHEDULER_HELP = (
    "Run a cohort on dask: local (a local cluster, one worker per GPU or CPU workers), "
    "tcp://host:8786 (a running cluster) or none (one by one here). Default: local for many "
    "slides, none for one."
)


def cohort_options(command: click.Command) -> click.Command:
    """The options both cohort commands (heatmap, tile) share."""
    for option in reversed(
        [
            click.option("--scheduler", help=SCHEDULER_HELP),
            click.option(
                "--dask-workers",
                type=int,
                help="Workers of --scheduler local (default: one per GPU, else cores/4).",
            ),
            click.option(
                "--dashboard",
                default=":8787",
                show_default=True,
                help="Dask dashboard address of --scheduler local.",
            ),
        ]
    ):
        command = option(command)
    return command
