"""Host memory against slide size: peak RSS of `wsi-haloae heatmap` on synthetic slides of
growing size with the same small patch of tissue (`--tissue sparse`), each run in its own process
(its peak RSS read from the kernel with `os.wait4`). Target: < 10 % growth smallest -> largest.

    .venv/bin/python pipelines/bench_memory.py --sizes 16384,32768,70000 --config configs/tiny.yaml

Slides are written once into `--slides-dir` (default /tmp/wsi-haloae-memory) and kept for reruns;
writing is the slow part (a 70k slide renders ~75k JPEG tiles). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from wsi_haloae.bench import _untrained, provenance
from wsi_haloae.config import TrainConfig, load_config
from wsi_haloae.slides.synthetic import write_synthetic_slide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16384,32768,70000", help="Slide sides in px, comma-separated.")
    parser.add_argument("--config", default="configs/tiny.yaml", help="TrainConfig of the (untrained) model.")
    parser.add_argument("--slides-dir", default="/tmp/wsi-haloae-memory", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    args.slides_dir.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config, TrainConfig)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, backbone_weights="random"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="wsi-haloae-memory-") as tmp:
        model_dir = Path(tmp) / "model"
        _untrained(config, model_dir, torch.device("cpu"))
        for size in sizes:
            slide = args.slides_dir / f"sparse-{size}.tiff"
            written = 0.0
            if not slide.is_file():
                started = time.perf_counter()
                write_synthetic_slide(slide, size, size, tissue="sparse", seed=0)
                written = time.perf_counter() - started
            command = [
                sys.executable, "-m", "wsi_haloae.cli", "-q", "heatmap", str(slide), "--model", str(model_dir),
                "--out", str(Path(tmp) / f"out-{size}"), "--device", args.device, "--no-progress",
            ]  # fmt: skip
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            output = process.stdout.read() if process.stdout else ""
            if status != 0:
                raise SystemExit(f"heatmap failed on {slide} (status {status}): {output}")
            tiles = output.split(":")[1].split("tiles")[0].strip() if ":" in output else "?"
            rows.append((size, tiles, seconds, usage.ru_maxrss / 1024, written))
    print(provenance())
    print("| slide (px) | tissue tiles | heatmap seconds | peak RSS (MiB) | vs smallest |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for size, tiles, seconds, rss, _ in rows:
        print(
            f"| {size} x {size} | {tiles} | {seconds:.1f} | {rss:.0f} | {100 * (rss / rows[0][3] - 1):+.1f} % |"
        )
    print(f"\nSlides written this run: {', '.join(f'{s} px in {w:.0f} s' for s, _, _, _, w in rows if w)}")


if __name__ == "__main__":
    main()
