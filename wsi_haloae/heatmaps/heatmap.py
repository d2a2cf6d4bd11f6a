"""The `heatmap` job: a slide and a trained model in; a heatmap pyramid, QuPath GeoJSON, an
overlay and a summary out, resumable after a kill.

`heatmap_slide(slide, trained, out_dir, cfg)` writes `out_dir/<slide stem>/`:

    heatmap.ome.zarr   anomaly scores (float32) + computed-on-tissue mask, multiscale, in µm
    tiles.geojson.gz   every scored tile as a QuPath detection (anomaly_score, max_score, tissue_fraction);
                       plain tiles.geojson with `tiles_gzip: false`
    regions.geojson    regions above the threshold as QuPath annotations (area_um2, mean/max score)
    overlay.png        thumbnail + heatmap above the threshold + colour bar + outlines + scale bar
    top_tiles.png      the highest-scoring tiles at full resolution, with score and level-0 (x, y)
    tile_scores.npz    per tile: x_l0, y_l0, tissue_fraction, score_mean, score_max (for re-thresholding), artefact (QC)
    summary.json       what was done, with which model and threshold, counts, statistics, timings

Heatmap frame: pixel (i, j) of level 0 covers level-0 slide pixels [j p, (j + 1) p) x [i p, (i + 1) p)
with p = `px_to_l0` (4 tile pixels; see `stitch.py`); its µm scales overlay it on the slide.

Completion and resume. `summary.json` is written last and removed first: a folder without it is
unfinished. Level 0 is written in bands (`pyramid.HeatmapStore`); before a band is recorded as
written, the scores of the tiles that arrived since the previous band are saved next to it
(`.resume/band-NNNNN.npz`). A rerun reopens the store (its fingerprint must match: same model,
slide and settings), recomputes only the tiles touching unwritten bands (in the same batches as
before), and ends with files identical to an uninterrupted run (on the CPU with the same
`workers`, which sets the model's thread count; on CUDA up to cuDNN's kernel choice, see
`infer.py`). An exclusive `fcntl.flock` on `.lock` keeps two runs from writing one folder at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..annotations import write_feature_collection
from ..config import HeatmapConfig, check_ranges, to_dict
from ..errors import ConfigError, OutputError, SlideError
from ..files import (
    LOCK_NAME,  # noqa: F401  (the lock moved to files.py, train uses it too)
    check_free_space,
    check_unique_stems,
    disk_full_is_an_output_error,
    output_lock,
    slide_stem,
    write_atomically,
)
from ..model.device import resolve_device
from ..slides.grid import TileGrid
from ..slides.qc import TileQC, qc_tiles
from ..slides.regions import load_region_filter, select_in_regions, tissue_tiles
from ..slides.slide import Slide, open_slide
from ..slides.tissue import TileSelection, TissueMask
from ..training.checkpoint import TrainedModel, load_trained
from .artefacts import artefact_heat_mask, artefact_summary, label_artefact_tiles
from .calibration import CALIBRATION_NAME, normalise_scores, read_calibration
from .colours import score_colours
from .gallery import save_top_tiles
from .infer import InferenceEngine, TileMaps, default_workers
from .jpeg_decode import select_reader
from .overlay import save_overlay
from .pyramid import HeatmapStore, read_level
from .regions import anomaly_regions, region_features, tile_features
from .resolution import check_grid_resolution, target_mpp
from .stitch import Band, BandStitcher, HeatmapGeometry

log = logging.getLogger(__name__)

STORE_NAME = "heatmap.ome.zarr"
TILES_NAME = "tiles.geojson.gz"
TILES_PLAIN_NAME = "tiles.geojson"  # with `tiles_gzip: false`
TOP_TILES_NAME = "top_tiles.png"
TOP_TILES_COUNT = 16
REGIONS_NAME = "regions.geojson"
OVERLAY_NAME = "overlay.png"
SCORES_NAME = "tile_scores.npz"
SUMMARY_NAME = "summary.json"
RESUME_DIR = ".resume"
SUMMARY_FORMAT = "wsi-haloae/heatmap-summary/1"
STORE_FINGERPRINT_FORMAT = 1
# Regions are outlined on the finest pyramid level at most this many pixels on its long side:
# level 0 of a 70k-px slide at 2 µm/px would need GBs for the same outlines at 8 µm. Outlining
# holds the level, its mask and a label image (~13 bytes/px): 8192 px made peak RSS grow 9 % from a
# 16k to a 32k slide (docs/benchmarks.md, "Host memory"); 4096 keeps it within ~210 MB.
REGION_MAX_PX = 4096


@dataclass(frozen=True)
class SlideResult:
    """What `heatmap_slide` did for one slide: its output folder, the tissue tiles scored in all,
    those above the threshold, the regions outlined, the threshold, the tiles scored by this call
    and the bands found already written (a resumed run), and the call's wall time."""

    slide: Path
    out_dir: Path
    tiles: int
    anomalous_tiles: int
    regions: int
    threshold: float
    computed_tiles: int
    bands_resumed: int
    seconds: float


