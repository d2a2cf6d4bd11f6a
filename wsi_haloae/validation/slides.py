"""Validation of slide heatmaps against annotations: tile, pixel, region and slide level.

`validate_slides(out_dirs, truth, out)` reads the heatmap folders `wsi-haloae heatmap` wrote (one
per slide: `summary.json`, `tile_scores.npz`, `heatmap.ome.zarr`) and the slides' ground truth
(QuPath GeoJSON, ASAP/Camelyon XML, mask images or OME-Zarr labels, read by
`wsi_haloae.annotations.read` into level-0 geometries), and writes to `out/`:

    metrics.json    every number, the protocol below, the model digest and the threshold
    metrics.md      the validation table (Markdown)
    per_slide.csv   one row per slide
    plots.png       ROC (tile, pixel), FROC, and score histograms by class (tiles, slides)
    threshold.json  with `choose_threshold`: the calibration file `heatmap --threshold-file` reads

Protocol (all scores are the raw heatmap scores; a sample is positive when `score >= threshold`):
- tile level: the tissue tiles of `tile_scores.npz`, scored by their mean map score; a tile is
  positive when more than `min_overlap` (default 0: any overlap) of its level-0 footprint lies in
  the truth (exact polygon areas). AUROC, AUPRC (average precision), F1-max, and sensitivity,
  specificity, precision at the threshold.
- pixel level: the heatmap's finest level (the OME-Zarr store's level 0), tissue pixels only (the
  store's computed mask); a pixel is positive when its centre lies in the truth. AUROC, AUPRO
  (MVTec's definition, FPR <= 0.3, regions 8-connected within tissue), Dice and IoU of the pixels
  at or above the threshold.
- region level (FROC, Camelyon16's operating points): at each threshold of a sweep (quantiles of
  the pooled tissue-pixel scores, plus the threshold itself), the detections are the 8-connected
  components of tissue pixels at or above it, dropping those smaller than the heatmap's own
  `min_region_um2` (as `regions.geojson` does). A truth region is found when a detection hits
  it; detections hitting none are false positives. Two hit rules, both reported: `overlap` (a
  pixel of the detection meets the region's interior: its outline overlaps the region) and `peak`
  (the detection's highest-scoring pixel meets it: Camelyon16's rule for point detections, the
  peak being the detection's point). `peak` is the default because `overlap` rewards low
  thresholds: once they merge the tissue into a few large components, every truth region is
  "found" by a component that is mostly normal tissue, at almost no false positives, and the
  FROC score approaches 1 for a heatmap that separates nothing. Sensitivity at 1/4, 1/2, 1, 2,
  4 and 8 false positives per slide (the best sweep point with at most that many,
  `metrics.froc_score`) and their mean, the FROC score.
- slide level (normal vs abnormal slides, from `labels` or, without it, from whether a slide has
  truth regions): AUROC of three slide scores: `max` (the highest tile score), `top{k}_mean` (the
  mean of the k highest tile scores, default k = 5) and `area_above_mm2` (tissue area at or above
  the threshold). Default `top5_mean`: the max is decided by one tile, so a single fold or edge
  artefact on a normal slide flips it, while a lesion of at least k tiles still reaches the top-k
  mean in full; the area depends on the threshold and on lesion size.

Threshold selection (`choose_threshold`): `youden` (tile level, max TPR - FPR), `fpr:X` (tile
level, the lowest threshold with FPR <= X), `fps-per-slide:N` (region level, the lowest sweep
threshold with at most N false positives per slide). The chosen threshold is then the one every
"at threshold" number uses, and is written to `threshold.json` with the model digest, the
normalisation and the cohort's tile-score range (for the normalised scores, see
`heatmaps.calibration`).

Truth is matched to slides by stem: a truth file belongs to the slide whose stem it equals or
starts with, followed by `_`, `-` or `.` (`slide1_anomalies.geojson` -> `slide1`; the longest slide
stem wins), or by a CSV with columns `slide` and `truth`. Slides without truth count as normal
(logged as a warning with their names).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from matplotlib.figure import Figure
from numpy.typing import NDArray
from scipy import ndimage

from ..annotations.read import (
    GEOJSON_SUFFIXES,
    MASK_SUFFIXES,
    XML_SUFFIXES,
    ZARR_SUFFIXES,
    RegionSpec,
    fraction_inside,
    parse_region_spec,
    read_region,
    tile_boxes,
)
from ..errors import DataError, OutputError
from ..files import write_atomically
from ..heatmaps.calibration import CALIBRATION_NAME, write_calibration
from ..heatmaps.pyramid import read_level
from .metrics import (
    FROC_RATES,
    at_threshold,
    auprc,
    aupro,
    auroc,
    dice_iou,
    f1_max,
    froc_score,
    roc_curve,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
TABLE_FILE = "metrics.md"
PER_SLIDE_FILE = "per_slide.csv"
PLOTS_FILE = "plots.png"
VALIDATION_FORMAT = "wsi-haloae/validation/1"
FPR_LIMIT = 0.3
TOP_K = 5
SLIDE_SCORES = ("max", "topk_mean", "area_above_mm2")
DEFAULT_SLIDE_SCORE = "topk_mean"
TRUTH_SUFFIXES = (*GEOJSON_SUFFIXES, *XML_SUFFIXES, *MASK_SUFFIXES, *ZARR_SUFFIXES)
# sweep of the FROC: quantiles of the pooled tissue-pixel scores, denser in the upper tail
_SWEEP_QUANTILES = np.unique(np.concatenate([np.linspace(0.0, 0.99, 100), np.linspace(0.99, 1.0, 101)]))
_EIGHT = np.ones((3, 3), dtype=bool)
# How a detection hits a truth region (see the module docstring); "peak" is the default.
REGION_HITS = ("peak", "overlap")


@dataclass
class SlideData:
    """One slide's heatmap outputs and truth, on the heatmap grid."""

    name: str
    folder: Path
    summary: dict[str, Any]
    heat: NDArray[np.float32]  # (h, w), NaN outside tissue
    tissue: NDArray[np.bool_]  # (h, w) computed pixels
    tile_xy: NDArray[np.int64]  # (N, 2) level-0 top-left corners
    tile_scores: NDArray[np.float32]  # (N,) mean map score per tile
    truth_specs: list[RegionSpec] = field(default_factory=list)
    truth: list[shapely.Polygon] = field(default_factory=list)  # truth regions, level-0 px
    truth_pixels: NDArray[np.bool_] | None = None  # (h, w) pixel centre inside the truth
    truth_ids: NDArray[np.int32] | None = None  # (h, w) 1 + region index where a pixel meets it
    label: int = 0
    label_source: str = "truth"

    @property
    def px_to_l0(self) -> float:
        return float(self.summary["heatmap"]["px_to_l0"])

    @property
    def pixel_area_um2(self) -> float:
        mpp_x, mpp_y = self.summary["slide"]["mpp_um_xy"]
        return (self.px_to_l0 * mpp_x) * (self.px_to_l0 * mpp_y)


