"""Reading tiles fast, and the `tile` job that writes them to disk.

`iter_tiles` streams batches of a grid's tiles in grid order. With `workers > 0`, worker
processes (each opening the slide itself) read and decode tiles into a ring of batch slots in
shared memory, so pixels never travel through a pipe; only slot numbers and coordinates do. At
most `prefetch_batches` slots exist, so memory is bounded whatever the slide size.

`write_tiles` is the `tile` job: tissue tiles as image files plus a manifest per slide, resumable.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import multiprocessing as mp
import os
import queue
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..config import check_ranges
from ..errors import ConfigError, OutputError, SlideError
from ..files import (
    check_free_space,
    check_unique_stems,
    disk_full_is_an_output_error,
    ensure_writable_dir,
    slide_stem,
    write_atomically,
)
from .grid import DEFAULT_TILE_SIZE_PX, TileGrid
from .regions import DEFAULT_MIN_INSIDE, refine_selection, tissue_tiles
from .slide import Slide, open_slide
from .tissue import (
    DEFAULT_MIN_TISSUE,
    DEFAULT_THUMBNAIL_PX,
    TileSelection,
    TissueMask,
)

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
MANIFEST_NAME = "manifest.csv"
FINGERPRINT_NAME = ".tiling.json"  # the settings the tiles in the folder were cut with
MANIFEST_COLUMNS = (
    "slide",
    "path",
    "x_l0",
    "y_l0",
    "size_l0",
    "level",
    "read_size_px",
    "tile_size_px",
    "mpp_um",
    "tissue_fraction",
)
_TMP_SUFFIX = ".tmp"
# Seconds between checks that the other side of the queues is still alive.
_POLL_S = 0.5


@dataclass(frozen=True)
class TileBatch:
    """Consecutive tiles of a grid.

    `images` (N, H, W, 3) uint8 RGB with H = W = `grid.tile_size_px`; `coords_l0` (N, 2) int64
    level-0 (x, y) tile origins; `indices` (N,) int64 positions in `grid.coordinates()`.
    From `iter_tiles`, `images` is a view of a reused buffer, valid until the next batch is
    requested: copy it to keep it.
    """

    images: np.ndarray
    coords_l0: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


def read_tile(slide: Slide, grid: TileGrid, x_l0: int, y_l0: int) -> np.ndarray:
    """One tile of `grid` with level-0 origin (x_l0, y_l0): (H, W, 3) uint8, H = W = tile_size_px.

    Reads a `read_size_px` square at `grid.level` and resizes it (PIL bilinear, antialiased when
    shrinking) when that differs from the output size.
    """
    region = slide.read_region(x_l0, y_l0, grid.level, size_px=(grid.read_size_px, grid.read_size_px))
    if not grid.needs_resize:
        return region
    size = (grid.tile_size_px, grid.tile_size_px)
    return np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BILINEAR))


def iter_tiles(
    slide: Slide,
    grid: TileGrid,
    indices: np.ndarray | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 0,
    prefetch_batches: int | None = None,
) -> Iterator[TileBatch]:
    """Batches of the tiles `indices` (default: the whole grid) of `slide`, in the order given.

    `workers` = 0 reads in this process; otherwise that many processes read in parallel, each
    opening `slide.path` with `slide.backend`, into `prefetch_batches` shared-memory slots
    (default 2 per worker). Each batch's images are valid until the next batch is requested.
    Closing the iterator early (break, exception, Ctrl-C) stops the workers and frees the
    shared memory; use `contextlib.closing` when a reference to it outlives the loop. A tile that
    cannot be read raises SlideError naming the slide and the tile.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be at least 1")
    if workers < 0:
        raise ConfigError(f"workers {workers} must be 0 (read in this process) or more")
    all_coords_l0 = grid.coordinates()
    indices = np.arange(len(grid), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(grid)):
        raise ValueError(f"tile indices must lie in [0, {len(grid)}) for this grid")
    batches = [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
    if workers == 0:
        return _iter_in_process(slide, grid, all_coords_l0, batches, batch_size)
    slots = max(2, 2 * workers) if prefetch_batches is None else prefetch_batches
    if slots < 1:
        raise ConfigError(f"prefetch batches {slots} must be at least 1")
    return _iter_with_workers(
        slide, grid, all_coords_l0, batches, batch_size, workers, min(slots, max(1, len(batches)))
    )


def _iter_in_process(
    slide: Slide, grid: TileGrid, all_coords_l0: np.ndarray, batches: list[np.ndarray], batch_size: int
) -> Iterator[TileBatch]:
    size = grid.tile_size_px
    buffer = np.empty((min(batch_size, max((len(b) for b in batches), default=0)), size, size, 3), np.uint8)
    for batch_indices in batches:
        coords_l0 = all_coords_l0[batch_indices]
        for row, (index, (x_l0, y_l0)) in enumerate(zip(batch_indices, coords_l0)):
            try:
                buffer[row] = read_tile(slide, grid, int(x_l0), int(y_l0))
            except Exception as exc:
                raise SlideError(f"{slide.path}: {_tile_failure(index, x_l0, y_l0, grid, exc)}") from exc
        yield TileBatch(buffer[: len(batch_indices)], coords_l0, batch_indices)


def _iter_with_workers(
    slide: Slide,
    grid: TileGrid,
    all_coords_l0: np.ndarray,
    batches: list[np.ndarray],
    batch_size: int,
    workers: int,
    slots: int,
) -> Iterator[TileBatch]:
    size = grid.tile_size_px
    ring_shape = (slots, batch_size, size, size, 3)
    # Not fork: the consumer may hold CUDA, OpenSlide handles and threads, none of them fork-safe.
    # A fork server is a clean process started once (~0.3 s, with this module preloaded); each
    # worker forked from it then starts in ~0.05 s instead of a fresh interpreter's ~0.3 s.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["wsi_haloae.slides.tiles"])
    shm = SharedMemory(create=True, size=int(np.prod(ring_shape)))
    ring = np.ndarray(ring_shape, dtype=np.uint8, buffer=shm.buf)
    tasks = ctx.Queue()
    done = ctx.Queue()
    stop = ctx.Event()
    procs = [
        ctx.Process(
            target=_read_worker,
            args=(str(slide.path), slide.backend, grid, shm.name, ring_shape, tasks, done, stop, os.getpid()),
            name=f"wsi-haloae-tiles-{rank}",
            daemon=True,
        )
        for rank in range(workers)
    ]
    try:
        for proc in procs:
            proc.start()
        submitted = 0
        for slot in range(min(slots, len(batches))):
            tasks.put((submitted, slot, batches[submitted], all_coords_l0[batches[submitted]]))
            submitted += 1
        finished: dict[int, tuple[int, str | None]] = {}
        for batch_no, batch_indices in enumerate(batches):
            while batch_no not in finished:
                message_batch, slot, error = _next_message(done, procs, slide.path)
                if message_batch < 0:
                    raise SlideError(f"{slide.path}: a tile reader cannot open the slide: {error}")
                finished[message_batch] = (slot, error)
            slot, error = finished.pop(batch_no)
            if error is not None:
                raise SlideError(f"{slide.path}: {error}")
            yield TileBatch(ring[slot, : len(batch_indices)], all_coords_l0[batch_indices], batch_indices)
            # The consumer asked for the next batch, so this slot is free again.
            if submitted < len(batches):
                tasks.put((submitted, slot, batches[submitted], all_coords_l0[batches[submitted]]))
                submitted += 1
    finally:
        _shut_down(procs, tasks, done, stop)
        del ring
        try:
            shm.close()
        except BufferError:
            log.debug("a tile batch view outlived its reader; its shared memory is freed when it goes")
        shm.unlink()


def _next_message(done: Queue, procs: list[BaseProcess], path: Path) -> tuple[int, int, str | None]:
    """The next worker report, raising SlideError if a worker died without one."""
    while True:
        try:
            return done.get(timeout=_POLL_S)
        except queue.Empty:
            dead = [proc for proc in procs if not proc.is_alive()]
            if dead:
                raise SlideError(
                    f"{path}: a tile reader process exited unexpectedly (exit code {dead[0].exitcode}); "
                    "from a script, guard its entry point with `if __name__ == '__main__':`, "
                    "else read with 0 workers to see the failing tile"
                ) from None


def _shut_down(procs: list[BaseProcess], tasks: Queue, done: Queue, stop: Event) -> None:
    """Stop the workers (politely, then by force) and release the queues."""
    stop.set()
    for proc in procs:
        if proc.pid is not None:
            tasks.put(None)
    for proc in procs:
        if proc.pid is not None:
            proc.join(timeout=5.0)
            if proc.is_alive():
                log.warning("tile reader %s did not stop; terminating it", proc.name)
                proc.terminate()
                proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
    for q in (tasks, done):
        q.cancel_join_thread()
        q.close()


def _read_worker(
    path: str,
    backend: str,
    grid: TileGrid,
    shm_name: str,
    ring_shape: tuple[int, ...],
    tasks: Queue,
    done: Queue,
    stop: Event,
    parent_pid: int,
) -> None:
    """Worker process: read the batches named on `tasks` into the shared ring, report on `done`."""
    # Ctrl-C reaches the whole process group; the consumer alone decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shm = SharedMemory(name=shm_name)
    ring = np.ndarray(ring_shape, dtype=np.uint8, buffer=shm.buf)
    try:
        try:
            slide = open_slide(path, backend=backend)
        except Exception as exc:
            done.put((-1, -1, f"{type(exc).__name__}: {exc}"))
            return
        with slide:
            while not stop.is_set():
                try:
                    task = tasks.get(timeout=_POLL_S)
                except queue.Empty:
                    if not _process_alive(parent_pid):
                        return
                    continue
                if task is None:
                    return
                batch_no, slot, indices, coords_l0 = task
                error = None
                for row, (index, (x_l0, y_l0)) in enumerate(zip(indices, coords_l0)):
                    if stop.is_set():
                        return
                    try:
                        ring[slot, row] = read_tile(slide, grid, int(x_l0), int(y_l0))
                    except Exception as exc:
                        error = _tile_failure(index, x_l0, y_l0, grid, exc)
                        break
                done.put((batch_no, slot, error))
    finally:
        del ring
        shm.close()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tile_failure(index: int, x_l0: int, y_l0: int, grid: TileGrid, exc: BaseException) -> str:
    return (
        f"cannot read tile {index} at level-0 ({x_l0}, {y_l0}), level {grid.level}, "
        f"{grid.read_size_px} px: {type(exc).__name__}: {exc}"
    )


@dataclass(frozen=True)
class TileConfig:
    """How the `tile` job cuts slides into training tiles.

    Resolution: `mpp_um` (µm/px of the tiles) or a pyramid `level`; neither means 0.5 µm/px.
    `slide_mpp_um` overrides a slide's own µm/px, `assume_mpp_um` stands in for a missing one;
    reading finer than level 0 needs `allow_upsample`; `allow_non_brightfield` turns the input-kind
    refusals (`inputs.check_input`) into warnings. `stride_px` (default: the tile size)
    below `tile_size_px` makes tiles overlap. Tiles with a tissue fraction below `min_tissue` are
    dropped; `max_tiles` (with `seed`) samples that many tiles uniformly across all slides.
    Regions (`slides.regions`): `include` / `exclude` region specs (`file.geojson:Class`,
    `file.xml`, `mask.png@16`) keep tiles with at least `min_inside` of their footprint in the
    included minus the excluded area; `tissue_mask` (a region spec) replaces the built-in tissue
    mask. `artefacts` (`slides.qc`): "exclude" drops pen, fold and blur tiles, "keep" keeps them
    with an `artefact` manifest column, "off" skips the QC. `max_tiles_per_slide` caps each slide
    (drawn with `seed`) before `max_tiles` samples across slides.
    """

    mpp_um: float | None = field(default=None, metadata={"range": "(0, inf)"})
    level: int | None = field(default=None, metadata={"range": "[0, inf)"})
    assume_mpp_um: float | None = field(default=None, metadata={"range": "(0, inf)"})
    slide_mpp_um: float | None = field(default=None, metadata={"range": "[0.05, 20]"})
    allow_upsample: bool = False
    allow_non_brightfield: bool = False
    tile_size_px: int = field(default=DEFAULT_TILE_SIZE_PX, metadata={"range": "[1, inf)"})
    stride_px: int | None = field(default=None, metadata={"range": "[1, inf)"})
    min_tissue: float = field(default=DEFAULT_MIN_TISSUE, metadata={"range": "[0, 1]"})
    image_format: Literal["png", "jpeg"] = "png"
    max_tiles: int | None = field(default=None, metadata={"range": "[1, inf)"})
    seed: int = field(default=0, metadata={"range": "[0, inf)"})
    workers: int = field(default=0, metadata={"range": "[0, inf)"})
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata={"range": "[1, inf)"})
    backend: Literal["openslide", "tiffslide"] = "openslide"
    thumbnail_px: int = field(default=DEFAULT_THUMBNAIL_PX, metadata={"range": "[16, inf)"})
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_inside: float = field(default=DEFAULT_MIN_INSIDE, metadata={"range": "[0, 1]"})
    tissue_mask: str | None = None
    artefacts: Literal["exclude", "keep", "off"] = "exclude"
    max_tiles_per_slide: int | None = field(default=None, metadata={"range": "[1, inf)"})