@dataclass(frozen=True)
class _Plan:
    grid: TileGrid
    tissue: TissueMask
    selection: TileSelection
    geometry: HeatmapGeometry
    mpp_um_xy: tuple[float, float]
    resolution: dict[str, Any]  # the model's and the heatmap's µm/px (`resolution.check_grid_resolution`)


def heatmap_slides(
    slides: Sequence[str | Path],
    run: str | Path,
    out_dir: str | Path,
    cfg: HeatmapConfig = HeatmapConfig(),
    progress: bool = False,
) -> list[SlideResult]:
    """Heatmaps of `slides`, one after another, with the model of run folder `run` loaded once.

    Every slide is opened first, so a missing or unreadable one fails before any work is done.
    Raises SlideError, CheckpointError, ConfigError or OutputError with a one-line message.
    """
    paths = [Path(s) for s in slides]
    check_unique_stems(paths)
    for path in paths:
        with open_slide(path, backend=cfg.backend):
            pass
    trained = load_trained(run, resolve_device(cfg.device))
    engine = engine_for(trained, cfg)
    return [heatmap_slide(path, trained, out_dir, cfg, progress, engine=engine) for path in paths]


def heatmap_slide(
    slide_path: str | Path,
    trained: TrainedModel,
    out_dir: str | Path,
    cfg: HeatmapConfig = HeatmapConfig(),
    progress: bool = False,
    *,
    engine: InferenceEngine | None = None,
) -> SlideResult:
    """Score one slide with `trained` into `out_dir/<slide stem>/` (see the module docstring).

    A finished folder with the same settings is left as it is; an unfinished one is resumed; a
    finished one asked for another threshold or region settings gets new GeoJSON, overlay and
    summary without rescoring. `engine` reuses a prepared model (one per process, as the cohort
    runner does); by default one is built from `cfg` on the device the model is on.
    """
    started = time.perf_counter()
    check_ranges(cfg, "heatmap settings")
    slide_path = Path(slide_path)
    folder = Path(out_dir) / slide_stem(slide_path)
    if engine is None:
        engine = engine_for(trained, cfg)
    elif engine.scorer.normalisation != cfg.normalisation:
        raise ValueError(
            f"the engine normalises by {engine.scorer.normalisation}, the config by {cfg.normalisation}"
        )
    elif engine.scorer.tissue_aware != cfg.tissue_aware:
        raise ValueError(
            f"the engine's tissue_aware is {engine.scorer.tissue_aware}, the config's {cfg.tissue_aware}"
        )
    timings: dict[str, float] = {}
    with (
        open_slide(slide_path, backend=cfg.backend) as slide,
        output_lock(folder),
        disk_full_is_an_output_error(folder),
    ):
        clock = time.perf_counter()
        plan = _plan(slide, trained, cfg)
        timings["tissue_s"] = time.perf_counter() - clock
        threshold, threshold_source, score_range = _threshold(trained, cfg)
        fingerprint = _fingerprint(slide, plan, trained, engine, cfg)
        outputs_key = {
            "threshold": threshold,
            "score_range": list(score_range),
            "min_region_um2": cfg.min_region_um2,
            "simplify_px": cfg.simplify_px,
            "artefacts": cfg.artefacts,
            "tiles_gzip": cfg.tiles_gzip,
        }
        finished = _finished_summary(folder, fingerprint, outputs_key)
        if finished is not None:
            log.info("%s: already done in %s", slide_path, folder)
            return _result(
                slide_path, folder, finished, computed=0, resumed=0, seconds=time.perf_counter() - started
            )
        # the store checks its fingerprint before anything is written: a refused rerun changes nothing
        store = HeatmapStore.open(
            folder / STORE_NAME,
            plan.geometry.shape_yx,
            _heatmap_mpp_yx(plan),
            chunk_px=cfg.chunk_px,
            fingerprint=fingerprint,
        )
        # from here on the folder's outputs change: it is not finished until the summary is back
        (folder / SUMMARY_NAME).unlink(missing_ok=True)
        resumed = len(store.bands_done())
        check_free_space(folder, _bytes_still_needed(plan, store), f"the heatmap of {slide_path.name}")
        run_record: dict[str, Any] = {"computed_tiles": 0, "bands_resumed": resumed}
        if not store.complete:
            # scores of an earlier store in this folder (deleted to recompute) must not survive
            (folder / SCORES_NAME).unlink(missing_ok=True)
            clock = time.perf_counter()
            run_record.update(
                _score_missing_bands(slide, plan, store, engine, folder / RESUME_DIR, cfg, progress)
            )
            timings["inference_s"] = time.perf_counter() - clock
            clock = time.perf_counter()
            store.finalize(progress=progress, slide_mpp_um_yx=plan.mpp_um_xy[::-1])
            timings["pyramid_s"] = time.perf_counter() - clock
        scores = _tile_scores(folder, plan, store)

        clock = time.perf_counter()
        qc = None if cfg.artefacts == "off" else qc_tiles(slide, plan.grid, plan.selection.indices)
        timings["qc_s"] = time.perf_counter() - clock
        scores = _with_artefacts(folder, scores, qc)
        clock = time.perf_counter()
        namespace = f"{slide_path.name}:{fingerprint['model_sha256'][:16]}"
        summary = _write_outputs(
            slide,
            folder,
            plan,
            store,
            scores,
            trained,
            threshold,
            cfg,
            namespace,
            timings,
            threshold_source,
            score_range=score_range,
            qc=qc,
        )
        summary.update(
            {
                "format": SUMMARY_FORMAT,
                "version": __version__,
                "threshold": {
                    "value": threshold,
                    "source": threshold_source,
                    "normalised_score_range": list(score_range),  # normalised = 0.5 + (s - value) / (hi - lo)
                },
                "settings": to_dict(cfg),
                "engine": {
                    "device": str(engine.device),
                    "precision": engine.precision,
                    "compiled": engine.compiled,
                },
                "run": run_record,
                "resolution": plan.resolution,
                "fingerprint": fingerprint,
                "outputs_key": outputs_key,
            }
        )
        timings["outputs_s"] = time.perf_counter() - clock
        timings["total_s"] = time.perf_counter() - started
        summary["timings_s"] = timings
        # written last: its presence marks the folder as finished
        write_atomically(folder / SUMMARY_NAME, (json.dumps(summary, indent=2) + "\n").encode())
    log.info(
        "%s: %d tiles, %d above %.4g, %d regions -> %s (%.1f s)",
        slide_path,
        summary["tiles"]["tissue"],
        summary["tiles"]["anomalous"],
        threshold,
        summary["regions"]["count"],
        folder,
        timings["total_s"],
    )
    return _result(
        slide_path,
        folder,
        summary,
        computed=run_record["computed_tiles"],
        resumed=resumed,
        seconds=timings["total_s"],
    )