def parse_threshold_choice(text: str) -> tuple[str, float | None]:
    """`youden`, `fpr:0.05` or `fps-per-slide:1` -> (method, value); DataError for anything else."""
    if text == "youden":
        return "youden", None
    method, _, value = text.partition(":")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if method == "fpr" and 0.0 <= number <= 1.0:
        return method, number
    if method == "fps-per-slide" and math.isfinite(number) and number >= 0.0:
        return method, number
    raise DataError(
        f"--choose-threshold {text!r} is not understood; use youden, fpr:X (X in [0, 1]) or "
        "fps-per-slide:N (N >= 0), e.g. fpr:0.05 or fps-per-slide:1"
    )


def validate_slides(
    out_dirs: Sequence[str | Path],
    truth: Sequence[str | Path],
    out: str | Path,
    *,
    labels_csv: str | Path | None = None,
    truth_classes: Sequence[str] | None = None,
    min_overlap: float = 0.0,
    top_k: int = TOP_K,
    threshold: float | None = None,
    choose_threshold: str | None = None,
    region_hit: str = "peak",
    plots: bool = True,
) -> dict[str, Any]:
    """Validate the heatmaps in `out_dirs` against `truth`; write the files of the module docstring.

    Args:
        out_dirs: heatmap output folders, one per slide, or parents of such folders.
        truth: truth files (region specs `PATH[:CLASS][@DOWNSAMPLE]`), folders of truth files, or
            CSV files mapping `slide` to `truth`.
        out: the output folder.
        labels_csv: CSV with columns `slide` and `label` (0/1, or normal/abnormal) for slide level.
        truth_classes: keep only these annotation classes of files named without a class.
        min_overlap: a tile is positive when more than this fraction of it lies in the truth.
        top_k: tiles averaged by the `topk_mean` slide score.
        threshold: the operating threshold (default: the heatmaps' own, which must agree).
        choose_threshold: `youden`, `fpr:X` or `fps-per-slide:N` (see the module docstring).
        region_hit: "peak" (default) or "overlap": the FROC's hit rule (both are reported).
        plots: write plots.png.

    Returns:
        The content of metrics.json.

    Raises:
        DataError: no heatmap folder, heatmaps of different models or thresholds, labels that do
            not match the slides, a truth file that matches no slide.
        AnnotationError: a truth file cannot be read.
        OutputError: `out` cannot be written.
    """
    if not 0.0 <= min_overlap < 1.0:
        raise DataError(f"min_overlap {min_overlap} must be in [0, 1); 0 counts any overlap")
    if region_hit not in REGION_HITS:
        raise DataError(f"region_hit {region_hit!r} must be one of {', '.join(REGION_HITS)}")
    if top_k < 1:
        raise DataError(f"top_k {top_k} must be at least 1")
    choice = parse_threshold_choice(choose_threshold) if choose_threshold else None
    slides = load_slides(out_dirs)
    _match_truth(slides, truth, truth_classes)
    for slide in slides:
        _read_truth(slide)
    _assign_labels(slides, labels_csv)
    digest, heatmap_threshold, normalisation = _common(slides)
    if threshold is None:
        threshold, source = heatmap_threshold, "the heatmaps' threshold"
    else:
        source = "given"

    tiles = _tile_arrays(slides, min_overlap)
    sweep = _froc_sweep(slides, threshold)
    chosen = None
    if choice is not None:
        threshold, source = _choose(choice, tiles, sweep, region_hit)
        chosen = {"method": choose_threshold, "threshold": threshold}
        sweep = _froc_sweep(slides, threshold)

    result: dict[str, Any] = {
        "format": VALIDATION_FORMAT,
        "protocol": _protocol(min_overlap, top_k, region_hit),
        "model_sha256": digest,
        "normalisation": normalisation,
        "threshold": {"value": threshold, "source": source, "heatmap_threshold": heatmap_threshold},
        "slides": [s.name for s in slides],
        "n_slides": len(slides),
        "n_truth_regions": sum(len(s.truth) for s in slides),
        "tile": _tile_metrics(tiles, threshold),
        "pixel": _pixel_metrics(slides, threshold),
        "region": _region_metrics(sweep, threshold, region_hit),
        "slide": _slide_metrics(slides, threshold, top_k),
        "chosen_threshold": chosen,
        "files": [METRICS_FILE, TABLE_FILE, PER_SLIDE_FILE] + ([PLOTS_FILE] if plots else []),
    }
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir} ({exc.strerror}); choose another --out") from None
    rows = _per_slide_rows(slides, threshold, top_k, min_overlap, region_hit)
    _write_csv(out_dir / PER_SLIDE_FILE, rows)
    if plots:
        _plot(out_dir / PLOTS_FILE, tiles, slides, sweep, result, top_k)
    if choice is not None:
        score_range = (float(tiles["scores"].min()), float(tiles["scores"].max()))
        if not score_range[1] > score_range[0]:
            score_range = (score_range[0], score_range[0] + 1.0)
        path = write_calibration(
            out_dir / CALIBRATION_NAME,
            {
                "threshold": threshold,
                "method": choose_threshold,
                "model_sha256": digest,
                "normalisation": normalisation,
                "score_range": list(score_range),
                "cohort": [str(s.folder) for s in slides],
                "at_threshold": {"tile": result["tile"].get("at_threshold")},
            },
        )
        result["files"].append(CALIBRATION_NAME)
        result["chosen_threshold"]["file"] = str(path)
    write_atomically(out_dir / TABLE_FILE, validation_table(result).encode())
    write_atomically(out_dir / METRICS_FILE, (json.dumps(_jsonable(result), indent=2) + "\n").encode())
    return result


