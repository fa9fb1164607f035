"""The structured lesion report in LesionDiffusion's ``type.json`` format.

A ``type.json`` maps a TotalSegmentator v1 organ id to ``[shape text, note, {attribute: text}, [[centres],
[sizes]]]``. The attribute texts are what the text encoder sees, so they are kept *verbatim* (trailing commas,
capitalisation, unknown keys and all) and the typed fields are parsed from them on access. That way a report
loaded and saved again is the same JSON, and the typed view can never drift from the text the networks get.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ld_augment.errors import ConfigError, InputError
from ld_augment.io.textfile import read_text_bounded
from ld_augment.io.atomic import atomic_write_json

Vec3 = tuple[int, int, int]

# Attribute keys of the original format, in the order the original writes them.
ENHANCEMENT = "enhancement status"
LOCATION = "lesion location"
SHAPE = "shape"
SIZE = "size"
DENSITY = "density"
DENSITY_VARIATIONS = "density variations"
CT_VALUE = "CT value"
SURFACE = "surface characteristics"
RELATIONSHIP = "relationship with adjacent organs"
SPECIFIC_FEATURES = "specific features"
CAVITY = "cavity"
ATTRIBUTE_ORDER: tuple[str, ...] = (
    ENHANCEMENT, LOCATION, SHAPE, SIZE, DENSITY, DENSITY_VARIATIONS, CT_VALUE, SURFACE, RELATIONSHIP,
    SPECIFIC_FEATURES, CAVITY,
)

_SIZE_RE = re.compile(r"\[\[\s*(-?\d+(?:\.\d*)?)[\s,]+(-?\d+(?:\.\d*)?)[\s,]+(-?\d+(?:\.\d*)?)\s*\]\]")
_CT_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*HU", re.IGNORECASE)


def strip_text(text: str) -> str:
    """An attribute text without surrounding whitespace and trailing commas ("homogeneous," -> "homogeneous")."""
    return text.strip().rstrip(",").strip()


def format_size(size: Sequence[int]) -> str:
    """The original's size text, e.g. ``[[28 29 26]] pixel,``."""
    x, y, z = (int(v) for v in size)
    return f"[[{x} {y} {z}]] pixel,"


def format_ct_value(hu: float) -> str:
    """The original's CT value sentence; integral values are written without a decimal point."""
    value = round(float(hu), 1)
    number = str(int(value)) if value.is_integer() else f"{value:.1f}"
    return f"Mean density of the lesion region is approximately {number} HU,"


def parse_size(text: str) -> Vec3 | None:
    """Voxel size from ``[[X Y Z]] pixel`` (commas between numbers tolerated); None when absent or empty."""
    if not text or not text.strip():
        return None
    match = _SIZE_RE.search(text)
    if match is None:
        raise ValueError(f"size {text!r} is not of the form '[[X Y Z]] pixel'")
    values = [float(g) for g in match.groups()]
    if any(v <= 0 or not v.is_integer() for v in values):
        raise ValueError(f"size {text!r} must hold three positive integers")
    return (int(values[0]), int(values[1]), int(values[2]))


def parse_ct_value(text: str) -> float | None:
    """Mean HU from "Mean density of the lesion region is approximately N HU,"; None when absent or empty."""
    if not text or not text.strip():
        return None
    match = _CT_RE.search(text)
    if match is None:
        raise ValueError(f"CT value {text!r} does not contain a number followed by 'HU'")
    return float(match.group(1))


