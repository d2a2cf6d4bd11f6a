"""Writing a file so that a reader, or a rerun after a crash, never sees half of it."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        _make_folder(path.parent, path)
        tmp, tmp_name = _open_temp(path)
        try:
            with tmp:
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
    except OutputError:
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise OutputError(
            f"cannot write {path} ({exc.strerror or exc}); choose a writable output folder"
        ) from None
    return path


def _open_temp(path: Path) -> tuple[IO[bytes], str]:
    """A new temporary file beside `path` (the one place atomic writes open files: tests make
    it fail as a full disk would)."""
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    return os.fdopen(handle, "wb"), tmp_name


def _make_folder(folder: Path, target: Path | None = None) -> None:
    """mkdir -p, with OutputError naming `target` (default: the folder) and the file that stands
    where a folder is wanted."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(
                    f"cannot write to {target or folder}: {parent} is a file, not a folder; "
                    "move the file away or choose another --out"
                )
            break
    folder.mkdir(parents=True, exist_ok=True)


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError of a full disk or an exhausted quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: str | Path) -> int:
    """Bytes free for this user on the file system of `path` (or of its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def disk_full_error(path: str | Path) -> OutputError:
    """The one-line error of a full disk while writing `path`: the folder, the space left, the fix."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        free = format_bytes(free_bytes(folder))
    except OSError:
        free = "unknown"
    return OutputError(
        f"cannot write {path} (No space left on device): {free} free in {folder}; free space there or "
        "choose another --out, then rerun the same command to finish (train: add --resume); written "
        "work is kept and the output is not marked complete"
    )


@contextmanager
def disk_full_is_an_output_error(folder: str | Path) -> Iterator[None]:
    """Within the block, a full-disk OSError (from any writer: zarr, PIL, ...) becomes the
    one-line `disk_full_error` naming `folder`."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(Path(folder)) from None
        raise


def check_free_space(folder: str | Path, needed_bytes: int, what: str) -> None:
    """OutputError before a job when `folder`'s file system has less than `needed_bytes` free."""
    free = free_bytes(folder)
    if free < needed_bytes:
        raise OutputError(
            f"{what} needs about {format_bytes(needed_bytes)} but {folder} has {format_bytes(free)} free; "
            "free space there or choose another --out"
        )


LOCK_NAME = ".lock"


@contextmanager
def output_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (`fcntl.flock` on `folder/.lock`) for the block,
    creating the folder if need be.

    Raises OutputError naming the holder's pid when another run (in any process) holds it. The
    lock goes with the process, so a killed run never leaves a stale one behind.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        _make_folder(folder)
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise OutputError(f"cannot create {path} ({exc.strerror}); choose a writable --out") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OutputError(
                f"another run is writing {folder} (pid {holder}); wait for it or choose another --out"
            ) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(handle)  # closing the descriptor releases the lock


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create `folder` if need be and prove a file can be written in it; returns it.

    Raises OutputError naming the folder, before any work whose results would be lost.
    """
    folder = Path(folder)
    try:
        _make_folder(folder)
        probe = folder / f".write-test-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(folder) from None
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
        if stem in seen and Path(os.path.abspath(seen[stem])) == Path(os.path.abspath(path)):
            raise ConfigError(f"slide {path} is listed twice; list each slide once")
        if stem in seen:
            raise ConfigError(
                f"{seen[stem]} and {path} share the name {stem!r}; give them separate --out folders"
            )
        seen[stem] = path