def load_slides(out_dirs: Sequence[str | Path]) -> list[SlideData]:
    """The heatmap folders in `out_dirs` (each a slide's folder with summary.json, or a parent of
    several), read: summary, tile scores and the heatmap's finest level."""
    folders: list[Path] = []
    for entry in map(Path, out_dirs):
        if (entry / "summary.json").is_file():
            folders.append(entry)
        elif entry.is_dir():
            found = sorted(p.parent for p in entry.glob("*/summary.json"))
            if not found:
                raise DataError(f"{entry} holds no heatmap output (no summary.json in it or its subfolders)")
            folders += found
        else:
            raise DataError(f"{entry} is not a heatmap output folder; pass the folders `heatmap --out` made")
    names = [f.name for f in folders]
    if len(set(names)) != len(names):
        raise DataError(
            f"two heatmap folders share a slide name: {sorted(n for n in names if names.count(n) > 1)}"
        )
    slides = []
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        with np.load(folder / "tile_scores.npz") as scores:
            xy = np.stack([scores["x_l0"], scores["y_l0"]], axis=1).astype(np.int64)
            tile_scores = scores["score_mean"].astype(np.float32)
        heat, tissue = read_level(folder / summary["heatmap"]["path"], 0)
        slides.append(SlideData(folder.name, folder, summary, heat, tissue, xy, tile_scores))
    return slides


