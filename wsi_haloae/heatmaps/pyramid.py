"""Resumable OME-Zarr heatmap pyramids: zarr format 3 with OME-NGFF 0.5 metadata.

A store holds one multiscale image, the anomaly score (float32), and one multiscale label image,
`labels/tissue` (uint8, 1 where the score was computed on tissue). The installed `ome-zarr`
reader opens both: the image through its `multiscales`, the label through the image's `labels`
group. A label image, rather than a second channel of a `c` axis, keeps each array in its own
dtype (a channel axis would force the mask into float32) and is what napari shows as a
toggleable labels layer over the heatmap.

Layout (paths inside the store)::

    zarr.json              attributes: {"ome": {"version": "0.5", "multiscales": [...]},
                                        "wsi_haloae": {shape, mpp, fingerprint, bands_done, complete}}
    0/ 1/ ... n/           scores, level k is level 0 downsampled by 2**k in y and x
    labels/tissue/0/ ...   computed-pixel mask, same shapes and chunks

Coordinates: axes `y`, `x` in micrometres; level k has the scale `mpp_um_yx * 2**k`, so pixel
(i, j) of level k covers [i * s_y, (i + 1) * s_y) x [j * s_x, (j + 1) * s_x) micrometres from the
heatmap origin, which is the slide's level-0 origin. Viewers that put a pixel's *centre* at
i * s (napari, ome-zarr readers) also read each level's `translation`, written when `finalize` is
given the slide's level-0 pixel size m: (s - m) / 2 per axis, which moves heatmap pixel centres
onto the centres of the slide pixels they cover when the slide is shown at scale m (its level L
at scale m * d_L with translation (d_L - 1) * m / 2, d_L being the level's downsample).

Unwritten and uncomputed pixels: the score is NaN (the arrays' fill value) and the mask is 0, so
"no tissue" never reads as "score 0", and all-background chunks are not stored at all.

Resume: level 0 is written in full-width bands of `chunk_px` rows, each band as whole chunks
(a rewrite replaces them, so writes are idempotent). After a band's chunks are stored, its index
is appended to `bands_done` in the group attributes (zarr writes each file through a temporary
name and a rename, so a kill leaves either the old or the new list). A reopened store skips those
bands; the rest are written again. `finalize` builds the lower levels and writes the multiscales
metadata with `complete: true` in the same final attribute write, so a store without that flag is
never presented as a finished image.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tqdm import tqdm
from zarr.codecs import BloscCodec

from ..errors import OutputError

log = logging.getLogger(__name__)

NGFF_VERSION = "0.5"
MASK_PATH = "labels/tissue"
_ATTRS_KEY = "wsi_haloae"
_STORE_FORMAT = 1
_AXES = [
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


def pyramid_shapes(shape_yx: tuple[int, int], max_px: int = 1024) -> list[tuple[int, int]]:
    """Shapes of levels 0, 1, ...: each next level is ceil(previous / 2) in y and x, and the last
    is the first whose longer side is <= `max_px` (a single level if level 0 already is)."""
    height, width = shape_yx
    if height < 1 or width < 1:
        raise ValueError(f"a heatmap needs at least one pixel, got shape {shape_yx}")
    shapes = [(height, width)]
    while max(shapes[-1]) > max_px:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def masked_mean_2x2(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Downsample (h, w) scores by 2 in y and x, averaging only computed pixels.

    Each output pixel (i, j) is the mean of the scores at mask-set pixels of the 2x2 block
    [2i:2i+2, 2j:2j+2] (blocks cut by an odd edge use the pixels they have); its mask is set when
    any of those pixels is. Blocks without a computed pixel get NaN. Returns float32 (ceil(h/2),
    ceil(w/2)) scores and the matching uint8 mask.
    """
    height, width = scores.shape
    pad = ((0, height % 2), (0, width % 2))
    valid = np.pad(mask.astype(bool), pad)
    values = np.where(valid, np.pad(scores.astype(np.float64), pad), 0.0)
    # (h/2, 2, w/2, 2): axis 1 and 3 walk the rows and columns inside one 2x2 block
    blocks_h, blocks_w = valid.shape[0] // 2, valid.shape[1] // 2
    total = values.reshape(blocks_h, 2, blocks_w, 2).sum(axis=(1, 3))
    count = valid.reshape(blocks_h, 2, blocks_w, 2).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
    return mean.astype(np.float32), (count > 0).astype(np.uint8)


