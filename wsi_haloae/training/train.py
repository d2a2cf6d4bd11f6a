"""Training HaloAE: one loop, top to bottom, no trainer framework.

`train(cfg, tiles, out)` draws `cfg.samples_per_epoch` Cut&Paste triplets per epoch from the tiles
(`data.py`), runs HaloAE on all three images of each, and minimises
    L = α_cls·L_cls + α_fm·L_fm + α_im·L_im
with L_cls the cross-entropy of the Cut&Paste classifier over all images, and L_fm, L_im the
MSE + (1 − SSIM) reconstruction losses of the feature map and of the normalised image, on the
originals only. The α follow `cfg.weighting`: the paper's evolving weighting scheme (EWS, its
250 epochs mapped onto ours through `cfg.ews_epochs`), equal weights, or Kendall's learned
uncertainty weighting (which learns α_i = 1/σ_i² for the terms switched on). Terms switched off
in the config get α = 0; under EWS and equal weights the others are renormalised to sum to 1.

The run folder `out` receives:
    config.yaml             the config used; `load_config(out / "config.yaml", TrainConfig)` reads it
    train.log               the run's log records (as far as the logging configuration lets them through)
    metrics.jsonl           one JSON object per epoch: mean losses, α, seconds, images/s
    checkpoints/last.pt     the state after the last finished epoch, for `resume=True`
    model.safetensors       the trained model with its normalisation map and training scores
    .lock                   locked (`files.output_lock`) while a run writes: a second run is refused

A resumed run reproduces the uninterrupted one exactly on the CPU: samples depend only on
(seed, epoch, index) and the checkpoint holds everything else that changes (weights, Adam moments,
Kendall parameters, RNG state). On CUDA, cuDNN's autotuned kernels may differ in the last bits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import TrainConfig, check_ranges, to_dict
from ..errors import CheckpointError, ConfigError, DataError, OutputError
from ..files import disk_full_is_an_output_error, ensure_writable_dir, output_lock, write_atomically
from ..model.anomaly import (
    NORMALISATIONS,
    TISSUE_BLOCK_PX,
    anomaly_map,
    feature_error,
    fill_glass,
    image_scores,
    masked_median,
    reference_at_features,
    upsample_mask,
)
from ..model.device import resolve_device
from ..model.haloae import HaloAE
from ..model.stain import StainNormaliser, fit_stain_normaliser
from ..slides.tissue import tile_tissue
from .checkpoint import MODEL_FILE, load_train_state, save_train_state, save_trained
from .data import EpochSampler, TileDataset, TripletDataset, find_tiles, read_tile
from .losses import KendallWeighting, equal_weights, ews_weights, reconstruction_loss
from .resolution import training_resolution

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.pt"
# Tiles whose maps make the median reference map: 1024 maps of 256 x 256 px are 256 MiB
MEDIAN_SAMPLE = 1024
# Training tiles the stain normalisation target is fitted on (spread evenly over the set)
STAIN_FIT_TILES = 256
# Fields that may differ between a run and its resumption: they do not change what is computed
# (the backbone's weights travel in the checkpoint, whatever the config says to start from).
_RESUME_MAY_CHANGE = (
    "workers",
    "device",
    "score_percentile",
    "model.backbone_weights",
    "stain_normalisation",  # fitted after the last epoch
)


def train(
    cfg: TrainConfig,
    tiles: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    tile_mpp_um: float | str | None = None,
) -> Path:
    """Train HaloAE on `tiles` (see `data.find_tiles`) into the run folder `out`; returns `out`.

    `resume=True` continues from `out/checkpoints/last.pt` when it exists (and starts afresh
    otherwise); without it, a folder that already holds a run is refused with an OutputError.
    `progress` shows a tqdm bar with the loss terms and α weights. The model records its training
    resolution (`resolution.training_resolution`: from the tile manifests, else `tile_mpp_um`, a
    µm/px or "unknown"); mixed resolutions are refused.
    """
    out = Path(out)
    checkpoint_path = out / CHECKPOINT
    _refuse_existing_run(out, resume)
    for name in ("epochs", "samples_per_epoch", "batch_size", "ews_epochs"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} is {getattr(cfg, name)}; it must be at least 1")
    if not (cfg.loss_cls or cfg.loss_fm or cfg.loss_im):
        raise ConfigError("loss_cls, loss_fm and loss_im are all false; keep at least one loss term")
    check_ranges(cfg, "train config")
    device = resolve_device(cfg.device)
    paths = find_tiles(tiles)
    resolution = training_resolution(tiles, paths, cfg.model.image_size_px, tile_mpp_um)
    ensure_writable_dir(out)

    # the lock first: a second run into this folder is refused before it writes anything
    with output_lock(out), disk_full_is_an_output_error(out), _log_to(out / "train.log"):
        _refuse_existing_run(out, resume)  # again, now that no other run can be writing
        log.info("training resolution of the model input: %s", resolution)
        # ---- data: Cut&Paste triplets keyed by (epoch, index), batches of B triplets
        tile_set = TileDataset(paths, cfg.model.image_size_px)
        triplets = TripletDataset(
            tile_set,
            samples_per_epoch=cfg.samples_per_epoch,
            seed=cfg.seed,
            augment=cfg.augment,
            colour_jitter=cfg.colour_jitter,
            hed_sigma=cfg.hed_sigma,
        )
        sampler = EpochSampler(cfg.samples_per_epoch)
        loader = DataLoader(
            triplets, batch_size=cfg.batch_size, sampler=sampler, **_loader_options(cfg.workers, device)
        )
        steps_per_epoch = len(loader)

        # ---- model, optimiser, loss weighting
        torch.manual_seed(cfg.seed)
        model = HaloAE(cfg.model).to(device)
        channels_last = cfg.channels_last and device.type == "cuda"
        use_bf16 = cfg.bf16 and device.type == "cuda"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        enabled = torch.tensor([cfg.loss_cls, cfg.loss_fm, cfg.loss_im], device=device)
        active = enabled.nonzero().flatten()  # indices of the loss terms switched on
        kendall = KendallWeighting(len(active)).to(device) if cfg.weighting == "kendall" else None
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        if kendall is not None:
            groups.append({"params": list(kendall.parameters()), "weight_decay": 0.0})
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

        # ---- resume
        start_epoch = 0
        if resume and checkpoint_path.exists():
            state = load_train_state(checkpoint_path)
            _check_resumable(checkpoint_path, state["config"], cfg)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if kendall is not None:
                kendall.load_state_dict(state["kendall"])
            torch.set_rng_state(state["rng"])
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            start_epoch = int(state["epoch"])
            log.info("resuming %s after epoch %d of %d", out, start_epoch, cfg.epochs)
        write_atomically(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
        metrics_path = out / "metrics.jsonl"
        _keep_metrics_before(metrics_path, start_epoch)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(
            "training on %s: %d tiles, %d steps/epoch of %d triplets, %.2f M trainable parameters, bf16 %s",
            device,
            len(tile_set),
            steps_per_epoch,
            cfg.batch_size,
            trainable / 1e6,
            "on" if use_bf16 else "off",
        )

        # ---- the loop
        bar = tqdm(
            total=cfg.epochs * steps_per_epoch,
            initial=start_epoch * steps_per_epoch,
            disable=not progress,
            unit="step",
            dynamic_ncols=True,
        )
        schedule = ews_weights if cfg.weighting == "ews" else equal_weights
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            sampler.epoch = epoch
            paper_epoch = epoch * cfg.ews_epochs / cfg.epochs
            alpha = torch.tensor(schedule(paper_epoch), device=device) * enabled
            alpha = alpha / alpha.sum()  # switched-off terms get 0, the others share the weight
            sums = torch.zeros(4, device=device)  # total, cls, fm, im, summed over the epoch's steps
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            started = time.perf_counter()
            for step, (images, labels) in enumerate(loader):
                # (B, 3, 3, S, S) -> (3B, 3, S, S); labels (3B,): 0 original, 1 damaged copy
                images = images.to(device, non_blocking=True).flatten(0, 1)
                labels = labels.to(device, non_blocking=True).flatten()
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    output = model(images)
                # Losses in float32. Each triplet is [original, normal, scar]: index 0 is the original.
                originals = images.unflatten(0, (-1, 3))[:, 0]
                fm = output.fm.float().unflatten(0, (-1, 3))[:, 0]
                fm_hat = output.fm_hat.float().unflatten(0, (-1, 3))[:, 0]
                image_hat = output.image_hat.float().unflatten(0, (-1, 3))[:, 0]
                terms = torch.stack(
                    [
                        F.cross_entropy(output.logits.float(), labels),
                        reconstruction_loss(fm_hat, fm),
                        reconstruction_loss(image_hat, model.normalise(originals)),
                    ]
                )
                if kendall is None:
                    loss = (alpha * terms).sum()
                else:  # learned weights 1/σ² of the terms switched on
                    loss = kendall(terms[active])
                    precision = torch.exp(-kendall.log_var.detach())
                    alpha = torch.zeros(3, device=device).index_copy(0, active, precision)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

                sums += torch.cat([loss.detach()[None], terms.detach()])
                bar.update()
                if step % 10 == 0 or step == steps_per_epoch - 1:  # .tolist() waits for the GPU
                    cls, fm_term, im_term = terms.detach().tolist()
                    weights = "/".join(f"{a:.2f}" for a in alpha.tolist())
                    bar.set_postfix_str(f"cls {cls:.3f} fm {fm_term:.3f} im {im_term:.3f} α {weights}")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started

            mean_loss, mean_cls, mean_fm, mean_im = (sums / steps_per_epoch).tolist()
            a_cls, a_fm, a_im = alpha.tolist()
            record = {
                "epoch": epoch,
                "loss": mean_loss,
                "loss_cls": mean_cls,
                "loss_fm": mean_fm,
                "loss_im": mean_im,
                "alpha_cls": a_cls,
                "alpha_fm": a_fm,
                "alpha_im": a_im,
                "lr": cfg.lr,
                "seconds": seconds,
                "images_per_s": 3 * cfg.samples_per_epoch / seconds,
            }
            # the whole file rewritten atomically: a full disk cannot leave half a line
            before = metrics_path.read_bytes() if metrics_path.exists() else b""
            write_atomically(metrics_path, before + (json.dumps(record) + "\n").encode())
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "config": to_dict(cfg),
                "rng": torch.get_rng_state(),
            }
            if kendall is not None:
                state["kendall"] = kendall.state_dict()
            if device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            save_train_state(checkpoint_path, state)
            log.info(
                "epoch %d/%d: loss %.4f (cls %.4f, fm %.4f, im %.4f), α %.3f/%.3f/%.3f, %.1f images/s",
                epoch + 1,
                cfg.epochs,
                mean_loss,
                mean_cls,
                mean_fm,
                mean_im,
                a_cls,
                a_fm,
                a_im,
                record["images_per_s"],
            )
        bar.close()
        del loader  # stops its persistent workers before the calibration pass starts its own

        # ---- stain normalisation: fitted now, applied to the calibration tiles and by `heatmap`
        stain = fit_stain(cfg, tile_set)
        tile_set.stain = stain

        # ---- normalisation map and score distribution of the training tiles
        reference_maps, train_scores = calibrate(
            model,
            tile_set,
            device,
            batch_size=3 * cfg.batch_size,
            workers=cfg.workers,
            bf16=use_bf16,
            channels_last=channels_last,
            progress=progress,
        )
        save_trained(
            out / MODEL_FILE, model, cfg, reference_maps, train_scores, stain=stain, resolution=resolution
        )
        scores = train_scores["median"].double()
        log.info(
            "model written to %s; training scores (median map): median %.4g, p%g %.4g",
            out / MODEL_FILE,
            scores.median().item(),
            cfg.score_percentile,
            torch.quantile(scores, cfg.score_percentile / 100).item(),
        )
    return out


def fit_stain(cfg: TrainConfig, tiles: TileDataset) -> StainNormaliser | None:
    """The stain normaliser `cfg.stain_normalisation` asks for, fitted on at most `STAIN_FIT_TILES`
    training tiles spread evenly over the set (deterministic), or None for "none"."""
    if cfg.stain_normalisation == "none":
        return None
    chosen = np.unique(np.linspace(0, len(tiles) - 1, min(len(tiles), STAIN_FIT_TILES)).round().astype(int))
    sample = torch.stack([read_tile(tiles.paths[i], tiles.size_px) for i in chosen.tolist()])
    try:
        stain = fit_stain_normaliser(cfg.stain_normalisation, sample)
    except ValueError as exc:
        raise DataError(f"{exc}; train with stain_normalisation: none or on tiles with tissue") from None
    log.info("stain normalisation %s fitted on %d training tiles", cfg.stain_normalisation, len(chosen))
    return stain


@torch.no_grad()
def calibrate(
    model: HaloAE,
    tiles: TileDataset,
    device: torch.device,
    *,
    batch_size: int,
    workers: int = 0,
    bf16: bool = False,
    channels_last: bool = False,
    progress: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The reference anomaly maps of `tiles` and their image scores relative to each, without augmentation.

    Returns, per normalisation, the reference map (S, S): "mean", the average of
    `anomaly_map(feature_error(fm, fm_hat), S)` over the tiles; "median", their per-pixel median
    over at most `MEDIAN_SAMPLE` tiles spread evenly over the set; and the scores (N,) on the
    CPU: the mean of `anomaly_map(error, S, reference)` per tile. The same again under
    "tissue_mean" and "tissue_median", tissue-aware: each tile's tissue mask (`tile_tissue`, from
    its pixels, one value per `TISSUE_BLOCK_PX` block) fills its glass (`fill_glass`) and decides
    which of its pixels enter the per-pixel mean and median and its score (`image_scores` with
    the mask). Two passes over the tiles (the second needs the finished references), each
    running the model on the tiles as they are and with their glass filled; blocks B and C only.
    """
    model.eval()
    loader = DataLoader(
        _TilesWithTissue(tiles), batch_size=batch_size, shuffle=False, **_loader_options(workers, device)
    )
    size_px = tiles.size_px

    def run(images: Tensor) -> Tensor:  # (N, F, F) feature errors
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            output = model(images, heads=False)
        return feature_error(output.fm.float(), output.fm_hat.float())

    def errors(desc: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Per batch: the feature errors (N, F, F) of the tiles as they are, those of the tiles
        with their glass filled as tissue-aware `heatmap` fills it, and the tissue (N, T, T)."""
        for images, tissue in tqdm(loader, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True):
            images, tissue = images.to(device, non_blocking=True), tissue.to(device)
            error = run(images)
            filled = error.clone()
            # filling changes only tiles with glass: the model runs again on those alone
            glass = (~tissue).flatten(1).any(dim=1).nonzero().flatten()
            if len(glass):
                filled[glass] = run(fill_glass(images[glass], tissue[glass]))
            yield error, filled, tissue

    order = model.config.map_order
    if order == "feature-first":  # references of the raw feature errors, stored nearest-upsampled to S
        return _calibrate_feature_first(errors, len(tiles), size_px, device)
    total = torch.zeros(size_px, size_px, dtype=torch.float64, device=device)
    tissue_total = torch.zeros_like(total)
    tissue_count = torch.zeros_like(total)
    # an even spread, not a random draw: the same tiles whatever the seed or the batch size
    sampled = set(np.linspace(0, len(tiles) - 1, min(len(tiles), MEDIAN_SAMPLE)).round().astype(int).tolist())
    kept: list[Tensor] = []  # feature-resolution errors of the sampled tiles
    kept_tissue: list[Tensor] = []
    start = 0
    kept_filled: list[Tensor] = []
    for error, filled_error, tissue in errors("reference maps"):
        maps = anomaly_map(error, size_px)
        total += maps.sum(0, dtype=torch.float64)
        filled_maps = anomaly_map(filled_error, size_px)
        weights = upsample_mask(tissue, size_px)
        tissue_total += torch.where(weights, filled_maps, torch.zeros_like(maps)).sum(0, dtype=torch.float64)
        tissue_count += weights.sum(0)
        rows = [i for i in range(len(error)) if start + i in sampled]
        kept.append(error[rows].cpu())
        kept_filled.append(filled_error[rows].cpu())
        kept_tissue.append(tissue[rows].cpu())
        start += len(error)
    sample_maps = anomaly_map(torch.cat(kept), size_px)
    references = {
        "mean": (total / len(tiles)).float(),
        "median": sample_maps.median(dim=0).values.to(device),
    }
    references["tissue_mean"] = torch.where(
        tissue_count > 0, tissue_total / tissue_count.clamp(min=1), total / len(tiles)
    ).float()
    references["tissue_median"] = masked_median(
        anomaly_map(torch.cat(kept_filled), size_px), torch.cat(kept_tissue), references["median"].cpu()
    ).to(device)
    scores: dict[str, list[Tensor]] = {name: [] for name in references}
    for error, filled_error, tissue in errors("training scores"):
        for name in NORMALISATIONS:
            scores[name].append(image_scores(anomaly_map(error, size_px, references[name]))[0])
            tissue_map = anomaly_map(filled_error, size_px, references[f"tissue_{name}"])
            scores[f"tissue_{name}"].append(image_scores(tissue_map, tissue)[0])
    return references, {name: torch.cat(values).cpu() for name, values in scores.items()}


class _TilesWithTissue(Dataset[tuple[Tensor, Tensor]]):
    """The tiles of a `TileDataset` with their tissue masks: item i is (tile (3, S, S),
    tissue (S / TISSUE_BLOCK_PX,)^2 bool), the mask from the tile's pixels before stain
    normalisation (as the slide's mask comes from the slide's own colours)."""

    def __init__(self, tiles: TileDataset) -> None:
        self.tiles = tiles

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        raw = read_tile(self.tiles.paths[index], self.tiles.size_px)
        pixels = raw.permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()[None]
        tissue = torch.from_numpy(tile_tissue(pixels, TISSUE_BLOCK_PX)[0])
        return self.tiles.normalise(raw), tissue


def _calibrate_feature_first(
    errors: Any, n_tiles: int, size_px: int, device: torch.device
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """`calibrate` for `map_order: feature-first`: the references of the raw (F, F) feature errors
    (mean; median over at most `MEDIAN_SAMPLE` evenly spread tiles; and both tissue-aware, over the
    tissue pixels of the glass-filled tiles, the tissue mask being at feature resolution), stored
    as (S, S) maps constant on S/F blocks (`reference_at_features`); scores are
    `anomaly_map(error, S, reference, "feature-first")`, tissue-aware ones over tissue only."""
    sampled = set(np.linspace(0, n_tiles - 1, min(n_tiles, MEDIAN_SAMPLE)).round().astype(int).tolist())
    total: Tensor | None = None
    tissue_total: Tensor | None = None
    tissue_count: Tensor | None = None
    kept: list[Tensor] = []
    kept_filled: list[Tensor] = []
    kept_tissue: list[Tensor] = []
    start = 0
    for error, filled, tissue in errors("reference maps"):
        if tissue.shape[-1] != error.shape[-1]:
            raise ValueError(
                f"tissue mask {tuple(tissue.shape)} is not at feature resolution {tuple(error.shape)}"
            )
        summed = error.sum(0, dtype=torch.float64)
        in_tissue = torch.where(tissue, filled, torch.zeros_like(filled)).sum(0, dtype=torch.float64)
        counted = tissue.sum(0, dtype=torch.float64)
        total = summed if total is None else total + summed
        tissue_total = in_tissue if tissue_total is None else tissue_total + in_tissue
        tissue_count = counted if tissue_count is None else tissue_count + counted
        rows = [i for i in range(len(error)) if start + i in sampled]
        kept.append(error[rows].cpu())
        kept_filled.append(filled[rows].cpu())
        kept_tissue.append(tissue[rows].cpu())
        start += len(error)
    assert total is not None and tissue_total is not None and tissue_count is not None
    mean = total / n_tiles
    median = torch.cat(kept).median(dim=0).values
    tissue_mean = torch.where(tissue_count > 0, tissue_total / tissue_count.clamp(min=1), mean)
    tissue_median = masked_median(torch.cat(kept_filled), torch.cat(kept_tissue), median)
    references = {
        name: reference_at_features(value.float().to(device), size_px)
        for name, value in (
            ("mean", mean),
            ("median", median),
            ("tissue_mean", tissue_mean),
            ("tissue_median", tissue_median),
        )
    }
    scores: dict[str, list[Tensor]] = {name: [] for name in references}
    for error, filled, tissue in errors("training scores"):
        for name in NORMALISATIONS:
            maps = anomaly_map(error, size_px, references[name], "feature-first")
            scores[name].append(image_scores(maps)[0])
            tissue_maps = anomaly_map(filled, size_px, references[f"tissue_{name}"], "feature-first")
            scores[f"tissue_{name}"].append(image_scores(tissue_maps, tissue)[0])
    return references, {name: torch.cat(values).cpu() for name, values in scores.items()}


def _loader_options(workers: int, device: torch.device) -> dict[str, Any]:
    if workers < 0:
        raise ConfigError(f"workers is {workers}; use 0 (load in this process) or more")
    # Pinned host memory lets the copy to the GPU overlap compute; workers decode ahead of it.
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


def _refuse_existing_run(out: Path, resume: bool) -> None:
    if not resume and ((out / CHECKPOINT).exists() or (out / MODEL_FILE).exists()):
        raise OutputError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )


def _check_resumable(path: Path, stored: dict[str, Any], cfg: TrainConfig) -> None:
    stored, current = _flatten(stored), _flatten(to_dict(cfg))
    for key in sorted(set(stored) | set(current)):
        if key in _RESUME_MAY_CHANGE or stored.get(key) == current.get(key):
            continue
        raise CheckpointError(
            f"{path} was trained with {key}={stored.get(key)!r}, not {current.get(key)!r}; resume with the "
            "run's config.yaml (the default with --resume) or choose another --out"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _keep_metrics_before(path: Path, epoch: int) -> None:
    # A run killed between writing an epoch's metrics and its checkpoint redoes that epoch.
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] < epoch:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash or a full disk (older versions appended)
    write_atomically(path, "".join(line + "\n" for line in kept).encode())


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger(__package__)
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        handler.close()