def engine_for(trained: TrainedModel, cfg: HeatmapConfig) -> InferenceEngine:
    """The inference engine `cfg` asks for, on the device the model is on."""
    return InferenceEngine(
        trained,
        next(trained.model.parameters()).device,
        batch_size=cfg.batch_size,
        bf16=cfg.bf16,
        compile=cfg.compile,
        cuda_graphs=cfg.cuda_graphs,
        normalisation=cfg.normalisation,
        tissue_aware=cfg.tissue_aware,
    )


def _plan(slide: Slide, trained: TrainedModel, cfg: HeatmapConfig) -> _Plan:
    """Grid, tissue, selected tiles and heatmap geometry of a slide (reads only a thumbnail)."""
    if slide.mpp_um is None and cfg.assume_mpp_um is None and cfg.slide_mpp_um is None:
        # tiling by --level needs no mpp, but the heatmap's µm scales and region areas do
        raise SlideError(
            f"slide {slide.path} has no mpp (microns per pixel) metadata, which the heatmap's scale and "
            "region areas need; pass --assume-mpp with its µm per pixel, e.g. --assume-mpp 0.25"
        )
    mpp_um_xy = slide.require_mpp(cfg.assume_mpp_um, cfg.slide_mpp_um, quiet=True)
    mpp_um, source = target_mpp(trained, cfg)
    size_px = trained.config.model.image_size_px
    grid = TileGrid.for_slide(
        slide,
        mpp_um=mpp_um,
        level=cfg.level,
        tile_size_px=size_px,
        stride_px=cfg.stride_px,
        assume_mpp_um=cfg.assume_mpp_um,
        slide_mpp_um=cfg.slide_mpp_um,
        allow_upsample=cfg.allow_upsample,
        too_small_fix=f"the model's tiles are {size_px} px: use a finer --mpp (with --allow-mpp-mismatch)",
    )
    log.info("%s: %s", slide.path, grid)
    resolution = check_grid_resolution(grid, trained, cfg, source)
    tissue, selection = tissue_tiles(
        slide,
        grid,
        thumbnail_px=cfg.thumbnail_px,
        min_tissue=cfg.min_tissue,
        tissue_mask=cfg.tissue_mask,
        allow_non_brightfield=cfg.allow_non_brightfield,
    )
    regions = load_region_filter(cfg.include, cfg.exclude, slide.dimensions, slide_stem(slide.path))
    if regions is not None:
        selection = select_in_regions(
            grid, selection, regions, min_inside=cfg.min_inside, slide_name=str(slide.path)
        ).selection
    geometry = HeatmapGeometry.for_grid(grid, band_px=cfg.chunk_px)
    return _Plan(grid, tissue, selection, geometry, (float(mpp_um_xy[0]), float(mpp_um_xy[1])), resolution)