class HeatmapStore:
    """A heatmap pyramid on disk, written band by band and resumable after a kill.

    Build it with `HeatmapStore.open(...)`; write level 0 with `write_band` in any order; call
    `finalize()` once every band is written. `shape_yx` is level 0 in heatmap pixels and
    `mpp_um_yx` its pixel size in micrometres (slide mpp x the heatmap's downsample).
    """

    def __init__(self, path: Path, group: zarr.Group, meta: dict[str, Any]) -> None:
        self.path = path
        self._group = group
        self._meta = meta
        self.shape_yx: tuple[int, int] = tuple(meta["shape_yx"])  # type: ignore[assignment]
        self.mpp_um_yx: tuple[float, float] = tuple(meta["mpp_um_yx"])  # type: ignore[assignment]
        self.chunk_px: int = meta["chunk_px"]
        self.name: str = meta["name"]
        self._bands_done = set(meta["bands_done"])

    def __repr__(self) -> str:
        return (
            f"HeatmapStore({str(self.path)!r}, shape_yx={self.shape_yx}, mpp_um_yx={self.mpp_um_yx}, "
            f"chunk_px={self.chunk_px}, bands={len(self._bands_done)}/{self.band_count}, "
            f"complete={self.complete})"
        )

    @classmethod
    def open(
        cls,
        path: str | Path,
        shape_yx: tuple[int, int],
        mpp_um_yx: tuple[float, float],
        *,
        chunk_px: int = 512,
        fingerprint: dict[str, Any],
        name: str = "anomaly",
    ) -> HeatmapStore:
        """Create the store at `path`, or reopen it to resume.

        `fingerprint` identifies what produced the scores (checkpoint, slide, settings; any
        JSON-serialisable dict). Reopening with another shape, pixel size, chunk size, name or
        fingerprint raises OutputError, since mixing two runs' bands would be silently wrong.
        """
        path = Path(path)
        shape = (int(shape_yx[0]), int(shape_yx[1]))
        if min(shape) < 1 or chunk_px < 1:
            raise ValueError(f"bad heatmap geometry: shape_yx={shape_yx}, chunk_px={chunk_px}")
        wanted = {
            "format": _STORE_FORMAT,
            "shape_yx": list(shape),
            "mpp_um_yx": [float(mpp_um_yx[0]), float(mpp_um_yx[1])],
            "chunk_px": int(chunk_px),
            "name": name,
            "fingerprint": _as_json(fingerprint, path),
        }
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            return cls._reopen(path, wanted)
        return cls._create(path, wanted)

    @classmethod
    def _create(cls, path: Path, wanted: dict[str, Any]) -> HeatmapStore:
        meta = {**wanted, "bands_done": [], "complete": False}
        try:
            # identity first: a kill before the arrays exist leaves a store that reopens and resumes
            group = zarr.create_group(
                zarr.storage.LocalStore(path), zarr_format=3, attributes={_ATTRS_KEY: meta}
            )
        except OSError as exc:
            raise OutputError(
                f"cannot create heatmap store {path} ({exc.strerror}); choose a writable --out"
            ) from None
        store = cls(path, group, meta)
        store._ensure_level0()
        log.info("created heatmap store %s: %d x %d px in %d bands", path, *store.shape_yx, store.band_count)
        return store

    @classmethod
    def _reopen(cls, path: Path, wanted: dict[str, Any]) -> HeatmapStore:
        fix = "delete it or choose another --out"
        if not path.is_dir():
            raise OutputError(f"{path} exists but is not a wsi-haloae heatmap store; {fix}")
        try:
            group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+", zarr_format=3)
            meta = dict(group.attrs[_ATTRS_KEY])
        except (FileNotFoundError, KeyError, ValueError, TypeError, json.JSONDecodeError):
            raise OutputError(f"{path} exists but is not a wsi-haloae heatmap store; {fix}") from None
        for key, value in wanted.items():
            if meta.get(key) != value:
                raise OutputError(
                    f"heatmap store {path} was written with a different {key} "
                    f"({_difference(meta.get(key), value)}); {fix}"
                )
        store = cls(path, group, meta)
        store._ensure_level0()
        log.info(
            "resuming heatmap store %s: %d of %d bands already written%s",
            path,
            len(store._bands_done),
            store.band_count,
            " (complete)" if store.complete else "",
        )
        return store

    @property
    def band_count(self) -> int:
        """Number of level-0 bands (chunk rows) of `chunk_px` rows, the last possibly shorter."""
        return math.ceil(self.shape_yx[0] / self.chunk_px)

    @property
    def complete(self) -> bool:
        """True once `finalize` has written every level and the multiscales metadata."""
        return bool(self._meta["complete"])

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        """Shapes (y, x) of every pyramid level, level 0 first."""
        return pyramid_shapes(self.shape_yx)

    def bands_done(self) -> set[int]:
        """Band indices (y0 // chunk_px) whose chunks are completely written, as persisted."""
        return set(self._bands_done)

    def write_band(self, y0: int, scores: np.ndarray, mask: np.ndarray) -> None:
        """Write level-0 rows [y0, y0 + h) in full width and record the band as done.

        `scores` (h, W) float and `mask` (h, W) bool/uint8 (set = computed on tissue); `y0` is a
        multiple of `chunk_px` and h == chunk_px except for the last band, which ends at the
        heatmap's bottom edge. Scores outside the mask are stored as NaN. Writing a band again
        replaces its chunks with the same bytes.
        """
        height, width = self.shape_yx
        if y0 < 0 or y0 >= height or y0 % self.chunk_px:
            raise ValueError(
                f"band start y0={y0} must be a multiple of {self.chunk_px} inside 0..{height - 1}"
            )
        rows = min(self.chunk_px, height - y0)
        if scores.shape != (rows, width) or mask.shape != (rows, width):
            raise ValueError(
                f"band at y0={y0} must be ({rows}, {width}); got scores {scores.shape}, mask {mask.shape}"
            )
        if self.complete:
            raise ValueError(f"heatmap store {self.path} is already finalized; its bands are read-only")
        computed = np.asarray(mask).astype(bool)
        # NaN outside the mask makes "not computed" identical to "never written" (the fill value)
        band_scores = np.where(computed, np.asarray(scores, dtype=np.float32), np.float32(np.nan))
        self._group["0"][y0 : y0 + rows, :] = band_scores
        self._group[f"{MASK_PATH}/0"][y0 : y0 + rows, :] = computed.astype(np.uint8)
        band = y0 // self.chunk_px
        if band not in self._bands_done:
            self._bands_done.add(band)
            self._save_meta(bands_done=sorted(self._bands_done))

    def finalize(self, progress: bool = False, *, slide_mpp_um_yx: tuple[float, float] | None = None) -> None:
        """Build levels 1.. by masked 2x2 means of the level above, then write the OME metadata.

        Each level is built chunk by chunk from a (2 chunk_px)^2 window of the level above, so
        memory is a few tens of MB for 512-px chunks whatever the slide size. Each level averages
        the computed pixels of the previous level's 2x2 block (a mean of means, not weighted by
        level-0 counts). Running it again rebuilds the same bytes. `slide_mpp_um_yx` (the slide's
        level-0 pixel size) adds each level's centre-aligning `translation` (module docstring).
        """
        missing = self.band_count - len(self._bands_done)
        if missing:
            raise OutputError(
                f"heatmap store {self.path} lacks {missing} of {self.band_count} bands; "
                "rerun the heatmap command to finish it"
            )
        shapes = self.level_shapes
        for level in range(1, len(shapes)):
            self._build_level(level, shapes[level], progress)
        datasets = [
            {
                "path": str(level),
                "coordinateTransformations": level_transforms(self.mpp_um_yx, level, slide_mpp_um_yx),
            }
            for level in range(len(shapes))
        ]
        multiscale = {"name": self.name, "axes": _AXES, "datasets": datasets, "type": "mean"}
        self._group["labels"].attrs.update({"ome": {"version": NGFF_VERSION, "labels": ["tissue"]}})
        self._group[MASK_PATH].attrs.update(
            {
                "ome": {
                    "version": NGFF_VERSION,
                    "image-label": {
                        "colors": [{"label-value": 1, "rgba": [255, 255, 255, 96]}],
                        "source": {"image": "../../"},
                    },
                    "multiscales": [{**multiscale, "name": "tissue", "type": "max"}],
                }
            }
        )
        self._save_meta(complete=True, ome={"version": NGFF_VERSION, "multiscales": [multiscale]})
        log.info("finalized heatmap store %s: %d levels, coarsest %s", self.path, len(shapes), shapes[-1])

    def _build_level(self, level: int, shape: tuple[int, int], progress: bool) -> None:
        chunk = self.chunk_px
        src_scores, src_mask = self._group[str(level - 1)], self._group[f"{MASK_PATH}/{level - 1}"]
        dst_scores = _create_level(self._group, str(level), shape, chunk, np.float32)
        dst_mask = _create_level(self._group, f"{MASK_PATH}/{level}", shape, chunk, np.uint8)
        grid = [
            (cy, cx) for cy in range(math.ceil(shape[0] / chunk)) for cx in range(math.ceil(shape[1] / chunk))
        ]
        for cy, cx in tqdm(grid, desc=f"pyramid level {level}", disable=not progress):
            src = (slice(2 * cy * chunk, 2 * (cy + 1) * chunk), slice(2 * cx * chunk, 2 * (cx + 1) * chunk))
            scores, mask = masked_mean_2x2(src_scores[src], src_mask[src])
            dst = (
                slice(cy * chunk, cy * chunk + scores.shape[0]),
                slice(cx * chunk, cx * chunk + scores.shape[1]),
            )
            dst_scores[dst] = scores
            dst_mask[dst] = mask

    def _ensure_level0(self) -> None:
        for array_path in ("0", f"{MASK_PATH}/0"):
            if array_path not in self._group:
                dtype = np.float32 if array_path == "0" else np.uint8
                _create_level(self._group, array_path, self.shape_yx, self.chunk_px, dtype)

    def _save_meta(self, *, ome: dict[str, Any] | None = None, **changes: Any) -> None:
        self._meta = {**self._meta, **changes}
        attrs: dict[str, Any] = {_ATTRS_KEY: self._meta}
        if ome is not None:
            attrs = {"ome": ome, **attrs}
        self._group.attrs.update(attrs)


