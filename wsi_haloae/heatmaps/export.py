"""Heatmaps for QuPath and Fiji: a pyramidal OME-TIFF of the scores at the slide's physical scale.

QuPath (0.4 to 0.7) and Fiji open OME-TIFF through Bio-Formats, whereas our OME-Zarr (zarr v3,
NGFF 0.5) they most likely do not. `export_qupath(folder)` writes, next to the heatmap:

    heatmap.ome.tif        float32 scores (NaN off tissue), one channel "anomaly_score", every
                           pyramid level of the OME-Zarr as a sub-resolution (SubIFDs), 256-px
                           tiles, deflate; OME-XML PhysicalSizeX/Y = the heatmap's µm per pixel
    heatmap_overlay.png    the same scores colour-mapped as in the overlay (transparent at or
                           below the threshold), at most `OVERLAY_MAX_PX` on its long side, for
                           QuPath's image overlay (docs/qupath.md): it spans the whole slide

Pixel (i, j) of the TIFF's full resolution is heatmap pixel (i, j): it covers slide level-0
pixels [j p, (j + 1) p) x [i p, (i + 1) p) with p = `px_to_l0` in summary.json, so the TIFF's
physical size equals the slide's (up to the last partial pixel).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from PIL import Image

from ..errors import OutputError
from ..files import write_atomically
from .colours import score_colours
from .pyramid import MASK_PATH

log = logging.getLogger(__name__)

OME_TIFF_NAME = "heatmap.ome.tif"
OVERLAY_PNG_NAME = "heatmap_overlay.png"
OVERLAY_MAX_PX = 8192
TILE_PX = 256
EXPORTS = ("qupath",)


def export_qupath(folder: str | Path) -> list[Path]:
    """Write `heatmap.ome.tif` and `heatmap_overlay.png` into a finished heatmap output folder
    (one with `summary.json` and `heatmap.ome.zarr`); returns their paths."""
    folder = Path(folder)
    summary = _summary(folder)
    store = folder / summary["heatmap"]["path"]
    group = zarr.open_group(zarr.storage.LocalStore(store, read_only=True), mode="r", zarr_format=3)
    levels = len(group.attrs["ome"]["multiscales"][0]["datasets"])
    mpp_y, mpp_x = summary["heatmap"]["mpp_um_yx"]
    tif = write_ome_tiff(
        folder / OME_TIFF_NAME,
        [group[str(k)] for k in range(levels)],
        (mpp_y, mpp_x),
        Path(summary["slide"]["path"]).name,
    )
    png = write_overlay_png(folder / OVERLAY_PNG_NAME, group, levels, float(summary["threshold"]["value"]))
    return [tif, png]


def write_ome_tiff(
    path: Path, levels: list[Any], mpp_um_yx: tuple[float, float], name: str = "anomaly_score"
) -> Path:
    """A pyramidal float32 OME-TIFF of `levels` (2-D arrays, finest first, each read in bands),
    level 0 at `mpp_um_yx` µm per pixel and level k at 2**k times that."""
    mpp_y, mpp_x = (float(v) for v in mpp_um_yx)
    metadata = {
        "axes": "YX",
        "Name": f"{name} anomaly score",
        "PhysicalSizeX": mpp_x,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp_y,
        "PhysicalSizeYUnit": "µm",
        "Channel": {"Name": ["anomaly_score"]},
    }
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with tifffile.TiffWriter(temporary, bigtiff=True, ome=True) as tiff:
            for level, array in enumerate(levels):
                shape = tuple(int(v) for v in array.shape)
                scale = 2.0**level
                tiff.write(
                    _tiles(array),
                    shape=shape,
                    dtype=np.float32,
                    tile=(TILE_PX, TILE_PX),
                    photometric="minisblack",
                    compression="zlib",
                    resolution=(1e4 / (mpp_x * scale), 1e4 / (mpp_y * scale)),
                    resolutionunit="CENTIMETER",
                    subifds=len(levels) - 1 if level == 0 else None,
                    subfiletype=1 if level else 0,
                    metadata=metadata if level == 0 else None,
                )
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({exc.strerror}); check the folder is writable") from None
    log.info(
        "wrote %s: %d levels, %s px at %.4g x %.4g µm/px", path, len(levels), levels[0].shape, mpp_x, mpp_y
    )
    return path


def write_overlay_png(path: Path, group: zarr.Group, levels: int, threshold: float) -> Path:
    """The scores colour-mapped as RGBA (transparent at or below `threshold`), from the finest
    level whose long side is at most OVERLAY_MAX_PX."""
    level = next((k for k in range(levels) if max(group[str(k)].shape) <= OVERLAY_MAX_PX), levels - 1)
    scores = group[str(level)][:]
    computed = group[f"{MASK_PATH}/{level}"][:].astype(bool)
    scores = np.where(computed, scores, np.nan)
    colours = score_colours(threshold, scores)
    picture = Image.fromarray(colours.rgba(scores, alpha=1.0), mode="RGBA")
    write_atomically(path, lambda handle: picture.save(handle, format="PNG"))
    return path


def _tiles(array: Any) -> Iterator[np.ndarray]:
    """Full TILE_PX x TILE_PX float32 tiles of `array` in row-major order, padded with NaN,
    reading one band of TILE_PX rows at a time."""
    height, width = array.shape
    for y0 in range(0, height, TILE_PX):
        band = np.asarray(array[y0 : y0 + TILE_PX, :], dtype=np.float32)
        for x0 in range(0, width, TILE_PX):
            tile = np.full((TILE_PX, TILE_PX), np.nan, np.float32)
            part = band[:, x0 : x0 + TILE_PX]
            tile[: part.shape[0], : part.shape[1]] = part
            yield tile


def _summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not path.is_file():
        raise OutputError(
            f"{folder} has no summary.json: not a finished heatmap folder; run `wsi-haloae heatmap` on it first"
        )
    summary = json.loads(path.read_text())
    if not math.isfinite(float(summary["threshold"]["value"])):
        raise OutputError(f"{path}: the threshold is not a finite number; rerun the heatmap")
    return summary
