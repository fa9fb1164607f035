"""measure_adherence on hand-built volumes whose answers are known exactly."""

from __future__ import annotations

import json

import numpy as np

from ld_augment.engines.adherence import measure_adherence


def _scene():
    shape = (40, 40, 40)
    organ = np.zeros(shape, bool)
    organ[5:35, 5:35, 5:35] = True
    lesion = np.zeros(shape, bool)
    lesion[15:25, 14:26, 16:24] = True  # 10 x 12 x 8 voxels
    before = np.where(organ, 50.0, -100.0).astype(np.float32)
    return before, organ, lesion


def test_contrast_ct_value_size_and_fraction(make_report) -> None:
    before, organ, lesion = _scene()
    after = before.copy()
    after[lesion] = 20.0
    report = make_report(ct_value=25.0, size=(10, 10, 8))
    adh = measure_adherence(before, after, lesion, organ, report, (1.0, 1.0, 2.0))
    assert adh["organ_hu_before"] == 50.0 and adh["lesion_hu_after"] == 20.0
    assert adh["measured_contrast_hu"] == -30.0 and adh["contrast_ok"] is True
    assert adh["ct_value_error_hu"] == -5.0
    assert adh["measured_size_vox"] == [10, 12, 8] and adh["measured_size_mm"] == [10.0, 12.0, 16.0]
    assert adh["size_ratio"] == [1.0, 1.2, 1.0]
    assert adh["fraction_inside_organ"] == 1.0
    assert adh["volume_ml"] == 10 * 12 * 8 * 2 / 1000
    json.dumps(adh)  # stored in synthesis.json


def test_wrong_sign_fraction_outside_and_rim(make_report) -> None:
    before, organ, _ = _scene()
    lesion = np.zeros_like(organ)
    lesion[0:10, 10:20, 10:20] = True  # half outside the organ (x < 5)
    after = before.copy()
    after[lesion] = 80.0
    adh = measure_adherence(before, after, lesion, organ, make_report(density="hypodense lesion"), (1.0, 1.0, 1.0))
    assert adh["contrast_ok"] is False and adh["fraction_inside_organ"] == 0.5

    ring = np.zeros_like(organ)
    ring[10:30, 10:30, 10:30] = True
    core = np.zeros_like(organ)
    core[12:28, 12:28, 12:28] = True  # rim = the two outer layers (depth <= 2 mm)
    after = before.copy()
    after[ring] = 90.0
    after[core] = 10.0
    adh = measure_adherence(before, after, ring, organ, make_report(density="ring enhancement"), (1.0, 1.0, 1.0))
    assert adh["rim_hu"] == 90.0 and adh["core_hu"] == 10.0 and adh["rim_core_contrast_hu"] == 80.0
    assert adh["contrast_ok"] is None


def test_empty_mask(make_report) -> None:
    before, organ, lesion = _scene()
    adh = measure_adherence(before, before, np.zeros_like(lesion), organ, make_report(), (1.0, 1.0, 1.0))
    assert adh["lesion_voxels"] == 0
