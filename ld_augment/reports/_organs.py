"""The little organ knowledge reports need: v1 id <-> name, hollow or solid, and the cavity values.

Reports key organs by TotalSegmentator v1 id (the original's vocabulary). The full registry (v1/v2 maps,
synonyms, segmentation) belongs to ``ld_augment.organs``; this module reads only the packaged v1 class map
so that the report stage does not depend on that registry's details.
"""

from __future__ import annotations

from functools import lru_cache

from ld_augment.errors import ConfigError
from ld_augment.resources import load_json_resource

# Hollow organs of the original (placement inside the lumen or on the wall) and their cavity phrases.
HOLLOW_ORGANS = frozenset({"urinary bladder", "stomach", "colon", "esophagus", "gallbladder"})
HOLLOW_CAVITIES = ("within the lumen of a hollow organ", "wall thickening")
SOLID_CAVITIES = ("within the parenchymal organ", "protruding from the parenchymal organ")
CAVITY_VALUES = HOLLOW_CAVITIES + SOLID_CAVITIES

_ALIASES = {"bladder": "urinary bladder", "gall bladder": "gallbladder", "oesophagus": "esophagus"}


@lru_cache(maxsize=1)
def v1_classes() -> dict[int, str]:
    """TotalSegmentator v1 class id -> organ name (104 classes)."""
    return {int(k): str(v) for k, v in load_json_resource("vocab", "totalseg_v1_classes.json").items()}


def _key(name: str) -> str:
    return " ".join(sorted(name.lower().replace("_", " ").replace("-", " ").split()))


@lru_cache(maxsize=1)
def _by_key() -> dict[str, int]:
    table = {_key(name): cid for cid, name in v1_classes().items()}
    for alias, name in _ALIASES.items():
        table[_key(alias)] = table[_key(name)]
    return table


def organ_name(organ_id: int) -> str:
    """Organ name of a v1 class id ("liver" for 5); unknown ids are a ConfigError."""
    try:
        return v1_classes()[int(organ_id)]
    except (KeyError, ValueError):
        raise ConfigError(f"organ id {organ_id!r} is not a TotalSegmentator v1 class (1..{len(v1_classes())})") from None


def resolve_organ(organ: str | int) -> tuple[int, str]:
    """(v1 id, canonical name) of an organ given by name ("Liver", "kidney_left", "left kidney") or v1 id."""
    text = str(organ).strip()
    if text.isdigit():
        return int(text), organ_name(int(text))
    cid = _by_key().get(_key(text))
    if cid is None:
        names = ", ".join(v1_classes().values())
        raise ConfigError(f"unknown organ {organ!r}; valid TotalSegmentator v1 organs: {names}")
    return cid, v1_classes()[cid]


def is_hollow(organ: str | int) -> bool:
    """Whether lesions of this organ use the hollow-organ cavity rules (lumen / wall)."""
    return resolve_organ(organ)[1] in HOLLOW_ORGANS


def cavities_for(organ: str | int) -> tuple[str, ...]:
    """The cavity values allowed for an organ: lumen/wall for hollow organs, parenchymal ones otherwise."""
    return HOLLOW_CAVITIES if is_hollow(organ) else SOLID_CAVITIES
