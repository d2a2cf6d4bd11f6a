"""MVTec-AD evaluation of a trained HaloAE, under an honest and an `official` scoring protocol.

`evaluate_mvtec(trained, root, category, out)` scores every test image of one category and writes,
to `out/<protocol>/`:

    metrics.json    every number, overall and per defect type, with the protocol's choices spelled out
    metrics.md      the same as a Markdown table
    scores.csv      every test image's scores (mean and max of its map, and the protocol's choice)
    roc.png         image- and pixel-level ROC curves
    pro.png         the per-region-overlap curve up to FPR 0.3
    examples.png    up to six defective test images (defect types in turn) and two defect-free
                    ones under their anomaly maps, the ground truth outlined

Metrics (`metrics.py`, exact, on raw scores): image AUROC, pixel AUROC, AUPRO up to FPR 0.3
(normalised), image and pixel F1-max. "Overall" pools all test images; each defect type is also
scored on its own images against all the defect-free test images.

Protocols (model-spec.md, "Evaluation"):
- `honest` (default): maps normalised by the mean anomaly map of the *training* images (stored in
  the model), image score = mean of the map, pixel metrics at each image's full resolution (the
  S x S map bilinearly upsampled to the image's own size), no label flipping.
- `official`: the official HaloAE scoring's choices, for comparison with the paper: the
  normalisation map is the mean map of the test set's defect-free images (a test-set leak), every
  AUROC below 0.5 is reported as 1 - AUROC (labels flipped), the image score is the better of mean
  and max (chosen on the whole test set, then used for every defect type), and pixel metrics are
  computed on 128 x 128 maps (masks resized by nearest neighbour). Flipping applies to AUROCs only,
  as in the official code; AUPRO and F1-max are not part of the official scoring and are computed
  unflipped on the protocol's maps. The official scoring also keeps the best of three checkpoints per
  category, chosen on the test set; that is NOT reproduced (one model is evaluated) because it needs
  three training runs and selects on test data. Outputs say "single checkpoint".

Memory: the honest protocol holds every test map at full resolution (4 bytes per pixel) and the
exact PRO curve sorts all pixels at once (about 40 bytes per pixel at its peak): for MVTec's
largest categories (160 images of 1024 x 1024) plan on about 8 GB of RAM.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import ConfigError, DataError, OutputError
from ..model.anomaly import Normalisation, anomaly_map, feature_error, image_scores
from ..model.device import resolve_device
from ..training.checkpoint import TrainedModel
from ..training.data import TileDataset
from .metrics import aupro, auroc, f1_max, pixel_auroc, pro_curve, roc_curve
from .mvtec import GOOD, OBJECTS, TEXTURES, MvtecSample, load_image, load_mask, mvtec_index

log = logging.getLogger(__name__)

Protocol = Literal["honest", "official"]
PROTOCOLS: tuple[Protocol, ...] = ("honest", "official")
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max")
FPR_LIMIT = 0.3
OFFICIAL_PIXEL_SIZE_PX = 128
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.csv"

# HaloAE's numbers in the paper (Mathian et al. 2023, Table 1): image AUROC, pixel AUROC, in %.
PAPER_HALOAE: dict[str, tuple[float, float]] = {
    "carpet": (69.7, 89.4),
    "grid": (95.1, 83.1),
    "leather": (97.8, 98.5),
    "tile": (95.7, 78.5),
    "wood": (100.0, 91.1),
    "bottle": (100.0, 91.9),
    "cable": (84.6, 87.6),
    "capsule": (88.4, 97.8),
    "hazelnut": (99.8, 97.8),
    "metal_nut": (88.4, 85.2),
    "pill": (90.1, 91.5),
    "screw": (89.6, 99.0),
    "toothbrush": (97.2, 92.9),
    "transistor": (84.4, 87.5),
    "zipper": (99.7, 96.0),
}

_DESCRIPTION: dict[Protocol, str] = {
    "honest": (
        "normalisation map from the training images (stored in the model); image score = mean of the "
        "map; pixel metrics at full image resolution; no label flipping"
    ),
    "official": (
        "official HaloAE scoring: normalisation map from the test set's defect-free images; AUROC "
        "below 0.5 reported as 1 - AUROC (labels flipped); image score = better of mean and max; "
        f"pixel metrics on {OFFICIAL_PIXEL_SIZE_PX} x {OFFICIAL_PIXEL_SIZE_PX} maps; single checkpoint "
        "(the official best-of-three selection on the test set is not reproduced)"
    ),
}
_EXAMPLE_COLUMNS = 4
_DEFECT_EXAMPLES = 6
_GOOD_EXAMPLES = 2
_CURVE_POINTS = 1000  # points drawn per curve: exact curves may hold one point per pixel
_TABLE_METRICS = ("image_auroc", "pixel_auroc", "aupro")


def result_folder(out: str | Path, protocol: Protocol, normalisation: Normalisation = "mean") -> Path:
    """Where `evaluate_mvtec` writes: `out/<protocol>/`, or `out/<protocol>-median/` for the median map."""
    return Path(out) / (protocol if normalisation == "mean" else f"{protocol}-{normalisation}")


def evaluate_mvtec(
    trained: TrainedModel,
    root: str | Path,
    category: str,
    out: str | Path,
    *,
    protocol: Protocol = "honest",
    normalisation: Normalisation = "mean",
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the test images of `root/category` (MVTec-AD layout) and write the results to `out/<protocol>/`.

    Args:
        trained: the model (`training.checkpoint.load_trained`); images are resized to its
            `config.model.image_size_px` exactly as in training.
        root, category: the data set root and category folder (see `mvtec.mvtec_index`).
        out: parent folder of the protocol's output folder.
        protocol: "honest" or "official" (see the module docstring).
        normalisation: with "honest", the training map the maps are made relative to: "mean" (the
            paper's) or "median" (the slide heatmaps' default; results go to `out/honest-median/`).
            The official protocol always takes the mean of the test set's defect-free maps.
        batch_size: test images per forward pass.
        device: where the model runs; None keeps the device it is on ("auto" picks CUDA if present).
            The model is moved there.
        progress: show a tqdm bar over the batches.

    Returns:
        The content of `metrics.json`: the protocol and its choices, "overall" and "per_defect"
        metric blocks (METRICS, each in [0, 1], with image counts and the AUROCs that were flipped),
        and the names of the files written.

    Raises:
        DataError: the data set is missing or malformed, or a mask's size differs from its image's.
        OutputError: the output folder cannot be written.
        ValueError: an unknown protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "official" and normalisation != "mean":
        raise ConfigError(
            "the official protocol normalises by the mean map of the test set's defect-free images; "
            "use --normalisation median with --protocol honest"
        )
    index = mvtec_index(root, category)
    test = index.test
    labels = np.array([s.label for s in test])
    if labels.all() or not labels.any():
        raise DataError(
            f"the test set of {index.root / category} needs both defect-free (test/good) and defective "
            "images to compute AUROC"
        )
    out_dir = result_folder(out, protocol, normalisation)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir} ({exc.strerror}); choose another --out") from None

    if device is not None:
        trained.model.to(resolve_device(str(device)))
    errors = _feature_errors(trained, [s.image_path for s in test], batch_size=batch_size, progress=progress)

    size_px = trained.config.model.image_size_px
    if protocol == "honest":
        mean_map = trained.reference_map(normalisation).float().cpu()
    else:  # the official code's normalisation: the test set's own defect-free images
        mean_map = anomaly_map(errors[torch.from_numpy(labels == 0)], size_px).mean(0)
    maps = anomaly_map(errors, size_px, mean_map)  # (N, S, S)
    mean_scores, max_scores = (s.numpy() for s in image_scores(maps))

    flip = protocol == "official"
    image_score: Literal["mean", "max"] = "mean"
    if flip:  # the official scoring keeps whichever reduction gives the higher (flipped) AUROC
        by_max, by_mean = (official_auroc(auroc(s, labels))[0] for s in (max_scores, mean_scores))
        image_score = "max" if by_max > by_mean else "mean"
    scores = max_scores if image_score == "max" else mean_scores
    pixel_size = None if protocol == "honest" else OFFICIAL_PIXEL_SIZE_PX
    pixel_maps, masks = _pixel_maps_and_masks(maps, test, pixel_size)

    groups: dict[str, NDArray[np.intp]] = {"overall": np.arange(len(test))}
    for defect in index.defect_types:
        groups[defect] = np.flatnonzero([s.defect_type in (GOOD, defect) for s in test])
    blocks = {
        name: score_set(
            scores[rows],
            labels[rows],
            [pixel_maps[i] for i in rows],
            [masks[i] for i in rows],
            flip_labels=flip,
        )
        for name, rows in groups.items()
    }

    result: dict[str, Any] = {
        "protocol": protocol,
        "protocol_description": _DESCRIPTION[protocol],
        "category": category,
        "data_root": str(index.root),
        "model": str(trained.run_dir),
        "image_size_px": size_px,
        "normalisation": (
            f"{normalisation} map of the training images"
            if protocol == "honest"
            else "mean map of the defect-free test images"
        ),
        "image_score": image_score,
        "pixel_resolution": "full" if pixel_size is None else f"{pixel_size}x{pixel_size}",
        "label_flipping": flip,
        "checkpoints": 1,
        "fpr_limit": FPR_LIMIT,
        "overall": blocks.pop("overall"),
        "per_defect": blocks,
        "files": [METRICS_FILE, "metrics.md", SCORES_FILE, "roc.png", "pro.png", "examples.png"],
    }
    title = f"{category}: {protocol} protocol"
    _plot_roc(out_dir / "roc.png", scores, labels, pixel_maps, masks, result["overall"], title)
    _plot_pro(out_dir / "pro.png", pixel_maps, masks, result["overall"]["aupro"], title)
    _plot_examples(out_dir / "examples.png", test, maps, scores, image_score, title)
    (out_dir / "metrics.md").write_text(metrics_markdown(result))
    _write_scores(out_dir / SCORES_FILE, index.root / category, test, mean_scores, max_scores, image_score)
    # Written last: its presence marks a finished evaluation (the benchmark pipeline skips those).
    (out_dir / METRICS_FILE).write_text(json.dumps(result, indent=2) + "\n")
    overall = result["overall"]
    log.info(
        "%s (%s protocol): image AUROC %.4f, pixel AUROC %.4f, AUPRO %.4f -> %s",
        category,
        protocol,
        overall["image_auroc"],
        overall["pixel_auroc"],
        overall["aupro"],
        out_dir,
    )
    return result


def official_auroc(value: float) -> tuple[float, bool]:
    """The official scoring's label flipping: (max(AUC, 1 - AUC), whether the labels were flipped)."""
    return (1.0 - value, True) if value < 0.5 else (value, False)


