"""Training cases and crops: layout discovery, readable errors, and the network inputs of ARCHITECTURE.md 3."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import ConfigError, InputError
from ld_augment.organs.registry import class_map
from ld_augment.training.crops import CropDataset, bbox_mask, crop_start, extract, lesion_components
from ld_augment.training.data import find_cases, load_case, normalize_hu

LIVER_V1 = 5


def test_find_cases_lists_case_folders_and_skips_strays(cases_dir: Path) -> None:
    (cases_dir / "runs").mkdir()
    cases = find_cases(cases_dir, need=("label", "seg", "report", "ct"))
    assert [c.case_id for c in cases] == ["case_0", "case_1"]
    assert all(c.seg.name == "totalseg.nii.gz" and c.seg_version == "auto" for c in cases)


def test_empty_and_incomplete_folders_are_input_errors(tmp_path: Path, make_case) -> None:
    with pytest.raises(InputError, match="no training cases found.*label.nii.gz"):
        find_cases(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        find_cases(tmp_path / "missing")
    case = make_case(tmp_path / "c", with_ct=False)
    (case / "report.json").unlink()
    with pytest.raises(InputError, match=r"c lacks report.json"):
        find_cases(tmp_path)


def test_case_without_lesion_names_the_file(tmp_path: Path, make_case) -> None:
    make_case(tmp_path / "healthy", lesion=False)
    with pytest.raises(InputError, match=r"healthy/label.nii.gz.*no lesion voxels"):
        load_case(find_cases(tmp_path)[0])


def test_labels_beyond_two_are_rejected(tmp_path: Path, make_case, case_affine) -> None:
    case = make_case(tmp_path / "c")
    label = np.asarray(nib.load(case / "label.nii.gz").dataobj).copy()
    label[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(label, case_affine), str(case / "label.nii.gz"))
    with pytest.raises(InputError, match=r"labels must be 0 .*\[3\]"):
        load_case(find_cases(tmp_path)[0])


def test_v2_segmentation_is_converted_to_v1(tmp_path: Path, make_case, case_affine) -> None:
    case = make_case(tmp_path / "c")
    seg = np.asarray(nib.load(case / "totalseg.nii.gz").dataobj).copy()
    v2 = {name: i for i, name in class_map("v2").items()}
    seg[:2, :2, :2] = v2["urinary_bladder"]  # 21 in v2, 104 in v1
    seg[-2:, -2:, -2:] = v2["brain"]  # plus an id above 104 below, so the map reads as v2
    seg[-2:, :2, -2:] = max(v2.values())
    nib.save(nib.Nifti1Image(seg, case_affine), str(case / "totalseg.nii.gz"))
    loaded = load_case(find_cases(tmp_path)[0])
    v1 = {name: i for i, name in class_map("v1").items()}
    assert loaded.seg_v1[0, 0, 0] == v1["urinary_bladder"] and loaded.seg_v1[-1, -1, -1] == v1["brain"]
    assert loaded.seg_v1[17, 22, 20] == seg[17, 22, 20] == LIVER_V1  # same id in both versions
    assert loaded.seg_v1.max() <= 104


def test_shared_layout_name_totalseg_v1_is_read_as_v1(tmp_path: Path, make_case) -> None:
    make_case(tmp_path / "c", seg_name="totalseg_v1.nii.gz", with_ct=False)
    (case,) = find_cases(tmp_path)
    assert case.seg_version == "v1"
    assert load_case(case).report.organ_id == LIVER_V1


def test_normalize_hu_is_the_piecewise_linear_map() -> None:
    hu = np.array([-2000, -1000, -600, -200, 0, 200, 600, 1000, 3000], float)
    np.testing.assert_allclose(normalize_hu(hu), [0, 0, 0.1, 0.2, 0.5, 0.8, 0.9, 1, 1], atol=1e-6)


def test_crop_start_keeps_box_inside_and_pads_small_volumes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = crop_start((10, 5, 30), (14, 9, 33), (40, 40, 40), (8, 16, 16), rng)
        assert all(0 <= a <= lo and a + c >= hi and a + c <= 40
                   for a, lo, hi, c in zip(s, (10, 5, 30), (14, 9, 33), (8, 16, 16)))
    assert crop_start((1, 1, 1), (3, 3, 3), (4, 40, 40), (8, 16, 16), rng)[0] == -2  # centred, padded
    arr = np.arange(4 * 4 * 4).reshape(4, 4, 4)
    out = extract(arr, (-2, 0, 0), (8, 4, 4), -1)
    assert (out[:2] == -1).all() and (out[2:6] == arr).all() and (out[6:] == -1).all()


def test_bbox_mask_covers_every_component_touching_the_crop() -> None:
    lesion = np.zeros((20, 20, 20), bool)
    lesion[2:5, 2:4, 2:6] = True
    lesion[12:15, 12:18, 12:13] = True
    comps = lesion_components(lesion)
    assert [c.voxels for c in comps] == [24, 18]  # largest first
    box = bbox_mask(comps, (0, 0, 0), (20, 20, 20))
    assert box.sum() == 3 * 2 * 4 + 3 * 6 * 1 and (box[lesion] == 1).all()
    assert bbox_mask(comps, (0, 0, 0), (10, 10, 10)).sum() == 3 * 2 * 4  # the far box is outside


def test_lmnet_item_channels_scaling_and_box(cases_dir: Path) -> None:
    ds = CropDataset(find_cases(cases_dir), "lmnet", (8, 16, 16), seed=3)
    item = ds[5]
    x0, cond = item["x0"].numpy(), item["cond"].numpy()
    assert x0.shape == (1, 8, 16, 16) and cond.shape == (3, 8, 16, 16)
    loaded, _ = ds.case(ds.cases.index(next(c for c in ds.cases if c.case_id == item["case_id"])))
    start = item["start"].tolist()
    seg = extract(loaded.seg_v1, start, (8, 16, 16), 0)
    np.testing.assert_allclose(cond[0], seg / 104.0)                        # channel 1: organ map / 104
    values = np.unique(cond[0])
    assert all(np.isclose(v, [0, 1 / 104, 5 / 104], atol=1e-7).any() for v in values) and values.max() <= 1
    assert np.isclose(values, 5 / 104).any()  # the liver (v1 id 5) is in the crop
    np.testing.assert_array_equal(cond[1], seg == LIVER_V1)  # target organ: organ map == the report's key
    assert x0.sum() > 0 and (cond[2][x0[0] > 0] == 1).all()                  # box covers the lesion
    assert cond[2].sum() < cond[2].size and set(np.unique(cond[2]).tolist()) == {0.0, 1.0}
    assert (cond[1][x0[0] > 0] == 1).all()                                   # lesion inside the organ
    # our recipe: the report's own cavity (the liver's default here), with the trailing comma the networks saw
    assert "liver" in item["texts"] and "within the parenchymal organ," in item["texts"]
    released = CropDataset(find_cases(cases_dir), "lmnet", (8, 16, 16), items="released", spacing=None)
    assert "protruding from the parenchymal organ," in released[5]["texts"]  # the original's text for real data
    assert not any("HU" in t for t in item["texts"])                         # LMNet drops the CT value


def test_items_are_a_function_of_seed_and_index(cases_dir: Path) -> None:
    a = CropDataset(find_cases(cases_dir), "lmnet", (8, 16, 16), seed=1)
    b = CropDataset(find_cases(cases_dir), "lmnet", (8, 16, 16), seed=1, cache_size=1)
    for i in (7, 0, 7, 3):
        assert a[i]["start"].tolist() == b[i]["start"].tolist()
        assert np.array_equal(a[i]["cond"], b[i]["cond"])
    c = CropDataset(find_cases(cases_dir), "lmnet", (8, 16, 16), seed=2)
    assert any(a[i]["start"].tolist() != c[i]["start"].tolist() for i in range(6))


def test_linet_item_is_normalised_ct_and_lesion(cases_dir: Path) -> None:
    ds = CropDataset(find_cases(cases_dir, need=("label", "seg", "report", "ct")), "linet", (16, 16, 16))
    item = ds[0]
    image, lesion = item["image"].numpy(), item["lesion"].numpy()
    assert image.shape == lesion.shape == (1, 16, 16, 16)
    assert 0 <= image.min() and image.max() <= 1 and lesion.sum() > 0
    np.testing.assert_allclose(image[lesion > 0], normalize_hu(np.array([20.0]))[0], atol=1e-6)  # lesion HU
    assert not any("pixel" in t for t in item["texts"])  # LINet drops the size


def test_unknown_crop_kind_is_a_config_error(cases_dir: Path) -> None:
    with pytest.raises(ConfigError, match="valid"):
        CropDataset(find_cases(cases_dir), "mask", (8, 8, 8))


def test_real_annotations_crop(real_cases_dir: Path) -> None:
    cases = find_cases(real_cases_dir)
    assert {c.case_id for c in cases} == {"bladder_cancer", "liver_cancer"}
    ds = CropDataset(cases, "lmnet", (16, 32, 32), seed=0)
    organs = json.loads((real_cases_dir / "liver_cancer" / "report.json").read_text())
    assert list(organs) == ["5"]
    for i in range(2):
        item = ds[i]
        x0, cond = item["x0"].numpy()[0], item["cond"].numpy()
        assert x0.sum() > 0 and (cond[2][x0 > 0] == 1).all() and (cond[1][x0 > 0] == 1).all()
        organ_id = 104 if item["case_id"] == "bladder_cancer" else 5
        assert np.isclose(cond[0][cond[1] > 0], organ_id / 104).mean() > 0.5


def test_released_vq_items_need_only_ct_and_label(cases_dir: Path) -> None:
    """The original's VQ config lists images and labels only: crops centred on the largest lesion, no organ map."""
    from ld_augment.training.released_items import largest_component, window_start

    for case in cases_dir.iterdir():
        (case / "report.json").unlink()
        (case / "totalseg.nii.gz").unlink()
    cases = find_cases(cases_dir, need=("ct", "label"))
    ds = CropDataset(cases, "vq", (16, 16, 16), items="released", spacing=None)
    item = ds[0]
    assert ds.case(0)[0].seg_v1 is None and ds.case(0)[0].report is None
    loaded = next(ds.case(i)[0] for i in range(2) if ds.case(i)[0].case_id == item["case_id"])
    start = window_start(largest_component(loaded.lesion), loaded.shape, (16, 16, 16))
    assert item["start"].tolist() == list(start) and item["image"].shape == (1, 16, 16, 16)
