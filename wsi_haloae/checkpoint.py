"""Checkpoints that describe themselves, written atomically and read safely.

A training run folder holds two kinds:
- `RUN/checkpoints/last.pt`, the state to resume from (`save_train_state` / `load_train_state`):
  model and optimizer state dicts, the Kendall weighting's parameters, the number of finished
  epochs, the torch RNG state and the config as a plain dict. Only tensors and plain Python types
  are inside, so it loads with `torch.load(weights_only=True)`, which runs no pickled code.
- `RUN/model.safetensors`, the trained model (`save_trained` / `load_trained`): every weight of
  HaloAE including the frozen backbone (under `model.`), `mean_map` (S, S), the mean anomaly map of
  the training tiles, and `train_scores` (N,), their image scores after normalisation by that map;
  metadata `format`, `version` and `config` (the TrainConfig as JSON). Inference needs nothing else.

Both are written to a temporary file in the destination folder, flushed to disk, then moved over
the final name with `os.replace`, so a crash leaves either the old file or the new one, never half.
Every failure to read one is a CheckpointError of one line naming the file and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from . import __version__
from .config import ModelConfig, TrainConfig, from_dict, to_dict
from .errors import CheckpointError, ConfigError
from .model.backbone import VGGFeatures
from .model.haloae import HaloAE

log = logging.getLogger(__name__)

TRAIN_STATE_FORMAT = "wsi-haloae/train-state/1"
MODEL_FORMAT = "wsi-haloae/model/1"
MODEL_FILE = "model.safetensors"
_TRAIN_STATE_KEYS = ("model", "optimizer", "epoch", "config", "rng")


def _write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_train_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write a resume checkpoint atomically; `state` holds tensors and plain types only.

    Expected keys: model, optimizer (state dicts), epoch (finished epochs), config (plain dict),
    rng (torch CPU RNG state), optionally kendall and cuda_rng. Format and version are added.
    """
    payload = {"format": TRAIN_STATE_FORMAT, "version": __version__, **state}
    _write_atomically(path, lambda handle: torch.save(payload, handle))


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
    path: Path, model: HaloAE, config: TrainConfig, mean_map: Tensor, train_scores: Tensor
) -> None:
    """Write the trained model atomically as safetensors: weights, mean_map (S, S), train_scores (N,)."""
    size_px = config.model.image_size_px
    if tuple(mean_map.shape) != (size_px, size_px) or train_scores.ndim != 1:
        raise ValueError(f"mean_map must be ({size_px}, {size_px}) and train_scores 1-D")
    # Clones: safetensors refuses tensors sharing storage and wants the default memory format.
    tensors = {
        f"model.{key}": value.detach().cpu().clone(memory_format=torch.contiguous_format)
        for key, value in model.state_dict().items()
    }
    tensors["mean_map"] = mean_map.detach().float().cpu().contiguous()
    tensors["train_scores"] = train_scores.detach().float().cpu().contiguous()
    metadata = {"format": MODEL_FORMAT, "version": __version__, "config": json.dumps(to_dict(config))}
    blob = safetensors_bytes(tensors, metadata=metadata)
    _write_atomically(path, lambda handle: handle.write(blob))


@dataclass
class TrainedModel:
    """A trained HaloAE ready for inference (eval mode), with what its anomaly maps need.

    `mean_map` (S, S) is subtracted from raw anomaly maps (`anomaly_map(error, S, mean_map)`);
    `train_scores` (N,) are the training tiles' image scores (mean of the normalised map), the
    reference distribution for thresholds.
    """

    model: HaloAE
    config: TrainConfig
    mean_map: Tensor
    train_scores: Tensor
    run_dir: Path

    def threshold(self, percentile: float | None = None) -> float:
        """The `percentile` (0-100; default `config.score_percentile`) of the training scores."""
        q = self.config.score_percentile if percentile is None else percentile
        if not 0.0 <= q <= 100.0:
            raise ConfigError(f"threshold percentile is {q}; use a value between 0 and 100")
        return float(np.percentile(self.train_scores.double().cpu().numpy(), q))


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
    if metadata.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{file} is not a wsi-haloae model (no '{MODEL_FORMAT}' format tag); {fix}")
    config = _stored_config(file, metadata)

    mean_map = tensors.pop("mean_map", None)
    train_scores = tensors.pop("train_scores", None)
    if mean_map is None or train_scores is None:
        raise CheckpointError(f"{file} lacks mean_map or train_scores (training did not finish?); {fix}")
    size_px = config.model.image_size_px
    if tuple(mean_map.shape) != (size_px, size_px):
        raise CheckpointError(
            f"{file}: mean_map is {tuple(mean_map.shape)} but its config says {size_px} px images; {fix}"
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
    log.info(
        "loaded %s: %d px tiles, %d training scores, written by wsi-haloae %s",
        file, size_px, train_scores.numel(), metadata.get("version", "?"),
    )
    return TrainedModel(
        model=model,
        config=config,
        mean_map=mean_map.to(device),
        train_scores=train_scores,
        run_dir=file.parent,
    )


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