@dataclass(frozen=True)
class SlideTiles:
    """What the `tile` job did for one slide: its folder and manifest, the tiles the manifest
    lists, how many this run wrote, and whether an earlier run had already finished it."""

    slide: Path
    folder: Path
    manifest: Path
    tiles: int
    written: int
    skipped: bool


@dataclass(frozen=True)
class SlidePlan:
    """One slide's tiling: its output folder, grid, tissue mask and selected tissue tiles."""

    slide: Path
    folder: Path
    grid: TileGrid
    tissue: TissueMask
    selection: TileSelection
    # extra manifest columns (name -> one cell per selected tile): regions, artefact kind
    columns: dict[str, list[str]] = field(default_factory=dict)


def write_tiles(
    slides: Sequence[str | Path],
    out_dir: str | Path,
    cfg: TileConfig = TileConfig(),
    *,
    progress: bool = False,
) -> list[SlideTiles]:
    """Cut `slides` into tissue tiles under `out_dir/<slide stem>/`, one result per slide.

    Each slide folder gets `tiles/<stem>_x<x_l0>_y<y_l0>.<png|jpg>`, `tissue_mask.png`,
    `thumbnail.png` (kept tiles outlined) and, last and atomically, `manifest.csv` (columns
    `MANIFEST_COLUMNS`, tile paths relative to the folder, coordinates in level-0 px). Every slide
    is opened, gridded and tissue-checked before any tile is written, so a bad slide fails the job
    early. Re-running resumes: a slide whose manifest matches this run is skipped, tiles already
    on disk are kept, and half-written ones (temporary files) are redone.
    Raises SlideError, NoTissueError, ConfigError or OutputError, each naming the file and fix.
    """
    out_dir = Path(out_dir)
    slides = [Path(s) for s in slides]
    check_tile_job(slides, out_dir, cfg)
    plans = [plan_slide(path, out_dir, cfg) for path in slides]
    chosen = sample_tiles([len(plan.selection) for plan in plans], cfg.max_tiles, cfg.seed)
    for plan, picked in zip(plans, chosen):  # a folder from other settings fails before any writing
        if not _tiled_already(plan, _manifest_text(plan, picked, cfg)):
            _check_fingerprint(plan, cfg)
    with tqdm(
        total=sum(len(p) for p in chosen), unit="tile", desc="tiles", disable=not progress, smoothing=0.05
    ) as bar:
        return [tile_slide(plan, picked, cfg, bar) for plan, picked in zip(plans, chosen)]


