"""Writing a file so that a reader, or a rerun after a crash, never sees half of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import OutputError

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
