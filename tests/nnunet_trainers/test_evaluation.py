"""Lesion-wise detection counts (connected components, overlap match) and the nnU-Net Dice wrapper."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnunet_trainers.evaluation import LesionCounts, detection_on_folder, evaluate_predictions, lesion_detection
from nnunet_fixtures import LABELS, save


def _blobs(shape, centres, r=2, label=2):
    vol = np.zeros(shape, np.uint8)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    for c in centres:
        vol[((grid - np.array(c)[:, None, None, None]) ** 2).sum(0) <= r * r] = label
    return vol


def test_counts_hits_misses_and_false_positives():
    ref = _blobs((30, 30, 30), [(5, 5, 5), (15, 15, 15), (25, 25, 25)])
    pred = _blobs((30, 30, 30), [(6, 5, 5), (25, 24, 25), (5, 25, 5), (25, 5, 25)])   # 2 hits, 2 false
    c = lesion_detection(pred, ref, 2)
    assert (c.n_ref, c.detected, c.n_pred, c.true_pred) == (3, 2, 4, 2)
    assert c.sensitivity == pytest.approx(2 / 3) and c.precision == pytest.approx(0.5)
    assert c.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_other_labels_are_not_lesions_and_overlap_threshold():
    ref = _blobs((20, 20, 20), [(10, 10, 10)], r=3)
    pred = np.ones((20, 20, 20), np.uint8)            # organ everywhere: no predicted lesion
    assert lesion_detection(pred, ref, 2) == LesionCounts(1, 0, 0, 0)
    pred = _blobs((20, 20, 20), [(10, 10, 13)], r=3)  # touches the lesion at its edge only
    assert lesion_detection(pred, ref, 2).detected == 1
    assert lesion_detection(pred, ref, 2, min_overlap=0.5).detected == 0


def test_empty_cases_give_nan_not_zero():
    c = lesion_detection(np.zeros((5, 5, 5)), np.zeros((5, 5, 5)), 2)
    assert math.isnan(c.sensitivity) and math.isnan(c.precision)
    assert (c + LesionCounts(2, 1, 1, 1)).sensitivity == 0.5


def test_folder_and_nnunet_dice(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref = _blobs((16, 16, 16), [(4, 4, 4), (11, 11, 11)]) + 0
    save(ref.astype(np.uint8), ref_dir / "a.nii.gz")
    save(ref.astype(np.uint8), pred_dir / "a.nii.gz")
    save(ref.astype(np.uint8), ref_dir / "b.nii.gz")
    save(np.zeros_like(ref, np.uint8), pred_dir / "b.nii.gz")
    counts, per_case = detection_on_folder(pred_dir, ref_dir, [2])
    assert (counts.n_ref, counts.detected, counts.n_pred) == (4, 2, 2) and per_case["b.nii.gz"]["detected"] == 0
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                       "numTraining": 2, "file_ending": ".nii.gz"}))
    (tmp_path / "plans.json").write_text(json.dumps({"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans",
                                                     "image_reader_writer": "SimpleITKIO", "configurations": {}}))
    m = evaluate_predictions(pred_dir, ref_dir, tmp_path / "dataset.json", tmp_path / "plans.json", [2])
    assert m["dice_lesion"] == pytest.approx(0.5)      # case a perfect, case b empty prediction
    assert m["lesion_sensitivity"] == pytest.approx(0.5) and m["lesion_precision"] == pytest.approx(1.0)
    assert (pred_dir / "summary.json").is_file() and (pred_dir / "lesion_detection.json").is_file()


def test_detection_by_lesion_size():
    from nnunet_trainers.evaluation import detection_by_size

    # at 2 mm voxels: radius 1 voxel -> ~2.9 mm diameter, radius 4 -> ~16 mm, radius 7 -> ~28 mm
    ref = _blobs((40, 40, 40), [(5, 5, 5)], r=1) | _blobs((40, 40, 40), [(15, 15, 15)], r=4) \
        | _blobs((40, 40, 40), [(28, 28, 28)], r=7)
    pred = _blobs((40, 40, 40), [(15, 15, 15)], r=2)                   # finds only the middle one
    bins = detection_by_size(pred, ref, 2, (2.0, 2.0, 2.0))
    assert bins == {"<10mm": [1, 0], "10-20mm": [1, 1], ">20mm": [1, 0]}


def test_surface_dice():
    from nnunet_trainers.evaluation import surface_dice

    ref = _blobs((30, 30, 30), [(15, 15, 15)], r=6) > 0
    assert surface_dice(ref, ref, (1, 1, 1), 1.0) == pytest.approx(1.0)
    shifted = np.roll(ref, 3, axis=0)
    assert surface_dice(shifted, ref, (1, 1, 1), 1.0) < surface_dice(shifted, ref, (1, 1, 1), 4.0) == pytest.approx(1.0)
    assert surface_dice(np.zeros_like(ref), ref, (1, 1, 1)) == 0.0
    assert math.isnan(surface_dice(np.zeros_like(ref), np.zeros_like(ref), (1, 1, 1)))
