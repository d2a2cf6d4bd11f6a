"""The architecture's import rules, checked by walking every module's imports with `ast`.

cli → jobs → engines → model / slide: the library never imports the CLI, only the CLI knows
click, the slide and output layers know nothing of torch, and the model knows nothing of slides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wsi_haloae"

# module (dotted, relative to wsi_haloae) -> top-level names it must not import
NO_TORCH = ("torch", "torchvision")
FORBIDDEN = {
    "slide": NO_TORCH,
    "grid": NO_TORCH,
    "tissue": NO_TORCH,
    "tiles": NO_TORCH,
    "synthetic": NO_TORCH,
    "pyramid": NO_TORCH,
    "geojson": NO_TORCH,
    "overlay": NO_TORCH,
    "metrics": NO_TORCH,
    "mvtec": NO_TORCH,
    "synth_mvtec": NO_TORCH,
}
MODEL_MUST_NOT = ("openslide", "tiffslide", "zarr", "dask", "distributed", "shapely")
MODEL_MUST_NOT_INTERNAL = (
    "slide",
    "grid",
    "tissue",
    "tiles",
    "pyramid",
    "geojson",
    "overlay",
    "heatmap",
    "cohort",
)


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _dotted(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def _imports(path: Path) -> set[str]:
    """Absolute dotted names this module imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = ["wsi_haloae", *_dotted(path).split(".")]
    if path.name != "__init__.py":
        here = here[:-1]
    here = [p for p in here if p]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names.add(mod)
                if not node.module:
                    names.update(f"{mod}.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
    return names


@pytest.mark.parametrize("path", _modules(), ids=_dotted)
def test_import_rules(path: Path) -> None:
    name = _dotted(path)
    imports = _imports(path)
    tops = {i.split(".")[0] for i in imports}
    internal = {i.split(".")[1] for i in imports if i.startswith("wsi_haloae.") and i.count(".") >= 1}

    if not name.startswith("cli"):
        assert "click" not in tops, f"{name} imports click: only wsi_haloae.cli may"
        assert "cli" not in internal, f"{name} imports the CLI: the library never does"
    assert "pipelines" not in tops, f"{name} imports pipelines: the library never does"
    for banned in FORBIDDEN.get(name, ()):
        assert banned not in tops, f"{name} imports {banned}: this layer must stay free of it"
    if name.startswith("model"):
        for banned in MODEL_MUST_NOT:
            assert banned not in tops, (
                f"{name} imports {banned}: the model knows nothing of slides or outputs"
            )
        for banned in MODEL_MUST_NOT_INTERNAL:
            assert banned not in internal, (
                f"{name} imports wsi_haloae.{banned}: the model knows nothing of slides"
            )
