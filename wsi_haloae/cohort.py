"""Cohorts: many slides on a dask.distributed cluster, one slide per task.

`heatmap_cohort` and `tile_cohort` run the per-slide jobs (`heatmaps.heatmap.heatmap_slide`,
`slides.tiles.tile_slide`) as dask tasks, on a LocalCluster started here (one worker per visible GPU,
pinned with CUDA_VISIBLE_DEVICES, or CPU workers sharing the cores) or on an existing cluster
at a `tcp://` address. Dask does the scheduling: when a worker dies its slide goes to another
worker (up to `ALLOWED_FAILURES` deaths per slide), and the per-slide jobs resume from what the
dead worker wrote. A slide that fails for a reason of its own (a corrupt file, no tissue) is a
`failed` row with its one-line error; the cohort goes on. `scheduler="none"` runs the same
tasks one by one in this process.

Each worker loads the model once and keeps it (`_engine`, a per-process cache). `OUT/cohort.csv`
lists every slide and is rewritten atomically as each one ends, so an interrupted cohort shows
what is left, and a rerun skips what is finished (status `skipped`).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .config import HeatmapConfig
from .errors import CohortError, ConfigError, WsiHaloaeError
from .files import check_unique_stems, ensure_writable_dir, slide_stem, write_atomically
from .heatmaps.infer import available_cores
from .slides.tiles import TileConfig, check_tile_job, plan_slide, sample_tiles, tile_slide

log = logging.getLogger(__name__)

COHORT_NAME = "cohort.csv"
# Deaths of a worker while it holds a slide before the slide is failed (dask's default is 3): a
# slide that kills two workers (out of memory, a crashing decoder) will kill the third too.
ALLOWED_FAILURES = 2
SLIDE_LIST_COLUMNS = ("slide", "path")
# Seconds a worker process gets to exit at the cohort's end before it is killed.
WORKER_STOP_S = 60


@dataclass(frozen=True)
class HeatmapRow:
    """One slide of a heatmap cohort, as `cohort.csv` lists it. `status`: done (scored by this
    run), skipped (finished by an earlier run), failed (see `error`) or pending (not reached)."""

    slide: str
    status: str = "pending"
    tiles: int | None = None
    anomalous_tiles: int | None = None
    anomalous_area_um2: float | None = None
    max_score: float | None = None
    mean_score: float | None = None
    seconds: float | None = None
    out_dir: str = ""
    error: str = ""


@dataclass(frozen=True)
class TileRow:
    """One slide of a tile cohort, as `cohort.csv` lists it (statuses as in `HeatmapRow`)."""

    slide: str
    status: str = "pending"
    tiles: int | None = None
    written: int | None = None
    seconds: float | None = None
    out_dir: str = ""
    error: str = ""


def expand_slides(specs: Sequence[str | Path]) -> list[Path]:
    """Slide paths from `specs`: paths, glob patterns (for lists too long for a shell) and CSV
    lists (a `.csv` file with a `slide` or `path` column; relative paths are relative to it).

    Raises ConfigError for a pattern that matches nothing or a CSV without a slide column.
    A path that does not exist is kept: its slide fails with its own error.
    """
    slides: list[Path] = []
    for spec in map(str, specs):
        if spec.lower().endswith(".csv") and Path(spec).is_file():
            slides.extend(_read_slide_list(Path(spec)))
        elif glob.has_magic(spec) and not Path(spec).exists():
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise ConfigError(
                    f"no file matches {spec!r}; check the pattern (quote it so the shell leaves it)"
                )
            slides.extend(Path(m) for m in matches)
        else:
            slides.append(Path(spec))
    if not slides:
        raise ConfigError("no slides given; pass slide files, glob patterns or a CSV list")
    return slides


def heatmap_cohort(
    slides: Sequence[str | Path],
    run: str | Path,
    out_dir: str | Path,
    cfg: HeatmapConfig = HeatmapConfig(),
    *,
    scheduler: str = "local",
    n_workers: int | None = None,
    dashboard_address: str = ":8787",
    progress: bool = False,
) -> list[HeatmapRow]:
    """Heatmaps of every slide into `out_dir/<stem>/` (as `heatmap_slide`), plus `out_dir/cohort.csv`.

    `scheduler`: "local" (a LocalCluster of `n_workers` workers: default one per visible GPU,
    else CPU workers), a "tcp://host:port" address of a running cluster, or "none" (one by one
    in this process). Returns the rows of cohort.csv; raises CohortError when slides failed
    (after all others finished), ConfigError/CheckpointError/OutputError before any work.
    """
    from .training.checkpoint import load_trained

    paths = expand_slides(slides)
    check_unique_stems(paths)
    out = ensure_writable_dir(out_dir).resolve()
    run = Path(run).resolve()
    load_trained(run)  # a bad checkpoint fails here, once, not on every worker
    rows = {path: HeatmapRow(str(path)) for path in paths}
    table = _Table(out / COHORT_NAME, rows)
    with _executor(scheduler, n_workers, cfg.device, dashboard_address) as executor:
        task_cfg = _per_worker_heatmap_config(cfg, executor)
        tasks = {path: (_heatmap_task, (path, run, out, task_cfg, executor.torch_threads)) for path in paths}
        _run(executor, tasks, table, progress, desc="slides", count=lambda row: row.tiles or 0)
    return table.finish("heatmap")


def tile_cohort(
    slides: Sequence[str | Path],
    out_dir: str | Path,
    cfg: TileConfig = TileConfig(),
    *,
    scheduler: str = "local",
    n_workers: int | None = None,
    dashboard_address: str = ":8787",
    progress: bool = False,
) -> list[TileRow]:
    """Training tiles of every slide into `out_dir/<stem>/` (as `write_tiles`), plus `out_dir/cohort.csv`.

    With `cfg.max_tiles` the sample is drawn across all slides that could be read, exactly as
    `write_tiles` draws it: the workers first count each slide's tissue tiles, then tile.
    Scheduler, return value and errors as in `heatmap_cohort`.
    """
    paths = expand_slides(slides)
    out = Path(out_dir).resolve()
    check_tile_job(paths, out, cfg)
    rows = {path: TileRow(str(path)) for path in paths}
    table = _Table(out / COHORT_NAME, rows)
    with _executor(scheduler, n_workers, "cpu", dashboard_address) as executor:
        picks: dict[Path, np.ndarray | None] = dict.fromkeys(paths)
        if cfg.max_tiles is not None:
            counts: dict[Path, int] = {}
            _run(
                executor,
                {path: (_count_task, (path, out, cfg)) for path in paths},
                table,
                progress,
                desc="tissue",
                count=lambda row: 0,
                collect=lambda path, n: counts.__setitem__(path, n),
            )
            readable = [path for path in paths if path in counts]
            picks = dict(zip(readable, sample_tiles([counts[p] for p in readable], cfg.max_tiles, cfg.seed)))
        tasks = {
            path: (_tile_task, (path, out, cfg, picks[path]))
            for path in paths
            if rows[path].status == "pending" and (cfg.max_tiles is None or path in picks)
        }
        _run(executor, tasks, table, progress, desc="slides", count=lambda row: row.written or 0)
    return table.finish("tile")


# ---------------------------------------------------------------- tasks (run on the workers)

# One prepared model per worker process: (run, device, engine settings) -> (TrainedModel, InferenceEngine)
_ENGINES: dict[tuple[Any, ...], tuple[Any, Any]] = {}


def _engine(run: Path, cfg: HeatmapConfig) -> tuple[Any, Any]:
    from .heatmaps.heatmap import engine_for
    from .model.device import resolve_device
    from .training.checkpoint import load_trained

    device = resolve_device(cfg.device)
    key = (str(run), str(device), cfg.batch_size, cfg.bf16, cfg.compile, cfg.cuda_graphs, cfg.normalisation)
    if key not in _ENGINES:
        trained = load_trained(run, device)
        engine = engine_for(trained, cfg)
        _ENGINES.clear()  # one model at a time: a worker's memory is for slides
        _ENGINES[key] = (trained, engine)
    return _ENGINES[key]


def _heatmap_task(
    slide: Path, run: Path, out: Path, cfg: HeatmapConfig, torch_threads: int | None
) -> HeatmapRow:
    import torch

    from .heatmaps.heatmap import SUMMARY_NAME, heatmap_slide

    started = time.perf_counter()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    summary_path = out / slide_stem(slide) / SUMMARY_NAME
    try:
        before = summary_path.read_bytes() if summary_path.is_file() else None
        trained, engine = _engine(run, cfg)
        result = heatmap_slide(slide, trained, out, cfg, progress=False, engine=engine)
        summary = summary_path.read_bytes()
    except WsiHaloaeError as exc:
        return HeatmapRow(str(slide), "failed", seconds=time.perf_counter() - started, error=str(exc))
    except Exception as exc:  # a bug or an unreadable corner of one slide must not stop a cohort
        log.exception("%s failed", slide)
        return HeatmapRow(str(slide), "failed", seconds=time.perf_counter() - started, error=_one_line(exc))
    facts = json.loads(summary)
    return HeatmapRow(
        str(slide),
        "skipped" if summary == before else "done",
        tiles=result.tiles,
        anomalous_tiles=result.anomalous_tiles,
        anomalous_area_um2=facts["regions"]["total_area_um2"],
        max_score=facts["scores"]["tile_max"]["max"],
        mean_score=facts["scores"]["tile_mean"]["mean"],
        seconds=time.perf_counter() - started,
        out_dir=str(result.out_dir),
    )


def _count_task(slide: Path, out: Path, cfg: TileConfig) -> int | TileRow:
    started = time.perf_counter()
    try:
        return len(plan_slide(slide, out, cfg).selection)
    except WsiHaloaeError as exc:
        return TileRow(str(slide), "failed", seconds=time.perf_counter() - started, error=str(exc))


def _tile_task(slide: Path, out: Path, cfg: TileConfig, picked: np.ndarray | None) -> TileRow:
    started = time.perf_counter()
    try:
        plan = plan_slide(slide, out, cfg)
        done = tile_slide(plan, np.arange(len(plan.selection)) if picked is None else picked, cfg)
    except WsiHaloaeError as exc:
        return TileRow(str(slide), "failed", seconds=time.perf_counter() - started, error=str(exc))
    except Exception as exc:
        log.exception("%s failed", slide)
        return TileRow(str(slide), "failed", seconds=time.perf_counter() - started, error=_one_line(exc))
    return TileRow(
        str(slide),
        "skipped" if done.skipped else "done",
        tiles=done.tiles,
        written=done.written,
        seconds=time.perf_counter() - started,
        out_dir=str(done.folder),
    )


# ---------------------------------------------------------------- running tasks


@dataclass
class _Executor:
    """Where tasks run: a dask client, or None for this process; `workers` the cluster's size."""

    client: Any
    workers: int
    gpus: int
    torch_threads: int | None


