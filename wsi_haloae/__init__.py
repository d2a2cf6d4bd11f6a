"""wsi-haloae: annotation-free anomaly detection on whole-slide images with HaloAE.

The names a notebook needs, importable from the package itself (each is loaded on first use,
so `import wsi_haloae` stays cheap and pulls in neither torch nor OpenSlide):

    open_slide(path)                    a slide (OpenSlide or tiffslide) with mpp, levels, thumbnail
    TileGrid.for_slide(slide, ...)      where tiles lie at a target mpp, without reading a pixel
    TileConfig, write_tiles(...)        tissue tiles and a manifest for training
    TrainConfig, train(cfg, tiles, out) train HaloAE into a run folder
    load_trained(run)                   the trained model, its reference maps and training scores
    HeatmapConfig, heatmap_slide(...)   score a slide into an OME-Zarr heatmap, GeoJSON and overlay
    evaluate_mvtec(...)                 the MVTec-AD benchmark
    load_config(path, cls)              a YAML preset (configs/) as one of the config dataclasses
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "open_slide": "slides.slide",
    "TileGrid": "slides.grid",
    "TileConfig": "slides.tiles",
    "write_tiles": "slides.tiles",
    "TrainConfig": "config",
    "HeatmapConfig": "config",
    "load_config": "config",
    "train": "training.train",
    "load_trained": "training.checkpoint",
    "heatmap_slide": "heatmaps.heatmap",
    "evaluate_mvtec": "validation.evaluate",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .config import HeatmapConfig, TrainConfig, load_config
    from .heatmaps.heatmap import heatmap_slide
    from .slides.grid import TileGrid
    from .slides.slide import open_slide
    from .slides.tiles import TileConfig, write_tiles
    from .training.checkpoint import load_trained
    from .training.train import train
    from .validation.evaluate import evaluate_mvtec


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wsi_haloae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
