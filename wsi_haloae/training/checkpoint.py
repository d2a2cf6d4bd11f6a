"""Checkpoints that describe themselves, written atomically and read safely.

A training run folder holds two kinds:
- `RUN/checkpoints/last.pt`, the state to resume from (`save_train_state` / `load_train_state`):
  model and optimizer state dicts, the Kendall weighting's parameters, the number of finished
  epochs, the torch RNG state and the config as a plain dict. Only tensors and plain Python types
  are inside, so it loads with `torch.load(weights_only=True)`, which runs no pickled code.
- `RUN/model.safetensors`, the trained model (`save_trained` / `load_trained`): every weight of
  HaloAE including the frozen backbone (under `model.`), `mean_map` and `median_map` (S, S), the
  per-pixel mean and median anomaly maps of the training tiles, and `train_scores.<mean|median>`
  (N,), their image scores relative to each map;
  metadata `format`, `version` and `config` (the TrainConfig as JSON), and `training_resolution`
  (JSON of `resolution.TrainingResolution`: tile µm/px, tile and input size; absent in files
  written before it was recorded, which load with `resolution` None). Inference needs nothing else.

Both are written to a temporary file in the destination folder, flushed to disk, then moved over
the final name with `os.replace`, so a crash leaves either the old file or the new one, never half.
Every failure to read one is a CheckpointError of one line naming the file and the fix.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from .. import __version__
from ..config import ModelConfig, TrainConfig, from_dict, to_dict
from ..errors import CheckpointError, ConfigError
from ..files import write_atomically
from ..model.anomaly import NORMALISATIONS, Normalisation
from ..model.backbone import VGGFeatures
from ..model.haloae import HaloAE
from .resolution import TrainingResolution

log = logging.getLogger(__name__)

TRAIN_STATE_FORMAT = "wsi-haloae/train-state/1"
MODEL_FORMAT = "wsi-haloae/model/2"  # 2: median map, training scores per normalisation
MODEL_FILE = "model.safetensors"
_TRAIN_STATE_KEYS = ("model", "optimizer", "epoch", "config", "rng")


def save_train_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write a resume checkpoint atomically; `state` holds tensors and plain types only.

    Expected keys: model, optimizer (state dicts), epoch (finished epochs), config (plain dict),
    rng (torch CPU RNG state), optionally kendall and cuda_rng. Format and version are added.
    """
    payload = {"format": TRAIN_STATE_FORMAT, "version": __version__, **state}
    write_atomically(path, lambda handle: torch.save(payload, handle), durable=True)


