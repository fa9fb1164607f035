"""The closed attribute vocabulary: validation and normalization of report values.

The networks were trained on a small set of phrases; a value outside it is text the encoder never saw, so
it is rejected with the allowed values rather than passed on. Each attribute of the packaged vocabulary is a
list of synonym groups whose first entry is the canonical value. Matching ignores case, repeated whitespace,
spaces around commas and trailing commas. "shape" and "specific features" hold comma-separated lists in the
real reports ("round-like,protrusion into the lumen,"); since a few vocabulary values themselves contain a
comma ("irregular,wall thickening"), items are matched greedily, longest run of comma parts first.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Mapping

from ld_augment.errors import ConfigError
from ld_augment.reports._organs import CAVITY_VALUES
from ld_augment.reports.model import (
    CAVITY, CT_VALUE, DENSITY, LOCATION, SHAPE, SIZE, SPECIFIC_FEATURES, LesionReport, render_value, strip_text,
)
from ld_augment.resources import load_json_resource

MULTI_VALUED = frozenset({SHAPE, SPECIFIC_FEATURES})
# Attributes whose text is free-form by design (numbers, the organ id): never vocabulary-checked.
FREE_ATTRIBUTES = frozenset({SIZE, CT_VALUE, LOCATION})


def _match_key(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip().lower())
    text = re.sub(r"\s*,\s*", ",", text)
    return text.strip(",").strip()


class Vocabulary:
    """Attribute -> synonym groups (canonical value first, trailing commas removed)."""

    def __init__(self, groups: Mapping[str, Any]) -> None:
        self.groups: dict[str, tuple[tuple[str, ...], ...]] = {
            attribute: tuple(tuple(strip_text(s) for s in group) for group in entries)
            for attribute, entries in groups.items()
        }
        self._tables: dict[str, dict[str, str]] = {}
        for attribute, entries in self.groups.items():
            table = self._tables[attribute] = {}
            for group in entries:
                for synonym in group:
                    table.setdefault(_match_key(synonym), group[0])

    @property
    def attributes(self) -> list[str]:
        return list(self.groups)

    def allowed(self, attribute: str) -> list[str]:
        """Canonical values of an attribute (what error messages and the LLM schema list)."""
        return [group[0] for group in self._groups(attribute)]

    def _groups(self, attribute: str) -> tuple[tuple[str, ...], ...]:
        try:
            return self.groups[attribute]
        except KeyError:
            raise ConfigError(
                f"attribute {attribute!r} has no vocabulary; vocabulary attributes: {', '.join(self.groups)}"
            ) from None

    def _lookup(self, attribute: str) -> dict[str, str]:
        self._groups(attribute)  # raises for an attribute without vocabulary
        return self._tables[attribute]

    def canonical(self, attribute: str, value: str) -> str:
        """The canonical form of one value; unknown values are a ConfigError listing the allowed ones."""
        table = self._lookup(attribute)
        key = _match_key(value)
        hit = table.get(key)
        if hit is None and attribute == DENSITY:
            hit = table.get(key + " lesion")  # "hypodense" -> "hypodense lesion": what users type
        if hit is None:
            raise self._unknown(attribute, value)
        return hit

    def normalize_items(self, attribute: str, value: str | list[str] | tuple[str, ...]) -> list[str]:
        """Canonical items of a (possibly multi-valued) value; duplicates dropped, order kept.

        Single-valued attributes yield at most one item. An empty value yields no item.
        """
        if isinstance(value, (list, tuple)):
            items: list[str] = []
            for v in value:
                items.extend(self.normalize_items(attribute, v))
            return list(dict.fromkeys(items))
        if not _match_key(value):
            return []
        if attribute not in MULTI_VALUED:
            return [self.canonical(attribute, value)]
        table = self._lookup(attribute)
        parts = [p for p in (_match_key(p) for p in value.split(",")) if p]
        items, i = [], 0
        while i < len(parts):
            for j in range(len(parts), i, -1):  # longest run first
                hit = table.get(",".join(parts[i:j]))
                if hit is not None:
                    items.append(hit)
                    i = j
                    break
            else:
                raise self._unknown(attribute, parts[i], whole=value)
        return list(dict.fromkeys(items))

    def normalize_text(self, attribute: str, value: Any) -> str:
        """The attribute text of the normalized value, in the original's format (e.g. "homogeneous,")."""
        if attribute in FREE_ATTRIBUTES:
            return render_value(attribute, value) if not isinstance(value, str) else value
        items = self.normalize_items(attribute, value)
        if attribute == SPECIFIC_FEATURES:
            return render_value(attribute, items)
        return render_value(attribute, ",".join(items))

    def _unknown(self, attribute: str, value: str, whole: str | None = None) -> ConfigError:
        within = f" (in {whole!r})" if whole is not None and _match_key(whole) != _match_key(value) else ""
        many = " (a comma-separated list of)" if attribute in MULTI_VALUED else ""
        return ConfigError(
            f"unknown value {value!r}{within} for attribute {attribute!r}; allowed{many}: "
            + "; ".join(repr(v) for v in self.allowed(attribute))
        )


@lru_cache(maxsize=1)
def load_vocabulary() -> Vocabulary:
    """The packaged vocabulary plus the cavity values (one synonym group each)."""
    groups = dict(load_json_resource("vocab", "attribute_vocabulary.json"))
    groups[CAVITY] = [[value] for value in CAVITY_VALUES]
    return Vocabulary(groups)


_ATTRIBUTE_ALIASES = {
    "enhancement": "enhancement status", "contrast": "enhancement status",
    "variations": "density variations", "homogeneity": "density variations",
    "ct": CT_VALUE, "ct value": CT_VALUE, "hu": CT_VALUE, "mean hu": CT_VALUE,
    "surface": "surface characteristics", "margin": "surface characteristics",
    "relationship": "relationship with adjacent organs", "relation": "relationship with adjacent organs",
    "features": SPECIFIC_FEATURES,
}
SETTABLE_ATTRIBUTES = (
    "enhancement status", SHAPE, SIZE, DENSITY, "density variations", CT_VALUE, "surface characteristics",
    "relationship with adjacent organs", SPECIFIC_FEATURES, CAVITY,
)


def canonical_attribute(name: str) -> str:
    """The report key of a user-given attribute name ("density_variations", "ct-value", "relationship")."""
    key = re.sub(r"\s+", " ", name.strip().lower().replace("_", " ").replace("-", " "))
    key = _ATTRIBUTE_ALIASES.get(key, key)
    if key == CT_VALUE.lower():
        key = CT_VALUE
    if key not in SETTABLE_ATTRIBUTES:
        raise ConfigError(f"unknown attribute {name!r}; settable attributes: {', '.join(SETTABLE_ATTRIBUTES)}")
    return key


def normalize_report(report: LesionReport, vocabulary: Vocabulary | None = None) -> LesionReport:
    """A copy whose vocabulary attributes hold canonical values; free attributes and unknown keys are kept.

    The shape text (first element) follows the normalized shape, as the original writes them identically.
    """
    vocab = vocabulary or load_vocabulary()
    attrs = dict(report.attributes)
    for key, value in report.attributes.items():
        if key in vocab.groups:
            attrs[key] = vocab.normalize_text(key, value)
    shape_text = attrs.get(SHAPE, report.shape_text) if SHAPE in report.attributes else report.shape_text
    return LesionReport(organ_id=report.organ_id, shape_text=shape_text, attributes=attrs,
                        bbox_centers=list(report.bbox_centers), bbox_sizes=list(report.bbox_sizes),
                        note=report.note, extra=list(report.extra))
