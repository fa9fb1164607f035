"""Names a recipe may use (organs, attribute values, engines), taken from ld_augment's own registries.

Why an adapter: the recipe must reject the same names the pipeline would reject, so it asks the pipeline's
registries (`ld_augment.organs.normalize_organ_name`, `ld_augment.engines`) when they exist. While a stage is not
built yet it falls back to the packaged resource files, which are the registries' own source data.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from ld_augment.errors import ConfigError

FALLBACK_ENGINES = ("procedural", "diffusion")


@lru_cache(maxsize=1)
def _totalseg_names() -> tuple[str, ...]:
    names: list[str] = []
    for fname in ("totalseg_v1_label_mapping.txt", "totalseg_v2_label_mapping.txt"):
        text = resources.files("ld_augment.resources").joinpath("vocab", fname).read_text(encoding="utf-8")
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].strip() and parts[1].strip() not in names:
                names.append(parts[1].strip())
    return tuple(names)


def normalize_organ(name: str) -> str:
    """Canonical organ name, or ConfigError listing the valid names."""
    try:
        from ld_augment.organs.registry import normalize_organ_name
    except ImportError:
        normalize_organ_name = None
    if normalize_organ_name is not None:
        try:
            return normalize_organ_name(name)
        except (ConfigError, KeyError, ValueError) as exc:
            raise ConfigError(f"unknown organ {name!r}: {exc}") from None
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key in _totalseg_names():
        return key
    raise ConfigError(f"unknown organ {name!r}; choices: {list(_totalseg_names())}")


@lru_cache(maxsize=1)
def _raw_vocabulary() -> dict[str, list[list[str]]]:
    text = resources.files("ld_augment.resources").joinpath("vocab", "attribute_vocabulary.json").read_text("utf-8")
    return json.loads(text)


def normalize_attribute_name(name: str) -> str:
    """The report attribute key for a recipe attribute name; ConfigError listing the settable attributes."""
    try:
        from ld_augment.reports.vocabulary import canonical_attribute
    except ImportError:
        canonical_attribute = None
    if canonical_attribute is not None:
        return canonical_attribute(name)
    if name in _raw_vocabulary():
        return name
    raise ConfigError(f"unknown attribute {name!r}; valid attributes: {sorted(_raw_vocabulary())}")


def normalize_attribute_value(attribute: str, value: str) -> str:
    """The canonical text of `value` for `attribute` (any synonym, case-insensitive); ConfigError otherwise.

    Uses the reports stage's own override parser, so the recipe accepts exactly what the report writer will."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"attribute {attribute!r}: expected a non-empty string value, got {value!r}")
    try:
        from ld_augment.reports import writers
    except ImportError:
        writers = None
    if writers is not None:
        from ld_augment.reports.model import CT_VALUE, SIZE

        if attribute == SIZE:
            writers.parse_size_override(value)
            return value
        if attribute == CT_VALUE:
            writers.parse_ct_override(value)
            return value
        from ld_augment.reports.vocabulary import load_vocabulary

        return ",".join(load_vocabulary().normalize_items(attribute, value))
    wanted = value.strip().lower()
    for group in _raw_vocabulary().get(attribute, []):
        if any(wanted == synonym.strip().lower() for synonym in group):
            return group[0]
    allowed = [group[0] for group in _raw_vocabulary().get(attribute, [])]
    raise ConfigError(f"unknown value {value!r} for attribute {attribute!r}; allowed: {allowed}")


def lesion_type_choices() -> list[str] | None:
    """Valid lesion types if the reports stage publishes them (`LESION_TYPES`), else None (any name)."""
    try:
        from ld_augment.reports import LESION_TYPES  # type: ignore[attr-defined]
    except ImportError:  # lesion types are free text (the offline writer matches keywords)
        return None
    return list(LESION_TYPES)


def engine_names(kind: str) -> tuple[str, ...]:
    """Registered mask/texture engine names (the `ld_augment.engines.registry` tables)."""
    try:
        from ld_augment.engines.registry import MASK_ENGINES, TEXTURE_ENGINES
    except ImportError:
        return FALLBACK_ENGINES
    return tuple(sorted(MASK_ENGINES if kind == "mask" else TEXTURE_ENGINES))
