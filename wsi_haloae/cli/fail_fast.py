"""Open the slides named on the command line before the heavy imports (torch, dask): an unreadable
file fails within a second or two instead of after the imports."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path


def check_slides_open(
    specs: Sequence[str],
    backend: str,
    *,
    assume_mpp_um: float | None = None,
    slide_mpp_um: float | None = None,
    need_mpp: bool = True,
) -> None:
    """Open and close each slide file or folder in `specs` that exists (a single-slide job; a
    cohort records a bad slide and goes on); glob patterns and CSV
    lists are left to the job (which opens every slide before any work too). The slide's µm/px is
    checked by the resolution rules too (an implausible file value, or none when `need_mpp`).
    Raises SlideError."""
    from ..slides.slide import open_slide

    for spec in specs:
        path = Path(spec)
        if (spec.lower().endswith(".csv") and path.is_file()) or (glob.has_magic(spec) and not path.exists()):
            continue
        if path.exists():
            with open_slide(path, backend=backend) as slide:  # type: ignore[arg-type]
                if need_mpp or slide.mpp_um is not None:
                    slide.require_mpp(assume_mpp_um, slide_mpp_um, quiet=True)
