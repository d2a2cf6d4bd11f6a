"""Tissue-aware scores and stain normalisation, before and after, on the demo's synthetic slides.

Starts from a finished `wsi-haloae demo --out DEMO` folder (its slides, tiles and `run/` model,
trained without stain normalisation) and adds, in OUT:
- stain-shifted copies of the demo's slides (`write_synthetic_slide(stain_shift=...)`: same
  tissue and anomalies, other H&E vectors);
- the models: the demo's weights with stain normalisation none, macenko and reinhard, each fitted
  and calibrated as `train` does after its last epoch (the weights do not depend on the option);
- a heatmap of every slide by every model, with tissue-aware scores off and on;
and prints one markdown row per (model, scores, slide): tile AUROC against the planted anomalies,
the false-positive rate (normal tiles above the model's default threshold) of all normal tiles,
of border tiles (50-80 % tissue) and of interior ones (>= 80 %), and how many planted anomalies
have a tile above the threshold.

    PYTHONPATH=. .venv/bin/python pipelines/bench_tissue_stain.py --demo DEMO --out OUT
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
import yaml

from wsi_haloae.config import HeatmapConfig, to_dict
from wsi_haloae.demo import ANOMALOUS_FRACTION, DEMO_TRAIN, TILE_MPP_UM
from wsi_haloae.heatmaps.heatmap import SCORES_NAME, heatmap_slide
from wsi_haloae.slides.synthetic import anomaly_mask, plan_synthetic_slide, write_synthetic_slide
from wsi_haloae.training.checkpoint import MODEL_FILE, load_trained, save_trained
from wsi_haloae.training.data import TileDataset, find_tiles
from wsi_haloae.training.train import calibrate, fit_stain
from wsi_haloae.validation.metrics import auroc

SIZE_PX = 4096


def slides(demo: Path, out: Path, shift: float, seed: int) -> dict[str, tuple[Path, int, int, float]]:
    """name -> (path, anomalies, seed, stain shift); writes the ones the demo has not."""
    table = {
        "demo": (demo / "slides" / "with-anomalies.tiff", 6, seed + 2, 0.0),
        "normal-shifted": (out / "slides" / "normal-shifted.tiff", 0, seed + 1, shift),
        "anomalies-shifted": (out / "slides" / "anomalies-shifted.tiff", 6, seed + 2, shift),
    }
    for path, anomalies, slide_seed, stain_shift in table.values():
        if not path.is_file():
            write_synthetic_slide(
                path, SIZE_PX, SIZE_PX, anomalies=anomalies, seed=slide_seed, stain_shift=stain_shift
            )
    return table


def model(demo: Path, out: Path, method: str) -> Path:
    """The demo's model with stain normalisation `method`: fitted on its training tiles and
    calibrated as `train` does after its last epoch (the weights do not depend on the option)."""
    run = out / f"run-{method}"
    if not (run / MODEL_FILE).is_file():
        trained = load_trained(demo / "run")
        cfg = dataclasses.replace(trained.config, stain_normalisation=method)
        tiles = TileDataset(find_tiles(demo / "tiles"), cfg.model.image_size_px)
        tiles.stain = fit_stain(cfg, tiles)
        maps, scores = calibrate(trained.model, tiles, torch.device("cpu"), batch_size=3 * cfg.batch_size)
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        save_trained(run / MODEL_FILE, trained.model, cfg, maps, scores, stain=tiles.stain)
    return run


def measure(result_dir: Path, truth, threshold: float) -> dict[str, float]:
    with np.load(result_dir / SCORES_NAME) as stored:
        x_l0, y_l0, score, tissue = (
            stored["x_l0"],
            stored["y_l0"],
            stored["score_mean"],
            stored["tissue_fraction"],
        )
    step = round(DEMO_TRAIN["model"]["image_size_px"] * TILE_MPP_UM / truth.texture_mpp_um) // 16
    fraction = np.array(
        [anomaly_mask(truth, int(x), int(y), 16, downsample=step).mean() for x, y in zip(x_l0, y_l0)]
    )
    labels = fraction >= ANOMALOUS_FRACTION
    normal = fraction == 0
    above = score > threshold
    border = normal & (tissue >= 0.5) & (tissue < 0.8)
    interior = normal & (tissue >= 0.8)
    size_l0 = round(DEMO_TRAIN["model"]["image_size_px"] * TILE_MPP_UM / truth.texture_mpp_um)
    found = 0
    for anomaly in truth.anomalies:
        min_x, min_y, max_x, max_y = anomaly.polygon.bounds
        hit = (x_l0 < max_x) & (x_l0 + size_l0 > min_x) & (y_l0 < max_y) & (y_l0 + size_l0 > min_y) & labels
        found += bool((hit & above).any())
    return {
        "tiles": len(score),
        "auroc": auroc(score, labels) if 0 < labels.sum() < len(labels) else float("nan"),
        "fp": above[normal].mean() if normal.any() else float("nan"),
        "fp_border": above[border].mean() if border.any() else float("nan"),
        "border": int(border.sum()),
        "fp_interior": above[interior].mean() if interior.any() else float("nan"),
        "tpr": above[labels].mean() if labels.any() else float("nan"),
        "found": found,
        "planted": len(truth.anomalies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished `wsi-haloae demo --out` folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stain-shift", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0, help="the demo's --seed")
    parser.add_argument(
        "--rows",
        default="none:all,none:tissue,macenko:tissue,reinhard:tissue",
        help="stain normalisation:scores (all = every pixel, tissue = tissue-aware), comma-separated",
    )
    parser.add_argument("--slides", default="demo,normal-shifted,anomalies-shifted")
    args = parser.parse_args()
    table = slides(args.demo, args.out, args.stain_shift, args.seed)
    print(
        f"stain shift {args.stain_shift:g}\n| stain normalisation | scores | slide | tiles | tile AUROC | FP normal | FP border (n) "
        "| FP interior | TPR | anomalies found |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    for row in args.rows.split(","):
        method, mode = row.split(":")
        tissue_aware = mode == "tissue"
        if method == "none" and not tissue_aware:
            trained = load_trained(args.demo / "run")  # the demo's model as `wsi-haloae demo` trained it
        else:
            trained = load_trained(model(args.demo, args.out, method))
        cfg = HeatmapConfig(mpp_um=TILE_MPP_UM, workers=0, tissue_aware=tissue_aware)
        for name in args.slides.split(","):
            path, anomalies, slide_seed, shift = table[name]
            if method == "none" and not tissue_aware and name == "demo" and (args.demo / "heatmaps").is_dir():
                out_dir = args.demo / "heatmaps" / path.stem  # what `wsi-haloae demo` measured
                threshold = trained.threshold(None, cfg.normalisation)
            else:
                heatmaps = args.out / "heatmaps" / f"{method}-{mode}"
                result = heatmap_slide(path, trained, heatmaps, cfg)
                out_dir, threshold = result.out_dir, result.threshold
            truth = plan_synthetic_slide(
                path, SIZE_PX, SIZE_PX, anomalies=anomalies, seed=slide_seed, stain_shift=shift
            )
            m = measure(out_dir, truth, threshold)
            found = f"{m['found']}/{m['planted']}" if m["planted"] else "–"
            print(
                f"| {method} | {mode} | {name} | {m['tiles']} | {m['auroc']:.3f} | {m['fp']:.3f} | "
                f"{m['fp_border']:.3f} ({m['border']}) | {m['fp_interior']:.3f} | {m['tpr']:.3f} | {found} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