def tile_slide(plan: SlidePlan, picked: np.ndarray, cfg: TileConfig, bar: tqdm | None = None) -> SlideTiles:
    """Write the tiles at positions `picked` of `plan.selection` and, last, the manifest.

    The per-slide step of `write_tiles` (the cohort runner calls it on its workers): a folder
    whose manifest matches is skipped; one from other settings is an OutputError.
    """
    text = _manifest_text(plan, picked, cfg)
    manifest = plan.folder / MANIFEST_NAME
    if _tiled_already(plan, text):
        log.info("%s: already tiled, skipping", plan.slide)
        if bar is not None:
            bar.update(len(picked))
        return SlideTiles(plan.slide, plan.folder, manifest, len(picked), 0, True)
    with disk_full_is_an_output_error(plan.folder):
        _check_fingerprint(plan, cfg)
        write_atomically(plan.folder / FINGERPRINT_NAME, _fingerprint(plan, cfg).encode())
        missing = _prepare_folder(plan, picked, cfg)
        per_tile = plan.grid.tile_size_px**2 * (3 if cfg.image_format == "png" else 1) + 1024
        check_free_space(
            plan.folder, len(missing) * per_tile, f"the {len(missing)} tiles of {plan.slide.name}"
        )
        if bar is not None:
            bar.update(len(picked) - len(missing))
        written = _write_slide_tiles(plan, missing, cfg, bar)
        write_atomically(manifest, text.encode())
    log.info("%s: %d tiles in %s", plan.slide, len(picked), plan.folder)
    return SlideTiles(plan.slide, plan.folder, manifest, len(picked), written, False)


