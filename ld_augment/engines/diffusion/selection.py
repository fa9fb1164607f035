"""Turning LMNet's soft output into lesions, and a case's boxes into LMNet calls: the original's rules and ours.

The original inference (``InferMaskDiffusion.log_images``, reproduced exactly by the tests from
``../shared/reference/lmnet_selection``) does, per case:

* boxes of <= 50 voxels are skipped; the largest ``max_mask_num`` = 3 are drawn, largest first; when every
  box has <= 50 voxels the largest is drawn all the same (:func:`plan_boxes`);
* the window is the fixed trained crop centred on the box; a box longer than the crop is cut to it and the
  count to match is the box's voxels inside the window;
* a report with several organ keys gives each box the key whose organ overlaps the box most
  (:func:`choose_organ_key`); that organ is the target-organ channel and the text's "lesion location";
* per box: thresholds 0.9, 0.8, ..., 0.3 on the unconstrained soft mask, the largest face-connected component
  at each, the one whose voxel count is closest to the box's own voxel count (:func:`pick_threshold`);
* accepted when it has > 400 voxels (> 50 for stones) and touches no earlier lesion, else one retry; on the
  last try a small but non-overlapping result is kept (:func:`accepts`);
* the final label: the target organ(s) 1, the lesions 2 (:func:`compose_label`).

Our own rule ("constrained"), kept for uses where it is better: the count to match is the inscribed
ellipsoid's (a box drawn around a lesion is larger than the lesion), the search runs on the part of the soft
mask that the report's cavity rule allows and that no earlier lesion occupies (no exophytic spill into
neighbours), and a failure is an error instead of a silently missing lesion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ld_augment.errors import ConfigError

#: np.arange(0.9, 0.2, -0.1) as the original computes it (7 values, highest first; ties keep the first).
THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.arange(0.9, 0.2, -0.1))
MAX_LESIONS = 3  # the original's max_mask_num
MIN_BOX_VOXELS = 50  # boxes of this many voxels or fewer are not drawn
ACCEPT_VOXELS = 400  # a drawn lesion needs more voxels than this ...
ACCEPT_VOXELS_STONE = 50  # ... or than this for stones


@dataclass(frozen=True)
class SelectionRule:
    """How a soft mask becomes a lesion. ``target``: "box" (the box's voxel count, the original) or
    "ellipsoid" (pi/6 of it); ``constrain``: search only where the cavity rule allows and nothing is drawn yet;
    ``keep_last``: keep a small non-overlapping result on the last try (else the lesion fails)."""

    name: str
    target: str
    constrain: bool
    keep_last: bool

    def to_dict(self) -> dict:
        return asdict(self)


SELECTIONS: Mapping[str, SelectionRule] = {
    "released": SelectionRule("released", target="box", constrain=False, keep_last=True),
    "constrained": SelectionRule("constrained", target="ellipsoid", constrain=True, keep_last=False),
}


def selection_rule(name: str) -> SelectionRule:
    if name not in SELECTIONS:
        raise ConfigError(f"unknown mask selection {name!r}; valid: {', '.join(SELECTIONS)}")
    return SELECTIONS[name]


def largest_component(binary: np.ndarray) -> np.ndarray:
    """The largest 6-connected (face) component; the first in scan order on ties; empty stays empty."""
    labels, count = ndimage.label(binary)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def pick_threshold(soft: np.ndarray, reference: float, allowed: np.ndarray | None = None,
                   thresholds: Sequence[float] = THRESHOLDS) -> tuple[np.ndarray, float]:
    """Largest component of ``soft > t`` (within ``allowed``) for the ``t`` whose count is closest to ``reference``."""
    best, best_t, best_gap = np.zeros(soft.shape, bool), float(thresholds[0]), math.inf
    for t in thresholds:
        candidate = soft > t
        if allowed is not None:
            candidate &= allowed
        candidate = largest_component(candidate)
        gap = abs(int(candidate.sum()) - reference)
        if gap < best_gap:
            best, best_t, best_gap = candidate, float(t), gap
    return best, best_t


def reference_count(rule: SelectionRule, box_voxels: int) -> float:
    """The voxel count the threshold search aims for."""
    return float(box_voxels) if rule.target == "box" else math.pi / 6.0 * float(box_voxels)


def accepts(count: int, overlaps: bool, floor: int, *, last: bool, keep_last: bool) -> bool:
    """The original's acceptance: more than ``floor`` voxels and no overlap; on the last try any
    non-overlapping result when ``keep_last``."""
    if overlaps:
        return False
    return count > floor or (last and keep_last)


def plan_boxes(box_voxels: Sequence[int], *, max_lesions: int | None = MAX_LESIONS,
               min_voxels: int = MIN_BOX_VOXELS, fallback_largest: bool = False) -> list[int]:
    """Indices of the boxes to draw: more than ``min_voxels`` voxels, largest first (stable), at most ``max_lesions``.

    fallback_largest: when no box is large enough, the largest one alone (the original's inference does
    this rather than draw nothing; reference/training/edge_cases case05).
    """
    order = sorted((i for i, v in enumerate(box_voxels) if int(v) > min_voxels), key=lambda i: -int(box_voxels[i]))
    if not order and fallback_largest and len(box_voxels):
        order = [int(np.argmax([int(v) for v in box_voxels]))]
    return order if max_lesions is None else order[: int(max_lesions)]


def choose_organ_key(seg: np.ndarray, box: tuple[slice, ...], keys: Sequence[int]) -> int:
    """The report key (v1 organ id) whose organ overlaps the box most; the first key on ties."""
    if not keys:
        raise ConfigError("a report with no organ key cannot be drawn")
    region = np.asarray(seg[box])
    overlaps = [int(np.count_nonzero(region == int(k))) for k in keys]
    return int(keys[int(np.argmax(overlaps))])


def compose_label(organs: np.ndarray, lesions: np.ndarray, *, organ_value: int = 1, lesion_value: int = 2,
                  dtype: type = np.uint8) -> np.ndarray:
    """The final label: target organ(s) ``organ_value``, lesions ``lesion_value`` on top, else 0."""
    label = np.zeros(organs.shape, dtype=dtype)
    label[np.asarray(organs, bool)] = organ_value
    label[np.asarray(lesions, bool)] = lesion_value
    return label
