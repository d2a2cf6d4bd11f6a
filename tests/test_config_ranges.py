"""Every numeric field of every config dataclass declares its range, and the loaders enforce it.

The config dataclasses are found automatically (every dataclass named `*Config` in the package),
so a numeric field added without a `"range"` fails here at merge time.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path

import pytest

import wsi_haloae
from wsi_haloae.config import (
    HeatmapConfig,
    TrainConfig,
    check_ranges,
    from_dict,
    in_range,
    load_config,
    numeric_fields,
    parse_range,
    replace,
)
from wsi_haloae.errors import ConfigError


def _config_classes() -> list[type]:
    # a file walk, not pkgutil: the sub-packages are namespace packages without __init__.py
    root = Path(wsi_haloae.__file__).parent
    found: dict[str, type] = {}
    for file in sorted(root.rglob("*.py")):
        parts = file.relative_to(root.parent).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__") or parts[1] == "cli":
            continue
        module_name = ".".join(parts)
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if (
                isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and name.endswith("Config")
                and obj.__module__ == module_name
            ):
                found[f"{module_name}.{name}"] = obj
    return [found[key] for key in sorted(found)]


CLASSES = _config_classes()
NUMERIC = [(cls, f) for cls in CLASSES for f in numeric_fields(cls)]


def _out_of_range(text: str, is_int: bool) -> object:
    low, high, low_closed, high_closed = parse_range(text)
    if math.isfinite(low):
        value = low - 1 if low_closed else low
    elif math.isfinite(high):
        value = high + 1 if high_closed else high
    else:
        return float("nan")
    return int(value) if is_int else float(value)


def test_the_known_config_classes_are_discovered() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert {"ModelConfig", "TrainConfig", "HeatmapConfig", "TileConfig"} <= names
    assert len(NUMERIC) >= 40


@pytest.mark.parametrize("cls,f", NUMERIC, ids=[f"{c.__name__}.{f.name}" for c, f in NUMERIC])
def test_every_numeric_field_declares_a_valid_range(cls: type, f: dataclasses.Field) -> None:
    text = f.metadata.get("range")
    assert text is not None, (
        f"{cls.__name__}.{f.name} is numeric but has no range: declare it as "
        f'field(default=..., metadata={{"range": "[0, inf)"}})'
    )
    parse_range(text)
    default = f.default if f.default is not dataclasses.MISSING else None
    assert default is None or in_range(default, text), f"{cls.__name__}.{f.name} default outside {text}"


@pytest.mark.parametrize("cls,f", NUMERIC, ids=[f"{c.__name__}.{f.name}" for c, f in NUMERIC])
def test_every_numeric_field_refuses_an_out_of_range_value(cls: type, f: dataclasses.Field) -> None:
    text = f.metadata["range"]
    is_int = "int" in str(f.type) and "float" not in str(f.type)
    bad = _out_of_range(text, is_int)
    with pytest.raises(ConfigError) as raised:
        from_dict(cls, {f.name: bad}, source="run.yaml")
    message = str(raised.value)
    assert "run.yaml" in message and f"'{f.name}'" in message and repr(bad) in message and text in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match=f"'{f.name}' is"):
        replace(cls(), **{f.name: bad})
    with pytest.raises(ConfigError, match=f"'{f.name}' is"):
        check_ranges(dataclasses.replace(cls(), **{f.name: bad}))
    if not is_int:
        with pytest.raises(ConfigError, match="finite"):
            replace(cls(), **{f.name: float("nan")})
        with pytest.raises(ConfigError, match="finite"):
            replace(cls(), **{f.name: float("inf")})


def test_ranges_parse_and_include_bounds_as_written() -> None:
    assert in_range(0.0, "[0, 1]") and in_range(1.0, "[0, 1]") and not in_range(0.0, "(0, 1]")
    assert not in_range(math.inf, "[0, inf)") and in_range(math.inf, "[0, inf]")
    assert not in_range(math.nan, "(-inf, inf)")
    for bad in ("0, 1", "[1, 0]", "[a, b]", "[0; 1]"):
        with pytest.raises(ValueError):
            parse_range(bad)


@pytest.mark.parametrize(
    "yaml_text,key",
    [
        ("lr: -0.1\n", "lr"),
        ("weight_decay: -1.0e-5\n", "weight_decay"),
        ("score_percentile: 200\n", "score_percentile"),
        ("colour_jitter: -5\n", "colour_jitter"),
        ("model:\n  width: 0\n", "model.width"),
    ],
)
def test_load_config_names_file_field_value_and_range(tmp_path, yaml_text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"bad\.yaml: '{key}' is .*, outside its range"):
        load_config(path, TrainConfig)


@pytest.mark.parametrize(
    "yaml_text,key",
    [
        ("threshold: .inf\n", "threshold"),
        ("threshold: -.inf\n", "threshold"),
        ("threshold: .nan\n", "threshold"),
        ("min_region_um2: -5\n", "min_region_um2"),
        ("simplify_px: -1\n", "simplify_px"),
        ("thumbnail_px: 0\n", "thumbnail_px"),
        ("chunk_px: 0\n", "chunk_px"),
    ],
)
def test_heatmap_config_nonsense_values_are_refused(tmp_path, yaml_text: str, key: str) -> None:
    path = tmp_path / "heatmap.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"heatmap\.yaml: '{key}' is .*outside its range"):
        load_config(path, HeatmapConfig)


def test_an_unreadable_config_is_one_line(tmp_path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot be read|not valid YAML"):
        load_config(path, TrainConfig)
