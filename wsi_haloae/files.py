"""Writing a file so that a reader, or a rerun after a crash, never sees half of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import ConfigError, OutputError

# mkstemp creates files readable by their owner only; outputs get the usual permissions
_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK


def write_atomically(
    path: str | Path, content: bytes | Callable[[IO[bytes]], None], *, durable: bool = False
) -> Path:
    """Write `content` (bytes, or a function writing to a binary handle) to `path` through a
    temporary file in the same folder and a rename, so `path` is absent, old or complete.

    `durable` flushes the file to disk before the rename (checkpoints: worth an fsync).
    Raises OutputError naming the path when it cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as tmp:
                if isinstance(content, bytes):
                    tmp.write(content)
                else:
                    content(tmp)
                if durable:
                    tmp.flush()
                    os.fsync(tmp.fileno())
            os.chmod(tmp_name, _MODE)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(
            f"cannot write {path} ({exc.strerror or exc}); choose a writable output folder"
        ) from None
    return path


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create `folder` if need be and prove a file can be written in it; returns it.

    Raises OutputError naming the folder, before any work whose results would be lost.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to {folder} ({exc.strerror or exc}); choose a writable --out folder"
        ) from None
    return folder


# Suffix pairs that name one format: `x.ome.tif` is the slide `x`, not `x.ome`.
_DOUBLE_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.btf", ".ome.tf2", ".ome.tf8", ".ome.zarr")


def slide_stem(path: str | Path) -> str:
    """The name a slide's outputs get: the file name without its format suffix (`x.svs` -> `x`,
    `x.ome.tif` -> `x`), or a folder's own name (a DICOM series given as its folder)."""
    path = Path(path)
    if path.is_dir():
        return path.name
    lower = path.name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def check_unique_stems(slides: list[Path]) -> None:
    """Each slide gets the output folder OUT/<stem>: two slides of one stem would share it.

    Raises ConfigError naming both, or when there are no slides at all.
    """
    if not slides:
        raise ConfigError("no slides given; pass one or more slide files")
    seen: dict[str, Path] = {}
    for path in slides:
        stem = slide_stem(path)
        if stem in seen:
            raise ConfigError(
                f"{seen[stem]} and {path} share the name {stem!r}; give them separate --out folders"
            )
        seen[stem] = path
