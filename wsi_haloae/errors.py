"""User-facing failures.

Every error a user can cause (bad slide, bad config, bad checkpoint, ...) is a subclass of
`WsiHaloaeError` whose message names the file and the fix; the CLI prints it as one line and
exits with `exit_code`. Anything else is a bug and keeps its traceback.
"""


class WsiHaloaeError(Exception):
    """Base of all user-facing errors."""

    exit_code = 2


class SlideError(WsiHaloaeError):
    """A slide is missing, unreadable, not a slide, or lacks metadata we need (e.g. mpp)."""


class NoTissueError(WsiHaloaeError):
    """Tissue detection found nothing to tile on a slide."""


class ConfigError(WsiHaloaeError):
    """A YAML config or a command-line option has a bad key or value."""


class CheckpointError(WsiHaloaeError):
    """A model run folder or checkpoint is missing, corrupt or does not match its config."""


class BackboneWeightsError(WsiHaloaeError):
    """The requested VGG19 weights cannot be had (offline, bad file, wrong checksum)."""


class DataError(WsiHaloaeError):
    """A dataset (tile folder, manifest, MVTec-AD tree) is missing files or badly laid out."""


class OutputError(WsiHaloaeError):
    """An output folder cannot be written, or another run is writing it now."""


class CohortError(WsiHaloaeError):
    """Some slides of a cohort failed; the others finished (see cohort.csv)."""

    exit_code = 1


class AnnotationError(WsiHaloaeError):
    """An annotation file (GeoJSON, ASAP XML, mask image, OME-Zarr label) is missing, malformed,
    selects nothing, or is not in the slide's level-0 pixel frame."""