def _bytes_still_needed(plan: _Plan, store: HeatmapStore) -> int:
    """A generous estimate of what the rest of the job writes: the unwritten part of the store
    uncompressed (float32 score + uint8 mask per pixel, a third more for the pyramid, tissue
    chunks only) plus about 1 KiB per tile for the GeoJSON and score files."""
    height, width = plan.geometry.shape_yx
    tissue = len(plan.selection) / max(1, len(plan.grid))
    left = 0.0 if store.complete else 1.0 - len(store.bands_done()) / max(1, store.band_count)
    return int(height * width * 5 * 4 / 3 * tissue * left) + 1024 * len(plan.selection)


def _heatmap_mpp_yx(plan: _Plan) -> tuple[float, float]:
    mpp_x, mpp_y = plan.mpp_um_xy
    return mpp_y * plan.geometry.px_to_l0, mpp_x * plan.geometry.px_to_l0


def _threshold(trained: TrainedModel, cfg: HeatmapConfig) -> tuple[float, str, tuple[float, float]]:
    """(threshold, where it came from, score range of the normalised scores; see heatmaps/calibration)."""
    train_scores = trained.train_scores[cfg.normalisation].double()
    score_range = (float(train_scores.min()), float(train_scores.max()))
    if score_range[1] <= score_range[0]:
        score_range = (score_range[0], score_range[0] + 1.0)
    calibration_file = cfg.threshold_file
    default_file = trained.run_dir / CALIBRATION_NAME
    if calibration_file is None and cfg.threshold_percentile is None and default_file.is_file():
        calibration_file = str(default_file)
    if cfg.threshold is None and calibration_file is not None:
        record = read_calibration(
            calibration_file, model_sha256=model_digest(trained), normalisation=cfg.normalisation
        )
        lo, hi = record["score_range"]
        source = f"calibration file {calibration_file} ({record['method']})"
        return float(record["threshold"]), source, (float(lo), float(hi))
    if cfg.threshold is not None:
        return float(cfg.threshold), "given", score_range
    percentile = (
        trained.config.score_percentile if cfg.threshold_percentile is None else cfg.threshold_percentile
    )
    value = trained.threshold(percentile, cfg.normalisation, cfg.tissue_aware)
    key = trained.scores_key(cfg.normalisation, cfg.tissue_aware)
    source = f"percentile {percentile:g} of {len(trained.train_scores[key])} training tile scores ({key})"
    return value, source, score_range