def _tiled_already(plan: SlidePlan, manifest_text: str) -> bool:
    """True when the slide's folder holds this very tiling; OutputError when it holds another."""
    manifest = plan.folder / MANIFEST_NAME
    if not manifest.is_file():
        return False
    if manifest.read_text() != manifest_text:
        raise OutputError(
            f"{plan.folder} holds tiles made with other settings; delete it or tile into another --out"
        )
    return True


def _fingerprint(plan: SlidePlan, cfg: TileConfig) -> str:
    """What a tile file's pixels depend on besides its name: a rerun into a folder holding tiles
    with another fingerprint would mix two tilings under one manifest."""
    grid = plan.grid
    settings = {
        "slide": plan.slide.name,
        "level": grid.level,
        "read_size_px": grid.read_size_px,
        "tile_size_px": grid.tile_size_px,
        "tile_size_l0": grid.tile_size_l0,
        "image_format": cfg.image_format,
    }
    return json.dumps(settings, sort_keys=True) + "\n"


def _check_fingerprint(plan: SlidePlan, cfg: TileConfig) -> None:
    """OutputError when the slide's folder holds (unfinished) tiles cut with other settings."""
    path = plan.folder / FINGERPRINT_NAME
    tiles_dir = plan.folder / "tiles"
    wanted = _fingerprint(plan, cfg)
    fix = "delete the folder or tile into another --out, or rerun with the settings it was started with"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = None
        if stored != json.loads(wanted):
            differs = ", ".join(
                f"{key} {stored.get(key)} (now {value})"
                for key, value in json.loads(wanted).items()
                if not isinstance(stored, dict) or stored.get(key) != value
            )
            raise OutputError(
                f"{plan.folder} holds unfinished tiles made with other settings ({differs}); {fix}"
            )
        return
    # a folder from before fingerprints: the size of a tile already there tells
    existing = (
        next((p for p in tiles_dir.iterdir() if p.suffix in (".png", ".jpg")), None)
        if tiles_dir.is_dir()
        else None
    )
    if existing is not None:
        try:
            with Image.open(existing) as image:
                size = image.size
        except OSError:
            return  # a damaged tile: rewritten like a half-written one
        if size != (plan.grid.tile_size_px, plan.grid.tile_size_px):
            raise OutputError(
                f"{plan.folder} holds unfinished tiles of {size[0]} x {size[1]} px, not "
                f"{plan.grid.tile_size_px} px; {fix}"
            )


