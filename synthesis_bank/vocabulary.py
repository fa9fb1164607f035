"""Names a recipe may use (organs, attribute names and values, engines), checked by ld_augment's registries.

The recipe must reject exactly what the pipeline would reject, hours later, so it asks the same registries
(`ld_augment.organs`, `ld_augment.reports`, `ld_augment.engines.registry`) when the recipe is loaded.
"""

from __future__ import annotations

from ld_augment.engines.registry import MASK_ENGINES, TEXTURE_ENGINES
from ld_augment.errors import ConfigError
from ld_augment.organs.registry import normalize_organ_name
from ld_augment.reports import writers
from ld_augment.reports.model import CT_VALUE, SIZE
from ld_augment.reports.vocabulary import canonical_attribute, load_vocabulary


def normalize_organ(name: str) -> str:
    """Canonical organ name, or ConfigError with close matches."""
    try:
        return normalize_organ_name(name)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"unknown organ {name!r}: {exc}") from None


def normalize_attribute_name(name: str) -> str:
    """The report attribute key for a recipe attribute name; ConfigError listing the settable attributes."""
    return canonical_attribute(name)


def normalize_attribute_value(attribute: str, value: str) -> str:
    """The canonical text of `value` for `attribute` (any synonym, case-insensitive); ConfigError otherwise.

    Uses the reports stage's own override parsers, so the recipe accepts exactly what the report writer will.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"attribute {attribute!r}: expected a non-empty string value, got {value!r}")
    if attribute == SIZE:
        writers.parse_size_override(value)
        return value
    if attribute == CT_VALUE:
        writers.parse_ct_override(value)
        return value
    return ",".join(load_vocabulary().normalize_items(attribute, value))


def lesion_type_choices() -> list[str] | None:
    """None: lesion types are free text (the offline writer matches them by keywords, with generic priors)."""
    return None


def engine_names(kind: str) -> tuple[str, ...]:
    """Registered mask/texture engine names (the `ld_augment.engines.registry` tables)."""
    return tuple(sorted(MASK_ENGINES if kind == "mask" else TEXTURE_ENGINES))