def validation_table(result: dict[str, Any]) -> str:
    """The validation numbers of `metrics.json` as a Markdown table (one row per metric)."""

    def fmt(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    tile, pixel, region, slide = (result[k] for k in ("tile", "pixel", "region", "slide"))
    t = result["threshold"]
    lines = [
        (
            f"Validation of {result['n_slides']} slides ({result['n_truth_regions']} truth regions), "
            f"model {result['model_sha256'][:12]}, threshold {t['value']:.6g} ({t['source']})."
        ),
        "",
        "| level | metric | value |",
        "| --- | --- | ---: |",
    ]
    at = tile.get("at_threshold") or {}
    for name in ("auroc", "auprc", "f1_max"):
        lines.append(
            f"| tile ({tile['n_positive']} + / {tile['n_negative']} −) | {name} | {fmt(tile.get(name))} |"
        )
    for name in ("sensitivity", "specificity"):
        lines.append(f"| tile | {name} at threshold | {fmt(at.get(name))} |")
    for name in ("auroc", "aupro", "dice", "iou"):
        lines.append(f"| pixel (tissue) | {name} | {fmt(pixel.get(name))} |")
    for rate, value in (region.get("sensitivity_at") or {}).items():
        lines.append(f"| region | sensitivity at {float(rate):g} FP/slide | {fmt(value)} |")
    lines.append(f"| region | FROC score (mean) | {fmt(region.get('froc'))} |")
    op = region.get("at_threshold") or {}
    lines.append(
        f"| region | sensitivity, FP/slide at threshold | {fmt(op.get('sensitivity'))}, {fmt(op.get('fps_per_slide'))} |"
    )
    for name in SLIDE_SCORES:
        label = f"top{slide['top_k']}_mean" if name == "topk_mean" else name
        default = " (default)" if name == DEFAULT_SLIDE_SCORE else ""
        lines.append(
            f"| slide ({slide['n_abnormal']} abnormal / {slide['n_normal']} normal) | AUROC of {label}{default} "
            f"| {fmt((slide.get('auroc') or {}).get(name))} |"
        )
    return "\n".join(lines) + "\n"


# --- truth ------------------------------------------------------------------------------------


def _match_truth(slides: list[SlideData], truth: Sequence[str | Path], classes: Sequence[str] | None) -> None:
    by_name = {s.name: s for s in slides}
    stems = sorted(by_name, key=len, reverse=True)

    def owner(stem: str) -> SlideData | None:
        for name in stems:
            if stem == name or (stem.startswith(name) and stem[len(name)] in "_-."):
                return by_name[name]
        return None

    def add(slide: SlideData, spec: RegionSpec) -> None:
        if spec.classes is None and classes:
            spec = RegionSpec(spec.path, tuple(classes), spec.downsample)
        slide.truth_specs.append(spec)

    for entry in truth:
        text = str(entry)
        path = Path(text)
        if path.suffix.lower() == ".csv" and path.is_file():
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    if "slide" not in row or "truth" not in row:
                        raise DataError(f"{path}: a truth CSV needs the columns slide and truth")
                    name = Path(row["slide"]).stem
                    if name not in by_name:
                        raise DataError(
                            f"{path}: slide {row['slide']!r} has no heatmap among the folders given"
                        )
                    spec = parse_region_spec(row["truth"])
                    if not spec.path.is_absolute():
                        spec = RegionSpec(path.parent / spec.path, spec.classes, spec.downsample)
                    add(by_name[name], spec)
        elif path.is_dir() and path.suffix.lower() not in ZARR_SUFFIXES:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in TRUTH_SUFFIXES)
            for file in files:
                slide = owner(file.name[: -len(file.suffix)] if file.suffix else file.name)
                if slide is None:
                    log.warning("truth file %s matches no slide (by stem); it is not used", file)
                else:
                    add(slide, RegionSpec(file))
        else:
            spec = parse_region_spec(text)
            slide = owner(spec.path.name[: -len(spec.path.suffix)] if spec.path.suffix else spec.path.name)
            if slide is None:
                raise DataError(
                    f"truth {text} matches no slide by stem ({', '.join(sorted(by_name))}); name it after its "
                    "slide or pass a CSV with columns slide,truth"
                )
            add(slide, spec)
    without = [s.name for s in slides if not s.truth_specs]
    if without:
        log.warning("%d slides have no truth file and count as normal: %s", len(without), ", ".join(without))