def model_digest(trained: TrainedModel) -> str:
    """SHA-256 of everything that decides a model's scores: its weights and reference maps (the
    training scores only set the default threshold, which the stored scores do not depend on)."""
    digest = hashlib.sha256()
    tensors = {
        **{f"model.{k}": v for k, v in trained.model.state_dict().items()},
        "mean_map": trained.mean_map,
        "median_map": trained.median_map,
        **{f"tissue_{k}_map": v for k, v in (trained.tissue_maps or {}).items()},
        **({} if trained.stain is None else {f"stain.{k}": v for k, v in trained.stain.state_dict().items()}),
    }
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _fingerprint(
    slide: Slide, plan: _Plan, trained: TrainedModel, engine: InferenceEngine, cfg: HeatmapConfig
) -> dict[str, Any]:
    """What the stored scores depend on: a store resumed with anything else is refused."""
    grid = plan.grid
    fingerprint = {
        "format": STORE_FINGERPRINT_FORMAT,
        "model_sha256": model_digest(trained),
        "slide": {
            "name": Path(slide.path).name,
            "bytes": Path(slide.path).stat().st_size,
            "dimensions_l0": list(slide.dimensions),
        },
        "grid": {
            "level": grid.level,
            "read_size_px": grid.read_size_px,
            "tile_size_px": grid.tile_size_px,
            "tile_size_l0": grid.tile_size_l0,
            "stride_l0": grid.stride_l0,
        },
        "mpp_um_xy": list(plan.mpp_um_xy),
        "min_tissue": cfg.min_tissue,
        "thumbnail_px": cfg.thumbnail_px,
        "precision": engine.precision,
        "normalisation": engine.scorer.normalisation,
        "tissue_aware": engine.scorer.tissue_aware,
        "tile_reader": cfg.tile_reader,
    }
    if cfg.include or cfg.exclude or cfg.tissue_mask is not None:  # they choose the scored tiles
        fingerprint["regions"] = {
            "include": list(cfg.include),
            "exclude": list(cfg.exclude),
            "min_inside": cfg.min_inside,
            "tissue_mask": cfg.tissue_mask,
        }
    return fingerprint


def _score_missing_bands(
    slide: Slide,
    plan: _Plan,
    store: HeatmapStore,
    engine: InferenceEngine,
    resume_dir: Path,
    cfg: HeatmapConfig,
    progress: bool,
) -> dict[str, Any]:
    """Score the tiles touching bands not yet in `store`, stitch and write those bands.

    Returns a record for the summary: tiles scored, batch size, tile readers, and the inference
    statistics (None when no tile needed scoring).
    """
    geometry, selected = plan.geometry, plan.selection.indices
    done = store.bands_done()
    if not done:
        shutil.rmtree(resume_dir, ignore_errors=True)  # leftovers of a store since deleted
    resume_dir.mkdir(exist_ok=True)
    batch_size = _resume_batch_size(resume_dir, engine, cfg)
    todo = np.ones(geometry.band_count, bool)
    todo[sorted(done)] = False
    # a tile is needed when any band it touches is still to do (prefix sums count them)
    first, last = geometry.tile_bands(selected)
    todo_before = np.concatenate([[0], np.cumsum(todo)])
    needed = np.flatnonzero(todo_before[last + 1] - todo_before[first] > 0)
    # whole batches of the full run, so every tile sees the same batch as in an uninterrupted run
    batches = np.unique(needed // batch_size)
    positions = (
        np.concatenate(
            [np.arange(b * batch_size, min((b + 1) * batch_size, len(selected))) for b in batches]
        ).astype(np.int64)
        if len(batches)
        else np.zeros(0, np.int64)
    )
    arrivals = selected[positions]
    log.info(
        "%s: %d of %d bands to write, %d of %d tiles to score",
        slide.path,
        int(todo.sum()),
        geometry.band_count,
        len(arrivals),
        len(selected),
    )
    stitcher = BandStitcher(
        geometry,
        arrivals,
        bands=np.flatnonzero(todo).tolist(),
        tissue_mask=plan.tissue.mask,
        tissue_downsample=plan.tissue.downsample,
    )
    unsaved: list[TileMaps] = []

    def flush(band: Band) -> None:
        # the tile scores first: a band recorded as written always has its tiles' scores saved
        _save_band_scores(resume_dir, band.index, selected, unsaved)
        unsaved.clear()
        store.write_band(band.y0, band.scores, band.mask)

    def sink(tile_maps: TileMaps) -> None:
        unsaved.append(tile_maps)
        for band in stitcher.add(tile_maps.indices, tile_maps.maps):
            flush(band)

    workers = reader_processes(cfg, engine.device)
    jpeg, tile_reader = select_reader(slide, plan.grid, arrivals, engine.device, cfg.tile_reader)
    stats = None
    if len(arrivals):
        stats = engine.run(
            slide,
            plan.grid,
            arrivals,
            sink,
            workers=workers,
            batch_size=batch_size,
            progress=progress,
            tissue=plan.tissue if engine.scorer.tissue_aware else None,
            jpeg=jpeg,
        )
    for band in stitcher.finish():
        flush(band)
    return {
        "computed_tiles": len(arrivals),
        "batch_size": batch_size,
        "workers": workers,
        "tile_reader": tile_reader,
        "inference": None
        if stats is None
        else dataclasses.asdict(stats) | {"tiles_per_s": stats.tiles_per_s},
    }


def reader_processes(cfg: HeatmapConfig, device: torch.device) -> int:
    if cfg.workers is None:
        return default_workers(device)
    if cfg.workers < 0:
        raise ConfigError(f"workers {cfg.workers} must be 0 (read in this process) or more")
    return cfg.workers


def _resume_batch_size(resume_dir: Path, engine: InferenceEngine, cfg: HeatmapConfig) -> int:
    """The batch size of the run being resumed (stored in `resume_dir`), else the engine's."""
    state_path = resume_dir / "state.json"
    if state_path.is_file():
        stored = int(json.loads(state_path.read_text())["batch_size"])
        if cfg.batch_size is None or cfg.batch_size == stored:
            return stored
        log.warning(
            "resuming with batch size %d instead of %d: tiles next to the bands already written may "
            "differ from an uninterrupted run in the last bits",
            cfg.batch_size,
            stored,
        )
    batch_size = engine.batch_size
    write_atomically(state_path, json.dumps({"batch_size": batch_size}).encode())
    return batch_size


def _save_band_scores(resume_dir: Path, band: int, selected: np.ndarray, results: list[TileMaps]) -> None:
    indices = np.concatenate([r.indices for r in results]) if results else np.zeros(0, np.int64)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        positions=np.searchsorted(selected, indices).astype(np.int64),
        score_mean=np.concatenate([r.score_mean for r in results]) if results else np.zeros(0, np.float32),
        score_max=np.concatenate([r.score_max for r in results]) if results else np.zeros(0, np.float32),
    )
    write_atomically(resume_dir / f"band-{band:05d}.npz", buffer.getvalue())


