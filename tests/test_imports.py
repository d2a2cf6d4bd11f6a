"""The architecture's import rules, checked by walking every module's imports with `ast`.

The packages form layers, and a module imports only from its own package or a lower layer:

    cli → jobs (cohort, bench, demo, viewer) → validation → heatmaps → training
        → model, slides → annotations → config, files → errors

Packages of one layer (model and slides, say) do not import each other. Annotations (reading and
writing outlines) sit below slides, since synthetic slides write their ground truth through them.
Scoring needs the trained-model file (`training.checkpoint`), and slide validation reads heatmap
outputs, hence the order of the middle layers. Besides the layers: the library never imports the
CLI and only the CLI knows click; slides and annotations (and the output writers, the metrics and
the MVTec reader) know nothing of torch; the model knows nothing of slides or output formats.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wsi_haloae"

# a module's layer is that of its top-level name below wsi_haloae; higher imports lower only
LAYERS: dict[str, int] = {
    "errors": 0,
    "config": 1,
    "files": 1,
    "annotations": 2,
    "model": 3,
    "slides": 3,
    "training": 4,
    "heatmaps": 5,
    "validation": 6,
    "cohort": 7,
    "bench": 7,
    "demo": 7,
    "viewer": 7,
    "cli": 8,
}

NO_TORCH = ("torch", "torchvision")
NO_TORCH_PREFIXES = (
    "slides",
    "annotations",
    "heatmaps.pyramid",
    "heatmaps.regions",
    "heatmaps.overlay",
    "validation.metrics",
    "validation.mvtec",
    "validation.synth_mvtec",
    "viewer",
    "heatmaps.colours",
    "heatmaps.gallery",
    "heatmaps.export",
)
MODEL_MUST_NOT = ("openslide", "tiffslide", "zarr", "dask", "distributed", "shapely")


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


def _internal_tops(imports: set[str]) -> set[str]:
    """The top-level wsi_haloae names (`slides`, `config`, ...) among `imports`."""
    return {i.split(".")[1] for i in imports if i.startswith("wsi_haloae.")}


def check_rules(name: str, imports: set[str]) -> list[str]:
    """Every rule `name` (dotted below wsi_haloae; '' for the package itself) breaks."""
    broken = []
    tops = {i.split(".")[0] for i in imports}
    internal = _internal_tops(imports) - {"__version__"}
    own = name.split(".")[0]
    if name == "":
        return broken  # the package's lazy entry points reach every layer on purpose
    if own not in LAYERS:
        broken.append(f"{name} is in no layer: add its package to LAYERS in tests/test_imports.py")
        return broken
    for other in sorted(internal - {own}):
        if other not in LAYERS:
            broken.append(f"{name} imports wsi_haloae.{other}, which is in no layer")
        elif LAYERS[other] > LAYERS[own]:
            broken.append(f"{name} imports wsi_haloae.{other} from a higher layer")
        elif LAYERS[other] == LAYERS[own]:
            broken.append(f"{name} imports wsi_haloae.{other} of its own layer")
    if own != "cli" and "click" in tops:
        broken.append(f"{name} imports click: only wsi_haloae.cli may")
    if "pipelines" in tops:
        broken.append(f"{name} imports pipelines: the library never does")
    if name.startswith(NO_TORCH_PREFIXES):
        broken += [f"{name} imports {b}: this layer must stay free of it" for b in NO_TORCH if b in tops]
    if own == "model":
        broken += [f"{name} imports {b}: the model knows nothing of slides or outputs" for b in MODEL_MUST_NOT if b in tops]
    return broken


@pytest.mark.parametrize("path", _modules(), ids=_dotted)
def test_import_rules(path: Path) -> None:
    assert check_rules(_dotted(path), _imports(path)) == []


@pytest.mark.parametrize(
    ("name", "imports", "rule"),
    [
        ("slides.synthetic", {"wsi_haloae.heatmaps.regions"}, "higher layer"),
        ("slides.tiles", {"torch"}, "free of it"),
        ("annotations", {"torch.nn"}, "free of it"),
        ("slides.grid", {"wsi_haloae.model.backbone"}, "own layer"),
        ("model.halo", {"wsi_haloae.slides.slide"}, "own layer"),
        ("model.backbone", {"shapely"}, "knows nothing"),
        ("training.train", {"wsi_haloae.heatmaps.infer"}, "higher layer"),
        ("heatmaps.heatmap", {"wsi_haloae.validation.metrics"}, "higher layer"),
        ("heatmaps.infer", {"click"}, "only wsi_haloae.cli"),
        ("cohort", {"wsi_haloae.cli.heatmap"}, "higher layer"),
        ("bench", {"wsi_haloae.demo"}, "own layer"),
        ("gallery", set(), "no layer"),
        ("viewer.server", {"wsi_haloae.cohort"}, "own layer"),
    ],
)
def test_rules_catch_a_broken_import(name: str, imports: set[str], rule: str) -> None:
    broken = check_rules(name, imports)
    assert len(broken) == 1 and rule in broken[0], broken


def test_allowed_imports_pass() -> None:
    assert check_rules("heatmaps.heatmap", {"wsi_haloae.training.checkpoint", "wsi_haloae.slides.grid"}) == []
    assert check_rules("cli.heatmap", {"click", "wsi_haloae.cohort", "wsi_haloae.heatmaps.heatmap"}) == []
    assert check_rules("slides.synthetic", {"wsi_haloae.annotations", "numpy"}) == []
