"""Organ masks from a segmentation in TotalSegmentator v1 or v2 numbering, or a binary organ mask.

Users bring segmentations from either TotalSegmentator generation (the original LesionDiffusion used v1
ids; TotalSegmentator 2.x writes v2). The ids collide (7 is aorta in v1, pancreas in v2), so the version
must be known; `detect_label_version` guesses it when the caller does not say.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ld_augment.errors import ConfigError, InputError
from ld_augment.organs.registry import VERSIONS, class_map, normalize_organ_name, organ_label_ids

LABEL_VERSIONS = (*VERSIONS, "binary")


def _array(seg: Any) -> np.ndarray:
    return np.asanyarray(seg.dataobj) if hasattr(seg, "dataobj") else np.asarray(seg)


def _orphan_sides(labels: set[int], version: str) -> int:
    """How many present classes lack their left/right partner when read as `version`.

    Real segmentations are nearly symmetric (both kidneys, both rib cages, both psoas muscles); reading
    them with the wrong numbering scatters one-sided classes, e.g. v1 ribs become v2 vessels and muscles.
    """
    names = class_map(version)
    present = {names[i] for i in labels if i in names}
    orphans = 0
    for name in present:
        for a, b in (("_left", "_right"), ("_right", "_left")):
            if a in name:
                partner = name.replace(a, b)
                if partner in names.values() and partner not in present:
                    orphans += 1
    return orphans


def detect_label_version(seg: Any, *, override: str | None = None) -> str:
    """"v1", "v2" or "binary" for a segmentation array/image; `override` (if given) is validated and returned.

    Rules, in order: labels within {0, 1} -> binary; any label above 104 (v1's largest id) -> v2; otherwise
    the numbering under which fewer classes lack their left/right partner; ties -> v2 (TotalSegmentator
    2.x output). For organs 1-6 (spleen, kidneys, gallbladder, liver, stomach) both numberings agree.
    """
    if override is not None:
        if override not in LABEL_VERSIONS:
            raise ConfigError(f"unknown label version {override!r}; choose one of {list(LABEL_VERSIONS)}")
        return override
    labels = {int(v) for v in np.unique(_array(seg))} - {0}
    if labels <= {1}:
        return "binary"
    if max(labels) > max(class_map("v1")):
        return "v2"
    return "v1" if _orphan_sides(labels, "v1") < _orphan_sides(labels, "v2") else "v2"


def organ_mask(seg: Any, organ: str, *, version: str = "auto", name: str = "segmentation") -> np.ndarray:
    """Boolean mask of `organ` (a name or group) in `seg`; InputError naming `name` when it is absent.

    `version`: "v1", "v2", "binary" (any voxel > 0 is the organ) or "auto" (detect_label_version).
    """
    data = _array(seg)
    canonical = normalize_organ_name(organ)
    resolved = detect_label_version(data) if version == "auto" else detect_label_version(data, override=version)
    if resolved == "binary":
        mask = data > 0
        if not mask.any():
            raise InputError(f"{name}: the binary organ mask for {canonical!r} is empty")
        return mask
    ids = organ_label_ids(canonical, resolved)
    mask = np.isin(data, ids)
    if not mask.any():
        present = sorted(int(v) for v in np.unique(data) if v != 0)
        shown = ", ".join(map(str, present[:30])) + (" ..." if len(present) > 30 else "")
        raise InputError(
            f"{name}: organ {canonical!r} (TotalSegmentator {resolved} label {', '.join(map(str, ids))}) "
            f"is absent; labels present: [{shown}]"
        )
    return mask
