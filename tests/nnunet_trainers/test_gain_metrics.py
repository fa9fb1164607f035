"""Gain benchmark metrics (per case and per lesion) and the lesion-label resolution, on known geometries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ld_augment.errors import InputError
from nnunet_trainers.gain import labels as gl
from nnunet_trainers.gain import metrics as gm


def _blobs(shape, centres, r=2, label=2, vol=None):
    vol = np.zeros(shape, np.uint8) if vol is None else vol
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    for c in centres:
        vol[((grid - np.array(c)[:, None, None, None]) ** 2).sum(0) <= r * r] = label
    return vol


def _by(rows):
    out = {}
    for lesion, metric, value in rows:
        out[(lesion, metric)] = value
    return out


def test_detection_matching_scores_and_fp():
    shape = (30, 30, 30)
    ref = _blobs(shape, [(5, 5, 5), (15, 15, 15), (25, 25, 25)])
    pred = _blobs(shape, [(6, 5, 5), (25, 24, 25), (5, 25, 5)])           # 2 hits, 1 false positive
    prob = np.zeros(shape, np.float32)
    prob[pred == 2] = 0.9
    prob[5, 25, 5] = 0.6
    prob[6, 5, 5] = 0.95
    rows = _by(gm.case_rows(pred, ref, (1, 1, 1), [2], {"lesion": [2]}, prob))
    assert [rows[(f"r{k}", "detected")] for k in (1, 2, 3)] == [1.0, 0.0, 1.0]
    assert rows[("", "fp_lesions")] == 1 and rows[("", "n_pred_lesions")] == 3
    assert rows[("", "precision")] == pytest.approx(2 / 3)
    assert rows[("r1", "detect_score")] == pytest.approx(0.95) and rows[("r2", "detect_score")] == 0.0
    fp = [k for k in ("p1", "p2", "p3") if rows[(k, "tp")] == 0.0]
    assert len(fp) == 1 and rows[(fp[0], "score")] == pytest.approx(0.9)
    assert rows[("r2", "lesion_dice")] == 0.0 and 0.5 < rows[("r1", "lesion_dice")] < 1.0
    d = rows[("r1", "diameter_mm")]
    assert d == pytest.approx(np.cbrt(6 * (ref[:10, :10, :10] == 2).sum() / np.pi))
    assert (rows[("", "patient_ref")], rows[("", "patient_pred")]) == (1.0, 1.0)


def test_empty_cases_and_lesion_free_prediction():
    z = np.zeros((10, 10, 10), np.uint8)
    rows = _by(gm.case_rows(z, z, (1, 1, 1), [2], {"lesion": [2]}))
    assert math.isnan(rows[("", "dice_lesion")]) and math.isnan(rows[("", "hd95_lesion")])
    assert rows[("", "patient_ref")] == 0.0 and rows[("", "patient_pred")] == 0.0
    assert math.isnan(rows[("", "precision")])


def test_hd95_and_nsd_on_shifted_cubes():
    a = np.zeros((40, 40, 40), bool)
    b = np.zeros_like(a)
    a[10:20, 10:20, 10:20] = True
    b[13:23, 10:20, 10:20] = True                      # shifted 3 voxels along x, spacing 2 mm -> 6 mm
    assert gm.hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert gm.hd95(a, a, (1, 1, 1)) == 0.0 and gm.nsd(a, a, (1, 1, 1)) == 1.0
    assert 0 < gm.nsd(a, b, (2.0, 1.0, 1.0), tolerance_mm=2.0) < 1


def test_multi_label_lesion_target_counts_one_lesion():
    ref = _blobs((20, 20, 20), [(10, 10, 10)], r=4, label=2)
    ref = _blobs((20, 20, 20), [(10, 10, 13)], r=2, label=3, vol=ref)      # a cyst touching the tumour
    rows = gm.case_rows(ref, ref, (1, 1, 1), [2, 3], {"kidney": [1, 2, 3], "masses": [2, 3], "tumor": [2]})
    metrics = [m for lesion, m, _ in rows if lesion == ""]
    assert len(metrics) == len(set(metrics))                              # one value per metric and case
    rows = _by(rows)
    assert rows[("", "n_ref_lesions")] == 1 and rows[("", "dice_lesion")] == 1.0 and rows[("", "dice_tumor")] == 1.0
    assert ("", "dice_masses") not in rows and rows[("", "dice_kidney")] == 1.0


def test_size_bins():
    assert [gm.size_bin(x) for x in (3, 10, 15, 25)] == ["<10mm", "10-20mm", "10-20mm", ">20mm"]
    assert gm.size_bin_names() == ["<10mm", "10-20mm", ">20mm"]


def test_lesion_probability_label_and_region_based():
    probs = np.stack([np.full((2, 2, 2), v) for v in (0.1, 0.2, 0.3, 0.4)])
    assert gm.lesion_probability(probs, [2, 3], None)[0, 0, 0] == pytest.approx(0.7)
    regions = [(1, 2, 3), (2, 3), (2,)]
    assert gm.lesion_probability(probs[:3], [2, 3], regions)[0, 0, 0] == pytest.approx(0.2)
    assert gm.lesion_probability(probs[:3], [3], regions) is None


KITS = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}


def test_lesion_label_by_name_region_or_values(tmp_path):
    f = tmp_path / "dataset.json"
    assert gl.resolve_lesion({"background": 0, "liver": 1, "cancer": 2}, None, f) == gl.LesionTarget("cancer", (2,))
    assert gl.resolve_lesion(KITS, "masses", f) == gl.LesionTarget("masses", (2, 3))
    assert gl.resolve_lesion(KITS, "[2, 3]", f) == gl.LesionTarget("masses", (2, 3))
    assert gl.resolve_lesion(KITS, "3", f) == gl.LesionTarget("lesion", (3,))
    with pytest.raises(InputError, match=r"dataset.json: labels \['masses', 'tumor'\] all name a lesion.*masses=\[2, 3\]"):
        gl.resolve_lesion(KITS, None, f)
    with pytest.raises(InputError, match="values \\[7\\] are not"):
        gl.resolve_lesion(KITS, "2,7", f)
    with pytest.raises(InputError, match="neither a label name"):
        gl.resolve_lesion(KITS, "cysts", f)
    with pytest.raises(InputError, match="no label name says lesion"):
        gl.resolve_lesion({"background": 0, "liver": 1}, None, f)


def test_label_files_with_undeclared_values_are_refused(tmp_path):
    import nibabel as nib

    good, bad = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    nib.save(nib.Nifti1Image(_blobs((8, 8, 8), [(4, 4, 4)], r=1), np.eye(4)), str(good))
    nib.save(nib.Nifti1Image(_blobs((8, 8, 8), [(4, 4, 4)], r=1, label=5), np.eye(4)), str(bad))
    labels = {"background": 0, "liver": 1, "cancer": 2}
    target = gl.LesionTarget("cancer", (2,))
    assert gl.check_label_files([good], labels, tmp_path / "dataset.json", target) == 1
    with pytest.raises(InputError, match=r"b.nii.gz: label values \[5\] are not declared in .*dataset.json"):
        gl.check_label_files([good, bad], labels, tmp_path / "dataset.json", target)