def level_transforms(
    mpp_um_yx: tuple[float, float], level: int, slide_mpp_um_yx: tuple[float, float] | None = None
) -> list[dict[str, Any]]:
    """NGFF coordinate transformations of pyramid `level` of a heatmap whose level 0 has pixel size
    `mpp_um_yx`: its scale, then (given the slide's level-0 pixel size) the centre-aligning
    translation (scale - slide mpp) / 2."""
    scale = [float(m) * 2.0**level for m in mpp_um_yx]
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if slide_mpp_um_yx is not None:
        translation = [(s - float(m)) / 2 for s, m in zip(scale, slide_mpp_um_yx)]
        transforms.append({"type": "translation", "translation": translation})
    return transforms


def read_level(path: str | Path, level: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Read one whole level of a store: float32 (h, w) scores (NaN where not computed) and the bool
    (h, w) computed mask. `level` counts from 0 (finest); negative values count from the coarsest.
    Levels other than 0 exist only once the store is finalized."""
    path = Path(path)
    try:
        group = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r", zarr_format=3)
        meta = group.attrs[_ATTRS_KEY]
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        raise OutputError(
            f"{path} is not a wsi-haloae heatmap store; pass the .ome.zarr a heatmap run wrote"
        ) from None
    count = len(pyramid_shapes(tuple(meta["shape_yx"]))) if meta["complete"] else 1
    index = level + count if level < 0 else level
    if not 0 <= index < count:
        state = "" if meta["complete"] else " (not finalized: only level 0 exists)"
        raise OutputError(
            f"heatmap store {path} has levels 0..{count - 1}{state}; level {level} is out of range"
        )
    return group[str(index)][:], group[f"{MASK_PATH}/{index}"][:].astype(bool)


def _create_level(
    group: zarr.Group, path: str, shape: tuple[int, ...], chunk: int, dtype: type
) -> zarr.Array:
    fill = np.nan if dtype is np.float32 else 0
    return group.create_array(
        path,
        shape=shape,
        chunks=(chunk, chunk),
        dtype=dtype,
        fill_value=fill,
        compressors=[
            BloscCodec(cname="zstd", clevel=5, shuffle="shuffle" if dtype is np.float32 else "bitshuffle")
        ],
        dimension_names=["y", "x"],
        overwrite=True,
    )


def _difference(old: Any, new: Any) -> str:
    """What changed, briefly: the differing keys of two dicts, else both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        return "keys " + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    return f"{old!r}, now {new!r}"


def _as_json(value: dict[str, Any], path: Path) -> Any:
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise OutputError(f"heatmap store {path}: fingerprint must be plain JSON data ({exc})") from None
