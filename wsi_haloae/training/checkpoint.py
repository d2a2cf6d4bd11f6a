"""Checkpoints that describe themselves, written atomically and read safely.

A training run folder holds two kinds:
- `RUN/checkpoints/last.pt`, the state to resume from (`save_train_state` / `load_train_state`):
  model and optimizer state dicts, the Kendall weighting's parameters, the number of finished
  epochs, the torch RNG state and the config as a plain dict. Only tensors and plain Python types
  are inside, so it loads with `torch.load(weights_only=True)`, which runs no pickled code.
- `RUN/model.safetensors`, the trained model (`save_trained` / `load_trained`): every weight of
  HaloAE including the frozen backbone (under `model.`), `mean_map` and `median_map` (S, S), the
  per-pixel mean and median anomaly maps of the training tiles, and `train_scores.<mean|median>`
  (N,), their image scores relative to each map; the same made tissue-aware (`tissue_mean_map`,
  `tissue_median_map`, `train_scores.tissue_<mean|median>`: only each tile's tissue pixels
  counted, see `train.calibrate`; absent from files written before them); and, when the run
  normalised stains, `stain.<buffer>` (the fitted `model.stain.StainNormaliser`; its method is
  the config's `stain_normalisation`);
  metadata `format`, `version` and `config` (the TrainConfig as JSON), and `training_resolution`
  (JSON of `resolution.TrainingResolution`: tile µm/px, tile and input size; absent in files
  written before it was recorded, which load with `resolution` None). Inference needs nothing else.

Both are written to a temporary file in the destination folder, flushed to disk, then moved over
the final name with `os.replace`, so a crash leaves either the old file or the new one, never half.
Every failure to read one is a CheckpointError of one line naming the file and the fix.
"""

from __future__ import annotations

import io
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
from ..model.stain import StainNormaliser
from .resolution import TrainingResolution

log = logging.getLogger(__name__)

TRAIN_STATE_FORMAT = "wsi-haloae/train-state/1"
MODEL_FORMAT = "wsi-haloae/model/2"  # 2: median map, training scores per normalisation
MODEL_FILE = "model.safetensors"
_ALL_REFERENCES = (*NORMALISATIONS, *(f"tissue_{name}" for name in NORMALISATIONS))
_TRAIN_STATE_KEYS = ("model", "optimizer", "epoch", "config", "rng")


