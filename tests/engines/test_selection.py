"""The original's case-level LMNet rules as functions: box plan (cap of 3, > 50 voxels, largest first), organ key
of a multi-organ report, acceptance and retries, final label."""

from __future__ import annotations

import numpy as np
import pytest

from ld_augment.engines.diffusion.selection import (
    THRESHOLDS, accepts, choose_organ_key, compose_label, pick_threshold, plan_boxes, reference_count,
    selection_rule,
)
from ld_augment.errors import ConfigError


def test_thresholds_are_the_originals_arange() -> None:
    assert THRESHOLDS == tuple(np.arange(0.9, 0.2, -0.1).tolist())
    assert [round(t, 1) for t in THRESHOLDS] == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]


def test_plan_caps_at_three_largest_first_and_skips_boxes_of_50_voxels_or_fewer() -> None:
    assert plan_boxes([600, 10080, 144, 2880]) == [1, 3, 0]  # the 144-voxel box is the fourth: cut
    assert plan_boxes([4320, 32]) == [0]  # 32 <= 50: skipped
    assert plan_boxes([50, 51]) == [1]
    assert plan_boxes([100, 300, 300, 200, 500], max_lesions=None) == [4, 1, 2, 3, 0]  # stable on ties
    assert plan_boxes([100] * 5, max_lesions=2) == [0, 1]


def test_multi_organ_report_takes_the_key_overlapping_the_box_most() -> None:
    seg = np.zeros((10, 10, 10), np.int64)
    seg[:5] = 2  # right kidney
    seg[5:] = 3  # left kidney
    assert choose_organ_key(seg, (slice(3, 9), slice(0, 4), slice(0, 4)), [2, 3]) == 3
    assert choose_organ_key(seg, (slice(1, 6), slice(0, 4), slice(0, 4)), [2, 3]) == 2
    assert choose_organ_key(seg, (slice(3, 7), slice(0, 4), slice(0, 4)), [3, 2]) == 3  # tie: first key
    with pytest.raises(ConfigError):
        choose_organ_key(seg, (slice(0, 1),) * 3, [])


def test_acceptance_and_last_try() -> None:
    assert accepts(401, False, 400, last=False, keep_last=True)
    assert not accepts(400, False, 400, last=False, keep_last=True)  # strictly more than 400
    assert accepts(12, False, 400, last=True, keep_last=True)  # small but kept on the last try
    assert not accepts(5000, True, 400, last=True, keep_last=True)  # overlap is never accepted
    assert not accepts(12, False, 400, last=True, keep_last=False)


def test_threshold_search_aims_at_the_box_count_unconstrained() -> None:
    grid = np.ogrid[tuple(slice(0, 31) for _ in range(3))]
    soft = np.exp(-sum((g - 15.0) ** 2 for g in grid) / (2 * 8.0**2)).astype(np.float32)
    released, constrained = selection_rule("released"), selection_rule("constrained")
    box = 16**3
    a, ta = pick_threshold(soft, reference_count(released, box))
    b, tb = pick_threshold(soft, reference_count(constrained, box))
    assert a.sum() > b.sum() and ta < tb  # the box's count picks a lower threshold: a larger lesion
    with pytest.raises(ConfigError, match="released"):
        selection_rule("paper")


def test_final_label_organs_one_lesions_two() -> None:
    organs = np.zeros((4, 4, 4), bool)
    organs[:2] = True
    lesions = np.zeros_like(organs)
    lesions[1:3, 0, 0] = True
    label = compose_label(organs, lesions)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2}
    assert label[1, 0, 0] == 2 and label[2, 0, 0] == 2 and label[0, 1, 1] == 1 and label[3, 1, 1] == 0
