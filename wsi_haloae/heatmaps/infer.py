"""Streaming inference: a slide's tiles in, per-tile anomaly maps and scores out, device kept busy.

Three stages overlap:

    reader processes (`slides.tiles.iter_tiles`, shared-memory batches), or, when the grid's
    tiles are the file's JPEG tiles, their bytes decoded in batches on the device (`jpeg_decode`)
      -> main thread: copy into a pinned host buffer, upload with a non-blocking copy, run the
         model under `torch.inference_mode` (bf16 autocast and channels_last on CUDA, optionally
         `torch.compile`), reduce the anomaly maps on the device, start copying the small results
         back, then hand over the PREVIOUS batch's results (one-batch lag: the device never waits
         for the host to collect a result)
      -> writer thread fed by a bounded queue: the caller's `sink` (stitching, store writes).

Per tile the anomaly map follows the spec (`model/anomaly.py`): squared feature error, upsampled
to the tile, |A - mean training map|, 3x3 smoothing; its mean and max are the tile's scores,
over the tile's tissue pixels only when `run` is given the slide's tissue mask (tissue-aware
scores: the mask at heatmap resolution travels with each batch to the device). A model trained
with stain normalisation normalises every batch on the device before the model.
The map is then averaged over `reduction` x `reduction` pixel blocks on the device, so each
tile sends back (S / reduction)^2 floats instead of S^2.

On the CPU the engine is deterministic for a given batch partition and thread count: the same
tiles in the same batches give the same bytes, which `heatmap` relies on to resume a killed run
exactly. On CUDA, cuDNN's autotuner may pick other kernels in another process, so a resumed
run's remaining bands can differ from an uninterrupted run's in the last bits (each band comes
whole from one run, so this never shows as a seam).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import ConfigError
from ..model.anomaly import Normalisation, anomaly_map, feature_error, fill_glass, image_scores
from ..slides.grid import TileGrid
from ..slides.jpeg_tiles import JpegTiles
from ..slides.slide import Slide
from ..slides.tiles import iter_tiles, read_tile
from ..slides.tissue import TissueMask
from ..training.checkpoint import TrainedModel
from .jpeg_decode import JpegTileReader
from .stitch import HEATMAP_REDUCTION, tile_tissue_on_heatmap

log = logging.getLogger(__name__)

CPU_BATCH_SIZE = 8
MAX_BATCH_SIZE = 1024
# Share of the free device memory an automatically sized batch may use: the rest absorbs the
# allocator's fragmentation and cuDNN workspaces, which the probe batch does not show in full.
GPU_MEMORY_SHARE = 0.5
_QUEUE_BATCHES = 4  # results waiting for the writer thread, at most
_POLL_S = 0.5


@dataclass(frozen=True)
class TileMaps:
    """Results for consecutive tiles of a grid.

    `indices` (N,) int64 grid indices; `maps` (N, T, T) float32 normalised anomaly maps averaged
    over `reduction`-pixel blocks (T = tile_size_px / reduction); `score_mean`, `score_max` (N,)
    float32, the mean and max of each tile's full-resolution normalised map (its image scores).
    """

    indices: np.ndarray
    maps: np.ndarray
    score_mean: np.ndarray
    score_max: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class InferStats:
    """Where the time went in `InferenceEngine.run`: `seconds` wall time overall; `read_wait_s`
    main thread blocked on the tile readers; `queue_wait_s` blocked on a full writer queue (the
    sink is the bottleneck); `sink_s` the writer thread's time inside the sink."""

    tiles: int
    batches: int
    seconds: float
    read_wait_s: float
    queue_wait_s: float
    sink_s: float

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0