def _read_truth(slide: SlideData) -> None:
    """Truth regions (level-0 polygons) and their rasters on the heatmap grid."""
    dims = tuple(int(v) for v in slide.summary["slide"]["dimensions_l0"])
    geometries = [read_region(spec, slide_size_l0=dims).geometry for spec in slide.truth_specs]  # type: ignore[arg-type]
    merged = shapely.union_all(geometries) if geometries else shapely.Polygon()
    parts = list(getattr(merged, "geoms", [merged]))
    slide.truth = [p for p in parts if isinstance(p, shapely.Polygon) and not p.is_empty and p.area > 0]
    h, w = slide.heat.shape
    p = slide.px_to_l0
    pixels = np.zeros((h, w), dtype=bool)
    ids = np.zeros((h, w), dtype=np.int32)
    for index, region in enumerate(slide.truth, start=1):
        x0, y0, x1, y1 = region.bounds
        c0, c1 = max(0, int(x0 // p)), min(w, math.ceil(x1 / p) + 1)
        r0, r1 = max(0, int(y0 // p)), min(h, math.ceil(y1 / p) + 1)
        if c0 >= c1 or r0 >= r1:
            continue
        cols, rows = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
        shapely.prepare(region)
        centre = shapely.contains_xy(region, (cols + 0.5) * p, (rows + 0.5) * p)
        boxes = shapely.box(cols * p, rows * p, (cols + 1) * p, (rows + 1) * p)
        meets = shapely.intersects(region, boxes) & ~shapely.touches(region, boxes)
        pixels[r0:r1, c0:c1] |= centre
        ids[r0:r1, c0:c1] = np.where(meets, index, ids[r0:r1, c0:c1])
    slide.truth_pixels, slide.truth_ids = pixels, ids


def _assign_labels(slides: list[SlideData], labels_csv: str | Path | None) -> None:
    for slide in slides:
        slide.label, slide.label_source = int(bool(slide.truth)), "truth"
    if labels_csv is None:
        return
    path = Path(labels_csv)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist; pass a CSV with columns slide,label")
    by_name = {s.name: s for s in slides}
    seen = set()
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if "slide" not in row or "label" not in row:
                raise DataError(f"{path}: the labels CSV needs the columns slide and label")
            name = Path(row["slide"]).stem
            text = row["label"].strip().lower()
            value = {"0": 0, "1": 1, "normal": 0, "abnormal": 1, "tumor": 1, "tumour": 1}.get(text)
            if value is None:
                raise DataError(f"{path}: label {row['label']!r} of {name}; use 0/1 or normal/abnormal")
            if name in by_name:
                by_name[name].label, by_name[name].label_source = value, "labels"
                seen.add(name)
    missing = sorted(set(by_name) - seen)
    if missing:
        raise DataError(f"{path} has no label for {', '.join(missing)}; add a row for every slide")


def _common(slides: list[SlideData]) -> tuple[str, float, str]:
    digests = {s.summary["fingerprint"]["model_sha256"] for s in slides}
    if len(digests) != 1:
        raise DataError(
            f"the heatmaps come from {len(digests)} different models; validate one model at a time"
        )
    thresholds = {float(s.summary["threshold"]["value"]) for s in slides}
    if len(thresholds) != 1:
        raise DataError(
            f"the heatmaps use {len(thresholds)} different thresholds ({sorted(thresholds)[:3]}...); "
            "pass --threshold to validate at one"
        )
    norms = {s.summary["fingerprint"]["normalisation"] for s in slides}
    if len(norms) != 1:
        raise DataError(f"the heatmaps mix normalisations {sorted(norms)}; validate one at a time")
    return digests.pop(), thresholds.pop(), norms.pop()


# --- metrics ----------------------------------------------------------------------------------


def _guard(fn: Any, *args: Any) -> Any:
    """fn(*args), or None when the data cannot give the metric (one class missing)."""
    try:
        return fn(*args)
    except DataError as exc:
        log.info("metric left out: %s", exc)
        return None


def _tile_arrays(slides: list[SlideData], min_overlap: float) -> dict[str, NDArray]:
    scores, labels, slide_index = [], [], []
    for i, slide in enumerate(slides):
        size = float(slide.summary["grid"]["tile_size_l0"])
        truth = shapely.union_all(slide.truth) if slide.truth else shapely.Polygon()
        overlap = fraction_inside(truth, tile_boxes(slide.tile_xy, size))
        scores.append(slide.tile_scores)
        labels.append(overlap > min_overlap)
        slide_index.append(np.full(len(slide.tile_scores), i))
    return {
        "scores": np.concatenate(scores),
        "labels": np.concatenate(labels),
        "slide": np.concatenate(slide_index),
    }


def _tile_metrics(tiles: dict[str, NDArray], threshold: float) -> dict[str, Any]:
    s, y = tiles["scores"], tiles["labels"]
    f1 = _guard(f1_max, s, y)
    return {
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
        "auroc": _guard(auroc, s, y),
        "auprc": _guard(auprc, s, y),
        "f1_max": None if f1 is None else f1[0],
        "f1_max_threshold": None if f1 is None else f1[1],
        "at_threshold": at_threshold(s, y, threshold),
    }


def _pixel_metrics(slides: list[SlideData], threshold: float) -> dict[str, Any]:
    maps = [np.where(s.tissue, s.heat, 0.0).astype(np.float32) for s in slides]
    masks = [s.truth_pixels & s.tissue for s in slides]  # type: ignore[operator]
    valid = [s.tissue for s in slides]
    pos = np.concatenate([m[k] for m, k in zip(maps, masks, strict=True)])
    neg = np.concatenate([m[v & ~k] for m, k, v in zip(maps, masks, valid, strict=True)])
    predicted = np.concatenate([(m >= threshold)[v] for m, v in zip(maps, valid, strict=True)])
    truth = np.concatenate([k[v] for k, v in zip(masks, valid, strict=True)])
    dice, iou = dice_iou(predicted, truth)
    return {
        "n_positive": int(pos.size),
        "n_negative": int(neg.size),
        "auroc": _guard(auroc, np.concatenate([pos, neg]), np.arange(pos.size + neg.size) < pos.size),
        "aupro": _guard(aupro, maps, masks, FPR_LIMIT, valid) if pos.size and neg.size else None,
        "fpr_limit": FPR_LIMIT,
        "dice": dice,
        "iou": iou,
    }


def _components(slide: SlideData, t: float) -> dict[str, Any]:
    """Detections (8-connected tissue pixels >= t, the small ones dropped) and, per hit rule, their
    false positives and the truth region ids they find."""
    empty = {"detections": 0, **{rule: (0, set()) for rule in REGION_HITS}}
    with np.errstate(invalid="ignore"):
        above = slide.tissue & (slide.heat >= t)
    labels, count = ndimage.label(above, structure=_EIGHT)
    if count == 0:
        return empty
    min_area = float(slide.summary.get("regions", {}).get("min_area_um2", 0.0))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = np.flatnonzero(sizes * slide.pixel_area_um2 >= min_area)
    keep = keep[keep > 0]
    if keep.size == 0:
        return empty
    ids = slide.truth_ids
    assert ids is not None
    # overlap: a detection hits every truth region one of its pixels meets
    inside = np.isin(labels, keep) & (ids > 0)
    pairs = np.unique(np.stack([labels[inside], ids[inside]]), axis=1)
    overlap = (int(keep.size - np.unique(pairs[0]).size), set(pairs[1].tolist()))
    # peak: a detection hits the truth region its highest-scoring pixel meets (Camelyon16's point rule)
    peaks = ndimage.maximum_position(np.where(above, slide.heat, -np.inf), labels, keep)
    peak_ids = np.array([ids[r, c] for r, c in peaks], dtype=np.int64)
    peak = (int((peak_ids == 0).sum()), set(peak_ids[peak_ids > 0].tolist()))
    return {"detections": int(keep.size), "overlap": overlap, "peak": peak}


def _froc_sweep(slides: list[SlideData], threshold: float) -> dict[str, NDArray]:
    pooled = np.concatenate([s.heat[s.tissue] for s in slides])
    grid = np.quantile(pooled, _SWEEP_QUANTILES) if pooled.size else np.array([])
    thresholds = np.unique(np.concatenate([grid, [threshold, np.inf]]))[::-1]
    n_truth = sum(len(s.truth) for s in slides)
    sweep: dict[str, Any] = {"thresholds": thresholds, "detections": np.zeros(thresholds.size, np.int64)}
    for rule in REGION_HITS:
        sweep[rule] = {"fps_per_slide": np.zeros(thresholds.size), "sensitivity": np.zeros(thresholds.size)}
    for i, t in enumerate(thresholds):
        per_slide = [_components(slide, t) for slide in slides]
        sweep["detections"][i] = sum(c["detections"] for c in per_slide)
        for rule in REGION_HITS:
            sweep[rule]["fps_per_slide"][i] = sum(c[rule][0] for c in per_slide) / len(slides)
            found = sum(len(c[rule][1]) for c in per_slide)
            sweep[rule]["sensitivity"][i] = found / n_truth if n_truth else math.nan
    return sweep


def _region_metrics(sweep: dict[str, Any], threshold: float, region_hit: str) -> dict[str, Any]:
    at_t = int(np.flatnonzero(sweep["thresholds"] == threshold)[0])
    by_rule: dict[str, Any] = {}
    for rule in REGION_HITS:
        curve = sweep[rule]
        op = {
            "sensitivity": float(curve["sensitivity"][at_t]),
            "fps_per_slide": float(curve["fps_per_slide"][at_t]),
            "detections": int(sweep["detections"][at_t]),
        }
        if np.isnan(curve["sensitivity"]).all():
            by_rule[rule] = {"sensitivity_at": None, "froc": None, "at_threshold": op}
            continue
        at, mean = froc_score(curve["fps_per_slide"], curve["sensitivity"], FROC_RATES)
        by_rule[rule] = {
            "sensitivity_at": {str(k): v for k, v in at.items()},
            "froc": mean,
            "at_threshold": op,
        }
    return {
        "hit_rule": region_hit,
        **by_rule[region_hit],
        "other_rule": {rule: by_rule[rule] for rule in REGION_HITS if rule != region_hit},
        "sweep_points": int(sweep["thresholds"].size),
    }


def _slide_scores(slide: SlideData, threshold: float, top_k: int) -> dict[str, float]:
    ordered = np.sort(slide.tile_scores.astype(np.float64))[::-1]
    with np.errstate(invalid="ignore"):
        above = int((slide.tissue & (slide.heat >= threshold)).sum())
    return {
        "max": float(ordered[0]) if ordered.size else math.nan,
        "topk_mean": float(ordered[:top_k].mean()) if ordered.size else math.nan,
        "area_above_mm2": above * slide.pixel_area_um2 / 1e6,
    }


def _slide_metrics(slides: list[SlideData], threshold: float, top_k: int) -> dict[str, Any]:
    labels = np.array([s.label for s in slides])
    scores = {
        name: np.array([_slide_scores(s, threshold, top_k)[name] for s in slides]) for name in SLIDE_SCORES
    }
    both = 0 < labels.sum() < labels.size
    return {
        "n_abnormal": int(labels.sum()),
        "n_normal": int((labels == 0).sum()),
        "label_source": sorted({s.label_source for s in slides}),
        "top_k": top_k,
        "default_score": DEFAULT_SLIDE_SCORE,
        "auroc": {name: auroc(v, labels) for name, v in scores.items()} if both else None,
    }


def _choose(
    choice: tuple[str, float | None], tiles: dict[str, NDArray], sweep: dict[str, Any], region_hit: str
) -> tuple[float, str]:
    method, value = choice
    if method == "fps-per-slide":
        curve = sweep[region_hit]
        ok = np.flatnonzero((curve["fps_per_slide"] <= value) & np.isfinite(sweep["thresholds"]))
        if ok.size == 0 or np.isnan(curve["sensitivity"]).all():
            raise DataError(
                f"no threshold of the sweep keeps false positives at or below {value} per slide with "
                "truth regions to find; use youden or fpr:X"
            )
        best = float(curve["sensitivity"][ok].max())
        # the highest threshold reaching the best sensitivity: fewest false alarms for it
        index = int(ok[curve["sensitivity"][ok] == best][0])
        t = float(sweep["thresholds"][index])
        return t, (
            f"chosen: fps-per-slide:{value:g} (region level, {region_hit} rule: sensitivity {best:.4f} "
            f"at {curve['fps_per_slide'][index]:.3g} FP/slide)"
        )
    fpr, tpr, thresholds = roc_curve(tiles["scores"], tiles["labels"])
    finite = np.isfinite(thresholds)
    if method == "youden":
        j = np.where(finite, tpr - fpr, -np.inf)
        index = int(np.argmax(j))  # thresholds decrease: the highest of equally good ones
        return float(thresholds[index]), f"chosen: youden (tile level, J = {j[index]:.4f})"
    ok = np.flatnonzero(finite & (fpr <= value))
    if ok.size == 0:
        raise DataError(f"no tile threshold keeps the false-positive rate at or below {value}")
    index = int(ok[-1])  # the lowest such threshold: the most sensitive
    return float(
        thresholds[index]
    ), f"chosen: fpr:{value:g} (tile level, FPR {fpr[index]:.4f}, TPR {tpr[index]:.4f})"


def _protocol(min_overlap: float, top_k: int, region_hit: str) -> dict[str, Any]:
    return {
        "scores": "raw heatmap scores; positive when score >= threshold",
        "tile": f"tissue tiles, mean map score; positive when more than {min_overlap:g} of the footprint is in the truth",
        "pixel": "heatmap level 0 (OME-Zarr), tissue pixels only; positive when the pixel centre is in the truth",
        "aupro": f"MVTec definition, 8-connected truth regions within tissue, FPR <= {FPR_LIMIT}",
        "region": (
            "FROC, Camelyon16 operating points: detections are 8-connected components of tissue pixels >= t "
            "(regions below the heatmap's min_region_um2 dropped); hit rule 'peak': the detection's highest "
            "pixel meets a truth region, 'overlap': any of its pixels does; sensitivity at the best sweep "
            "point with at most r FP per slide"
        ),
        "region_hit": region_hit,
        "slide": f"AUROC of max, top{top_k}_mean (default) and area_above_mm2 of each slide",
        "min_overlap": min_overlap,
        "froc_rates": list(FROC_RATES),
    }


# --- outputs ----------------------------------------------------------------------------------


def _per_slide_rows(
    slides: list[SlideData], threshold: float, top_k: int, min_overlap: float, region_hit: str
) -> list[dict[str, Any]]:
    rows = []
    for slide in slides:
        size = float(slide.summary["grid"]["tile_size_l0"])
        truth = shapely.union_all(slide.truth) if slide.truth else shapely.Polygon()
        positive = fraction_inside(truth, tile_boxes(slide.tile_xy, size)) > min_overlap
        found = _components(slide, threshold)
        det, (fp, hit) = found["detections"], found[region_hit]
        truth_px = slide.truth_pixels & slide.tissue  # type: ignore[operator]
        with np.errstate(invalid="ignore"):
            predicted = slide.tissue & (slide.heat >= threshold)
        dice, iou = dice_iou(predicted[slide.tissue], truth_px[slide.tissue])
        scores = _slide_scores(slide, threshold, top_k)
        rows.append(
            {
                "slide": slide.name,
                "label": slide.label,
                "label_source": slide.label_source,
                "truth_files": ";".join(str(s) for s in slide.truth_specs),
                "truth_regions": len(slide.truth),
                "tiles": len(slide.tile_scores),
                "positive_tiles": int(positive.sum()),
                "tiles_above_threshold": int((slide.tile_scores >= threshold).sum()),
                "tile_auroc": _guard(auroc, slide.tile_scores, positive)
                if 0 < positive.sum() < positive.size
                else None,
                "slide_score_max": scores["max"],
                f"slide_score_top{top_k}_mean": scores["topk_mean"],
                "area_above_mm2": scores["area_above_mm2"],
                "detections": det,
                "false_positives": fp,
                "regions_found": len(hit),
                "dice": dice,
                "iou": iou,
            }
        )
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: "" if v is None else (repr(v) if isinstance(v, float) else v) for k, v in row.items()}
        )
    write_atomically(path, buffer.getvalue().encode())


def _plot(
    path: Path,
    tiles: dict[str, NDArray],
    slides: list[SlideData],
    sweep: dict[str, NDArray],
    result: dict[str, Any],
    top_k: int,
) -> None:
    figure = Figure(figsize=(14, 9), layout="constrained")
    axes = figure.subplots(2, 3)
    threshold = result["threshold"]["value"]
    # ROC: tiles and pixels
    for ax, level, (s, y) in (
        (axes[0, 0], "tile", (tiles["scores"], tiles["labels"])),
        (axes[0, 1], "pixel", _pixel_pairs(slides)),
    ):
        value = result[level]["auroc"]
        if value is not None:
            fpr, tpr, _ = roc_curve(s, y)
            step = max(1, fpr.size // 2000)
            ax.plot(fpr[::step], tpr[::step], lw=1.5, label=f"AUROC {value:.3f}")
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "one class only", ha="center")
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="false-positive rate",
            ylabel="true-positive rate",
            title=f"ROC, {level} level",
        )
    # FROC
    ax = axes[0, 2]
    finite = np.isfinite(sweep["thresholds"])
    rule = result["region"]["hit_rule"]
    if result["region"]["froc"] is not None:
        for name in REGION_HITS:
            curve = sweep[name]
            froc = result["region"]["froc"] if name == rule else result["region"]["other_rule"][name]["froc"]
            order = np.argsort(curve["fps_per_slide"][finite], kind="stable")
            ax.plot(
                curve["fps_per_slide"][finite][order],
                np.maximum.accumulate(curve["sensitivity"][finite][order]),
                lw=1.5 if name == rule else 1.0,
                ls="-" if name == rule else "--",
                label=f"{name} rule: FROC score {froc:.3f}",
            )
        for rate in FROC_RATES:
            ax.axvline(rate, c="grey", ls=":", lw=0.8)
        op = result["region"]["at_threshold"]
        ax.plot([op["fps_per_slide"]], [op["sensitivity"]], "o", c="C3", label=f"threshold {threshold:.4g}")
        ax.set_xlim(0, max(FROC_RATES) * 1.05)
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no truth regions", ha="center", transform=ax.transAxes)
    ax.set(
        xlabel="false positives per slide", ylabel="sensitivity", ylim=(0, 1.01), title="FROC, region level"
    )
    # histograms
    ax = axes[1, 0]
    s, y = tiles["scores"], tiles["labels"]
    positive_scores = bool((s > 0).all())
    if positive_scores:  # anomaly scores are heavy-tailed: log-spaced bins
        bins = np.geomspace(float(s.min()), float(s.max()) * (1 + 1e-9), 40)
        ax.set_xscale("log")
    else:
        bins = np.linspace(float(s.min()), float(s.max()) + 1e-12, 40)
    ax.hist(s[~y], bins=bins, alpha=0.6, density=True, label=f"normal tiles ({(~y).sum()})")
    if y.any():
        ax.hist(s[y], bins=bins, alpha=0.6, density=True, label=f"anomalous tiles ({y.sum()})")
    ax.axvline(threshold, c="k", ls="--", lw=1, label="threshold")
    ax.set(xlabel="tile score", ylabel="density", title="tile scores by class")
    ax.legend()
    ax = axes[1, 1]
    values = np.array([_slide_scores(sl, threshold, top_k)["topk_mean"] for sl in slides])
    labels = np.array([sl.label for sl in slides])
    ax.scatter(
        values, labels + np.linspace(-0.1, 0.1, len(slides)), c=labels, cmap="coolwarm", vmin=0, vmax=1
    )
    ax.set(
        yticks=[0, 1],
        yticklabels=["normal", "abnormal"],
        xlabel=f"slide score (top{top_k} mean)",
        title="slide scores by class",
    )
    ax = axes[1, 2]
    ax.set_axis_off()
    table = validation_table(result).split("\n", 2)[2]  # the title line is the figure's
    ax.text(0, 1, table.replace("|", " "), va="top", family="monospace", fontsize=6.5)
    figure.suptitle(f"Validation: {len(slides)} slides, model {result['model_sha256'][:12]}")
    figure.savefig(path, dpi=90)


def _pixel_pairs(slides: list[SlideData]) -> tuple[NDArray, NDArray]:
    scores = np.concatenate([s.heat[s.tissue] for s in slides])
    truth = np.concatenate([(s.truth_pixels & s.tissue)[s.tissue] for s in slides])  # type: ignore[operator]
    return scores, truth


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
