"""A synthetic validation cohort: normal slides and slides with planted anomalies, with exact truth
in every truth format `wsi-haloae validate` reads.

`write_cohort(out, normal=2, abnormal=3, size_px=(w, h))` writes

    out/slides/normal-1.tiff ...            slides without anomalies
    out/slides/normal-stain-shifted.tiff    normal-1 restained with other H&E vectors (`stain_shift`)
    out/slides/abnormal-1.tiff ...          1, 2, 3, 1, ... anomalies (kinds cycle foreign, stain,
                                            fold), radii cycling small / medium / large
    out/truth/geojson/<slide>_anomalies.geojson   QuPath annotations (class "Anomaly")
    out/truth/xml/<slide>.xml               ASAP / Camelyon16 XML (group "Anomaly")
    out/truth/mask/<slide>_anomaly_mask.png 8-bit mask at 1/16 of level 0 (255 inside)
    out/labels.csv                          slide,label (0 normal, 1 abnormal)
    out/cohort.json                         every slide's anomalies: kind, radius range, area

Normal slides get no truth file (they have no region; `labels.csv` says they are normal). The
GeoJSON and XML hold the exact anomaly polygons; the mask is exact at its pixel centres.

The stain-shifted slide is normal-1's tissue as another lab would stain it (`stain_shift` of
`write_synthetic_slide`; 0 leaves it out): a model must not flag it, which a stain change alone
makes it do unless it normalises stains (docs/benchmarks.md).
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..annotations import ANOMALY_CLASS
from ..errors import ConfigError, OutputError
from ..files import write_atomically
from .synthetic import SyntheticSlide, write_ground_truth, write_synthetic_slide

# anomaly radius ranges (µm) the abnormal slides cycle through
SIZES_UM: dict[str, tuple[float, float]] = {
    "small": (40.0, 80.0),
    "medium": (100.0, 200.0),
    "large": (200.0, 320.0),
}
MASK_DOWNSAMPLE = 16
COHORT_STAIN_SHIFT = 0.5  # half way to Macenko's reference H&E vectors: a clearly other lab


@dataclass(frozen=True)
class CohortSlide:
    """One written slide of the cohort and where its truth went (None for normal slides)."""

    slide: SyntheticSlide
    label: int
    size_name: str | None
    geojson: Path | None
    xml: Path | None
    mask: Path | None


def write_cohort(
    out: str | Path,
    *,
    normal: int = 2,
    abnormal: int = 3,
    size_px: tuple[int, int] = (4096, 4096),
    mpp_um: float = 0.5,
    seed: int = 0,
    tissue: str = "blobs",
    stain_shift: float = COHORT_STAIN_SHIFT,
    progress: bool = False,
) -> list[CohortSlide]:
    """Write the cohort of the module docstring to `out` (slides already there are rewritten)."""
    if normal < 0 or abnormal < 0 or normal + abnormal == 0:
        raise ConfigError(f"a cohort needs slides: got {normal} normal and {abnormal} abnormal; use e.g. 2,3")
    out = Path(out)
    written: list[CohortSlide] = []
    sizes = list(SIZES_UM)
    for i in range(normal):
        slide = write_synthetic_slide(
            out / "slides" / f"normal-{i + 1}.tiff",
            *size_px,
            mpp_um=mpp_um,
            anomalies=0,
            seed=seed + 100 + i,
            tissue=tissue,  # type: ignore[arg-type]
            progress=progress,
        )
        written.append(CohortSlide(slide, 0, None, None, None, None))
    if stain_shift > 0 and normal > 0:
        slide = write_synthetic_slide(
            out / "slides" / "normal-stain-shifted.tiff",
            *size_px,
            mpp_um=mpp_um,
            anomalies=0,
            seed=seed + 100,  # normal-1's tissue
            tissue=tissue,  # type: ignore[arg-type]
            progress=progress,
            stain_shift=stain_shift,
        )
        written.append(CohortSlide(slide, 0, None, None, None, None))
    for i in range(abnormal):
        size_name = sizes[i % len(sizes)]
        slide = write_synthetic_slide(
            out / "slides" / f"abnormal-{i + 1}.tiff",
            *size_px,
            mpp_um=mpp_um,
            anomalies=1 + i % 3,
            seed=seed + 200 + i,
            tissue=tissue,  # type: ignore[arg-type]
            progress=progress,
            anomaly_radius_um=SIZES_UM[size_name],
        )
        mask, geojson = write_ground_truth(slide, out / "truth" / "mask", downsample=MASK_DOWNSAMPLE)
        target = out / "truth" / "geojson" / geojson.name
        target.parent.mkdir(parents=True, exist_ok=True)
        geojson.replace(target)
        xml = write_asap_xml(slide, out / "truth" / "xml" / f"{slide.path.stem}.xml")
        written.append(CohortSlide(slide, 1, size_name, target, xml, mask))
    _write_labels(out / "labels.csv", written)
    manifest = {
        "format": "wsi-haloae/synthetic-cohort/1",
        "size_px": list(size_px),
        "mpp_um": mpp_um,
        "seed": seed,
        "mask_downsample": MASK_DOWNSAMPLE,
        "slides": [
            {
                "slide": str(c.slide.path),
                "label": c.label,
                "stain_shift": c.slide.stain_shift,
                "size": c.size_name,
                "radius_um": None if c.size_name is None else list(SIZES_UM[c.size_name]),
                "anomalies": [
                    {"kind": a.kind, "area_um2": a.polygon.area * c.slide.texture_mpp_um**2}
                    for a in c.slide.anomalies
                ],
                "truth": {
                    "geojson": None if c.geojson is None else str(c.geojson),
                    "xml": None if c.xml is None else str(c.xml),
                    "mask": None if c.mask is None else f"{c.mask}@{MASK_DOWNSAMPLE}",
                },
            }
            for c in written
        ],
    }
    write_atomically(out / "cohort.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return written


def write_asap_xml(slide: SyntheticSlide, path: str | Path) -> Path:
    """The anomalies of `slide` as ASAP / Camelyon16 XML polygons (group "Anomaly"), level-0 px."""
    path = Path(path)
    name, colour = ANOMALY_CLASS
    hex_colour = "#{:02x}{:02x}{:02x}".format(*colour)
    root = ET.Element("ASAP_Annotations")
    annotations = ET.SubElement(root, "Annotations")
    for number, anomaly in enumerate(slide.anomalies, start=1):
        element = ET.SubElement(
            annotations,
            "Annotation",
            Name=f"{name} {number} ({anomaly.kind})",
            Type="Polygon",
            PartOfGroup=name,
            Color=hex_colour,
        )
        coordinates = ET.SubElement(element, "Coordinates")
        for order, (x, y) in enumerate(list(anomaly.polygon.exterior.coords)[:-1]):
            ET.SubElement(coordinates, "Coordinate", Order=str(order), X=repr(float(x)), Y=repr(float(y)))
    groups = ET.SubElement(root, "AnnotationGroups")
    group = ET.SubElement(groups, "Group", Name=name, PartOfGroup="None", Color=hex_colour)
    ET.SubElement(group, "Attributes")
    ET.indent(root)
    buffer = io.BytesIO()
    ET.ElementTree(root).write(buffer, encoding="utf-8", xml_declaration=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {path.parent} ({exc.strerror}); choose a writable folder") from None
    write_atomically(path, buffer.getvalue())
    return path


def _write_labels(path: Path, slides: list[CohortSlide]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["slide", "label"])
    for c in slides:
        writer.writerow([c.slide.path.stem, c.label])
    write_atomically(path, buffer.getvalue().encode())