@contextmanager
def _executor(
    scheduler: str, n_workers: int | None, device: str, dashboard_address: str
) -> Iterator[_Executor]:
    if scheduler == "none":
        yield _Executor(None, 1, 0, None)
        return
    import dask
    from distributed import Client

    if scheduler.startswith(("tcp://", "tls://", "ucx://")):
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the dask scheduler at {scheduler} ({_one_line(exc)}); start it with "
                "`dask scheduler` or pass --scheduler local"
            ) from None
        with client:
            workers = len(client.scheduler_info()["workers"])
            if workers == 0:
                raise ConfigError(
                    f"the dask cluster at {scheduler} has no workers; "
                    f"start some with `dask worker {scheduler}`"
                )
            log.info("cohort on %s: %d workers, dashboard %s", scheduler, workers, client.dashboard_link)
            yield _Executor(client, workers, 0, None)
        return
    if scheduler != "local":
        raise ConfigError(f"scheduler {scheduler!r} is not local, none or a tcp://host:port address")
    gpus = _visible_gpus() if device in ("auto", "cuda") else 0
    if n_workers is not None and n_workers < 1:
        raise ConfigError(f"--dask-workers {n_workers} must be at least 1")
    workers = n_workers or gpus or max(1, available_cores() // 4)
    # Tile readers are child processes: dask's default daemonic workers may not have children.
    settings = {
        "distributed.worker.daemon": False,
        "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
    }
    with (
        dask.config.set(settings),
        _local_cluster(workers, gpus, dashboard_address) as cluster,
        Client(cluster) as client,
    ):
        log.info(
            "cohort on a local cluster: %d %s workers, dashboard %s",
            workers,
            "GPU" if gpus else "CPU",
            client.dashboard_link,
        )
        yield _Executor(client, workers, gpus, None if gpus else max(1, available_cores() // workers))


@contextmanager
def _local_cluster(workers: int, gpus: int, dashboard_address: str) -> Iterator[Any]:
    """Worker processes (with nannies, so a dead one is replaced), one task each; GPU workers
    see one GPU each."""
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    specs = {
        f"worker-{i}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "memory_limit": MEMORY_LIMIT // workers,
                "env": {"CUDA_VISIBLE_DEVICES": _gpu_ids()[i % gpus]} if gpus else {},
            },
        }
        for i in range(workers)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": dashboard_address}}
    with SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.ERROR) as cluster:
        try:
            yield cluster
        finally:
            _stop_workers(cluster)


def _stop_workers(cluster: Any) -> None:
    """Let every worker process exit on its own: the cluster's default 4 s before killing one is
    short for a process that imported torch on a busy machine, and a killed worker means a
    "still alive after 4.0 seconds, killing" warning and semaphores it never released."""
    import asyncio

    nannies = list(cluster.workers.values())

    async def close_all() -> None:  # all at once: the slowest worker sets the wait
        await asyncio.gather(*(n.close(timeout=WORKER_STOP_S) for n in nannies), return_exceptions=True)

    try:
        cluster.sync(close_all)
    except Exception as exc:  # the cluster's own close still kills what is left
        log.debug("closing the workers: %s", exc)


def _run(
    executor: _Executor,
    tasks: dict[Path, tuple[Callable[..., Any], tuple[Any, ...]]],
    table: _Table,
    progress: bool,
    *,
    desc: str,
    count: Callable[[Any], int],
    collect: Callable[[Path, Any], None] | None = None,
) -> None:
    """Run `tasks` (slide -> (function, args)), recording each returned row in `table`; a
    non-row result goes to `collect`. Tiles/s counts the tiles of this run's finished slides."""
    started = time.perf_counter()
    tiles = failed = 0
    with tqdm(total=len(tasks), unit="slide", desc=desc, disable=not progress) as bar:

        def record(path: Path, result: Any) -> None:
            nonlocal tiles, failed
            if isinstance(result, (HeatmapRow, TileRow)):
                table.set(path, result)
                if result.status == "failed":
                    failed += 1
                    log.warning("%s failed: %s", path, result.error)
                if result.status == "done":
                    tiles += count(result)
            elif collect is not None:
                collect(path, result)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(failed=failed, tiles_per_s=f"{tiles / elapsed:.1f}", refresh=False)
            bar.update()

        if executor.client is None:
            for path, (function, args) in tasks.items():
                record(path, function(*args))
            return
        from distributed import as_completed

        futures = {
            executor.client.submit(
                function, *args, key=f"{function.__name__[1:]}-{path.name}-{os.urandom(4).hex()}", pure=False
            ): path
            for path, (function, args) in tasks.items()
        }
        for future in as_completed(futures):
            path = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # the task itself returns rows; this is the cluster failing it
                result = table.failed(path, _cluster_failure(exc))
            record(path, result)


def _cluster_failure(exc: BaseException) -> str:
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        return (
            f"its worker died {ALLOWED_FAILURES + 1} times while processing it (out of memory? a crashing "
            "reader?); see the worker logs, then rerun the cohort"
        )
    return _one_line(exc)


class _Table:
    """cohort.csv: one row per slide in input order, rewritten atomically on every change."""

    def __init__(self, path: Path, rows: dict[Path, Any]) -> None:
        self.path = path
        self.rows = rows
        self._write()

    def set(self, slide: Path, row: Any) -> None:
        self.rows[slide] = row
        self._write()

    def failed(self, slide: Path, error: str) -> Any:
        return replace(self.rows[slide], status="failed", error=error)

    def finish(self, job: str) -> list[Any]:
        rows = list(self.rows.values())
        failed = [row for row in rows if row.status == "failed"]
        if failed:
            raise CohortError(
                f"{len(failed)} of {len(rows)} slides failed, the others finished (first: {failed[0].slide}: "
                f"{failed[0].error}); errors are in {self.path}; fix or drop those slides and rerun "
                f"the same {job} command"
            )
        return rows

    def _write(self) -> None:
        rows = list(self.rows.values())
        names = [f.name for f in fields(rows[0])]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow([_cell(getattr(row, name)) for name in names])
        write_atomically(self.path, buffer.getvalue().encode())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ---------------------------------------------------------------- helpers


def _per_worker_heatmap_config(cfg: HeatmapConfig, executor: _Executor) -> HeatmapConfig:
    """On a local GPU cluster, each GPU worker gets its share of the cores for tile readers."""
    if executor.gpus and cfg.workers is None:
        return replace(cfg, workers=max(0, available_cores() // executor.workers - 1))
    return cfg


def _read_slide_list(path: Path) -> list[Path]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        column = next((c for c in SLIDE_LIST_COLUMNS if c in (reader.fieldnames or [])), None)
        if column is None:
            raise ConfigError(f"{path} has no 'slide' or 'path' column; give the slide paths in one of them")
        slides = [Path(row[column]) for row in reader if row[column].strip()]
    return [slide if slide.is_absolute() else path.parent / slide for slide in slides]


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return [str(i) for i in range(_visible_gpus())]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