def save_train_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write a resume checkpoint atomically; `state` holds tensors and plain types only.

    Expected keys: model, optimizer (state dicts), epoch (finished epochs), config (plain dict),
    rng (torch CPU RNG state), optionally kendall and cuda_rng. Format and version are added.
    """
    payload = {"format": TRAIN_STATE_FORMAT, "version": __version__, **state}

    def write(handle: Any) -> None:
        # serialised in memory first: torch's zip writer turns a full disk into an opaque
        # RuntimeError ("unexpected pos ..."), a plain write raises the OSError that says so
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        handle.write(buffer.getbuffer())

    write_atomically(path, write, durable=True)


def load_train_state(path: Path) -> dict[str, Any]:
    """Read a resume checkpoint with `weights_only=True` onto the CPU; CheckpointError if unusable."""
    fix = f"delete {path} to start over, or choose another --out"
    if not path.is_file():
        raise CheckpointError(f"no resume checkpoint at {path}; train without --resume first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text advises weights_only=False (running the file's code): never repeat it
        raise CheckpointError(
            f"{path} is not a wsi-haloae training checkpoint: it holds data other than tensors and plain "
            f"values ({_unpickler_reason(exc)}), so it was not loaded; {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
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
    *,
    stain: StainNormaliser | None = None,
    resolution: TrainingResolution | None = None,
) -> None:
    """Write the trained model atomically as safetensors: weights and, per normalisation (mean,
    median, and optionally tissue_mean, tissue_median), the reference map (S, S) as `<name>_map`
    and the training tiles' scores (N,) as `train_scores.<name>`; the stain normaliser's buffers
    as `stain.<name>` (its method must be `config.stain_normalisation`); `resolution` (how the
    training tiles were sampled) goes in the metadata."""
    size_px = config.model.image_size_px
    names = sorted(reference_maps)
    if names not in (sorted(NORMALISATIONS), sorted(_ALL_REFERENCES)) or sorted(train_scores) != names:
        raise ValueError(f"reference_maps and train_scores must have one entry for each of {NORMALISATIONS}")
    if (stain.method if stain is not None else "none") != config.stain_normalisation:
        raise ValueError(
            f"the stain normaliser does not match stain_normalisation {config.stain_normalisation}"
        )
    if any(tuple(m.shape) != (size_px, size_px) for m in reference_maps.values()):
        raise ValueError(f"reference maps must be ({size_px}, {size_px})")
    if any(scores.ndim != 1 for scores in train_scores.values()):
        raise ValueError("train_scores must be 1-D")
    # Clones: safetensors refuses tensors sharing storage and wants the default memory format.
    tensors = {
        f"model.{key}": value.detach().cpu().clone(memory_format=torch.contiguous_format)
        for key, value in model.state_dict().items()
    }
    for name in names:
        tensors[f"{name}_map"] = reference_maps[name].detach().float().cpu().contiguous()
        tensors[f"train_scores.{name}"] = train_scores[name].detach().float().cpu().contiguous()
    if stain is not None:
        for key, value in stain.state_dict().items():
            tensors[f"stain.{key}"] = value.detach().float().cpu().contiguous()
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
    # tissue-aware reference maps {"mean": (S, S), "median": (S, S)} (None: a model from before them)
    tissue_maps: dict[str, Tensor] | None = None
    stain: StainNormaliser | None = None
    resolution: TrainingResolution | None = None

    def reference_map(self, normalisation: Normalisation, tissue_aware: bool = False) -> Tensor:
        """The training map anomaly maps are made relative to: the mean (the paper's) or the
        median, of every pixel or (`tissue_aware`) of the tissue pixels."""
        if normalisation not in NORMALISATIONS:
            raise ConfigError(f"normalisation {normalisation!r} is not one of {', '.join(NORMALISATIONS)}")
        if tissue_aware:
            return self._tissue_maps()[normalisation]
        return self.mean_map if normalisation == "mean" else self.median_map

    def scores_key(self, normalisation: Normalisation, tissue_aware: bool = False) -> str:
        """The key of `train_scores` made with that reference."""
        if tissue_aware:
            self._tissue_maps()
        return f"tissue_{normalisation}" if tissue_aware else normalisation

    def threshold(
        self,
        percentile: float | None = None,
        normalisation: Normalisation = "mean",
        tissue_aware: bool = False,
    ) -> float:
        """The `percentile` (0-100; default `config.score_percentile`) of the training scores
        normalised by `normalisation` (tissue-aware or not)."""
        q = self.config.score_percentile if percentile is None else percentile
        if not 0.0 <= q <= 100.0:
            if percentile is None:
                raise ConfigError(
                    f"the model in {self.run_dir} stores score_percentile {q}, outside [0, 100]; "
                    "pass --threshold or a threshold_percentile in [0, 100], or re-train"
                )
            raise ConfigError(f"threshold percentile is {q}; use a value between 0 and 100")
        scores = self.train_scores[self.scores_key(normalisation, tissue_aware)]
        return float(np.percentile(scores.double().cpu().numpy(), q))

    def _tissue_maps(self) -> dict[str, Tensor]:
        if self.tissue_maps is None:
            raise ConfigError(
                f"the model in {self.run_dir} has no tissue-aware reference maps (trained before them); "
                "re-train it, or score with tissue_aware: false (--no-tissue-aware)"
            )
        return self.tissue_maps


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
    kind = _not_safetensors(file)
    if kind is not None:
        raise CheckpointError(
            f"{file} is not a model file ({kind}); pass a training run folder or its {MODEL_FILE}"
        )
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

    maps = {name: tensors.pop(f"{name}_map", None) for name in _ALL_REFERENCES}
    train_scores = {name: tensors.pop(f"train_scores.{name}", None) for name in _ALL_REFERENCES}
    absent = [f"{name}_map" for name, v in maps.items() if v is None]
    absent += [f"train_scores.{name}" for name, v in train_scores.items() if v is None]
    if all(maps[f"tissue_{n}"] is None and train_scores[f"tissue_{n}"] is None for n in NORMALISATIONS):
        absent = [name for name in absent if "tissue_" not in name]  # a model from before them
    if absent:
        raise CheckpointError(f"{file} lacks {absent[0]} (training did not finish?); {fix}")
    size_px = config.model.image_size_px
    for name, value in maps.items():
        if value is not None and tuple(value.shape) != (size_px, size_px):
            raise CheckpointError(
                f"{file}: {name}_map is {tuple(value.shape)} but its config says {size_px} px images; {fix}"
            )
    stain = _stored_stain(
        file, config, {k: tensors.pop(k) for k in list(tensors) if k.startswith("stain.")}, fix
    )
    maps = {name: value for name, value in maps.items() if value is not None}
    train_scores = {name: value for name, value in train_scores.items() if value is not None}
    for name, value in train_scores.items():
        if value.ndim != 1 or value.numel() == 0:
            raise CheckpointError(
                f"{file}: train_scores.{name} holds {tuple(value.shape)} values, not a non-empty list of "
                f"training tile scores; {fix}"
            )
    bad = _first_non_finite(
        {
            **{f"{name}_map": value for name, value in maps.items()},
            **{f"train_scores.{name}": value for name, value in train_scores.items()},
            **tensors,
        }
    )
    if bad is not None:
        raise CheckpointError(f"{file}: {bad} holds NaN or infinite values; {fix}")
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
        tissue_maps=None
        if "tissue_mean" not in maps
        else {name: maps[f"tissue_{name}"].to(device) for name in NORMALISATIONS},
        stain=None if stain is None else stain.to(device),
        resolution=resolution,
    )


def _stored_stain(
    file: Path, config: TrainConfig, tensors: dict[str, Tensor], fix: str
) -> StainNormaliser | None:
    method = config.stain_normalisation
    if method == "none":
        if tensors:
            raise CheckpointError(
                f"{file} holds stain tensors but its config says stain_normalisation none; {fix}"
            )
        return None
    stored = {key.removeprefix("stain."): value for key, value in tensors.items()}
    expected = sorted(StainNormaliser(method).state_dict())
    if sorted(stored) != expected:
        odd = sorted(set(expected) ^ set(stored))[0]
        raise CheckpointError(
            f"{file}: its {method} stain normalisation cannot be read (stain.{odd} missing or unknown); {fix}"
        )
    try:
        return StainNormaliser(method, **stored)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{file}: its {method} stain normalisation cannot be read ({exc}); {fix}"
        ) from None


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
        return from_dict(TrainConfig, raw, source=f"the config stored in model file {file}")
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


def _not_safetensors(file: Path) -> str | None:
    """What `file` is when it is plainly not a safetensors file, else None.

    A safetensors file starts with the 8-byte little-endian length of a JSON header, then `{`.
    """
    try:
        with file.open("rb") as handle:
            head = handle.read(9)
            size = file.stat().st_size
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size:
        return None
    if len(head) < 9:
        return None  # too short to tell: safetensors calls it truncated
    if head[:2] == b"PK":
        return "a zip archive, e.g. a PyTorch checkpoint such as checkpoints/last.pt"
    if head[:2] in (b"II", b"MM"):
        return "a TIFF file, e.g. a slide"
    if head[:1] == b"\x80":
        return "a Python pickle"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file, e.g. a config.yaml"
    return "not in the safetensors format"


def _unpickler_reason(exc: BaseException) -> str:
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].strip().split(". ")[0].splitlines()[0].strip()
        return reason.rstrip(".") or "an object that is not a tensor"
    return "not a tensor-only file"


def _first_non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    for name in sorted(tensors):
        value = tensors[name]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
