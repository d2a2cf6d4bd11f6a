"""The offline demo: the whole path on synthetic slides, on a CPU, in a few minutes.

Write a normal slide and one with planted anomalies, tile the normal one, train the `tiny`
HaloAE (random VGG19: no download), score the slide with anomalies and a second, held-out normal
slide into heatmaps, and validate them against the exact ground truth with `validate_slides`
(tile, pixel, region/FROC and slide level; `out/validation/`). A tile counts as anomalous when
more than a quarter of it lies in the truth, the demo's criterion since its first version, so the
tile AUROC of the slide with anomalies (`tile_auroc`) is the number the demo always printed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import HeatmapConfig, TrainConfig, from_dict
from .heatmaps.heatmap import SCORES_NAME, SUMMARY_NAME, heatmap_slide
from .slides.synthetic import plan_synthetic_slide, write_ground_truth, write_synthetic_slide
from .slides.tiles import TileConfig, write_tiles
from .training.checkpoint import load_trained
from .training.train import train
from .validation.slides import validate_slides

log = logging.getLogger(__name__)

# The `tiny` preset (configs/tiny.yaml), embedded so the installed package needs no repository,
# trained a little longer than the test preset so the demo's heatmap means something.
DEMO_TRAIN = {
    "model": {
        "image_size_px": 64,
        "backbone_weights": "random",
        "width": 0.125,
        "block_size": 4,
        "halo_size": 1,
        "dim_head": 8,
        "decoder_first_channels": 32,
        "decoder_middle_layers": 2,
    },
    "epochs": 4,
    "samples_per_epoch": 64,
    "batch_size": 4,
    "lr": 1e-3,
    "workers": 0,
    "device": "cpu",
}
TILE_MPP_UM = 1.0  # 64-px tiles of 64 µm: tissue texture and anomalies both visible
# The heatmap is given no resolution: it scores at the one the model records from its tiles.
ANOMALOUS_FRACTION = 0.25  # a tile is anomalous in the ground truth when this much of it is


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things and how well the heatmap found the planted anomalies."""

    out_dir: Path
    run_dir: Path
    heatmap_dir: Path
    ground_truth: tuple[Path, Path]
    tiles: int
    anomalous_tiles: int
    tile_auroc: float
    validation_dir: Path
    validation: dict


HELD_OUT_NAME = "normal-held-out.tiff"


def run_demo(out_dir: str | Path, *, size_px: int = 4096, seed: int = 0, progress: bool = True) -> DemoResult:
    """Run the demo into `out_dir` (resumable: finished steps are skipped on a rerun)."""
    out = Path(out_dir)
    slides = out / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    normal_path, test_path = slides / "normal.tiff", slides / "with-anomalies.tiff"
    # written under a temporary name and renamed, so a killed demo never keeps half a slide
    held_out_path = slides / HELD_OUT_NAME
    for path, anomalies, slide_seed in (
        (normal_path, 0, seed + 1),
        (test_path, 6, seed + 2),
        (held_out_path, 0, seed + 3),
    ):
        if not path.is_file():
            partial = path.with_name(path.name + ".partial")
            write_synthetic_slide(
                partial, size_px, size_px, anomalies=anomalies, seed=slide_seed, progress=progress
            )
            partial.replace(path)
    truth = plan_synthetic_slide(test_path, size_px, size_px, anomalies=6, seed=seed + 2)
    ground_truth = write_ground_truth(truth, out / "ground-truth")

    write_tiles(
        [normal_path], out / "tiles", TileConfig(mpp_um=TILE_MPP_UM, tile_size_px=64), progress=progress
    )
    run_dir = out / "run"
    cfg = from_dict(TrainConfig, DEMO_TRAIN, source="demo preset")
    cfg = dataclasses.replace(cfg, seed=seed)
    if not (run_dir / "model.safetensors").is_file():
        train(cfg, out / "tiles", run_dir, resume=(run_dir / "checkpoints").is_dir(), progress=progress)
    trained = load_trained(run_dir)
    result = heatmap_slide(test_path, trained, out / "heatmaps", HeatmapConfig(workers=0), progress)
    summary = json.loads((result.out_dir / SUMMARY_NAME).read_text())
    log.info(
        "heatmap tiles at %.4g µm/px, the model's training resolution %.4g µm/px",
        summary["resolution"]["heatmap_tile_mpp_um"],
        summary["resolution"]["model_mpp_um"],
    )

    heatmap_slide(held_out_path, trained, out / "heatmaps", HeatmapConfig(workers=0), progress)
    with np.load(result.out_dir / SCORES_NAME) as scores:
        tiles = len(scores["score_mean"])
    validation = validate_slides(
        [out / "heatmaps" / test_path.stem, out / "heatmaps" / held_out_path.stem],
        [ground_truth[1]],
        out / "validation",
        min_overlap=ANOMALOUS_FRACTION,
    )
    with (out / "validation" / "per_slide.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["slide"] == test_path.stem)
    value = float(row["tile_auroc"]) if row["tile_auroc"] else float("nan")
    return DemoResult(
        out,
        run_dir,
        result.out_dir,
        ground_truth,
        tiles,
        int(row["positive_tiles"]),
        value,
        out / "validation",
        validation,
    )