def check_tile_job(slides: list[Path], out_dir: Path, cfg: TileConfig) -> None:
    """ConfigError or OutputError before any work: no slides, clashing names, bad options, unwritable out."""
    check_unique_stems(slides)
    if cfg.max_tiles is not None and cfg.max_tiles < 1:
        raise ConfigError(f"max tiles {cfg.max_tiles} must be at least 1")
    if cfg.image_format not in ("png", "jpeg"):
        raise ConfigError(f"tile format {cfg.image_format!r} is not one of png, jpeg")
    check_ranges(cfg, "tile settings")
    ensure_writable_dir(out_dir)


def plan_slide(path: Path, out_dir: Path, cfg: TileConfig) -> SlidePlan:
    """Open the slide, build its grid and pick its tissue tiles (reads only a thumbnail).

    Deterministic: the cohort runner plans a slide twice (to count, then to tile) and gets the same plan.
    """
    with open_slide(path, backend=cfg.backend) as slide:
        grid = TileGrid.for_slide(
            slide,
            mpp_um=cfg.mpp_um,
            level=cfg.level,
            tile_size_px=cfg.tile_size_px,
            stride_px=cfg.stride_px,
            assume_mpp_um=cfg.assume_mpp_um,
            slide_mpp_um=cfg.slide_mpp_um,
            allow_upsample=cfg.allow_upsample,
        )
        log.info("%s: %s", path, grid)
        tissue, selection = tissue_tiles(
            slide,
            grid,
            thumbnail_px=cfg.thumbnail_px,
            min_tissue=cfg.min_tissue,
            tissue_mask=cfg.tissue_mask,
            allow_non_brightfield=cfg.allow_non_brightfield,
        )
        selection, columns = refine_selection(slide, grid, selection, cfg)
    return SlidePlan(path.resolve(), out_dir / slide_stem(path), grid, tissue, selection, columns)