def load_train_state(path: Path) -> dict[str, Any]:
    """Read a resume checkpoint with `weights_only=True` onto the CPU; CheckpointError if unusable."""
    fix = f"delete {path} to start over, or choose another --out"
    if not path.is_file():
        raise CheckpointError(f"no resume checkpoint at {path}; train without --resume first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({_first_line(exc)}); {fix}") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path} is not a wsi-haloae training checkpoint; {fix}")
    missing = [key for key in _TRAIN_STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks '{missing[0]}' (written by an incompatible version?); {fix}")
    return state


def save_trained(
    path: Path,
    model: HaloAE,
    config: TrainConfig,
    reference_maps: Mapping[str, Tensor],
    train_scores: Mapping[str, Tensor],
    resolution: TrainingResolution | None = None,
) -> None:
    """Write the trained model atomically as safetensors: weights and, per normalisation (mean,
    median), the reference map (S, S) as `<name>_map` and the training tiles' scores (N,) as
    `train_scores.<name>`; `resolution` (how the training tiles were sampled) goes in the metadata."""
    size_px = config.model.image_size_px
    if sorted(reference_maps) != sorted(NORMALISATIONS) or sorted(train_scores) != sorted(NORMALISATIONS):
        raise ValueError(f"reference_maps and train_scores must have one entry for each of {NORMALISATIONS}")
    if any(tuple(m.shape) != (size_px, size_px) for m in reference_maps.values()):
        raise ValueError(f"reference maps must be ({size_px}, {size_px})")
    if any(scores.ndim != 1 for scores in train_scores.values()):
        raise ValueError("train_scores must be 1-D")
    # Clones: safetensors refuses tensors sharing storage and wants the default memory format.
    tensors = {
        f"model.{key}": value.detach().cpu().clone(memory_format=torch.contiguous_format)
        for key, value in model.state_dict().items()
    }
    for name in NORMALISATIONS:
        tensors[f"{name}_map"] = reference_maps[name].detach().float().cpu().contiguous()
        tensors[f"train_scores.{name}"] = train_scores[name].detach().float().cpu().contiguous()
    metadata = {"format": MODEL_FORMAT, "version": __version__, "config": json.dumps(to_dict(config))}
    if resolution is not None:
        metadata["training_resolution"] = json.dumps(resolution.to_dict())
    blob = safetensors_bytes(tensors, metadata=metadata)
    write_atomically(path, blob, durable=True)


@dataclass
class TrainedModel:
    """A trained HaloAE ready for inference (eval mode), with what its anomaly maps need.

    `mean_map` and `median_map` (S, S) are the per-pixel mean and median anomaly maps of the
    training tiles, the references raw maps are made relative to
    (`anomaly_map(error, S, reference_map(normalisation))`); `train_scores[normalisation]` (N,) are
    the training tiles' image scores relative to that reference, the distribution thresholds
    come from. `resolution` is how the training tiles were sampled (None: a model file written
    before wsi-haloae recorded it).
    """

    model: HaloAE
    config: TrainConfig
    mean_map: Tensor
    median_map: Tensor
    train_scores: dict[str, Tensor]
    run_dir: Path
    resolution: TrainingResolution | None = None

    def reference_map(self, normalisation: Normalisation) -> Tensor:
        """The training map anomaly maps are made relative to: the mean (the paper's) or the median."""
        if normalisation not in NORMALISATIONS:
            raise ConfigError(f"normalisation {normalisation!r} is not one of {', '.join(NORMALISATIONS)}")
        return self.mean_map if normalisation == "mean" else self.median_map

    def threshold(self, percentile: float | None = None, normalisation: Normalisation = "mean") -> float:
        """The `percentile` (0-100; default `config.score_percentile`) of the training scores
        normalised by `normalisation`."""
        q = self.config.score_percentile if percentile is None else percentile
        if not 0.0 <= q <= 100.0:
            raise ConfigError(f"threshold percentile is {q}; use a value between 0 and 100")
        return float(np.percentile(self.train_scores[normalisation].double().cpu().numpy(), q))


def load_trained(run_or_file: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Load `RUN/model.safetensors` (or the file given) into an eval-mode HaloAE on `device`.

    The architecture is rebuilt from the config stored in the file and the stored weights (backbone
    included) are loaded into it; the backbone weights named in that config are never fetched.
    """
    path = Path(run_or_file)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        where = "a run folder without model.safetensors" if path.is_dir() else "missing"
        raise CheckpointError(
            f"no trained model at {file} ({where}); "
            "finish `wsi-haloae train` there or pass a run folder that has one"
        )
    fix = "re-train, or copy the file again from where it was trained"
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{file} is corrupt or truncated ({_first_line(exc)}); {fix}") from None
    stored_format = metadata.get("format", "")
    if stored_format.startswith("wsi-haloae/model/") and stored_format != MODEL_FORMAT:
        raise CheckpointError(
            f"{file} is a wsi-haloae model of format {stored_format!r}; this version reads {MODEL_FORMAT!r}: "
            "re-train it with this version"
        )
    if stored_format != MODEL_FORMAT:
        raise CheckpointError(f"{file} is not a wsi-haloae model (no '{MODEL_FORMAT}' format tag); {fix}")
    config = _stored_config(file, metadata)

    maps = {name: tensors.pop(f"{name}_map", None) for name in NORMALISATIONS}
    train_scores = {name: tensors.pop(f"train_scores.{name}", None) for name in NORMALISATIONS}
    absent = [f"{name}_map" for name, v in maps.items() if v is None]
    absent += [f"train_scores.{name}" for name, v in train_scores.items() if v is None]
    if absent:
        raise CheckpointError(f"{file} lacks {absent[0]} (training did not finish?); {fix}")
    size_px = config.model.image_size_px
    for name, value in maps.items():
        if tuple(value.shape) != (size_px, size_px):
            raise CheckpointError(
                f"{file}: {name}_map is {tuple(value.shape)} but its config says {size_px} px images; {fix}"
            )
    unknown = sorted(k for k in tensors if not k.startswith("model."))
    if unknown:
        raise CheckpointError(f"{file} holds an unknown tensor '{unknown[0]}'; {fix}")

    try:
        model = _build_model(config.model)
    except ConfigError as exc:
        raise CheckpointError(f"{file}: its stored model config cannot be built ({exc}); {fix}") from None
    weights = {key.removeprefix("model."): value for key, value in tensors.items()}
    mismatch = _first_mismatch(model.state_dict(), weights)
    if mismatch:
        raise CheckpointError(f"{file}: weights do not match the config stored with them ({mismatch}); {fix}")
    model.load_state_dict(weights)
    model.to(device).eval()
    resolution = _stored_resolution(file, metadata)
    log.info(
        "loaded %s: %d px tiles, %d training scores, written by wsi-haloae %s",
        file,
        size_px,
        train_scores["mean"].numel(),
        metadata.get("version", "?"),
    )
    return TrainedModel(
        model=model,
        config=config,
        mean_map=maps["mean"].to(device),
        median_map=maps["median"].to(device),
        train_scores=train_scores,
        run_dir=file.parent,
        resolution=resolution,
    )


def _stored_resolution(file: Path, metadata: Mapping[str, str]) -> TrainingResolution | None:
    if "training_resolution" not in metadata:
        return None  # an older model file: `heatmap` says what to do about it
    try:
        return TrainingResolution.from_dict(json.loads(metadata["training_resolution"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{file} has an unreadable training_resolution in its metadata; re-train, or copy the file again"
        ) from None


def _stored_config(file: Path, metadata: Mapping[str, str]) -> TrainConfig:
    written_by = f"written by wsi-haloae {metadata.get('version', '?')}"
    try:
        raw = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(
            f"{file} has no readable config in its metadata ({written_by}); re-train"
        ) from None
    try:
        return from_dict(TrainConfig, raw, source=str(file))
    except ConfigError as exc:
        raise CheckpointError(f"{exc} ({written_by}); use that version or re-train") from None


def _build_model(model_config: ModelConfig) -> HaloAE:
    # The stored weights include the backbone: an empty VGG shell receives them, rather than
    # fetching the weights the config names (a download, or a file on the training machine).
    return HaloAE(model_config, backbone=VGGFeatures())


def _first_mismatch(expected: Mapping[str, Tensor], stored: Mapping[str, Tensor]) -> str | None:
    for kind, keys in (("missing", set(expected) - set(stored)), ("unexpected", set(stored) - set(expected))):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            return f"{kind} weight '{min(keys)}'{more}"
    for key, value in expected.items():
        if stored[key].shape != value.shape:
            return f"'{key}' is {tuple(stored[key].shape)} in the file, {tuple(value.shape)} for the config"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