def split_items(text: str) -> list[str]:
    """Comma-separated items of a multi-valued text, empty ones dropped (no vocabulary lookup here)."""
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass
class LesionReport:
    """One organ's entry of a ``type.json``: raw attribute texts plus typed accessors.

    ``attributes`` is the source of truth (ordered, verbatim); use ``with_values`` to change typed fields so
    the texts are re-rendered in the original's format. ``bbox_centers``/``bbox_sizes`` list every lesion of
    this organ (standardized voxel coordinates); centres are empty until placement fills them.
    """

    organ_id: int
    shape_text: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    bbox_centers: list[Vec3] = field(default_factory=list)
    bbox_sizes: list[Vec3] = field(default_factory=list)
    note: str = ""  # the (always empty in the released data) second element
    extra: list[Any] = field(default_factory=list)  # any elements after the bbox element, kept for round-trip

    # ----------------------------------------------------------------- typed views of the attribute texts
    def _text(self, key: str) -> str | None:
        value = self.attributes.get(key)
        if value is None:
            return None
        stripped = strip_text(value)
        return stripped or None

    @property
    def lesion_location(self) -> str | None:
        return self._text(LOCATION)

    @property
    def enhancement_status(self) -> str | None:
        return self._text(ENHANCEMENT)

    @property
    def shape(self) -> str | None:
        return self._text(SHAPE)

    @property
    def size(self) -> Vec3 | None:
        return parse_size(self.attributes.get(SIZE, ""))

    @property
    def density(self) -> str | None:
        return self._text(DENSITY)

    @property
    def density_variations(self) -> str | None:
        return self._text(DENSITY_VARIATIONS)

    @property
    def ct_value(self) -> float | None:
        return parse_ct_value(self.attributes.get(CT_VALUE, ""))

    @property
    def surface_characteristics(self) -> str | None:
        return self._text(SURFACE)

    @property
    def relationship(self) -> str | None:
        return self._text(RELATIONSHIP)

    @property
    def specific_features(self) -> list[str]:
        """Items of "specific features" split on commas (the vocabulary joins items the same way)."""
        return split_items(self.attributes.get(SPECIFIC_FEATURES, ""))

    @property
    def cavity(self) -> str | None:
        return self._text(CAVITY)

    @property
    def num_lesions(self) -> int:
        return max(len(self.bbox_sizes), len(self.bbox_centers))

    # ----------------------------------------------------------------- updates (new objects, texts re-rendered)
    def with_values(self, **values: Any) -> "LesionReport":
        """A copy with typed fields replaced, e.g. ``with_values(size=(10, 12, 9), ct_value=40.0)``.

        Accepted names: enhancement_status, shape, size, density, density_variations, ct_value,
        surface_characteristics, relationship, specific_features (list), cavity. ``None`` removes the attribute.
        """
        attrs = dict(self.attributes)
        shape_text = self.shape_text
        for name, value in values.items():
            key = _FIELD_TO_KEY.get(name)
            if key is None:
                raise ConfigError(f"unknown report field {name!r}; valid: {', '.join(sorted(_FIELD_TO_KEY))}")
            if value is None:
                attrs.pop(key, None)
                continue
            attrs[key] = render_value(key, value)
            if key == SHAPE:
                shape_text = attrs[key]
        return replace(self, attributes=_ordered(attrs), shape_text=shape_text)

    def with_bboxes(self, centers: Sequence[Sequence[int]], sizes: Sequence[Sequence[int]]) -> "LesionReport":
        """A copy with the lesion boxes replaced (placement's output); the size text follows the first box."""
        cs = [_vec3(c, "bbox centre") for c in centers]
        ss = [_vec3(s, "bbox size") for s in sizes]
        if len(cs) != len(ss):
            raise ConfigError(f"{len(cs)} bbox centres but {len(ss)} bbox sizes; they must pair up")
        report = replace(self, bbox_centers=cs, bbox_sizes=ss)
        return report.with_values(size=ss[0]) if ss else report

    # ----------------------------------------------------------------- type.json conversion
    def to_entry(self) -> list[Any]:
        """This report as the list value of its organ key in a ``type.json``."""
        bbox = [[list(c) for c in self.bbox_centers], [list(s) for s in self.bbox_sizes]]
        return [self.shape_text, self.note, dict(self.attributes), bbox, *self.extra]

    @classmethod
    def from_entry(cls, key: str, entry: Any, *, source: str = "<type.json>") -> "LesionReport":
        """Parse one ``type.json`` entry; every problem is an InputError naming ``source`` and the organ key."""
        where = f"{source}: organ key {key!r}"
        try:
            organ_id = int(str(key).strip())
        except ValueError:
            raise InputError(f"{where}: the key must be a TotalSegmentator v1 class id (an integer)") from None
        if not isinstance(entry, list) or len(entry) < 4:
            raise InputError(f"{where}: expected a list [shape text, note, {{attributes}}, [[centres], [sizes]]]")
        shape_text, note, attrs, bbox = entry[:4]
        if not isinstance(shape_text, str) or not isinstance(note, str):
            raise InputError(f"{where}: the first two elements must be strings")
        if not isinstance(attrs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
            raise InputError(f"{where}: the third element must be an object of attribute name -> text")
        if not (isinstance(bbox, list) and len(bbox) == 2 and all(isinstance(b, list) for b in bbox)):
            raise InputError(f"{where}: the fourth element must be [[[cx, cy, cz], ...], [[sx, sy, sz], ...]]")
        try:
            centers = [_vec3(c, "bbox centre") for c in bbox[0]]
            sizes = [_vec3(s, "bbox size") for s in bbox[1]]
        except ConfigError as err:
            raise InputError(f"{where}: {err}") from None
        report = cls(organ_id=organ_id, shape_text=shape_text, attributes=dict(attrs), bbox_centers=centers,
                     bbox_sizes=sizes, note=note, extra=list(entry[4:]))
        location = attrs.get(LOCATION)
        if location is not None and strip_text(location) and strip_text(location) != str(organ_id):
            raise InputError(f"{where}: 'lesion location' is {location!r} but the key says organ {organ_id}")
        try:
            report.size, report.ct_value  # parse now so a bad file fails at load, not deep in a pipeline
        except ValueError as err:
            raise InputError(f"{where}: {err}") from None
        return report


_FIELD_TO_KEY = {
    "enhancement_status": ENHANCEMENT, "shape": SHAPE, "size": SIZE, "density": DENSITY,
    "density_variations": DENSITY_VARIATIONS, "ct_value": CT_VALUE, "surface_characteristics": SURFACE,
    "relationship": RELATIONSHIP, "specific_features": SPECIFIC_FEATURES, "cavity": CAVITY,
}


def render_value(key: str, value: Any) -> str:
    """The text the original writes for a typed value (trailing comma, size/HU sentences, joined features).

    Cavity is written without a trailing comma, as the original copies the user's cavity phrase verbatim.
    """
    if key == SIZE:
        return format_size(_vec3(value, "size"))
    if key == CT_VALUE:
        return format_ct_value(float(value))
    if key == SPECIFIC_FEATURES:
        items = split_items(value) if isinstance(value, str) else [strip_text(str(v)) for v in value]
        items = [i for i in items if i]
        return ",".join(items) + "," if items else ""
    text = strip_text(str(value))
    if key == CAVITY or not text:
        return text
    return text + ","


def _ordered(attrs: Mapping[str, str]) -> dict[str, str]:
    """Known keys in the original order, unknown keys after them in their own order."""
    known = [k for k in ATTRIBUTE_ORDER if k in attrs]
    return {**{k: attrs[k] for k in known}, **{k: v for k, v in attrs.items() if k not in ATTRIBUTE_ORDER}}


def _vec3(value: Any, what: str) -> Vec3:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ConfigError(f"{what} must be three integers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer():
            raise ConfigError(f"{what} must be three integers, got {value!r}")
        out.append(int(v))
    return (out[0], out[1], out[2])


def new_report(organ_id: int, values: Mapping[str, Any], sizes: Sequence[Sequence[int]]) -> LesionReport:
    """A report built from typed values (writers use this), in the original key order, location = organ id."""
    report = LesionReport(organ_id=int(organ_id), attributes={LOCATION: str(int(organ_id))})
    report = report.with_values(**{k: v for k, v in values.items() if v is not None})
    report = replace(report, bbox_sizes=[_vec3(s, "bbox size") for s in sizes])
    if sizes and SIZE not in values:
        report = report.with_values(size=report.bbox_sizes[0])
    return report


def reports_from_type_json(data: Any, *, source: str = "<type.json>") -> list[LesionReport]:
    """All organ entries of a parsed ``type.json`` (one report per organ key, file order)."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: a type.json must be a JSON object of organ id -> entry, got {type(data).__name__}")
    if not data:
        raise InputError(f"{source}: the type.json holds no organ entry")
    return [LesionReport.from_entry(key, entry, source=source) for key, entry in data.items()]


def reports_to_type_json(reports: Sequence[LesionReport]) -> dict[str, list[Any]]:
    """The ``type.json`` dict of several reports; two reports for one organ are an error (merge their boxes)."""
    out: dict[str, list[Any]] = {}
    for report in reports:
        key = str(report.organ_id)
        if key in out:
            raise ConfigError(f"two reports for organ {key}; a type.json holds one entry per organ with all its boxes")
        out[key] = report.to_entry()
    return out


def load_reports(path: str | os.PathLike) -> list[LesionReport]:
    """Read a ``type.json``/``report.json``; a missing, non-JSON or malformed file is an InputError naming it."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"report file {p} does not exist")
    try:
        data = json.loads(read_text_bounded(p, what="report file", error=InputError))
    except json.JSONDecodeError as err:
        raise InputError(f"report file {p} is not valid JSON: {err}") from None
    return reports_from_type_json(data, source=str(p))


def save_reports(reports: LesionReport | Sequence[LesionReport], path: str | os.PathLike) -> Path:
    """Write reports as one ``type.json`` atomically (a reader never sees a half-written file)."""
    items = [reports] if isinstance(reports, LesionReport) else list(reports)
    return atomic_write_json(path, reports_to_type_json(items), indent=4)
