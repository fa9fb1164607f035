"""Adapter to the organ registry for what reports need: one v1 id per organ, its text name, cavity rules.

Reports key organs by TotalSegmentator v1 id (the original's vocabulary), and the networks read the organ
as the original's text name ("urinary bladder", with spaces: ``totalseg_v1_classes.json``), while the
registry's canonical names are identifiers ("urinary_bladder"). Name normalization and the hollow/solid
rules come from ``ld_augment.organs.registry`` so there is one definition of each.
"""

from __future__ import annotations

from functools import lru_cache

from ld_augment.errors import ConfigError
from ld_augment.organs import registry
from ld_augment.resources import load_json_resource

CAVITY_VALUES = registry.CAVITY_VALUES


@lru_cache(maxsize=1)
def v1_text_names() -> dict[int, str]:
    """TotalSegmentator v1 class id -> the organ name the original's text conditioning uses."""
    return {int(k): str(v) for k, v in load_json_resource("vocab", "totalseg_v1_classes.json").items()}


def organ_name(organ_id: int) -> str:
    """Text name of a v1 class id ("liver" for 5, "urinary bladder" for 104); unknown ids are a ConfigError."""
    names = v1_text_names()
    try:
        return names[int(organ_id)]
    except (KeyError, ValueError):
        raise ConfigError(f"organ id {organ_id!r} is not a TotalSegmentator v1 class (1..{len(names)})") from None


def resolve_organ(organ: str | int) -> tuple[int, str]:
    """(v1 id, text name) of one organ given by name ("Liver", "kidney_left", "left kidney") or v1 id.

    A group name ("kidney") is refused: a report describes lesions of one organ class.
    """
    text = str(organ).strip()
    if text.isdigit():
        return int(text), organ_name(int(text))
    ids = registry.organ_label_ids(text, "v1")
    if len(ids) != 1:
        members = ", ".join(registry.organ_name(i, "v1") for i in ids)
        raise ConfigError(f"organ {organ!r} names several classes ({members}); a report needs one of them")
    return ids[0], organ_name(ids[0])


def _registry_name(organ: str | int) -> str:
    return registry.organ_name(resolve_organ(organ)[0], "v1")


def is_hollow(organ: str | int) -> bool:
    """Whether lesions of this organ use the hollow-organ cavity rules (lumen / wall)."""
    return registry.is_hollow(_registry_name(organ))


def cavities_for(organ: str | int) -> tuple[str, ...]:
    """The cavity values allowed for an organ: lumen/wall for hollow organs, parenchymal ones otherwise."""
    return registry.cavity_values(_registry_name(organ))


def default_cavity(organ: str | int) -> str:
    """The cavity assumed when a report gives none (the registry's, so placement agrees)."""
    return registry.default_cavity(_registry_name(organ))