def _tile_scores(folder: Path, plan: _Plan, store: HeatmapStore) -> dict[str, np.ndarray]:
    """Per selected tile: coordinates, tissue fraction and scores, from `tile_scores.npz` or, on
    the first call after the store is complete, gathered from the bands' files and saved there."""
    path, resume_dir = folder / SCORES_NAME, folder / RESUME_DIR
    coords_l0 = plan.grid.coordinates()[plan.selection.indices]
    if path.is_file():
        with np.load(path) as stored:
            scores = {key: stored[key] for key in stored.files}
        if np.array_equal(scores["x_l0"], coords_l0[:, 0]) and np.array_equal(
            scores["y_l0"], coords_l0[:, 1]
        ):
            return scores
    count = len(plan.selection)
    score_mean = np.full(count, np.nan, np.float32)
    score_max = np.full(count, np.nan, np.float32)
    for band in sorted(store.bands_done()):
        band_path = resume_dir / f"band-{band:05d}.npz"
        if band_path.is_file():
            with np.load(band_path) as saved:
                score_mean[saved["positions"]] = saved["score_mean"]
                score_max[saved["positions"]] = saved["score_max"]
    if np.isnan(score_mean).any():
        raise OutputError(
            f"{folder}: the tile scores of the finished heatmap are missing ({SCORES_NAME} and "
            f"{RESUME_DIR}/); delete {folder / STORE_NAME} and rerun to recompute it"
        )
    scores = {
        "x_l0": coords_l0[:, 0],
        "y_l0": coords_l0[:, 1],
        "tissue_fraction": plan.selection.tissue_fraction.astype(np.float32),
        "score_mean": score_mean,
        "score_max": score_max,
    }
    buffer = io.BytesIO()
    np.savez(buffer, **scores)
    write_atomically(path, buffer.getvalue())
    shutil.rmtree(resume_dir, ignore_errors=True)
    return scores


def _with_artefacts(folder: Path, scores: dict[str, np.ndarray], qc: TileQC | None) -> dict[str, np.ndarray]:
    """`scores` with the QC's per-tile `artefact` flags (bool), saved to `tile_scores.npz` when
    they changed (the viewer and re-thresholding read them there); without QC, without them."""
    if qc is None:
        if "artefact" not in scores:
            return scores
        scores = {key: value for key, value in scores.items() if key != "artefact"}
    elif "artefact" in scores and np.array_equal(scores["artefact"], qc.is_artefact):
        return scores
    else:
        scores = {**scores, "artefact": qc.is_artefact}
    buffer = io.BytesIO()
    np.savez(buffer, **scores)
    write_atomically(folder / SCORES_NAME, buffer.getvalue())
    return scores


