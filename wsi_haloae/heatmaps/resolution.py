"""At which resolution `heatmap` scores a slide: the model's own, unless asked otherwise.

A model learns at one input resolution (`training.resolution.TrainingResolution.model_mpp_um`).
Scoring tiles at another one scores texture it never saw (cells 4x larger or smaller), so:

- no `mpp_um` and no `level`: tiles at the model's resolution;
- an `mpp_um` (or `level`) that gives another resolution (beyond `MPP_RTOL`) is a ConfigError
  unless `allow_mpp_mismatch`, then a warning with both values;
- a model whose training resolution is unknown (declared unknown, or an older model file that
  does not record it) needs an explicit `mpp_um`, taken as an assumption and logged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ..config import HeatmapConfig
from ..errors import CheckpointError, ConfigError
from ..slides.grid import MPP_RTOL, TileGrid
from ..training.checkpoint import TrainedModel

log = logging.getLogger(__name__)


def target_mpp(trained: TrainedModel, cfg: HeatmapConfig) -> tuple[float | None, str]:
    """The tile µm/px to build the grid with (None: `cfg.level` decides) and where it comes from.

    Raises CheckpointError for a model without a recorded resolution and ConfigError for one of
    unknown resolution, when `cfg` gives neither an mpp nor a level.
    """
    if cfg.mpp_um is not None:
        return cfg.mpp_um, "--mpp"
    if cfg.level is not None:
        return None, "--level"
    resolution = trained.resolution
    if resolution is None:
        raise CheckpointError(
            f"{trained.run_dir} holds a model that does not record its training resolution (written by an "
            "older wsi-haloae); re-train it, or pass --mpp with the µm/px of the tiles it learnt from"
        )
    if resolution.model_mpp_um is None:
        raise ConfigError(
            f"the model in {trained.run_dir} was trained on tiles of unknown µm/px ({resolution.source}); "
            "pass --mpp with the µm/px its input tiles had (re-train with --tile-mpp to record it)"
        )
    return resolution.model_mpp_um, "the model's training resolution"


def check_grid_resolution(
    grid: TileGrid, trained: TrainedModel, cfg: HeatmapConfig, source: str
) -> dict[str, Any]:
    """Compare the grid's tile µm/px with the model's; raise or warn as the module doc says.

    Returns the summary's `resolution` record: the model's and the heatmap's µm/px and why.
    """
    resolution = trained.resolution
    model_mpp = None if resolution is None else resolution.model_mpp_um
    record: dict[str, Any] = {
        "model_mpp_um": model_mpp,
        "model_training": None if resolution is None else resolution.to_dict(),
        "heatmap_tile_mpp_um": grid.mpp_um,
        "heatmap_tile_size_px": grid.tile_size_px,
        "source": source,
        "mismatch_allowed": cfg.allow_mpp_mismatch,
    }
    if model_mpp is None:
        why = "an older model file without it" if resolution is None else resolution.source
        log.warning(
            "the model's training resolution is unknown (%s): assuming tiles at %s µm/px (%s) match it",
            why,
            "unknown" if grid.mpp_um is None else f"{grid.mpp_um:.4g}",
            source,
        )
        record["assumed"] = True
        return record
    if grid.mpp_um is None:
        raise ConfigError(
            f"the slide has no µm/px, so tiles at level {grid.level} cannot be matched to the model's "
            f"{model_mpp:.4g} µm/px; pass --slide-mpp or --assume-mpp"
        )
    if math.isclose(grid.mpp_um, model_mpp, rel_tol=MPP_RTOL):
        return record
    both = f"tiles at {grid.mpp_um:.4g} µm/px ({source}) but the model was trained at {resolution}"
    if not cfg.allow_mpp_mismatch:
        raise ConfigError(
            f"{both}; drop --mpp/--level to score at the model's resolution, or pass --allow-mpp-mismatch"
        )
    log.warning("%s; scoring anyway (--allow-mpp-mismatch)", both)
    return record