def sample_tiles(counts: list[int], max_tiles: int | None, seed: int) -> list[np.ndarray]:
    """Positions into each slide's selection of `counts[i]` tissue tiles: all of them, or
    `max_tiles` drawn uniformly over all slides."""
    if max_tiles is None or max_tiles >= sum(counts):
        return [np.arange(count) for count in counts]
    drawn = np.sort(np.random.default_rng(seed).choice(sum(counts), size=max_tiles, replace=False))
    starts = np.cumsum([0, *counts])
    return [drawn[(drawn >= lo) & (drawn < hi)] - lo for lo, hi in itertools.pairwise(starts)]


def _tile_name(plan: SlidePlan, x_l0: int, y_l0: int, cfg: TileConfig) -> str:
    extension = "png" if cfg.image_format == "png" else "jpg"
    return f"{slide_stem(plan.slide)}_x{x_l0}_y{y_l0}.{extension}"


def _manifest_text(plan: SlidePlan, picked: np.ndarray, cfg: TileConfig) -> str:
    grid = plan.grid
    coords_l0 = grid.coordinates()[plan.selection.indices[picked]]
    fractions = plan.selection.tissue_fraction[picked]
    mpp = "" if grid.mpp_um is None else f"{grid.mpp_um:.6g}"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS + tuple(plan.columns))
    extra = [[cells[i] for cells in plan.columns.values()] for i in picked.tolist()]
    for (x_l0, y_l0), fraction, more in zip(coords_l0.tolist(), fractions.tolist(), extra):
        writer.writerow(
            [
                plan.slide,
                f"tiles/{_tile_name(plan, x_l0, y_l0, cfg)}",
                x_l0,
                y_l0,
                grid.tile_size_l0,
                grid.level,
                grid.read_size_px,
                grid.tile_size_px,
                mpp,
                f"{fraction:.4f}",
                *more,
            ]
        )
    return buffer.getvalue()


