"""GPU benchmarks that `pipelines/gpu_check.sh` runs on a lent device (CUDA only).

    python3 pipelines/bench_gpu.py model    # model only: attention kernel x launch mode, host syncs
    python3 pipelines/bench_gpu.py cohort   # a cohort sized for two GPUs, 1 and 2 workers on one GPU

`model`: the paper config (random VGG19), bf16, a batch already on the device. Rows: attention
kernel ("bias" / "folded", `model/halo.py`) x eager / CUDA graph / torch.compile. FLOP per tile
from torch's FLOP counter; the floor is FLOP / the bf16 matmul rate measured in the same process
(8192^3, random data). Target: >= 30 % of that floor. Host synchronisation inside the loop is
checked two ways: `torch.cuda.set_sync_debug_mode("error")` around the timed `score` calls (any
synchronising call raises), and the profiler's count of cudaStreamSynchronize /
cudaDeviceSynchronize / cudaMemcpy calls over 5 batches (must be 0). The same check by hand:

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5): engine.score(images)
    print(prof.key_averages().table(sort_by="count"))   # look for *Synchronize* and cudaMemcpy

`cohort`: four 12,288 x 12,288 all-tissue slides (about 2,300 tiles of 256 px each) through
`heatmap_cohort` on a local dask cluster of 1 then 2 workers sharing the one GPU: slides/hour and
tiles/s. On a two-GPU node each worker would hold its own GPU; here the second row shows what
overlapping two slides' host work buys on one.
Prints Markdown tables (and writes them to $OUT/bench-gpu-*.md when OUT is set).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsi_haloae.bench import _untrained, provenance  # noqa: E402
from wsi_haloae.config import HeatmapConfig, TrainConfig, load_config  # noqa: E402
from wsi_haloae.heatmaps.infer import InferenceEngine, time_model  # noqa: E402
from wsi_haloae.model.halo import set_attention_kernel  # noqa: E402


def _paper_config() -> TrainConfig:
    cfg = load_config(ROOT / "configs" / "haloae-paper.yaml", TrainConfig)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone_weights="random"))


def _bf16_matmul_tflops(size: int = 8192) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * size**3 * 10 / (start.elapsed_time(end) / 1e3) / 1e12


def _syncs(engine: InferenceEngine, images: torch.Tensor) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            engine.score(images)
    names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy ", "cudaEventSynchronize")
    return sum(e.count for e in prof.key_averages() if any(e.key.startswith(n.strip()) for n in names))


def model(batch_size: int) -> str:
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cuda")
    rate = _bf16_matmul_tflops()
    lines = [
        provenance(f"{torch.cuda.get_device_name()}, torch {torch.__version__}"),
        f"bf16 matmul (8192^3, random): {rate:.0f} TFLOP/s",
        "",
        "| attention | mode | batch | tiles/s | GFLOP/tile | TFLOP/s | % of bf16 floor | host syncs in 5 batches | max abs diff vs eager |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        trained = _untrained(_paper_config(), Path(tmp) / "model", device)
        images = torch.randint(0, 256, (batch_size, 256, 256, 3), dtype=torch.uint8, device=device)
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            InferenceEngine(trained, device, batch_size=1).score(images[:1])
        gflop = counter.get_total_flops() / 1e9
        for kernel in ("folded", "bias"):
            set_attention_kernel(trained.model, kernel)
            reference = None
            for mode in ("eager", "cuda graph", "compile"):
                try:
                    engine = InferenceEngine(
                        trained,
                        device,
                        batch_size=batch_size,
                        compile=mode == "compile",
                        cuda_graphs=mode == "cuda graph",
                    )
                    timing = time_model(engine, batches=20)
                    torch.cuda.set_sync_debug_mode("error")
                    try:
                        with torch.inference_mode():
                            maps = engine.score(images)[0].float().clone()
                    finally:
                        torch.cuda.set_sync_debug_mode(0)
                    syncs = _syncs(engine, images)
                except Exception as exc:  # one failing variant must not hide the others
                    lines.append(
                        f"| {kernel} | {mode} | {batch_size} | failed: {type(exc).__name__}: {exc} |"
                    )
                    continue
                reference = maps if reference is None else reference
                tflops = timing.tiles_per_s * gflop / 1e3
                lines.append(
                    f"| {kernel} | {mode} | {batch_size} | {timing.tiles_per_s:.0f} | {gflop:.1f} | {tflops:.0f} | "
                    f"{100 * tflops / rate:.0f} % | {syncs} | {(maps - reference).abs().max().item():.2e} |"
                )
                del engine
                torch.cuda.empty_cache()
    return "\n".join(lines)


def cohort(slides: int, size: int) -> str:
    from wsi_haloae.cohort import heatmap_cohort
    from wsi_haloae.slides.synthetic import write_synthetic_slide

    lines = [
        provenance(f"{torch.cuda.get_device_name()}, torch {torch.__version__}"),
        "| dask workers | slides | tiles | seconds | slides/hour | tiles/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = folder / "model"
        _untrained(_paper_config(), run, torch.device("cpu"))
        paths = [
            write_synthetic_slide(folder / f"slide-{i}.tiff", size, size, tissue="full", seed=10 + i).path
            for i in range(slides)
        ]
        cfg = HeatmapConfig(level=0, device="cuda")
        for workers in (1, 2):
            started = time.perf_counter()
            rows = heatmap_cohort(
                paths,
                run,
                folder / f"out-{workers}",
                cfg,
                scheduler="local",
                n_workers=workers,
                dashboard_address=":0",
            )
            seconds = time.perf_counter() - started
            tiles = sum(row.tiles or 0 for row in rows)
            lines.append(
                f"| {workers} | {len(rows)} | {tiles} | {seconds:.1f} | {3600 * len(rows) / seconds:.0f} | "
                f"{tiles / seconds:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    what = sys.argv[1] if len(sys.argv) > 1 else "model"
    table = model(int(os.environ.get("BATCH", "256"))) if what == "model" else cohort(4, 12288)
    print(table)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / f"bench-gpu-{what}.md").write_text(table + "\n")
