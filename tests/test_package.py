"""The package's Python entry points: cheap to import, complete, and the README example runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import wsi_haloae

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_cheap() -> None:
    code = "import sys, wsi_haloae; print(' '.join(m for m in ('torch', 'openslide', 'zarr') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert loaded.stdout.strip() == ""


@pytest.mark.parametrize("name", wsi_haloae.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(wsi_haloae, name).__name__ == name
    assert name in dir(wsi_haloae)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        wsi_haloae.nope  # noqa: B018


def test_ships_type_information() -> None:
    assert (ROOT / "wsi_haloae" / "py.typed").is_file()


@pytest.mark.slow
def test_readme_from_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "tiny.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (From Python)", "exec"), {})
    printed = capsys.readouterr().out
    match = re.search(r"(\d+) of (\d+) tiles above [\d.e+-]+: (\S+)", printed)
    assert match, printed
    assert int(match.group(2)) > 0 and int(match.group(1)) <= int(match.group(2))
    assert (Path(match.group(3)) / "summary.json").is_file()
    assert (tmp_path / "run" / "model.safetensors").is_file()
