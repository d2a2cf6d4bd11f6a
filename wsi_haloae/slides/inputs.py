"""Is this a brightfield slide? Input-kind checks on the thumbnail, before any tile is read.

The toolkit scores brightfield (H&E-like) slides: coloured tissue on grey-white glass. Other
inputs read without error and give nonsense: a fluorescence image's black background counts as
tissue, YCbCr pixels shown as RGB make the glass look coloured. `assess_input` measures, on the
tissue thumbnail:

- the background colour: the median of the brightest 10 % of thumbnail pixels (on a brightfield
  slide that is glass, near white);
- the dark fraction: the share of pixels darker than `DARK_LUMA` (fluorescence and dark-field
  images are mostly near-black);
- the tissue fraction of the mask;

plus the channel count and photometric interpretation the file states. `check_input` refuses
(SlideError) what is surely not brightfield: a dark background, YCbCr-looking glass, other than
3 colour channels; and warns about a background that is not near-white or tissue over 95 %.
`allow=True` (--allow-non-brightfield) turns the refusals into warnings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SlideError

if TYPE_CHECKING:
    from .slide import Slide
    from .tissue import TissueMask

log = logging.getLogger(__name__)

DARK_LUMA = 50  # 0-255: darker pixels are "near-black"
MAX_DARK_FRACTION = 0.5  # a brightfield slide is mostly glass or stained tissue, never mostly black
MIN_WHITE = 200  # every channel of brightfield glass is at least this bright...
MAX_TINT = 30  # ...and its channels differ by at most this much (greyish white)
# Glass (~240, 240, 240 RGB) in full-range YCbCr is (~240, 128, 128); seen as RGB: bright red
# channel, green and blue at mid-grey.
YCBCR_MIN_Y = 150
YCBCR_CHROMA_TOL = 16
MAX_TISSUE_FRACTION = 0.95
_BRIGHTEST = 0.10
OVERRIDE = "--allow-non-brightfield"


@dataclass(frozen=True)
class InputAssessment:
    """What the thumbnail and the file say about the kind of image.

    `background_rgb`: median colour of the brightest 10 % of pixels; `dark_fraction` and
    `tissue_fraction` in [0, 1]; `refusals`: reasons it is surely not a brightfield slide;
    `warnings`: reasons to look at it before trusting the results.
    """

    background_rgb: tuple[int, int, int]
    dark_fraction: float
    tissue_fraction: float
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def brightfield(self) -> bool:
        return not self.refusals

    def describe(self) -> str:
        """One line for `info`."""
        facts = (
            f"background {self.background_rgb}, {100 * self.dark_fraction:.0f}% near-black, "
            f"tissue {100 * self.tissue_fraction:.1f}%"
        )
        if self.refusals:
            return f"does not look like brightfield ({facts}): {'; '.join(self.refusals)}"
        if self.warnings:
            return f"brightfield? ({facts}): {'; '.join(self.warnings)}"
        return f"looks like brightfield ({facts})"


def assess_input(
    thumbnail: np.ndarray, mask: np.ndarray, *, channels: int | None = None, photometric: str | None = None
) -> InputAssessment:
    """Assess an (h, w, 3) uint8 RGB thumbnail and its (h, w) bool tissue mask (see the module doc)."""
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3:
        raise ValueError(f"expected an (h, w, 3) RGB thumbnail, got shape {thumbnail.shape}")
    pixels = thumbnail.reshape(-1, 3).astype(np.float32)
    luma = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    brightest = pixels[luma >= np.quantile(luma, 1.0 - _BRIGHTEST)]
    background = tuple(int(round(v)) for v in np.median(brightest, axis=0))
    r, g, b = background
    dark_fraction = float((luma < DARK_LUMA).mean())
    tissue_fraction = float(mask.mean()) if mask.size else 0.0
    refusals: list[str] = []
    warnings: list[str] = []

    if channels is not None and channels not in (3, 4):
        refusals.append(
            f"the file has {channels} channel(s) (photometric {photometric or 'unknown'}), not the 3 colour "
            "channels of a brightfield scan (a fluorescence or multiplex image?)"
        )
    ycbcr_glass = r >= YCBCR_MIN_Y and abs(g - 128) <= YCBCR_CHROMA_TOL and abs(b - 128) <= YCBCR_CHROMA_TOL
    if dark_fraction > MAX_DARK_FRACTION:
        refusals.append(
            f"{100 * dark_fraction:.0f}% of it is near-black: a dark background, as in fluorescence or "
            "dark-field images, where brightfield slides have white glass"
        )
    elif ycbcr_glass:
        refusals.append(
            f"its background is {background}, what white glass in YCbCr (Y {r}, Cb {g}, Cr {b}) looks like "
            "read as RGB: the pixels were decoded without colour conversion (e.g. a file that labels "
            "YCbCr JPEG tiles as RGB); re-export the slide with its true colour space"
        )
    elif min(background) < MIN_WHITE or max(background) - min(background) > MAX_TINT:
        warnings.append(
            f"its background {background} is not near-white, so tissue detection (colour on grey-white "
            "glass) may be wrong; check the thumbnail"
        )
    if tissue_fraction > MAX_TISSUE_FRACTION:
        warnings.append(
            f"tissue covers {100 * tissue_fraction:.1f}% of it: either it is all tissue, or its background "
            "is not glass and every tile is scored; check the thumbnail"
        )
    return InputAssessment(background, dark_fraction, tissue_fraction, tuple(refusals), tuple(warnings))


def assess_slide(slide: Slide, tissue: TissueMask) -> InputAssessment:
    """`assess_input` of a slide's tissue thumbnail, with the channels its file states."""
    return assess_input(
        tissue.thumbnail,
        tissue.mask,
        channels=getattr(slide, "channels", None),
        photometric=getattr(slide, "photometric", None),
    )


def check_input(slide: Slide, tissue: TissueMask, *, allow: bool = False) -> InputAssessment:
    """Refuse (SlideError) a slide that surely is not brightfield, warn about a doubtful one.

    With `allow`, refusals are logged as warnings instead. Returns the assessment.
    """
    assessment = assess_slide(slide, tissue)
    if assessment.refusals and not allow:
        raise SlideError(
            f"{slide.path} does not look like a brightfield slide: {'; '.join(assessment.refusals)}; "
            f"pass {OVERRIDE} to score it anyway"
        )
    for reason in (*assessment.refusals, *assessment.warnings):
        log.warning("%s: %s", slide.path, reason)
    return assessment