class TileScorer(nn.Module):
    """HaloAE plus its anomaly-map post-processing, as one module: uint8 tiles -> maps and scores.

    Input (N, S, S, 3) uint8 RGB tiles on the module's device (S = the model's tile size) and,
    for tissue-aware scores, their tissue (N, S / reduction, S / reduction) bool. Output:
    maps (N, S / reduction, S / reduction) float32, score_mean (N,) and score_max (N,) float32
    (over the tissue pixels when `tissue` is given). With `bf16`, the model runs under bf16
    autocast; the anomaly maps are always float32. The model's stain normaliser (if any) runs
    first, in float32. `tissue_aware` picks the tissue-aware reference map.
    """

    def __init__(
        self,
        trained: TrainedModel,
        *,
        reduction: int = HEATMAP_REDUCTION,
        bf16: bool = False,
        normalisation: Normalisation = "mean",
        tissue_aware: bool = False,
    ) -> None:
        super().__init__()
        self.normalisation = normalisation
        self.tissue_aware = tissue_aware
        self.stain = trained.stain
        self.size_px = trained.config.model.image_size_px
        if self.size_px % reduction:
            raise ConfigError(f"the model's tile size {self.size_px} px is not a multiple of {reduction}")
        self.model = trained.model
        self.register_buffer(
            "reference_map", trained.reference_map(normalisation, tissue_aware).detach().float()
        )
        self.reduction = reduction
        self.map_order = trained.config.model.map_order
        self.bf16 = bf16
        self.memory_format = torch.contiguous_format

    def forward(self, images: Tensor, tissue: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        # (N, S, S, 3) -> (N, 3, S, S): a channels_last view, made dense in the model's format
        x = images.permute(0, 3, 1, 2).float().div(255.0)
        if self.stain is not None:
            x = self.stain(x)
        if tissue is not None:
            x = fill_glass(x, tissue)
        x = x.contiguous(memory_format=self.memory_format)
        # no autocast weight-cast cache: a CUDA graph must capture the casts (PyTorch's graph docs)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            output = self.model(x, heads=False)
        error = feature_error(output.fm.float(), output.fm_hat.float())  # (N, F, F)
        maps = anomaly_map(error, self.size_px, self.reference_map, self.map_order)  # (N, S, S)
        score_mean, score_max = image_scores(maps, tissue)
        reduced = F.avg_pool2d(maps.unsqueeze(1), self.reduction).squeeze(1)  # (N, S/r, S/r)
        return reduced, score_mean, score_max


class InferenceEngine:
    """A trained model made ready to score slide tiles on `device`.

    On CUDA the model is moved to channels_last, runs under bf16 autocast (unless `bf16` is
    False) and cuDNN picks its fastest kernels; `compile` wraps the scorer in `torch.compile`.
    `batch_size` None sizes batches to the device (`choose_batch_size`); `normalisation` picks the
    training map that anomaly maps are made relative to, mean or median (`model.anomaly`). Build it once per
    model and process: compiled kernels and the chosen batch size are kept for every slide.
    """

    def __init__(
        self,
        trained: TrainedModel,
        device: torch.device,
        *,
        batch_size: int | None = None,
        bf16: bool = True,
        compile: bool = False,
        cuda_graphs: bool = False,
        reduction: int = HEATMAP_REDUCTION,
        normalisation: Normalisation = "mean",
        tissue_aware: bool = False,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch size {batch_size} must be at least 1")
        if compile and cuda_graphs:
            raise ConfigError(
                "compile and cuda_graphs are two ways to cut launch overhead; turn one of them off"
            )
        self.trained = trained
        self.device = device
        cuda = device.type == "cuda"
        self.precision = "bf16" if bf16 and cuda else "fp32"
        self.scorer = (
            TileScorer(
                trained,
                reduction=reduction,
                bf16=self.precision == "bf16",
                normalisation=normalisation,
                tissue_aware=tissue_aware,
            )
            .to(device)
            .eval()
        )
        if cuda:
            self.scorer.model.to(memory_format=torch.channels_last)
            self.scorer.memory_format = torch.channels_last
            torch.backends.cudnn.benchmark = True  # fixed batch shapes: worth the one-off search
        self.compiled = compile
        # fixed shapes let cuDNN's autotuner and torch.compile settle on one set of kernels, so
        # the last, shorter batch is padded to the full size with whatever the buffer holds
        self.pad_batches = cuda or compile
        self._forward: Callable[..., tuple[Tensor, Tensor, Tensor]] = (
            torch.compile(self.scorer) if compile else self.scorer
        )
        self.batch_size = batch_size or choose_batch_size(self.scorer, device)
        self.tile_size_px = self.scorer.size_px
        self.map_px = self.tile_size_px // reduction
        # CUDA graph of one full batch, captured on first use (`_graph_forward`)
        self.cuda_graphs = cuda_graphs and cuda
        if cuda_graphs and not cuda:
            log.warning("cuda_graphs needs a CUDA device; running %s without", device)
        self._graphs: dict[
            bool, tuple[torch.cuda.CUDAGraph, Tensor, Tensor | None, tuple[Tensor, Tensor, Tensor]]
        ] = {}
        log.info(
            "inference on %s: %s, batch %d%s",
            device,
            self.precision,
            self.batch_size,
            ", compiled" if compile else ", CUDA graph" if self.cuda_graphs else "",
        )

    @torch.inference_mode()
    def score(self, images: Tensor, tissue: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Maps (N, T, T), score_mean (N,), score_max (N,) of uint8 tiles (N, S, S, 3) on the
        device, scored over their `tissue` (N, T, T) bool pixels when given.

        With CUDA graphs, a full batch replays the captured graph: the results are the graph's own
        output tensors, overwritten by the next call (the engine copies them out first, in stream
        order); other batch sizes run eagerly."""
        if self.cuda_graphs and images.shape[0] == self.batch_size:
            return self._graph_forward(images, tissue)
        return self._forward(images, tissue)

    def _graph_forward(self, images: Tensor, tissue: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        # one graph per input signature: with and without a tissue mask
        key = tissue is not None
        if key not in self._graphs:
            static_in = images.clone()
            static_tissue = None if tissue is None else tissue.clone()
            # warm up on a side stream (cuDNN's autotuner and lazy inits run outside the capture)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._forward(static_in, static_tissue)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in, static_tissue)
            self._graphs[key] = (graph, static_in, static_tissue, static_out)
        graph, static_in, static_tissue, static_out = self._graphs[key]
        static_in.copy_(images)
        if static_tissue is not None and tissue is not None:
            static_tissue.copy_(tissue)
        graph.replay()
        return static_out

    def run(
        self,
        slide: Slide,
        grid: TileGrid,
        indices: np.ndarray,
        sink: Callable[[TileMaps], None],
        *,
        workers: int = 0,
        batch_size: int | None = None,
        progress: bool = False,
        tissue: TissueMask | None = None,
        jpeg: JpegTiles | None = None,
    ) -> InferStats:
        """Score the grid tiles `indices` of `slide` in order, in batches of `batch_size` (default:
        the engine's), and call `sink` with each batch's `TileMaps`, in order, from a writer thread.

        `workers` reader processes decode tiles ahead (0: read in this thread). With `jpeg` (the
        file's JPEG tiles, `jpeg_decode.select_reader`), tiles are decoded from their bytes on the
        engine's device instead (`jpeg_decode.JpegTileReader`) and `workers` is unused. With
        `tissue` (the slide's mask), each tile is scored over its tissue pixels
        (`tile_tissue_on_heatmap`), as an engine built `tissue_aware` expects. An exception in the
        sink stops the run and is raised here; one here (or Ctrl-C) stops the writer after the
        batch it is on. Returns where the time went.
        """
        if (tissue is not None) != self.scorer.tissue_aware:
            raise ValueError("pass the slide's tissue mask exactly when the engine is tissue-aware")
        cuda = self.device.type == "cuda"
        size, batch, map_px = self.tile_size_px, batch_size or self.batch_size, self.map_px
        if grid.tile_size_px != size:
            raise ConfigError(
                f"the grid's tiles are {grid.tile_size_px} px but the model takes {size} px tiles"
            )
        # two of each: batch k fills one while batch k - 1's transfers may still use the other
        host_in = [torch.empty((batch, size, size, 3), dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
        host_out = [
            (
                torch.empty((batch, map_px, map_px), dtype=torch.float32, pin_memory=cuda),
                torch.empty(batch, dtype=torch.float32, pin_memory=cuda),
                torch.empty(batch, dtype=torch.float32, pin_memory=cuda),
            )
            for _ in range(2)
        ]
        host_tissue = [
            torch.empty((batch, map_px, map_px), dtype=torch.bool, pin_memory=cuda) for _ in range(2)
        ]
        coords_l0 = grid.coordinates()
        uploaded = [torch.cuda.Event() if cuda else None for _ in range(2)]  # recorded on first use
        downloaded = [torch.cuda.Event() if cuda else None for _ in range(2)]
        writer = _SinkThread(sink)
        read_wait = queue_wait = 0.0
        batches = 0
        started = time.perf_counter()

        def hand_over(slot: int, tile_indices: np.ndarray) -> float:
            if downloaded[slot] is not None:
                downloaded[slot].synchronize()
            count = len(tile_indices)
            maps, score_mean, score_max = (t[:count].numpy().copy() for t in host_out[slot])
            return writer.put(TileMaps(tile_indices, maps, score_mean, score_max))

        writer.start()
        try:
            if jpeg is not None:
                decoder = JpegTileReader(jpeg, slide, grid, indices, batch_size=batch, device=self.device)
                reader: Iterator[tuple[np.ndarray, Any]] = iter(decoder)
                closer: Any = decoder
                workers = 0  # the decoder's threads read; the model keeps every core
            else:
                batches_read = iter_tiles(slide, grid, indices, batch_size=batch, workers=workers)
                reader = ((b.indices, b.images) for b in batches_read)
                closer = batches_read
            # full batches of device pixels when the decoder's last batch is short (fixed shapes)
            device_in = (
                torch.empty((batch, size, size, 3), dtype=torch.uint8, device=self.device)
                if jpeg is not None and self.pad_batches
                else None
            )
            pending: tuple[int, np.ndarray] | None = None
            with (
                # events and non-blocking copies use the current device: make it the engine's
                torch.cuda.device(self.device) if cuda else leave_cores_to_readers(workers),
                closing(closer),
                tqdm(total=len(indices), unit="tile", desc="heatmap", disable=not progress) as bar,
            ):
                while True:
                    waited = time.perf_counter()
                    tiles = next(reader, None)
                    read_wait += time.perf_counter() - waited
                    if tiles is None:
                        break
                    tile_indices, pixels = tiles
                    slot, count = batches % 2, len(tile_indices)
                    if uploaded[slot] is not None:
                        uploaded[slot].synchronize()  # batch k - 2's uploads from these buffers are done
                    if isinstance(pixels, Tensor):  # decoded on the device already
                        images = pixels
                        if device_in is not None and count < batch:
                            device_in[:count].copy_(pixels)
                            images = device_in
                    else:
                        # the reader reuses its buffer on the next request: copy the pixels out now
                        host_in[slot][:count].copy_(torch.from_numpy(pixels))
                        images = host_in[slot] if self.pad_batches else host_in[slot][:count]
                        images = images.to(self.device, non_blocking=True)
                    on_tissue = None
                    if tissue is not None:
                        on_map = tile_tissue_on_heatmap(
                            tissue.mask, tissue.downsample, coords_l0[tile_indices], grid, map_px
                        )
                        host_tissue[slot][:count].copy_(torch.from_numpy(on_map))
                        on_tissue = host_tissue[slot][: images.shape[0]]
                        on_tissue = on_tissue.to(self.device, non_blocking=True)
                    if uploaded[slot] is not None:
                        uploaded[slot].record()
                    results = self.score(images) if on_tissue is None else self.score(images, on_tissue)
                    for host, result in zip(host_out[slot], results):
                        host[: len(result)].copy_(result, non_blocking=cuda)
                    if downloaded[slot] is not None:
                        downloaded[slot].record()
                    if pending is not None:
                        queue_wait += hand_over(*pending)
                    pending = (slot, np.array(tile_indices, copy=True))
                    batches += 1
                    bar.update(count)
                    writer.raise_if_failed()
                if pending is not None:
                    queue_wait += hand_over(*pending)
            writer.finish()
        finally:
            writer.abandon()
        return InferStats(
            tiles=len(indices),
            batches=batches,
            seconds=time.perf_counter() - started,
            read_wait_s=read_wait,
            queue_wait_s=queue_wait,
            sink_s=writer.busy_s,
        )


def default_workers(device: torch.device) -> int:
    """Tile reader processes when none are asked for. On CUDA the model outpaces a reader by far:
    every core but two (the model's and the writer's threads). On the CPU the model is the slow
    stage (a 256-px tile costs ~100 GFLOP, decoding it ~1 ms): none, every core to the model."""
    if device.type == "cuda":
        return max(1, min(16, available_cores() - 2))
    return 0


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def leave_cores_to_readers(workers: int) -> Iterator[None]:
    """Within the block, run the CPU model on the cores `workers` reader processes leave free
    (torch's thread count, restored after): more OpenMP threads than
    free cores make its threads wait on each other at every layer, several times slower. (The
    thread count changes the last bits of CPU results: resume a run with the same `workers`.)"""
    if workers == 0:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, available_cores() - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def choose_batch_size(scorer: TileScorer, device: torch.device, *, probe: int = 8) -> int:
    """A batch size for `scorer` on `device`: `CPU_BATCH_SIZE` on the CPU; on CUDA, as many tiles
    as `GPU_MEMORY_SHARE` of the free memory holds, measured with a `probe`-tile batch, rounded
    down to a multiple of 8 and kept within [8, MAX_BATCH_SIZE]."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    size = scorer.size_px
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        scorer(torch.zeros((probe, size, size, 3), dtype=torch.uint8, device=device))
    torch.cuda.synchronize(device)
    per_tile = max(1, (torch.cuda.max_memory_allocated(device) - before) / probe)
    free_bytes, _ = torch.cuda.mem_get_info(device)
    chosen = int(GPU_MEMORY_SHARE * free_bytes / per_tile) // 8 * 8
    chosen = max(8, min(MAX_BATCH_SIZE, chosen))
    log.info(
        "batch size %d: %.0f MiB per tile, %.1f GiB free on %s",
        chosen,
        per_tile / 2**20,
        free_bytes / 2**30,
        device,
    )
    return chosen


class _SinkThread(threading.Thread):
    """Calls the sink with each queued result, in order, off the main thread."""

    def __init__(self, sink: Callable[[TileMaps], None]) -> None:
        super().__init__(name="wsi-haloae-heatmap-writer", daemon=True)
        self._sink = sink
        self._queue: queue.Queue[TileMaps | None] = queue.Queue(maxsize=_QUEUE_BATCHES)
        self._abandoned = threading.Event()
        self.error: BaseException | None = None
        self.busy_s = 0.0

    def run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None or self._abandoned.is_set():
                continue  # drain, so the producer never blocks on a dead consumer
            started = time.perf_counter()
            try:
                self._sink(item)
            except BaseException as exc:
                self.error = exc
            self.busy_s += time.perf_counter() - started

    def put(self, item: TileMaps) -> float:
        """Queue `item`; returns the seconds spent waiting for room."""
        started = time.perf_counter()
        while True:
            self.raise_if_failed()
            try:
                self._queue.put(item, timeout=_POLL_S)
                return time.perf_counter() - started
            except queue.Full:
                continue

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait until every queued result went through the sink; raise the sink's error if any."""
        self._queue.put(None)
        self.join()
        self.raise_if_failed()

    def abandon(self) -> None:
        """Stop without processing what is still queued (after a failure elsewhere)."""
        if not self.is_alive():
            return
        self._abandoned.set()
        self._queue.put(None)
        self.join()


@dataclass(frozen=True)
class StageTiming:
    """One measured stage of the heatmap pipeline: `tiles` processed in `seconds` wall time."""

    stage: str
    tiles: int
    seconds: float
    note: str = ""

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0


def time_reading(
    slide: Slide, grid: TileGrid, indices: np.ndarray, *, batch_size: int, workers: int
) -> StageTiming:
    """Tiles/s of the tile readers alone (`iter_tiles`, reader start-up included)."""
    started = time.perf_counter()
    with closing(iter_tiles(slide, grid, indices, batch_size=batch_size, workers=workers)) as reader:
        tiles = sum(len(batch) for batch in reader)
    readers = f"{workers} reader process{'' if workers == 1 else 'es'}" if workers else "read in-process"
    return StageTiming("read only", tiles, time.perf_counter() - started, readers)


def time_transfer(engine: InferenceEngine, batches: int) -> StageTiming:
    """Tiles/s of the host -> device upload of full uint8 batches from pinned memory (on the CPU:
    the copy into the engine's batch buffer, which is all the CPU path does)."""
    size, cuda = engine.tile_size_px, engine.device.type == "cuda"
    host = torch.zeros((engine.batch_size, size, size, 3), dtype=torch.uint8, pin_memory=cuda)
    source = np.zeros(host.shape, np.uint8)
    _synchronize(engine.device)
    started = time.perf_counter()
    for _ in range(batches):
        if cuda:
            host.to(engine.device, non_blocking=True)
        else:
            host.copy_(torch.from_numpy(source))
    _synchronize(engine.device)
    note = "pinned, non_blocking" if cuda else "into the batch buffer (CPU)"
    return StageTiming("host -> device", batches * engine.batch_size, time.perf_counter() - started, note)


def time_model(engine: InferenceEngine, batches: int) -> StageTiming:
    """Tiles/s of the model and anomaly maps alone, on a batch already on the device (after two
    warm-up batches, which absorb cuDNN autotuning and compilation)."""
    size = engine.tile_size_px
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (engine.batch_size, size, size, 3), dtype=torch.uint8, generator=generator)
    images = images.to(engine.device)
    for _ in range(2):
        engine.score(images)
    _synchronize(engine.device)
    started = time.perf_counter()
    for _ in range(batches):
        engine.score(images)
    _synchronize(engine.device)
    mode = ", compiled" if engine.compiled else ", CUDA graph" if engine.cuda_graphs else ""
    note = f"batch {engine.batch_size}, {engine.precision}{mode}"
    return StageTiming("model only", batches * engine.batch_size, time.perf_counter() - started, note)


def time_baseline(
    trained: TrainedModel, slide: Slide, grid: TileGrid, indices: np.ndarray, device: torch.device
) -> StageTiming:
    """Tiles/s of the paper's setting: one tile at a time, float32, read, upload and score in
    turn with nothing overlapping. Run it before building an engine, which changes the model's
    memory format on CUDA."""
    scorer = TileScorer(trained, bf16=False).to(device).eval()
    coords_l0 = grid.coordinates()[indices]
    started = time.perf_counter()
    with torch.inference_mode():
        for x_l0, y_l0 in coords_l0.tolist():
            tile = torch.from_numpy(read_tile(slide, grid, x_l0, y_l0)).unsqueeze(0).to(device)
            maps, score_mean, _ = scorer(tile)
            maps.cpu(), score_mean.cpu()
    return StageTiming(
        "baseline: batch 1, fp32", len(coords_l0), time.perf_counter() - started, "read + score, no overlap"
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
