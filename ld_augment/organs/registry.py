"""TotalSegmentator class maps (v1: 104 classes, v2 "total": 117), organ names, hollow/solid sets.

Pure data and lookups (numpy only, no torch): the CLI takes its choices from here and every stage resolves
organ names through `normalize_organ_name`, so "Left Kidney", "kidney left" and "kidney_left" are one organ.
Canonical names are TotalSegmentator's own spelling (what its `roi_subset` accepts), e.g. "kidney_left",
"urinary_bladder", "vertebrae_L5". Conversion between v1 and v2 goes by name, never by id.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

import numpy as np

from ld_augment.errors import ConfigError
from ld_augment.resources import resource_path

VERSIONS = ("v1", "v2")
_MAPPING_FILES = {"v1": "totalseg_v1_label_mapping.txt", "v2": "totalseg_v2_label_mapping.txt"}

HOLLOW_ORGANS = frozenset({"urinary_bladder", "stomach", "colon", "esophagus", "gallbladder"})
_LUNG_LOBES = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
               "lung_middle_lobe_right", "lung_lower_lobe_right")
# Parenchymal organs: lesions sit in (or protrude from) tissue rather than a lumen or wall.
SOLID_ORGANS = frozenset({
    "liver", "spleen", "pancreas", "kidney_left", "kidney_right", "kidney", "adrenal_gland_left",
    "adrenal_gland_right", "adrenal_gland", "thyroid_gland", "prostate", "lung", *_LUNG_LOBES,
})

# Cavity values of the original LesionDiffusion (its placement rules key on them).
CAVITY_LUMEN = "within the lumen of a hollow organ"
CAVITY_WALL = "wall thickening"
CAVITY_PARENCHYMA = "within the parenchymal organ"
CAVITY_PROTRUDING = "protruding from the parenchymal organ"
HOLLOW_CAVITY_VALUES = (CAVITY_LUMEN, CAVITY_WALL)
SOLID_CAVITY_VALUES = (CAVITY_PARENCHYMA, CAVITY_PROTRUDING)
CAVITY_VALUES = HOLLOW_CAVITY_VALUES + SOLID_CAVITY_VALUES

# Names that stand for several classes (all that exist in the requested version).
GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "kidney": ("kidney_left", "kidney_right"),
    "lung": _LUNG_LOBES,
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "adrenal_gland": ("adrenal_gland_left", "adrenal_gland_right"),
    "heart": ("heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right",
              "heart_ventricle_right"),  # v2 has one "heart" class, which takes precedence there
    "iliac_artery": ("iliac_artery_left", "iliac_artery_right"),
    "iliac_vena": ("iliac_vena_left", "iliac_vena_right"),
})

# Everyday names a user or an LLM writes (keys already in normalized form, see _key()).
_SYNONYMS = {
    "bladder": "urinary_bladder", "urinary_bladder": "urinary_bladder", "gall_bladder": "gallbladder",
    "oesophagus": "esophagus", "large_intestine": "colon", "large_bowel": "colon",
    "small_intestine": "small_bowel", "kidneys": "kidney", "lungs": "lung", "adrenal": "adrenal_gland",
    "adrenal_glands": "adrenal_gland", "suprarenal_gland": "adrenal_gland", "thyroid": "thyroid_gland",
    "ivc": "inferior_vena_cava", "common_iliac_artery": "iliac_artery", "common_iliac_vein": "iliac_vena",
    "portal_vein": "portal_vein_and_splenic_vein", "hepar": "liver",
    "pancreatic": "pancreas", "hepatic": "liver", "renal": "kidney", "splenic": "spleen", "gastric": "stomach",
}
_SIDES = ("left", "right")


def _key(name: str) -> str:
    """Lower-case, words joined by '_', a leading side moved to the end ("Left Kidney" -> "kidney_left")."""
    words = [w for w in re.split(r"[\s_\-,/]+", str(name).strip().lower()) if w]
    if len(words) > 1 and words[0] in _SIDES:
        words = words[1:] + words[:1]
    return "_".join(words)


@lru_cache(maxsize=None)
def _parse(version: str) -> tuple[dict[int, str], dict[str, str]]:
    """(id -> canonical name, synonym key -> canonical name or group) from the packaged mapping file."""
    ids: dict[int, str] = {}
    synonyms: dict[str, str] = {}
    ambiguous: set[str] = set()
    for line in resource_path("vocab", _MAPPING_FILES[version]).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        canonical = parts[1].strip().replace(" ", "_")  # v1 spells a few with spaces ("humerus left")
        ids[int(parts[0])] = canonical
        syn = _key(parts[2]) if len(parts) > 2 else ""
        if syn and synonyms.get(syn, canonical) != canonical:
            ambiguous.add(syn)  # "suprarenal gland" names both sides: left to GROUPS / _SYNONYMS
        elif syn:
            synonyms[syn] = canonical
    return ids, {k: v for k, v in synonyms.items() if k not in ambiguous}


def _check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ConfigError(f"unknown TotalSegmentator label version {version!r}; choose one of {list(VERSIONS)}")
    return version


def class_map(version: str) -> Mapping[int, str]:
    """id -> canonical organ name for TotalSegmentator `version` ("v1" or "v2")."""
    return MappingProxyType(_parse(_check_version(version))[0])


@lru_cache(maxsize=None)
def _lookup() -> dict[str, str]:
    """normalized key -> canonical name, over both versions, groups and synonyms."""
    table: dict[str, str] = {}
    for version in VERSIONS:
        for name in _parse(version)[0].values():
            table[_key(name)] = name
    for group in GROUPS:
        table.setdefault(_key(group), group)
    for syn, name in _SYNONYMS.items():
        table.setdefault(syn, name)
    for version in VERSIONS:
        for syn, name in _parse(version)[1].items():
            table.setdefault(syn, name)
    return table


ORGAN_CHOICES: tuple[str, ...] = tuple(sorted(
    {name for v in VERSIONS for name in _parse(v)[0].values()} | set(GROUPS), key=str.lower
))


def normalize_organ_name(name: str) -> str:
    """Canonical organ (or group) name for `name`; unknown names raise ConfigError with close matches."""
    key = _key(name)
    table = _lookup()
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(sorted({table[c] for c in close}))}?" if close else ""
    raise ConfigError(
        f"unknown organ {name!r}{hint} (valid: TotalSegmentator class names such as liver, kidney_left, "
        f"urinary_bladder, or groups {', '.join(GROUPS)})"
    )


def organ_label_ids(name: str, version: str) -> tuple[int, ...]:
    """TotalSegmentator ids of an organ in `version`; groups ("kidney", "lung") give several ids."""
    canonical = normalize_organ_name(name)
    by_name = {n: i for i, n in class_map(version).items()}
    if canonical in by_name:
        return (by_name[canonical],)
    members = tuple(sorted(by_name[m] for m in GROUPS.get(canonical, ()) if m in by_name))
    if members:
        return members
    raise ConfigError(f"organ {canonical!r} has no class in TotalSegmentator {version}")


def organ_name(label_id: int, version: str) -> str:
    """Canonical name of TotalSegmentator class `label_id` in `version`."""
    names = class_map(version)
    if int(label_id) not in names:
        raise ConfigError(f"label {label_id} is not a TotalSegmentator {version} class (valid 1..{max(names)})")
    return names[int(label_id)]


def is_hollow(name: str) -> bool:
    """Whether lesions of this organ follow the hollow-organ (lumen / wall) rules."""
    return normalize_organ_name(name) in HOLLOW_ORGANS


def cavity_values(organ: str) -> tuple[str, ...]:
    """Cavity values valid for `organ`: lumen/wall for hollow organs, parenchymal ones for all others."""
    return HOLLOW_CAVITY_VALUES if is_hollow(organ) else SOLID_CAVITY_VALUES


def default_cavity(organ: str) -> str:
    """Cavity used when a report gives none.

    Hollow organs: wall thickening, the usual presentation of bladder, gastric, colonic and oesophageal
    cancers. Everything else is treated as parenchymal (as the original does): lesion fully inside.
    """
    return CAVITY_WALL if is_hollow(organ) else CAVITY_PARENCHYMA


@lru_cache(maxsize=None)
def _conversion_table(src_version: str, dst_version: str) -> np.ndarray:
    src, dst = class_map(src_version), class_map(dst_version)
    dst_ids = {n: i for i, n in dst.items()}
    table = np.zeros(max(src) + 1, dtype=np.int64)
    for i, name in src.items():
        if name in dst_ids:
            table[i] = dst_ids[name]
        elif name in GROUPS.get("heart", ()) and "heart" in dst_ids:  # v1 heart parts -> v2 heart
            table[i] = dst_ids["heart"]
    table.setflags(write=False)
    return table


def convert_labels(seg_array: np.ndarray, src_version: str, dst_version: str) -> np.ndarray:
    """Relabel a TotalSegmentator map from one version's ids to another's, by class name.

    Classes without a counterpart (v1 "face", v2 "kidney_cyst_left", ...) become 0; v1's five heart parts
    merge into v2's "heart". Returns a new array (uint8, both versions fit); the input is not modified.
    """
    table = _conversion_table(_check_version(src_version), _check_version(dst_version))
    seg = np.asarray(seg_array)
    if seg.size and (seg.min() < 0 or seg.max() >= len(table)):
        raise ConfigError(f"labels outside TotalSegmentator {src_version} range 0..{len(table) - 1}")
    return table[seg.astype(np.int64, copy=False)].astype(np.uint8)
