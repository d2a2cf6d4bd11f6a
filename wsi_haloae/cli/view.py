"""`wsi-haloae view`: the slide and its heatmap in the browser (`wsi_haloae.viewer.server`)."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click


@click.command("view")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0 picks a free one).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but 127.0.0.1 shows the slide to the network.",
)
@click.option(
    "--slide", "slide_path", type=click.Path(dir_okay=False, path_type=Path), help="The slide, if it moved."
)
@click.option(
    "--backend", type=click.Choice(["openslide", "tiffslide"]), default="openslide", show_default=True
)
@click.option("--open/--no-open", "open_browser", default=False, help="Open the page in the default browser.")
def view_command(
    folder: Path, port: int, host: str, slide_path: Path | None, backend: str, open_browser: bool
) -> None:
    """Serve FOLDER (one slide's heatmap output, OUT/<slide>) to a browser: pan and zoom the slide
    at full resolution with the heatmap over it, threshold and opacity sliders, region outlines,
    artefact tiles, scores on hover. Read-only; Ctrl-C stops it."""
    from ..viewer.server import make_server

    server = make_server(folder, host=host, port=port, slide_path=slide_path, backend=backend)
    click.echo(f"viewing {server.data.folder} at {server.url} (Ctrl-C stops)")
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()
        server.data.close()


COMMANDS: list[click.Command] = [view_command]