def score_set(
    scores: NDArray[np.floating],
    labels: NDArray[np.integer],
    maps: Sequence[NDArray[np.floating]],
    masks: Sequence[NDArray[np.bool_]],
    *,
    flip_labels: bool = False,
) -> dict[str, Any]:
    """The METRICS of one set of test images, with its image counts.

    Args:
        scores: (N,) image scores; labels: (N,) 1 = defective.
        maps, masks: N anomaly maps and ground-truth masks, map i the shape of mask i.
        flip_labels: report each AUROC below 0.5 as 1 - AUROC (the official scoring); the names of
            the AUROCs flipped are listed under "flipped".
    """
    aurocs = {"image_auroc": auroc(scores, labels), "pixel_auroc": pixel_auroc(maps, masks)}
    flipped = []
    if flip_labels:
        for name, value in aurocs.items():
            aurocs[name], was_flipped = official_auroc(value)
            if was_flipped:
                flipped.append(name)
    flat_maps, flat_masks = _flat(maps), _flat(masks)
    return {
        "n_good": int((labels == 0).sum()),
        "n_defect": int((labels == 1).sum()),
        **aurocs,
        "aupro": aupro(maps, masks, FPR_LIMIT),
        "image_f1_max": f1_max(scores, labels)[0],
        "pixel_f1_max": f1_max(flat_maps, flat_masks)[0],
        "flipped": flipped,
    }


