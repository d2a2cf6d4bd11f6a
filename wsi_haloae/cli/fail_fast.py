"""Open the slides named on the command line before the heavy imports (torch, dask): an unreadable
file fails within a second or two instead of after the imports."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path


def check_slides_open(specs: Sequence[str], backend: str) -> None:
    """Open and close each slide file or folder in `specs` that exists (a single-slide job; a
    cohort records a bad slide and goes on); glob patterns and CSV
    lists are left to the job (which opens every slide before any work too). Raises SlideError."""
    from ..slides.slide import open_slide

    for spec in specs:
        path = Path(spec)
        if (spec.lower().endswith(".csv") and path.is_file()) or (glob.has_magic(spec) and not path.exists()):
            continue
        if path.exists():
            with open_slide(path, backend=backend):  # type: ignore[arg-type]
                pass
