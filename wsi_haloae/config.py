"""Typed configuration: plain YAML mapped strictly onto frozen dataclasses.

Defaults live in the dataclasses, so the installed package works without the repository;
the presets in `configs/` only override. Unknown keys and values outside a `Literal` fail in
`load_config` with the file, the key and the valid choices named.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from .errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class ModelConfig:
    """HaloAE architecture (blocks B-E of `model-spec.md`).

    `width` scales every channel count of the autoencoder table (1.0 = the spec); `image_size_px`
    sets the input tile (the feature map is a quarter of it). The paper model is the default.
    """

    image_size_px: int = 256
    backbone_weights: str = "imagenet"  # "imagenet", "random" or a path to a VGG19 state dict
    features: Literal["pooled", "official"] = "pooled"
    attention: Literal["masked", "uniform"] = "masked"
    block_c: Literal["halo", "cnn"] = "halo"
    width: float = 1.0
    block_size: int = 12
    halo_size: int = 2
    dim_head: int = 16
    decoder_first_channels: int = 380
    decoder_middle_layers: int = 4


@dataclass(frozen=True)
class TrainConfig:
    """How to train HaloAE (the recipe of `model-spec.md`, plus our options)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 250
    samples_per_epoch: int = 3000
    batch_size: int = 4  # originals per step; each brings two Cut&Paste copies (x3 images)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    weighting: Literal["ews", "equal", "kendall"] = "ews"
    # The EWS schedule is defined over the paper's 250 epochs; our epoch e sits at paper epoch
    # e * ews_epochs / epochs, so a short run still passes through the whole schedule.
    ews_epochs: int = 250
    loss_cls: bool = True
    loss_fm: bool = True
    loss_im: bool = True
    augment: Literal["jitter", "hed", "none"] = "jitter"
    colour_jitter: float = 0.1
    hed_sigma: float = 0.03
    workers: int = 4
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    bf16: bool = True  # autocast on CUDA only
    channels_last: bool = True  # CUDA only
    score_percentile: float = 99.0  # default heatmap threshold: this percentile of training scores


@dataclass(frozen=True)
class HeatmapConfig:
    """How `heatmap` scores a slide with a trained model (the tile size is the model's own).

    Resolution: `mpp_um` (µm/px of the tiles; default: the model's training resolution, and
    another one needs `allow_mpp_mismatch`) or a pyramid `level`, not both; `slide_mpp_um`
    overrides a slide's own µm/px, `assume_mpp_um` stands in for a missing one; reading finer
    than level 0 needs `allow_upsample`; `allow_non_brightfield` lets non-brightfield-looking
    slides through with a warning (see `wsi_haloae.slides.inputs`). `stride_px` below the tile size overlaps
    tiles (blended without seams); tile size and stride must be multiples of 4. `batch_size` None
    picks one that fits the device; `workers` None uses a tile reader process per spare core on
    CUDA and none on the CPU, where the model needs every core (0 reads in this process). The
    threshold is `threshold` if given, else the `threshold_percentile` (default: the model's
    `score_percentile`) of the training scores stored with the model. `normalisation` makes
    anomaly maps relative to the median training map (default) or the mean one (the paper's),
    see `wsi_haloae.model.anomaly`.
    """

    mpp_um: float | None = None  # None: the model's training resolution
    level: int | None = None
    assume_mpp_um: float | None = None
    slide_mpp_um: float | None = field(default=None, metadata={"range": "[0.05, 20]"})  # overrides the file
    allow_mpp_mismatch: bool = False  # score at an mpp other than the model's (logged)
    allow_upsample: bool = False  # read finer than the slide's level 0 (logged)
    allow_non_brightfield: bool = False  # input-kind refusals become warnings
    stride_px: int | None = None
    min_tissue: float = 0.5
    thumbnail_px: int = 2048  # long side of the thumbnail for the tissue mask and the overlay
    batch_size: int | None = None
    workers: int | None = None
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    backend: Literal["openslide", "tiffslide"] = "openslide"
    compile: bool = False  # torch.compile the model (CUDA; pays off on large slides)
    bf16: bool = True  # autocast on CUDA only
    threshold: float | None = None
    threshold_percentile: float | None = None
    normalisation: Literal["median", "mean"] = "median"
    min_region_um2: float = 2000.0  # smaller regions above threshold are dropped
    simplify_px: float = 1.0  # outline simplification tolerance, heatmap px
    chunk_px: int = 512  # OME-Zarr chunk side; also the band height of streaming writes
    # regions (`slides.regions`; as `tile --include`): score only tiles at least `min_inside` in
    # the included minus the excluded area; `tissue_mask` replaces the built-in tissue mask
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_inside: float = field(default=0.5, metadata={"range": "[0, 1]"})
    tissue_mask: str | None = None
    artefacts: Literal["report", "off"] = "report"  # pen/fold/blur QC (`heatmaps.artefacts`)
    tiles_gzip: bool = True  # tiles.geojson.gz (QuPath reads it as is); False writes plain tiles.geojson


def load_config(path: str | Path, cls: type[T]) -> T:
    """Read a YAML file into `cls`, strictly; raises ConfigError naming file, key and fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
    return from_dict(cls, raw, source=str(path))


def from_dict(cls: type[T], raw: Any, source: str = "config", prefix: str = "") -> T:
    """Map a nested dict onto dataclass `cls`, checking keys, types and Literal choices."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or 'top level'} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; valid keys: {', '.join(sorted(fields))}"
        )
    values = {name: _coerce(hints[name], value, source, f"{prefix}{name}") for name, value in raw.items()}
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as a plain dict (YAML/JSON ready)."""
    return dataclasses.asdict(obj)


def replace(obj: T, **changes: Any) -> T:
    """A copy of a config dataclass with fields changed, type-checked like a YAML value."""
    hints = typing.get_type_hints(type(obj))
    checked = {k: _coerce(hints[k], v, "option", k) for k, v in changes.items() if v is not None}
    return dataclasses.replace(obj, **checked)  # type: ignore[type-var]


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, prefix=f"{key}.")  # type: ignore[arg-type]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{source}: '{key}' is {value!r}; choose one of {', '.join(map(str, choices))}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, key)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: '{key}' has the wrong type ({value!r}); expected {tp}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return tuple(_coerce(item, v, source, key) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, not {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, not {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be a string, not {value!r}")
        return str(value)
    return value
