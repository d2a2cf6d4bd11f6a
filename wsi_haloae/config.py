"""Typed configuration: plain YAML mapped strictly onto frozen dataclasses.

Defaults live in the dataclasses, so the installed package works without the repository;
the presets in `configs/` only override. Unknown keys and values outside a `Literal` fail in
`load_config` with the file, the key and the valid choices named.

Every numeric field declares its valid range as dataclass metadata in interval notation,
`field(default=0.5, metadata={"range": "[0, 1]"})`, `"(0, inf)"`, `"[1, inf)"`; `load_config`,
`from_dict` and `replace` (command-line options) refuse a value outside it with the field, the
value and the range in one line. NaN is never in range, and infinity only where the range closes
on it (`"[0, inf]"`). tests/test_config_ranges.py fails for a numeric field without a range.
"""

from __future__ import annotations

import dataclasses
import math
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

    image_size_px: int = field(default=256, metadata={"range": "[20, inf)"})
    backbone_weights: str = "imagenet"  # "imagenet", "random" or a path to a VGG19 state dict
    features: Literal["pooled", "official"] = "pooled"
    attention: Literal["masked", "uniform"] = "masked"
    block_c: Literal["halo", "cnn"] = "halo"
    # "zeros": PyTorch's VGG padding; "reflect": the official network's reflection padding before
    # every convolution (relu3_4 differs near the border, see backbone.py); the paper config uses it.
    vgg_padding: Literal["zeros", "reflect"] = "zeros"
    # Anomaly-map post-processing order (model/anomaly.py): "feature-first" is the official
    # code's (normalise and blur at S/4, then upsample), used by the paper config.
    map_order: Literal["upsample-first", "feature-first"] = "upsample-first"
    width: float = field(default=1.0, metadata={"range": "(0, inf)"})
    block_size: int = field(default=12, metadata={"range": "[1, inf)"})
    halo_size: int = field(default=2, metadata={"range": "[0, inf)"})
    dim_head: int = field(default=16, metadata={"range": "[1, inf)"})
    decoder_first_channels: int = field(default=380, metadata={"range": "[1, inf)"})
    decoder_middle_layers: int = field(default=4, metadata={"range": "[0, inf)"})


@dataclass(frozen=True)
class TrainConfig:
    """How to train HaloAE (the recipe of `model-spec.md`, plus our options)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = field(default=250, metadata={"range": "[1, inf)"})
    samples_per_epoch: int = field(default=3000, metadata={"range": "[1, inf)"})
    # originals per step; each brings two Cut&Paste copies (x3 images)
    batch_size: int = field(default=4, metadata={"range": "[1, inf)"})
    lr: float = field(default=1e-4, metadata={"range": "(0, inf)"})
    weight_decay: float = field(default=1e-5, metadata={"range": "[0, inf)"})
    weighting: Literal["ews", "equal", "kendall"] = "ews"
    # The EWS schedule is defined over the paper's 250 epochs; our epoch e sits at paper epoch
    # e * ews_epochs / epochs, so a short run still passes through the whole schedule.
    ews_epochs: int = field(default=250, metadata={"range": "[1, inf)"})
    loss_cls: bool = True
    loss_fm: bool = True
    loss_im: bool = True
    augment: Literal["jitter", "hed", "none"] = "jitter"
    colour_jitter: float = field(default=0.1, metadata={"range": "[0, 0.5]"})
    hed_sigma: float = field(default=0.03, metadata={"range": "[0, inf)"})
    workers: int = field(default=4, metadata={"range": "[0, inf)"})
    seed: int = field(default=0, metadata={"range": "[0, inf)"})
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    bf16: bool = True  # autocast on CUDA only
    channels_last: bool = True  # CUDA only
    # default heatmap threshold: this percentile of training scores
    score_percentile: float = field(default=99.0, metadata={"range": "[0, 100]"})
    # stain normalisation fitted on the training tiles at the end of training, applied to them
    # for calibration and, by `heatmap`, to every scored tile (`wsi_haloae.model.stain`)
    stain_normalisation: Literal["none", "macenko", "reinhard"] = "none"


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
    see `wsi_haloae.model.anomaly`. `tissue_aware` scores a tile from its tissue pixels only (the
    slide's tissue mask at heatmap resolution), against reference maps and training scores made
    the same way; false gives the scores of every pixel (the behaviour before, for measurement).
    """

    mpp_um: float | None = field(default=None, metadata={"range": "(0, inf)"})  # None: the model's
    level: int | None = field(default=None, metadata={"range": "[0, inf)"})
    assume_mpp_um: float | None = field(default=None, metadata={"range": "(0, inf)"})
    slide_mpp_um: float | None = field(default=None, metadata={"range": "[0.05, 20]"})  # overrides the file
    allow_mpp_mismatch: bool = False  # score at an mpp other than the model's (logged)
    allow_upsample: bool = False  # read finer than the slide's level 0 (logged)
    allow_non_brightfield: bool = False  # input-kind refusals become warnings
    stride_px: int | None = field(default=None, metadata={"range": "[1, inf)"})
    min_tissue: float = field(default=0.5, metadata={"range": "[0, 1]"})
    # long side of the thumbnail for the tissue mask and the overlay
    thumbnail_px: int = field(default=2048, metadata={"range": "[16, inf)"})
    batch_size: int | None = field(default=None, metadata={"range": "[1, inf)"})
    workers: int | None = field(default=None, metadata={"range": "[0, inf)"})
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    backend: Literal["openslide", "tiffslide"] = "openslide"
    compile: bool = False  # torch.compile the model (CUDA; pays off on large slides)
    cuda_graphs: bool = False  # replay the model as a CUDA graph (CUDA only; see heatmaps/infer.py)
    # "jpeg" decodes the file's JPEG tiles on the device (grid = the file's tiles); "auto" does on CUDA
    tile_reader: Literal["auto", "slide", "jpeg"] = "auto"
    bf16: bool = True  # autocast on CUDA only
    threshold: float | None = field(default=None, metadata={"range": "(-inf, inf)"})
    threshold_percentile: float | None = field(default=None, metadata={"range": "[0, 100]"})
    # a threshold.json of `wsi-haloae validate --choose-threshold` (heatmaps/calibration.py); used
    # when `threshold` is not given, as is a threshold.json in the model's run folder
    threshold_file: str | None = None
    normalisation: Literal["median", "mean"] = "median"
    # smaller regions above threshold are dropped
    min_region_um2: float = field(default=2000.0, metadata={"range": "[0, inf)"})
    # outline simplification tolerance, heatmap px
    simplify_px: float = field(default=1.0, metadata={"range": "[0, inf)"})
    # OME-Zarr chunk side; also the band height of streaming writes
    chunk_px: int = field(default=512, metadata={"range": "[1, inf)"})
    # regions (`slides.regions`; as `tile --include`): score only tiles at least `min_inside` in
    # the included minus the excluded area; `tissue_mask` replaces the built-in tissue mask
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_inside: float = field(default=0.5, metadata={"range": "[0, 1]"})
    tissue_mask: str | None = None
    artefacts: Literal["report", "off"] = "report"  # pen/fold/blur QC (`heatmaps.artefacts`)
    tiles_gzip: bool = True  # tiles.geojson.gz (QuPath reads it as is); False writes plain tiles.geojson
    tissue_aware: bool = True


