"""Artefact QC against planted truth: a demo-like synthetic slide (4096 px at 0.5 µm/px, six
anomalies, seed 2 like the demo's test slide) with two pen strokes, a blur patch and a fold.

Per kind: tissue tiles at least half covered by the artefact, how many of them QC flags with that
kind (recall), how many tiles it flags with that kind and how many of those touch it (precision);
then the clean tiles (no artefact, no anomaly) and anomaly tiles it flags (should be none).
Prints markdown rows for docs/benchmarks.md.

    PYTHONPATH=. .venv/bin/python pipelines/bench_qc.py [--out /tmp/bench_qc] [--mpp 0.5 --tile 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

from wsi_haloae.annotations.read import fraction_inside, tile_boxes
from wsi_haloae.slides.grid import TileGrid
from wsi_haloae.slides.qc import qc_tiles
from wsi_haloae.slides.slide import open_slide
from wsi_haloae.slides.synthetic import ANOMALY_KINDS, ARTEFACT_KINDS, write_synthetic_slide
from wsi_haloae.slides.tissue import detect_tissue, select_tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--mpp", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--tile", type=int, nargs="+", default=[128, 64])
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_qc-"))
    path = out / "demo_like_artefacts.tiff"
    truth = write_synthetic_slide(
        path, 4096, 4096, anomalies=6, seed=2, artefacts=("pen", "blur", "fold", "pen")
    )
    print(
        "| tiles | kind | tiles ≥ 50 % artefact | found (recall) | flagged | of which touch it (precision) | clean / anomaly tiles flagged | QC s |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mpp, size in zip(args.mpp, args.tile):
        with open_slide(path) as slide:
            grid = TileGrid.for_slide(slide, mpp_um=mpp, tile_size_px=size)
            tissue = detect_tissue(slide)
            selection = select_tiles(grid, tissue.mask, tissue.downsample, min_tissue=0.5)
            start = time.perf_counter()
            qc = qc_tiles(slide, grid, selection.indices)
            seconds = time.perf_counter() - start
        boxes = tile_boxes(grid.coordinates()[selection.indices], grid.tile_size_l0)

        def cover(items, kinds):
            shapes = [item.polygon for item in items if item.kind in kinds]
            return fraction_inside(shapely.union_all(shapes), boxes) if shapes else np.zeros(len(boxes))

        artefact_any = cover(truth.artefacts, ARTEFACT_KINDS)
        anomaly_any = cover(truth.anomalies, ANOMALY_KINDS)
        clean = (artefact_any == 0) & (anomaly_any == 0)
        spoiled = f"{int(qc.is_artefact[clean].sum())} of {int(clean.sum())} / {int(qc.is_artefact[(anomaly_any > 0) & (artefact_any == 0)].sum())} of {int(((anomaly_any > 0) & (artefact_any == 0)).sum())}"
        for kind in ARTEFACT_KINDS:
            covered = cover(truth.artefacts, (kind,))
            mostly = covered >= 0.5
            flagged = qc.kind == kind
            found = int((qc.kind[mostly] == kind).sum())
            touching = int((covered[flagged] > 0).sum())
            print(
                f"| {size} px at {mpp:g} µm/px ({len(qc)} tissue tiles) | {kind} | {int(mostly.sum())} | "
                f"{found} ({found / max(1, mostly.sum()):.2f}) | {int(flagged.sum())} | "
                f"{touching} ({touching / max(1, flagged.sum()):.2f}) | {spoiled} | {seconds:.1f} |"
            )


if __name__ == "__main__":
    main()
