"""Loaders: labelled nnU-Net raw datasets (lesion label by name) and the LIDC nodule folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import InputError
from ld_augment.evaluation.datasets import label_roles, load_lidc, load_nnunet_raw


def test_nnunet_raw_rows_per_lesion_at_common_spacing(dataset_factory) -> None:
    root = dataset_factory("Dataset001_Real", n_cases=3, kind="ball")
    s = load_nnunet_raw(root, (2.0, 2.0, 2.0), organ_name="liver", lesion_type="metastasis")
    assert s.spacing == (2.0, 2.0, 2.0)
    assert 3 <= len(s.rows) <= 6 and len(s.positives) == len(s.rows)
    assert len(s.negatives) > 0 and s.negatives[0].shape == s.positives[0].shape
    assert {r["case"] for r in s.rows} == {"case_000", "case_001", "case_002"}
    for r in s.rows:
        assert r["organ"] == "liver" and r["lesion_type"] == "metastasis"
        assert 6.0 <= r["equivalent_diameter_mm"] <= 16.0  # balls of 4-7 mm radius, possibly clipped/merged
        assert r["contrast_hu"] < -25  # 10 HU lesions in a 50 HU organ
        assert r["inside_organ_fraction"] > 0.9


def test_lesion_label_chosen_by_name(dataset_factory) -> None:
    root = dataset_factory("Dataset002_Named", n_cases=1, lesion_name="mass")
    labels = json.loads((root / "dataset.json").read_text())["labels"]
    assert label_roles(labels, None, None, "x") == ([2], [1])
    assert label_roles(labels, ["MASS"], ["liver"], "x") == ([2], [1])
    with pytest.raises(InputError, match="no label named"):
        label_roles(labels, ["tumour"], None, "x")
    with pytest.raises(InputError, match="lesion-label"):
        label_roles({"background": 0, "liver": 1, "blob": 2}, None, None, "x")


def test_not_a_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset.json"):
        load_nnunet_raw(tmp_path, (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="metadata.csv"):
        load_lidc(tmp_path, (1.0, 1.0, 1.0))


def _fake_lidc(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i, (hu, texture) in enumerate([(40, 5), (-550, 1), (30, 5)]):
        sp = np.array([0.7, 0.7, 1.25])
        shape = (40, 40, 12)
        g = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp)]
        xx, yy, zz = np.meshgrid(*g, indexing="ij")
        ball = np.sqrt(xx**2 + yy**2 + (zz * 0.8) ** 2) <= 6.0
        ct = np.where(ball, hu, -850) + rng.normal(0, 20, shape)
        affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])
        nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), str(root / "images" / f"LIDC-IDRI-000{i}_R_1.nii.gz"))
        nib.save(nib.Nifti1Image(ball.astype(np.uint8), affine), str(root / "masks" / f"LIDC-IDRI-000{i}_R_1.nii.gz"))
        rows.append({"patient_id": f"LIDC-IDRI-000{i}", "nodule_id": 1, "diameter_mm": 12.0, "Texture_value": texture,
                     "Margin_value": 5, "Spiculation_value": 1, "Sphericity_value": 4})
    rows.append({"patient_id": "LIDC-IDRI-0009", "nodule_id": 1, "diameter_mm": 5.0, "Texture_value": 5,
                 "Margin_value": 5, "Spiculation_value": 1, "Sphericity_value": 4})  # listed, no files: skipped
    with open(root / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_lidc_loader_keeps_ratings_and_measures_hu(tmp_path: Path) -> None:
    _fake_lidc(tmp_path / "lidc")
    s = load_lidc(tmp_path / "lidc", (1.0, 1.0, 1.0))
    assert [r["case"] for r in s.rows] == ["LIDC-IDRI-0000_R_1", "LIDC-IDRI-0001_R_1", "LIDC-IDRI-0002_R_1"]
    solid, ggo = s.rows[0], s.rows[1]
    assert solid["texture_class"] == "solid" and ggo["texture_class"] == "ground-glass"
    assert solid["rating_margin"] == 5 and 0.5 < solid["sphericity"] <= 1.0  # rating and feature kept apart
    assert solid["core_hu"] == pytest.approx(40, abs=25) and ggo["core_hu"] == pytest.approx(-550, abs=25)
    assert solid["parenchyma_hu"] == pytest.approx(-850, abs=25)
    assert np.isnan(solid["inside_organ_fraction"])


def test_real_lidc_sample(shared_data: Path) -> None:
    root = shared_data / "lesions" / "lidc_nodules"
    if not (root / "metadata.csv").is_file():
        pytest.skip(f"no LIDC nodules in {root}")
    s = load_lidc(root, (1.0, 1.0, 1.0), limit=12)
    assert len(s.rows) == 12
    diam = np.array([r["equivalent_diameter_mm"] for r in s.rows])
    reported = np.array([r["reported_diameter_mm"] for r in s.rows])
    assert np.median(np.abs(diam - reported) / reported) < 0.35  # our sizes agree with the table's
    assert all(r["parenchyma_hu"] < -600 for r in s.rows)  # the shell is aerated lung


def test_lidc_voi_gets_lung_beyond_its_end_slices() -> None:
    """The VOI ends at the nodule's last slice; lung (the VOI's own aerated HU) is put beyond both ends, the mask
    gets none there, and every original voxel keeps its world position."""
    from ld_augment.evaluation.datasets import lung_beyond_end_slices

    affine = np.array([[-0.7, 0, 0, 10.0], [0, -0.7, 0, 20.0], [0, 0, 2.5, -100.0], [0, 0, 0, 1]])
    ct = np.full((20, 20, 3), -820, np.int16)
    ct[5:15, 5:15, :] = 40
    mask = (ct > 0).astype(np.uint8)
    img, msk, known = lung_beyond_end_slices(nib.Nifti1Image(ct, affine), nib.Nifti1Image(mask, affine), (3.0,) * 3)
    pad = (img.shape[2] - 3) // 2
    assert pad >= 2 and img.shape[:2] == (20, 20)
    data = np.asarray(img.dataobj)
    assert np.all(data[:, :, :pad] == -820) and np.all(data[:, :, -pad:] == -820)
    assert np.array_equal(data[:, :, pad:pad + 3], ct)
    assert not np.asarray(msk.dataobj)[:, :, :pad].any() and np.asarray(known.dataobj)[:, :, pad:pad + 3].all()
    assert np.allclose(img.affine @ [0, 0, pad, 1], affine @ [0, 0, 0, 1])


def test_lidc_nodule_depth_at_a_coarser_grid(tmp_path: Path) -> None:
    """A nodule filling its VOI's slices is measured as deep as it is, not a voxel deeper (no edge carry-on)."""
    root = tmp_path / "lidc"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    ct = np.full((40, 40, 4), -850, np.int16)
    ct[12:28, 12:28, :] = 30
    nib.save(nib.Nifti1Image(ct, affine), str(root / "images" / "LIDC-IDRI-0001_R_1.nii.gz"))
    nib.save(nib.Nifti1Image((ct > 0).astype(np.uint8), affine), str(root / "masks" / "LIDC-IDRI-0001_R_1.nii.gz"))
    with open(root / "metadata.csv", "w", newline="") as fh:
        fh.write("patient_id,nodule_id,diameter_mm,Texture_value\nLIDC-IDRI-0001,1,10,5\n")
    row = load_lidc(root, (3.0, 3.0, 3.0)).rows[0]
    # 11.2 x 11.2 x 10 mm: at 3 mm, 4 x 4 x 3 voxels (before: 4 slices deep, 432 mm3 more)
    assert row["volume_mm3"] <= 4 * 4 * 3 * 27.0
    assert row["parenchyma_hu"] == pytest.approx(-850, abs=30)
