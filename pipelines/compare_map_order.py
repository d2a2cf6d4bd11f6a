"""Post-processing order on saved MVTec-format models: the official protocol's numbers with the
maps upsampled first (the project's old order) and normalised and blurred at feature resolution
first (the official order). Usage, after `pipelines/mvtec_benchmark.py ROOT --out BENCH`:

    .venv/bin/python pipelines/compare_map_order.py ROOT BENCH --categories histology,brick
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from wsi_haloae.model.anomaly import MAP_ORDERS, anomaly_map, image_scores
from wsi_haloae.training.checkpoint import load_trained
from wsi_haloae.validation.evaluate import (
    OFFICIAL_PIXEL_SIZE_PX,
    _feature_errors,
    _pixel_maps_and_masks,
    score_set,
)
from wsi_haloae.validation.mvtec import mvtec_index


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root")
    parser.add_argument("bench")
    parser.add_argument("--categories", required=True)
    args = parser.parse_args()
    print("| category | order | image AUROC | pixel AUROC | AUPRO |\n| --- | --- | ---: | ---: | ---: |")
    for category in args.categories.split(","):
        trained = load_trained(f"{args.bench}/{category}/run")
        test = mvtec_index(args.root, category).test
        labels = np.array([s.label for s in test])
        errors = _feature_errors(trained, [s.image_path for s in test], batch_size=16, progress=False)
        size = trained.config.model.image_size_px
        normals = errors[torch.from_numpy(labels == 0)]
        for order in MAP_ORDERS:
            reference = normals.mean(0) if order == "feature-first" else anomaly_map(normals, size).mean(0)
            maps = anomaly_map(errors, size, reference, order)
            pixel_maps, masks = _pixel_maps_and_masks(maps, test, OFFICIAL_PIXEL_SIZE_PX)
            block = score_set(image_scores(maps)[0].numpy(), labels, pixel_maps, masks, flip_labels=True)
            cells = (100 * block[k] for k in ("image_auroc", "pixel_auroc", "aupro"))
            print(f"| {category} | {order} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
