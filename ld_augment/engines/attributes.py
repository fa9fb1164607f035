"""Read a LesionReport as the handful of decisions a synthesizer makes (shape kind, density class, features).

Both the procedural engine and the adherence measurements need the same reading of the report, so it lives
here once. Matching is by keyword on the lower-cased texts, which accepts the canonical vocabulary values,
their synonyms and the original's trailing-comma spellings alike ("low density lesion," -> "hypo").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Organ-name fragments of the TotalSegmentator bone classes (lytic/sclerotic lesions instead of hypo/hyper).
BONE_KEYWORDS = ("vertebra", "rib", "sacrum", "hip", "femur", "humerus", "scapula", "clavicula", "skull", "sternum")


@dataclass(frozen=True)
class LesionSpec:
    """What a report asks for. ``shape``: round|irregular|punctate|cystic|wall; ``density``: hypo|iso|hyper|
    mixed|fluid|ring|ground_glass|soft_tissue|soft_tissue_ggo; ``margin``: well|ill|default."""

    shape: str = "round"
    density: str = "hypo"
    heterogeneous: bool = False
    margin: str = "default"
    ct_value: float | None = None
    cavity: str | None = None
    spiculated: bool = False
    stone: bool = False
    dark_areas: bool = False
    bright_areas: bool = False
    size: tuple[int, int, int] | None = None


def _text(value: Any) -> str:
    """Flatten a report field (str, list of str, None) into one lower-case string."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value).lower()


def _shape(shape: str, cavity: str) -> str:
    if "wall thickening" in shape or "luminal narrowing" in shape or "wall" in cavity:
        return "wall"
    for key, kind in (("cystic", "cystic"), ("punctate", "punctate"), ("nodular", "punctate"), ("irregular", "irregular")):
        if key in shape:
            return kind
    return "round"  # round-like, protrusion into the lumen, or unspecified


def _density(density: str, shape: str) -> str:
    if "ring" in density:
        return "ring"
    if "ground-glass" in density or "ground glass" in density:
        return "soft_tissue_ggo" if "soft tissue" in density else "ground_glass"
    if "soft tissue" in density:
        return "soft_tissue"
    if "fluid" in density:
        return "fluid"
    if "mixed" in density:
        return "mixed"
    if "hypo" in density or "low" in density:
        return "fluid" if shape == "cystic" else "hypo"
    if "hyper" in density or "high" in density:
        return "hyper"
    if "iso" in density:
        return "iso"
    return "fluid" if shape == "cystic" else "hypo"


def lesion_spec(report: Any) -> LesionSpec:
    """Interpret a report (any object with LesionReport's attribute names; missing ones count as unspecified)."""
    cavity = getattr(report, "cavity", None)
    shape = _shape(_text(getattr(report, "shape", None)), _text(cavity))
    surface = _text(getattr(report, "surface_characteristics", None))
    features = _text(getattr(report, "specific_features", None))
    ct_value = getattr(report, "ct_value", None)
    size = getattr(report, "size", None)
    if size is None and getattr(report, "bbox_sizes", None):
        size = report.bbox_sizes[0]
    margin = "ill" if ("ill" in surface or "unclear" in surface or "poorly" in surface or "irregularity" in surface) else (
        "well" if ("well" in surface or "clear" in surface) else "default"
    )
    return LesionSpec(
        shape=shape,
        density=_density(_text(getattr(report, "density", None)), shape),
        heterogeneous="heterogeneous" in _text(getattr(report, "density_variations", None)),
        margin=margin,
        ct_value=None if ct_value is None else float(ct_value),
        cavity=None if cavity in (None, "") else str(cavity),
        spiculated="spiculat" in features,
        stone="stone" in features or "calculus" in features or "calcif" in features,
        dark_areas="decreased" in features,
        bright_areas="increased" in features,
        size=None if size is None else tuple(int(s) for s in size),  # type: ignore[arg-type]
    )


def is_bone(organ_name: str) -> bool:
    return any(key in organ_name.lower() for key in BONE_KEYWORDS)


def is_lung(organ_name: str) -> bool:
    return "lung" in organ_name.lower()


def expected_contrast_sign(spec: LesionSpec, organ_name: str) -> int | None:
    """Sign of (lesion mean - organ mean) the report implies: -1, 0, +1, or None when it implies none."""
    if is_lung(organ_name):
        return 1  # any lung lesion (solid or ground-glass) is denser than aerated lung
    return {"hypo": -1, "fluid": -1, "iso": 0, "hyper": 1}.get(spec.density)