def metrics_markdown(result: Mapping[str, Any]) -> str:
    """`metrics.json` (as returned by `evaluate_mvtec`) as a Markdown section with one table."""
    lines = [
        f"# {result['category']}: MVTec-AD evaluation, {result['protocol']} protocol",
        "",
        f"Protocol `{result['protocol']}`: {result['protocol_description']}.",
        f"Model: `{result['model']}` ({result['image_size_px']} px input). Data: `{result['data_root']}`.",
        "",
        "| defect type | images (good + defective) | image AUROC | pixel AUROC | AUPRO (FPR ≤ 0.3) "
        "| image F1-max | pixel F1-max |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = {"all": result["overall"], **result["per_defect"]}
    for name, block in rows.items():
        cells = [f"{block[m]:.4f}" + ("*" if m in block["flipped"] else "") for m in METRICS]
        lines.append(f"| {name} | {block['n_good']} + {block['n_defect']} | " + " | ".join(cells) + " |")
    if any(block["flipped"] for block in rows.values()):
        lines += ["", "\\* below 0.5 before flipping the labels (the official scoring's choice)."]
    return "\n".join(lines) + "\n"


def benchmark_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table in the layout of the paper's Table 1, our numbers beside the paper's HaloAE.

    Args:
        results: category -> its `metrics.json` content, all of one protocol.

    Rows: MVTec's textures, then objects, each block closed by its mean; the mean over all MVTec
    categories evaluated; then categories outside MVTec AD (e.g. the offline "histology", "brick")
    in their own block without paper numbers. Means of the paper's numbers are taken over the same
    categories as ours, so a partial run compares like with like (over all 15 they equal the
    paper's printed means). Values in %, one decimal.
    """
    protocols = {r["protocol"] for r in results.values()}
    if len(protocols) > 1:
        raise ValueError(f"results mix protocols {sorted(protocols)}; tabulate one protocol at a time")
    protocol = protocols.pop() if protocols else "honest"

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    def row(group: str, name: str, paper: tuple[float, float] | None, ours: Mapping[str, float]) -> str:
        """`ours` in [0, 1] as in metrics.json; `paper` already in %."""
        p_img, p_pix = paper if paper is not None else (None, None)
        cells = [p_img, 100 * ours["image_auroc"], p_pix, 100 * ours["pixel_auroc"], 100 * ours["aupro"]]
        return f"| {group} | {name} | " + " | ".join(pct(c) for c in cells) + " |"

    def mean_row(group: str, label: str, names: list[str], total: int) -> str:
        paper = (
            float(np.mean([PAPER_HALOAE[n][0] for n in names])),
            float(np.mean([PAPER_HALOAE[n][1] for n in names])),
        )
        ours = {m: float(np.mean([results[n]["overall"][m] for n in names])) for m in _TABLE_METRICS}
        return row(group, f"**{label}** ({len(names)} of {total})", paper, ours)

    lines = [
        f"HaloAE on MVTec AD, {protocol} protocol: image / pixel AUROC (%), paper (Mathian et al. 2023, "
        "Table 1) beside ours; AUPRO (FPR ≤ 0.3, %) ours only.",
        "",
        "| | category | image AUROC, paper | image AUROC, ours | pixel AUROC, paper | pixel AUROC, ours "
        "| AUPRO, ours |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    evaluated: list[str] = []
    for group, members in (("textures", TEXTURES), ("objects", OBJECTS)):
        names = [n for n in members if n in results]
        for i, name in enumerate(names):
            lines.append(row(group if i == 0 else "", name, PAPER_HALOAE[name], results[name]["overall"]))
        if names:
            lines.append(mean_row("", f"mean {group}", names, len(members)))
        evaluated += names
    if evaluated:
        lines.append(mean_row("all", "mean", evaluated, len(PAPER_HALOAE)))
    for i, name in enumerate(sorted(n for n in results if n not in PAPER_HALOAE)):
        lines.append(row("not in MVTec AD" if i == 0 else "", name, None, results[name]["overall"]))
    return "\n".join(lines) + "\n"


@torch.no_grad()
def _feature_errors(trained: TrainedModel, paths: list[Path], *, batch_size: int, progress: bool) -> Tensor:
    """(N, F, F) float32 feature errors on the CPU, blocks B and C only, images read as in training."""
    model, cfg = trained.model, trained.config
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(
        TileDataset(paths, cfg.model.image_size_px),
        batch_size=batch_size,
        shuffle=False,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
    )
    # bf16 on CUDA as in training's calibration, so test maps and the stored mean map match.
    use_bf16 = cfg.bf16 and device.type == "cuda"
    errors = []
    for images in tqdm(loader, desc="test images", disable=not progress, unit="batch", dynamic_ncols=True):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            output = model(images.to(device, non_blocking=True), heads=False)
        errors.append(feature_error(output.fm.float(), output.fm_hat.float()).cpu())
    return torch.cat(errors)


def _pixel_maps_and_masks(
    maps: Tensor, samples: Sequence[MvtecSample], size_px: int | None
) -> tuple[list[NDArray[np.float32]], list[NDArray[np.bool_]]]:
    """Maps (N, S, S) resized for pixel metrics, with their masks.

    size_px None: each map bilinearly upsampled to its image's full size, masks at full size.
    Otherwise: maps bilinearly and masks by nearest neighbour resized to size_px x size_px.
    """
    pixel_maps, masks = [], []
    for m, sample in zip(maps, samples, strict=True):
        if size_px is None:
            with Image.open(sample.image_path) as image:
                width, height = image.size
        else:
            width = height = size_px
        if sample.mask_path is None:
            mask = np.zeros((height, width), dtype=bool)
        else:
            mask = load_mask(sample.mask_path, size_px)
            if mask.shape != (height, width):
                raise DataError(
                    f"mask {sample.mask_path} is {mask.shape[1]} x {mask.shape[0]} px but its image "
                    f"{sample.image_path} is {width} x {height}; masks must match their images"
                )
        resized = F.interpolate(m[None, None], size=(height, width), mode="bilinear", align_corners=False)
        pixel_maps.append(resized[0, 0].numpy())
        masks.append(mask)
    return pixel_maps, masks


def _write_scores(
    path: Path,
    folder: Path,
    samples: Sequence[MvtecSample],
    mean_scores: NDArray,
    max_scores: NDArray,
    image_score: str,
) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "defect_type", "label", "score", "mean_score", "max_score"])
        for sample, mean, peak in zip(samples, mean_scores, max_scores, strict=True):
            score = peak if image_score == "max" else mean
            image = sample.image_path.relative_to(folder).as_posix()
            values = (repr(float(v)) for v in (score, mean, peak))  # repr: every digit, read back exactly
            writer.writerow([image, sample.defect_type, sample.label, *values])


def _flat(arrays: Sequence[NDArray]) -> NDArray:
    """All pixels of several 2-D arrays (of any sizes) in one 1-D array."""
    return np.concatenate([a.ravel() for a in arrays])


def _thin(x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
    """At most about 2 * _CURVE_POINTS points of a monotone curve, keeping its ends and its steps."""
    if x.size <= 2 * _CURVE_POINTS:
        return x, y
    grid = np.linspace(0.0, 1.0, _CURVE_POINTS)
    steps_x = np.searchsorted(x / max(x[-1], 1e-12), grid)
    steps_y = np.searchsorted(y / max(y[-1], 1e-12), grid)
    keep = np.unique(np.concatenate([steps_x, steps_y, [0, x.size - 1]]).clip(0, x.size - 1))
    return x[keep], y[keep]


def _plot_roc(
    path: Path,
    scores: NDArray,
    labels: NDArray,
    maps: Sequence[NDArray],
    masks: Sequence[NDArray],
    overall: Mapping[str, Any],
    title: str,
) -> None:
    figure = Figure(figsize=(10, 4.8), layout="constrained")
    for ax, level, (s, y) in zip(
        figure.subplots(1, 2),
        ("image", "pixel"),
        ((scores, labels), (_flat(maps), _flat(masks))),
        strict=True,
    ):
        fpr, tpr, _ = roc_curve(s, y)
        flipped = f"{level}_auroc" in overall["flipped"]
        if flipped:  # with the labels flipped, true and false positives trade places
            fpr, tpr = tpr, fpr
        fpr, tpr = _thin(fpr, tpr)
        label = f"AUROC {overall[f'{level}_auroc']:.4f}" + (" (labels flipped)" if flipped else "")
        ax.plot(fpr, tpr, lw=1.5, label=label)
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="false-positive rate",
            ylabel="true-positive rate",
            title=f"{level} level",
            aspect="equal",
        )
        ax.legend(loc="lower right")
    figure.suptitle(f"ROC, {title}")
    figure.savefig(path, dpi=100)


def _plot_pro(
    path: Path, maps: Sequence[NDArray], masks: Sequence[NDArray], value: float, title: str
) -> None:
    fpr, pro = pro_curve(maps, masks)
    inside = int(np.searchsorted(fpr, FPR_LIMIT, side="right"))
    # One point past the cut, so the line reaches the right edge of the plot.
    fpr, pro = _thin(fpr[: inside + 1], pro[: inside + 1])
    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = figure.subplots()
    ax.plot(fpr, pro, lw=1.5, label=f"AUPRO (FPR ≤ {FPR_LIMIT}) {value:.4f}")
    ax.fill_between(fpr, pro, alpha=0.15)
    ax.set(xlim=(0, FPR_LIMIT), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="per-region overlap")
    ax.legend(loc="lower right")
    ax.set_title(f"PRO curve, {title}")
    figure.savefig(path, dpi=100)


def _plot_examples(
    path: Path,
    samples: Sequence[MvtecSample],
    maps: Tensor,
    scores: NDArray,
    image_score: str,
    title: str,
) -> None:
    """Defective test images, taking each defect type in turn, then defect-free ones, under their maps."""
    by_type: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        by_type.setdefault(sample.defect_type, []).append(i)
    good = by_type.pop(GOOD, [])
    in_turn: list[int] = []
    for k in range(max((len(rows) for rows in by_type.values()), default=0)):
        in_turn += [rows[k] for rows in by_type.values() if k < len(rows)]
    picks = in_turn[:_DEFECT_EXAMPLES] + good[:_GOOD_EXAMPLES]
    columns = min(_EXAMPLE_COLUMNS, len(picks))
    rows = -(-len(picks) // columns)
    vmax = float(np.percentile(maps.numpy(), 99.5)) or 1.0  # one colour scale for all panels
    figure = Figure(figsize=(3.2 * columns + 0.8, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    shown = None
    for ax, i in zip(axes, picks, strict=False):
        sample = samples[i]
        image = load_image(sample.image_path)
        height, width = image.shape[:2]
        extent = (0, width, height, 0)
        ax.imshow(image, extent=extent)
        shown = ax.imshow(maps[i].numpy(), extent=extent, cmap="inferno", alpha=0.5, vmin=0.0, vmax=vmax)
        if sample.mask_path is not None:  # pixel (r, c) covers [c, c + 1] x [r, r + 1] in the extent
            x, y = np.arange(width) + 0.5, np.arange(height) + 0.5
            ax.contour(x, y, load_mask(sample.mask_path), levels=[0.5], colors="cyan", linewidths=1.0)
        ax.set_title(f"{sample.defect_type}: {image_score} score {scores[i]:.3g}", fontsize=9)
        ax.set_axis_off()
    for ax in axes[len(picks) :]:
        ax.set_axis_off()
    if shown is not None:
        figure.colorbar(shown, ax=axes.tolist(), shrink=0.8, label="anomaly map")
    figure.suptitle(f"Anomaly maps (ground truth in cyan), {title}")
    figure.savefig(path, dpi=80)