def load_config(path: str | Path, cls: type[T]) -> T:
    """Read a YAML file into `cls`, strictly; raises ConfigError naming file, key and fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config file {path} cannot be read ({exc}); check the file and its permissions"
        ) from None
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
    for name, value in values.items():
        _check_range(fields[name], value, source, f"{prefix}{name}")
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as a plain dict (YAML/JSON ready)."""
    return dataclasses.asdict(obj)


def replace(obj: T, **changes: Any) -> T:
    """A copy of a config dataclass with fields changed, type-checked like a YAML value."""
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
    checked = {k: _coerce(hints[k], v, "option", k) for k, v in changes.items() if v is not None}
    for name, value in checked.items():
        _check_range(fields[name], value, "option", name)
    return dataclasses.replace(obj, **checked)  # type: ignore[type-var]


def check_ranges(obj: Any, source: str = "config", prefix: str = "") -> None:
    """ConfigError for the first numeric field of config dataclass `obj` (nested ones included)
    outside the range its metadata declares; for configs built in code rather than loaded."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, source, f"{prefix}{f.name}.")
        else:
            _check_range(f, value, source, f"{prefix}{f.name}")


def numeric_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of dataclass `cls` typed int or float (or optionally so), bools excluded."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        if any(arg in (int, float) for arg in args):
            found.append(f)
    return found


def parse_range(text: str) -> tuple[float, float, bool, bool]:
    """Interval notation, e.g. "[0, 1]", "(0, inf)": (low, high, low closed, high closed)."""
    text = text.strip()
    if len(text) < 5 or text[0] not in "[(" or text[-1] not in "])" or text.count(",") != 1:
        raise ValueError(f"range {text!r} is not interval notation such as '[0, 1]' or '(0, inf)'")
    low, high = (float(part) for part in text[1:-1].split(","))
    if low > high:
        raise ValueError(f"range {text!r} is empty")
    return low, high, text[0] == "[", text[-1] == "]"


def in_range(value: float, text: str) -> bool:
    """Whether `value` lies in interval `text` (NaN never does; infinity only where the range
    closes on it, as in "[0, inf]")."""
    low, high, low_closed, high_closed = parse_range(text)
    if math.isnan(value):
        return False
    above = value >= low if low_closed else value > low
    below = value <= high if high_closed else value < high
    return above and below


def _check_range(f: dataclasses.Field, value: Any, source: str, key: str) -> None:
    text = f.metadata.get("range")
    if text is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not in_range(value, text):
        what = "a value" if math.isfinite(value) else "a finite number"
        raise ConfigError(f"{source}: '{key}' is {value!r}, outside its range {text}; use {what} in {text}")


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
