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
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import TrainConfig, to_dict
from ..errors import CheckpointError, ConfigError, OutputError
from ..files import ensure_writable_dir
from ..model.anomaly import NORMALISATIONS, Normalisation, anomaly_map, feature_error, image_scores
from ..model.device import resolve_device
from ..model.haloae import HaloAE
from .checkpoint import MODEL_FILE, load_train_state, save_train_state, save_trained
from .data import EpochSampler, TileDataset, TripletDataset, find_tiles
from .losses import KendallWeighting, equal_weights, ews_weights, reconstruction_loss
from .resolution import training_resolution

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.pt"
# Tiles whose maps make the median reference map: 1024 maps of 256 x 256 px are 256 MiB
MEDIAN_SAMPLE = 1024
# Fields that may differ between a run and its resumption: they do not change what is computed
# (the backbone's weights travel in the checkpoint, whatever the config says to start from).
_RESUME_MAY_CHANGE = ("workers", "device", "score_percentile", "model.backbone_weights")


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
    if not resume and (checkpoint_path.exists() or (out / MODEL_FILE).exists()):
        raise OutputError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )
    for name in ("epochs", "samples_per_epoch", "batch_size", "ews_epochs"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} is {getattr(cfg, name)}; it must be at least 1")
    if not (cfg.loss_cls or cfg.loss_fm or cfg.loss_im):
        raise ConfigError("loss_cls, loss_fm and loss_im are all false; keep at least one loss term")
    device = resolve_device(cfg.device)
    paths = find_tiles(tiles)
    resolution = training_resolution(tiles, paths, cfg.model.image_size_px, tile_mpp_um)
    ensure_writable_dir(out)

    with _log_to(out / "train.log"):
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
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
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
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
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
        save_trained(out / MODEL_FILE, model, cfg, reference_maps, train_scores, resolution)
        scores = train_scores["median"].double()
        log.info(
            "model written to %s; training scores (median map): median %.4g, p%g %.4g",
            out / MODEL_FILE,
            scores.median().item(),
            cfg.score_percentile,
            torch.quantile(scores, cfg.score_percentile / 100).item(),
        )
    return out


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
) -> tuple[dict[Normalisation, Tensor], dict[Normalisation, Tensor]]:
    """The reference anomaly maps of `tiles` and their image scores relative to each, without augmentation.

    Returns, per normalisation, the reference map (S, S): "mean", the average of
    `anomaly_map(feature_error(fm, fm_hat), S)` over the tiles; "median", their per-pixel median
    over at most `MEDIAN_SAMPLE` tiles spread evenly over the set; and the scores (N,) on the
    CPU: the mean of `anomaly_map(error, S, reference)` per tile. Two passes over the tiles (the
    second needs the finished references), blocks B and C only.
    """
    model.eval()
    loader = DataLoader(tiles, batch_size=batch_size, shuffle=False, **_loader_options(workers, device))
    size_px = tiles.size_px

    def errors(desc: str) -> Iterator[Tensor]:  # (N, F, F) feature errors, batch by batch
        for images in tqdm(loader, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True):
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                output = model(images, heads=False)
            yield feature_error(output.fm.float(), output.fm_hat.float())

    total = torch.zeros(size_px, size_px, dtype=torch.float64, device=device)
    # an even spread, not a random draw: the same tiles whatever the seed or the batch size
    sampled = set(np.linspace(0, len(tiles) - 1, min(len(tiles), MEDIAN_SAMPLE)).round().astype(int).tolist())
    kept: list[Tensor] = []  # feature-resolution errors of the sampled tiles
    start = 0
    for error in errors("reference maps"):
        total += anomaly_map(error, size_px).sum(0, dtype=torch.float64)
        rows = [i for i in range(len(error)) if start + i in sampled]
        kept.append(error[rows].cpu())
        start += len(error)
    references = {
        "mean": (total / len(tiles)).float(),
        "median": anomaly_map(torch.cat(kept), size_px).median(dim=0).values.to(device),
    }
    scores: dict[Normalisation, list[Tensor]] = {name: [] for name in NORMALISATIONS}
    for error in errors("training scores"):
        for name in NORMALISATIONS:
            scores[name].append(image_scores(anomaly_map(error, size_px, references[name]))[0])
    return references, {name: torch.cat(values).cpu() for name, values in scores.items()}


def _loader_options(workers: int, device: torch.device) -> dict[str, Any]:
    if workers < 0:
        raise ConfigError(f"workers is {workers}; use 0 (load in this process) or more")
    # Pinned host memory lets the copy to the GPU overlap compute; workers decode ahead of it.
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


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
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] < epoch]
    path.write_text("".join(line + "\n" for line in kept))


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