def _level_at_most(shapes: list[tuple[int, int]], max_px: int) -> int:
    """The finest level whose long side is at most `max_px` (the coarsest if none is)."""
    for level, shape in enumerate(shapes):
        if max(shape) <= max_px:
            return level
    return len(shapes) - 1


def _write_outputs(
    slide: Slide,
    folder: Path,
    plan: _Plan,
    store: HeatmapStore,
    scores: dict[str, np.ndarray],
    trained: TrainedModel,
    threshold: float,
    cfg: HeatmapConfig,
    namespace: str,
    timings: dict[str, float],
    threshold_source: str = "",
    score_range: tuple[float, float] | None = None,
    *,
    qc: TileQC | None = None,
) -> dict[str, Any]:
    """Regions, tiles and overlay files; returns the summary's descriptive part. `namespace`
    (slide and model) seeds the features' UUIDs, so reruns write identical GeoJSON. A bool
    `artefact` array in `scores` (per tile, from QC) paints those tiles grey in the overlay."""
    geometry, shapes = plan.geometry, store.level_shapes

    clock = time.perf_counter()
    region_level = _level_at_most(shapes, REGION_MAX_PX)
    heat, computed = read_level(store.path, region_level)
    coords_l0 = np.stack([scores["x_l0"], scores["y_l0"]], axis=1)
    scored = computed
    if qc is not None and qc.is_artefact.any():  # artefacts are not anomalies: no region over them
        px_to_l0 = geometry.px_to_l0 * 2**region_level
        scored = computed & ~artefact_heat_mask(heat.shape, px_to_l0, coords_l0, plan.grid.tile_size_l0, qc)
    regions = anomaly_regions(
        heat,
        scored,
        threshold,
        px_to_l0=geometry.px_to_l0 * 2**region_level,
        mpp_um=plan.mpp_um_xy,
        min_area_um2=cfg.min_region_um2,
        simplify_px=cfg.simplify_px,
    )
    normalise = None if score_range is None else (lambda v: normalise_scores(v, threshold, score_range))
    write_feature_collection(
        folder / REGIONS_NAME, region_features(regions, id_namespace=namespace, normalise=normalise)
    )
    timings["regions_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    features = tile_features(
        np.stack([scores["x_l0"], scores["y_l0"]], axis=1),
        plan.grid.tile_size_l0,
        {
            "anomaly_score": scores["score_mean"],
            "max_score": scores["score_max"],
            **({} if normalise is None else {"anomaly_score_normalised": normalise(scores["score_mean"])}),
            "tissue_fraction": scores["tissue_fraction"],
        },
        threshold=threshold,
        id_namespace=namespace,
    )
    if qc is not None:
        label_artefact_tiles(features, qc)
    tiles_name = TILES_NAME if cfg.tiles_gzip else TILES_PLAIN_NAME
    (folder / (TILES_PLAIN_NAME if cfg.tiles_gzip else TILES_NAME)).unlink(missing_ok=True)
    write_feature_collection(folder / tiles_name, features)
    timings["tiles_geojson_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    thumbnail = plan.tissue.thumbnail
    l0_per_thumb_px = plan.grid.slide_size_l0[0] / thumbnail.shape[1]
    # the coarsest level still at least as fine as the thumbnail
    overlay_level = max(0, min(len(shapes) - 1, math.floor(math.log2(l0_per_thumb_px / geometry.px_to_l0))))
    if overlay_level != region_level:
        heat, computed = read_level(store.path, overlay_level)
    above = scores["score_mean"] > threshold
    anomalous = int((above if qc is None else above & ~qc.is_artefact).sum())
    artefact = np.asarray(scores["artefact"], bool) if "artefact" in scores else None
    if qc is not None:  # the QC of this run (`heatmaps.artefacts`)
        artefact = qc.is_artefact
    coords_l0 = np.stack([scores["x_l0"], scores["y_l0"]], axis=1)
    mpp_x = plan.mpp_um_xy[0]
    save_overlay(
        folder / OVERLAY_NAME,
        thumbnail,
        heat,
        computed,
        heatmap_to_l0=geometry.px_to_l0 * 2**overlay_level,
        l0_to_thumb=1.0 / l0_per_thumb_px,
        colours=score_colours(threshold, heat[computed]),
        vmin=_bar_bottom(heat[computed], threshold),
        regions=[r.geometry for r in regions],
        title=f"{Path(slide.path).name}: anomaly score ({trained.run_dir.name})",
        mpp_um=mpp_x,
        footer=[
            f"slide {Path(slide.path).name} · {mpp_x:.4g} µm/px · tiles {plan.grid.tile_size_px} px "
            f"({plan.grid.tile_size_l0} level-0 px) · model {trained.run_dir.name}",
            f"threshold {threshold:.4g}" + (f" ({threshold_source})" if threshold_source else ""),
            f"{len(plan.selection)} tissue tiles, {anomalous} above the threshold, {len(regions)} regions"
            + (f", {int(artefact.sum())} artefact tiles" if artefact is not None else ""),
        ],
        artefact_tiles_l0=None if artefact is None else coords_l0[artefact],
        artefact_tile_l0=plan.grid.tile_size_l0,
    )
    timings["overlay_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    save_top_tiles(
        folder / TOP_TILES_NAME,
        slide,
        coords_l0,
        scores["score_mean"],
        int(round(plan.grid.tile_size_l0)),
        count=TOP_TILES_COUNT,
        threshold=threshold,
    )
    timings["top_tiles_s"] = time.perf_counter() - clock

    return {
        "slide": {
            "path": str(Path(slide.path).resolve()),
            "dimensions_l0": list(slide.dimensions),
            "mpp_um_xy": list(plan.mpp_um_xy),
        },
        "model": {"run_dir": str(trained.run_dir), "tile_size_px": plan.grid.tile_size_px},
        "grid": {
            "level": plan.grid.level,
            "mpp_um": plan.grid.mpp_um,
            "tile_size_l0": plan.grid.tile_size_l0,
            "stride_l0": plan.grid.stride_l0,
            "columns": plan.grid.columns,
            "rows": plan.grid.rows,
        },
        "heatmap": {
            "path": STORE_NAME,
            "shape_yx": list(geometry.shape_yx),
            "mpp_um_yx": list(_heatmap_mpp_yx(plan)),
            "px_to_l0": geometry.px_to_l0,
            "levels": len(shapes),
        },
        "tiles": {"grid": len(plan.grid), "tissue": len(plan.selection), "anomalous": anomalous},
        "artefacts": artefact_summary(qc),
        "scores": {
            "tile_mean": _statistics(scores["score_mean"]),
            "tile_max": _statistics(scores["score_max"]),
        },
        "regions": {
            "count": len(regions),
            "total_area_um2": float(sum(r.area_um2 for r in regions)),
            "level": region_level,
            "min_area_um2": cfg.min_region_um2,
        },
        "files": [
            STORE_NAME,
            tiles_name,
            REGIONS_NAME,
            OVERLAY_NAME,
            TOP_TILES_NAME,
            SCORES_NAME,
            SUMMARY_NAME,
        ],
    }


def _bar_bottom(scores: np.ndarray, threshold: float) -> float:
    """The colour bar's lowest label: 0, or the lowest score if negative, below the threshold."""
    lowest = min(0.0, float(np.nanmin(scores))) if scores.size else 0.0
    return lowest if lowest < threshold else threshold - max(1.0, abs(threshold))


def _statistics(values: np.ndarray) -> dict[str, float]:
    values = values.astype(np.float64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "min": float(values.min()),
        "mean": float(values.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(values.max()),
    }


def _finished_summary(
    folder: Path, fingerprint: dict[str, Any], outputs_key: dict[str, Any]
) -> dict[str, Any] | None:
    """The summary of a finished folder made with the same fingerprint and output settings."""
    path = folder / SUMMARY_NAME
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (
        summary.get("fingerprint") == json.loads(json.dumps(fingerprint))
        and summary.get("outputs_key") == outputs_key
    )
    if same and all((folder / name).exists() for name in summary.get("files", [])):
        return summary
    return None


def _result(
    slide: Path, folder: Path, summary: dict[str, Any], *, computed: int, resumed: int, seconds: float
) -> SlideResult:
    return SlideResult(
        slide=slide,
        out_dir=folder,
        tiles=summary["tiles"]["tissue"],
        anomalous_tiles=summary["tiles"]["anomalous"],
        regions=summary["regions"]["count"],
        threshold=summary["threshold"]["value"],
        computed_tiles=computed,
        bands_resumed=resumed,
        seconds=seconds,
    )