def _prepare_folder(plan: SlidePlan, picked: np.ndarray, cfg: TileConfig) -> np.ndarray:
    """Write the mask and thumbnail, drop stale files; return the grid indices still to write."""
    tiles_dir = plan.folder / "tiles"
    tiles_dir.mkdir(parents=True, exist_ok=True)
    indices = plan.selection.indices[picked]
    coords_l0 = plan.grid.coordinates()[indices]
    wanted = [_tile_name(plan, x, y, cfg) for x, y in coords_l0.tolist()]
    # Temporary files are tiles a killed run left half-written; other names are from other settings.
    wanted_set = set(wanted)
    for stale in tiles_dir.iterdir():
        if stale.name not in wanted_set:
            stale.unlink()
    Image.fromarray(plan.tissue.mask.astype(np.uint8) * 255).save(plan.folder / "tissue_mask.png")
    _thumbnail_with_grid(plan, coords_l0).save(plan.folder / "thumbnail.png")
    missing = [index for index, name in zip(indices.tolist(), wanted) if not (tiles_dir / name).is_file()]
    if len(missing) < len(indices):
        log.info("%s: %d of %d tiles already written", plan.slide, len(indices) - len(missing), len(indices))
    return np.asarray(missing, dtype=np.int64)


def _thumbnail_with_grid(plan: SlidePlan, coords_l0: np.ndarray) -> Image.Image:
    image = Image.fromarray(plan.tissue.thumbnail)
    draw = ImageDraw.Draw(image)
    sx, sy = plan.tissue.downsample
    size = plan.grid.tile_size_l0
    for x_l0, y_l0 in coords_l0.tolist():
        draw.rectangle(
            (x_l0 / sx, y_l0 / sy, (x_l0 + size) / sx - 1, (y_l0 + size) / sy - 1), outline=(0, 160, 0)
        )
    return image


def _write_slide_tiles(plan: SlidePlan, indices: np.ndarray, cfg: TileConfig, bar: tqdm | None) -> int:
    """Read and save the tiles `indices` of one slide; returns how many were written."""
    if len(indices) == 0:
        return 0
    tiles_dir = plan.folder / "tiles"
    # PNG encoding costs several reads per tile and PIL releases the GIL while encoding, so
    # encoder threads keep pace with the reader processes.
    with (
        open_slide(plan.slide, backend=cfg.backend) as slide,
        ThreadPoolExecutor(max(1, cfg.workers)) as encoders,
    ):
        for batch in iter_tiles(slide, plan.grid, indices, batch_size=cfg.batch_size, workers=cfg.workers):
            names = [_tile_name(plan, x, y, cfg) for x, y in batch.coords_l0.tolist()]
            # The batch's buffer is reused by the next batch: finish encoding before asking for it.
            list(
                encoders.map(
                    lambda item: _save_tile(item[0], tiles_dir / item[1], cfg), zip(batch.images, names)
                )
            )
            if bar is not None:
                bar.update(len(batch))
    return len(indices)


def _save_tile(image: np.ndarray, path: Path, cfg: TileConfig) -> None:
    buffer = io.BytesIO()
    if cfg.image_format == "png":
        # Level 1 is 25% faster than the default 6 and only ~7% larger on H&E tiles.
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    write_atomically(path, buffer.getvalue())
