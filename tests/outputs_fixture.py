"""A heatmap output folder built without a model, with scores known to the pixel, for the viewer
and export tests: the same files and summary fields as `heatmap_slide` writes.

Slide: the session's `small_slide` (2048 x 1536 px at 0.5 µm/px). Heatmap: 16 level-0 px per
pixel (128 x 96 px at 8 µm/px), computed where the thumbnail shows tissue, 0.3 there except the
WARM box at 1.8 and the HOT box next to it at 3.0 (heatmap rows/cols); threshold 1.0. Tiles: 128 level-0 px, a 16 x 12 grid.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_haloae.annotations import write_feature_collection
from wsi_haloae.heatmaps.pyramid import HeatmapStore
from wsi_haloae.heatmaps.regions import anomaly_regions, region_features, tile_features
from wsi_haloae.slides.slide import open_slide

PX_TO_L0 = 16
TILE_L0 = 128
THRESHOLD = 1.0
LOW, WARM_SCORE, HIGH = 0.3, 1.8, 3.0
WARM = (slice(16, 32), slice(16, 26))  # heatmap rows, cols: level-0 y 256..512, x 256..416
HOT = (slice(16, 32), slice(26, 40))  # level-0 y 256..512, x 416..640


def make_output_folder(root: Path, slide_path: Path, *, artefact_tiles: tuple[int, ...] = (0,)) -> Path:
    folder = root / slide_path.stem
    folder.mkdir(parents=True)
    with open_slide(slide_path) as slide:
        width, height = slide.dimensions
        shape = (height // PX_TO_L0, width // PX_TO_L0)
        small = np.asarray(
            Image.fromarray(slide.thumbnail(max(width, height) // PX_TO_L0)).resize(shape[::-1])
        )
        mpp = slide.mpp_um
    mask = small.astype(int).sum(axis=-1) < 3 * 215  # not background white
    scores = np.full(shape, LOW, np.float32)
    scores[WARM] = WARM_SCORE
    scores[HOT] = HIGH
    scores = np.where(mask, scores, np.nan).astype(np.float32)
    store = HeatmapStore.open(
        folder / "heatmap.ome.zarr",
        shape,
        (mpp[1] * PX_TO_L0, mpp[0] * PX_TO_L0),
        chunk_px=64,
        fingerprint={"test": 1},
    )
    for y0 in range(0, shape[0], 64):
        store.write_band(y0, np.nan_to_num(scores[y0 : y0 + 64]), mask[y0 : y0 + 64])
    store.finalize(slide_mpp_um_yx=(mpp[1], mpp[0]))

    per_tile = TILE_L0 // PX_TO_L0
    rows, cols = shape[0] // per_tile, shape[1] // per_tile
    blocks = mask.reshape(rows, per_tile, cols, per_tile)
    fraction = blocks.mean(axis=(1, 3)).ravel()
    with warnings.catch_warnings():  # tiles without tissue: NaN, as intended
        warnings.simplefilter("ignore", RuntimeWarning)
        tile_mean = np.nanmean(
            np.where(mask, scores, np.nan).reshape(rows, per_tile, cols, per_tile), axis=(1, 3)
        ).ravel()
    keep = np.flatnonzero(fraction >= 0.5)
    yy, xx = np.divmod(keep, cols)
    tile_scores = {
        "x_l0": (xx * TILE_L0).astype(np.int64),
        "y_l0": (yy * TILE_L0).astype(np.int64),
        "tissue_fraction": fraction[keep].astype(np.float32),
        "score_mean": tile_mean[keep].astype(np.float32),
        "score_max": tile_mean[keep].astype(np.float32),
        "artefact": np.isin(np.arange(len(keep)), artefact_tiles),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **tile_scores)
    (folder / "tile_scores.npz").write_bytes(buffer.getvalue())
    regions = anomaly_regions(scores, mask, THRESHOLD, px_to_l0=PX_TO_L0, mpp_um=mpp)
    write_feature_collection(folder / "regions.geojson", region_features(regions, id_namespace="test"))
    features = tile_features(
        np.stack([tile_scores["x_l0"], tile_scores["y_l0"]], axis=1),
        TILE_L0,
        {"anomaly_score": tile_scores["score_mean"]},
        threshold=THRESHOLD,
        id_namespace="test",
    )
    write_feature_collection(folder / "tiles.geojson.gz", features)
    summary = {
        "slide": {
            "path": str(slide_path.resolve()),
            "dimensions_l0": [width, height],
            "mpp_um_xy": list(mpp),
        },
        "model": {"run_dir": "runs/test-model", "tile_size_px": 64},
        "grid": {"tile_size_l0": TILE_L0, "stride_l0": TILE_L0, "columns": cols, "rows": rows},
        "heatmap": {
            "path": "heatmap.ome.zarr",
            "shape_yx": list(shape),
            "mpp_um_yx": [mpp[1] * PX_TO_L0, mpp[0] * PX_TO_L0],
            "px_to_l0": PX_TO_L0,
            "levels": len(store.level_shapes),
        },
        "tiles": {"tissue": len(keep), "anomalous": int((tile_scores["score_mean"] > THRESHOLD).sum())},
        "regions": {"count": len(regions)},
        "threshold": {"value": THRESHOLD, "source": "given"},
        "files": [
            "heatmap.ome.zarr",
            "tiles.geojson.gz",
            "regions.geojson",
            "tile_scores.npz",
            "summary.json",
        ],
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return folder
