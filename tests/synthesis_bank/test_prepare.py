"""prepare_bank with nnU-Net's own preprocessor against a (hand-planned) target, in-process and single-worker."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ld_augment.errors import ConfigError, InputError
from synthesis_bank.nnunet_io import load_prepared_record, sha256_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nnunet_trainers"))
from nnunet_fixtures import make_bank, make_case, make_planned_target, save  # noqa: E402

pytest.importorskip("nnunetv2")
from synthesis_bank.prepare import add_prepare_parser, prepare_bank  # noqa: E402

SHAPE = (12, 12, 10)


@pytest.fixture()
def target(tmp_path, monkeypatch):
    name = make_planned_target(tmp_path)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    return tmp_path, name


def test_prepare_writes_target_format_and_record(target):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    root, name = target
    bank = make_bank(root / "bank", ["case_000", "case_001", "ext"], failed=1, shape=SHAPE)
    result = prepare_bank(bank, 501, num_processes=1)
    assert result.target_dataset == name and sorted(result.prepared) == ["ld_case_000_v0", "ld_case_001_v0",
                                                                         "ld_ext_v0"]
    folder = bank / "nnUNet_preprocessed" / name / "nnUNetPlans_3d_fullres"
    assert result.output_folder == folder
    cls = infer_dataset_class(str(folder))                          # only files nnU-Net expects in there
    data, seg, _, props = cls(str(folder)).load_case("ld_ext_v0")
    assert data.shape[0] == 1 and set(np.unique(seg[...])) <= {0, 1, 2} and "class_locations" in props
    assert abs(float(np.mean(data[...]))) < 5                         # CT-normalized like the target
    plans = json.loads((root / "nnUNet_preprocessed" / name / "nnUNetPlans.json").read_text())
    rec, doc = load_prepared_record(bank, name, configuration="3d_fullres", plans_identifier="nnUNetPlans")
    assert rec["plans_sha256"] == sha256_json(plans) and len(rec["manifest_sha256"]) == 64
    assert rec["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert {p["organ"]["rule"] for p in rec["label_mapping"]["pairs"]} == {"same name"}
    assert sorted(doc["data"]["nnUNetPlans_3d_fullres"]) == rec["cases"]
    assert rec["cases"] == ["ld_case_000_v0", "ld_case_001_v0", "ld_ext_v0"]
    assert not any(p.name.startswith(".staging") for p in folder.parent.iterdir())

    again = prepare_bank(bank, name, num_processes=1)                # finished cases are skipped ...
    assert again.prepared == [] and len(again.skipped) == 3
    time.sleep(0.01)
    img = bank / "imagesTr" / "ld_ext_v0_0000.nii.gz"
    os.utime(img, None)                                              # ... unless their input changed
    assert prepare_bank(bank, name, num_processes=1).prepared == ["ld_ext_v0"]


def test_bank_labels_must_be_the_bank_scheme(target):
    root, _ = target
    bank = make_bank(root / "bank", ["a"], labels={"background": 0, "cancer": 1, "lesion": 2}, shape=SHAPE)
    with pytest.raises(ConfigError, match=r"\['cancer', 'lesion'\] would all be the bank's lesion class"):
        prepare_bank(bank, 501, num_processes=1)
    # target-named classes are fine (liver is the organ), but a label file must hold only the scheme's values
    bank = make_bank(root / "bank2", ["a"], labels={"background": 0, "liver": 1, "lesion": 3}, shape=SHAPE)
    with pytest.raises(InputError, match=r"ld_a_v0.nii.gz: label value\(s\) \[2\] are not bank labels"):
        prepare_bank(bank, 501, num_processes=1)


def test_label_values_outside_target(target):
    root, _ = target
    bank = make_bank(root / "bank", ["a"], shape=SHAPE)
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:5, 2:5, 2:5] = 7
    save(lab, bank / "labelsTr" / "ld_a_v0.nii.gz")
    with pytest.raises(InputError, match=r"label values \[7\]"):
        prepare_bank(bank, 501, num_processes=1)


def test_target_errors(target, monkeypatch):
    root, name = target
    bank = make_bank(root / "bank", ["a"], shape=SHAPE)
    with pytest.raises(ConfigError, match="3d_fullres"):
        prepare_bank(bank, 501, configuration="2d", num_processes=1)
    with pytest.raises(ConfigError, match="nnUNetv2_plan_and_preprocess -d 501"):
        prepare_bank(bank, 501, plans_identifier="OtherPlans", num_processes=1)
    with pytest.raises(ConfigError, match="not found"):
        prepare_bank(bank, 999, num_processes=1)
    with pytest.raises(InputError, match="not a bank folder"):
        prepare_bank(root / "nnUNet_raw", 501, num_processes=1)
    (bank / "imagesTr" / "ld_a_v0_0000.nii.gz").unlink()
    with pytest.raises(InputError, match="lists case ld_a_v0 as ok"):
        prepare_bank(bank, 501, num_processes=1)
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(ConfigError, match="nnUNet_preprocessed is not set"):
        prepare_bank(bank, 501, num_processes=1)


def test_cli_mount():
    parser = argparse.ArgumentParser(prog="synthesis-bank")
    add_prepare_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["prepare", "--bank", "B", "--target", "3", "-c", "2d", "-np", "2"])
    assert (args.bank, args.target, args.configuration, args.num_processes, args.plans_identifier) == \
        ("B", "3", "2d", 2, "nnUNetPlans")
    args = parser.parse_args(["prepare", "--bank", "B", "--target", "3", "--labels", "organ=liver",
                              "renal cell carcinoma=tumor", "--allow-test-sources"])
    assert args.labels == ["organ=liver", "renal cell carcinoma=tumor"] and args.allow_test_sources
    assert callable(args.func)


def _seg(folder: Path, case_id: str) -> np.ndarray:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    return np.asarray(infer_dataset_class(str(folder))(str(folder)).load_case(case_id)[1][...])


def test_task03_like_target_gets_its_own_label_values(tmp_path, monkeypatch):
    """{background, liver, cancer} with cancer=1 (not the bank's 2): the prepared seg holds the target's values."""
    name = make_planned_target(tmp_path, 3, "Liver", labels={"background": 0, "cancer": 1, "liver": 2})
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    bank = make_bank(tmp_path / "bank", ["a"], shape=SHAPE, organ="liver", lesion_type="metastasis")
    source = np.asarray(__import__("nibabel").load(str(bank / "labelsTr" / "ld_a_v0.nii.gz")).dataobj).copy()
    result = prepare_bank(bank, 3, num_processes=1, progress=False)
    seg = _seg(result.output_folder, "ld_a_v0")
    assert set(np.unique(seg)) == {0, 1, 2}
    # organ (bank 1) -> liver 2, lesion (bank 2) -> cancer 1: voxel counts swap accordingly
    assert (seg == 2).sum() == (source == 1).sum() and (seg == 1).sum() == (source == 2).sum() > 0
    assert np.array_equal(np.asarray(__import__("nibabel").load(str(bank / "labelsTr" / "ld_a_v0.nii.gz")).dataobj),
                          source)                                              # the bank's own file untouched
    rec, _ = load_prepared_record(bank, name, configuration="3d_fullres", plans_identifier="nnUNetPlans")
    (pair,) = rec["label_mapping"]["pairs"]
    assert (pair["organ"]["target"], pair["lesion"]["target"]) == ("liver", "cancer")
    assert pair["lesion"]["rule"] == "malignant type -> the target's tumour label"
    # another mapping is another preparation of the same case
    assert prepare_bank(bank, 3, num_processes=1, progress=False).skipped == ["ld_a_v0"]
    # without its organ the case would teach "no liver here": refused, unless an organ map says where the liver is
    with pytest.raises(InputError, match=r"every bank case was refused .*'liver' \(liver\).*--organ-maps"):
        prepare_bank(bank, 3, num_processes=1, progress=False, labels=["organ=drop"])
    maps = tmp_path / "maps"
    organ_map = np.where(source > 0, 5, 0).astype(np.uint8)               # TotalSegmentator: liver = 5
    organ_map[0, 0, 0] = 1                                                 # and a voxel of spleen
    save(organ_map, maps / "a.nii.gz")                                    # named by the source id
    assert prepare_bank(bank, 3, num_processes=1, progress=False, labels=["organ=drop"],
                        organ_maps=maps).prepared == ["ld_a_v0"]
    seg = _seg(result.output_folder, "ld_a_v0")
    assert (seg == 2).sum() == (source == 1).sum() and (seg == 1).sum() == (source == 2).sum()
    rec, _ = load_prepared_record(bank, name, configuration="3d_fullres", plans_identifier="nnUNetPlans")
    assert rec["refused"] == {} and rec["cases"] == ["ld_a_v0"]


def test_target_classes_the_case_lacks_come_from_the_organ_map_or_refuse(tmp_path, monkeypatch):
    """KiTS-like `kidney` is both kidneys: a kidney_left bank case needs the right one from an organ map."""
    name = make_planned_target(tmp_path, 4, "KiTS", labels={"background": 0, "kidney": [1, 2, 3], "masses": [2, 3],
                                                             "tumor": 2})
    for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
        ds_file = tmp_path / sub / name / "dataset.json"
        ds_file.write_text(json.dumps(dict(json.loads(ds_file.read_text()), regions_class_order=[1, 3, 2])))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    shape = (24, 24, 20)
    bank = make_bank(tmp_path / "bank", ["a", "b"], shape=shape, organ="kidney_left",
                     lesion_type="renal cell carcinoma")
    nib = __import__("nibabel")
    label_a = np.asarray(nib.load(str(bank / "labelsTr" / "ld_a_v0.nii.gz")).dataobj)
    right = np.zeros(shape, bool)
    right[1:5, 1:5, 1:5] = True                                           # the other kidney, outside the bank label
    assert not (label_a[right] > 0).any()
    organ_map = np.where(label_a > 0, 3, 0).astype(np.uint8)              # TotalSegmentator: kidney_left = 3
    organ_map[right] = 2                                                   # kidney_right = 2
    maps = tmp_path / "maps"
    save(organ_map, maps / "a.nii.gz")                                    # case b has no organ map
    result = prepare_bank(bank, name, num_processes=1, progress=False, organ_maps=maps)   # RCC -> tumor by itself
    assert result.prepared == ["ld_a_v0"]
    rec, _ = load_prepared_record(bank, name, configuration="3d_fullres", plans_identifier="nnUNetPlans")
    assert rec["cases"] == ["ld_a_v0"] and list(rec["refused"]) == ["ld_b_v0"]
    assert "'kidney' (kidney)" in rec["refused"]["ld_b_v0"] and "kidney_left" in rec["refused"]["ld_b_v0"]
    seg = _seg(result.output_folder, "ld_a_v0")
    assert set(np.unique(seg)) - {-1} == {0, 1, 2}
    assert (seg == 1).sum() == (label_a == 1).sum() + right.sum() and (seg == 2).sum() == (label_a == 2).sum()


def test_replanning_reprepares_batch_size_does_not(target):
    root, name = target
    bank = make_bank(root / "bank", ["a", "b"], shape=SHAPE)
    folder = prepare_bank(bank, name, num_processes=1, progress=False).output_folder
    shape_before = _seg(folder, "ld_a_v0").shape
    plans_file = root / "nnUNet_preprocessed" / name / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["batch_size"] = 7                 # not a preprocessing setting
    plans_file.write_text(json.dumps(plans))
    assert len(prepare_bank(bank, name, num_processes=1, progress=False).skipped) == 2
    plans["configurations"]["3d_fullres"]["spacing"] = [4.0, 3.0, 3.0]      # re-planned with another spacing
    plans_file.write_text(json.dumps(plans))
    again = prepare_bank(bank, name, num_processes=1, progress=False)
    assert sorted(again.prepared) == ["ld_a_v0", "ld_b_v0"]
    shape_after = _seg(folder, "ld_a_v0").shape
    assert all(a < b for a, b in zip(shape_after[1:], shape_before[1:]))


def test_test_image_sources_are_refused_unless_allowed(target):
    root, name = target
    raw = root / "nnUNet_raw" / name
    bank = make_bank(root / "bank", ["case_000", "other"], shape=SHAPE)
    # the bank's source "other" is, by content, the target's test image test_007 (a differently named copy)
    test_img = raw / "imagesTs" / "test_007_0000.nii.gz"
    save(make_case(np.random.default_rng(9), SHAPE)[0], test_img)
    from ld_augment.io.nifti import sha256_file
    lines = [json.loads(x) for x in (bank / "manifest.jsonl").read_text().splitlines()]
    lines[1]["source_sha256"] = sha256_file(test_img)
    (bank / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(InputError, match=r"1 bank case\(s\) were made from .*test images.*ld_other_v0"):
        prepare_bank(bank, name, num_processes=1, progress=False)
    prepare_bank(bank, name, num_processes=1, progress=False, allow_test_sources=True)
    rec, doc = load_prepared_record(bank, name, configuration="3d_fullres", plans_identifier="nnUNetPlans")
    assert rec["test_sources_allowed"] == ["ld_other_v0"]
    assert doc["target_images"]["imagesTs"]["test_007"]["sha256"] == sha256_file(test_img)


def test_non_ct_target_is_refused(target):
    root, name = target
    for folder in ("nnUNet_preprocessed",):
        ds_file = root / folder / name / "dataset.json"
        ds = json.loads(ds_file.read_text())
        ds["channel_names"] = {"0": "T2"}
        ds_file.write_text(json.dumps(ds))
    bank = make_bank(root / "bank", ["a"], shape=SHAPE)
    with pytest.raises(InputError, match=r"channel_names \{'0': 'T2'\}.*one channel named CT"):
        prepare_bank(bank, name, num_processes=1, progress=False)


def test_resenc_plans_sharing_a_data_identifier_do_not_invalidate_each_other(target):
    root, name = target
    pre = root / "nnUNet_preprocessed" / name
    base = json.loads((pre / "nnUNetPlans.json").read_text())
    for plans_id, patch, batch in (("nnUNetResEncUNetMPlans", [12, 12, 12], 2),
                                   ("nnUNetResEncUNetLPlans", [16, 16, 16], 4)):
        plans = json.loads(json.dumps(base))
        plans["plans_name"] = plans_id
        plans["configurations"]["3d_fullres"].update(patch_size=patch, batch_size=batch)
        (pre / f"{plans_id}.json").write_text(json.dumps(plans))
    bank = make_bank(root / "bank", ["a", "b"], shape=SHAPE)
    first = prepare_bank(bank, name, plans_identifier="nnUNetResEncUNetMPlans", num_processes=1, progress=False)
    second = prepare_bank(bank, name, plans_identifier="nnUNetResEncUNetLPlans", num_processes=1, progress=False)
    assert len(first.prepared) == 2 and second.prepared == [] and len(second.skipped) == 2
    assert first.output_folder == second.output_folder
    m, doc = load_prepared_record(bank, name, configuration="3d_fullres", plans_identifier="nnUNetResEncUNetMPlans")
    lrec, _ = load_prepared_record(bank, name, configuration="3d_fullres", plans_identifier="nnUNetResEncUNetLPlans")
    table = doc["data"]["nnUNetPlans_3d_fullres"]
    for rec in (m, lrec):   # what the trainer checks: both records still vouch for the shared files
        assert sha256_json({c: table[c] for c in rec["cases"]}) == rec["data_sha256"]


def _near_copy(image, rng, fraction=0.001):
    """A 99.9 % voxel-identical copy: a lesion-sized blob of about `fraction` of the voxels edited by -40 HU."""
    copy = image.copy()
    flat_index = rng.integers(copy.size)
    centre = np.array(np.unravel_index(flat_index, copy.shape))
    grid = np.indices(copy.shape)
    dist = sum((g - c) ** 2 for g, c in zip(grid, centre))
    blob = np.zeros(copy.size, bool)
    blob[np.argsort(dist.ravel(), kind="stable")[: max(1, int(fraction * copy.size))]] = True
    blob = blob.reshape(copy.shape)
    copy[blob] -= 40
    return copy, blob.mean()


def test_near_duplicate_of_a_test_image_is_refused_with_its_measure(target):
    """Leakage by content: neither the id nor the file hash match, the image is a 99.9 % identical copy."""
    root, name = target
    raw = root / "nnUNet_raw" / name
    rng = np.random.default_rng(3)
    bank = make_bank(root / "bank", ["case_000", "scan_17"], shape=(24, 24, 20))
    bank_img = bank / "imagesTr" / "ld_scan_17_v0_0000.nii.gz"
    import nibabel as nib

    copy, changed = _near_copy(np.asarray(nib.load(str(bank_img)).dataobj), rng)
    assert 0 < changed <= 0.0015
    save(copy, raw / "imagesTs" / "test_003_0000.nii.gz")
    save(make_case(rng, (24, 24, 20))[0], raw / "imagesTs" / "test_004_0000.nii.gz")   # another patient
    with pytest.raises(InputError, match=r"1 bank case\(s\) were made from .*ld_scan_17_v0.*near-duplicate") as err:
        prepare_bank(bank, name, num_processes=1, progress=False)
    assert "test_003 (r=0.99" in str(err.value) and "test_004" not in str(err.value)
    prepare_bank(bank, name, num_processes=1, progress=False, allow_test_sources=True)
    rec, doc = load_prepared_record(bank, name, configuration="3d_fullres", plans_identifier="nnUNetPlans")
    assert rec["test_sources_allowed"] == ["ld_scan_17_v0"]
    assert list(doc["near_duplicates"]["imagesTs"]) == ["ld_scan_17_v0"] and doc["near_duplicates"]["threshold"] == 0.98
    assert (bank / "nnUNet_preprocessed" / name / "fingerprints.npz").is_file()


def test_fingerprint_separates_copies_from_other_patients(tmp_path):
    from synthesis_bank.near_duplicates import THRESHOLD, fingerprint, near_duplicates

    rng = np.random.default_rng(0)
    images = {f"p{i}": make_case(rng, (32, 32, 24))[0] for i in range(6)}
    copy, _ = _near_copy(images["p2"], rng)
    shifted = np.roll(images["p3"], 2, axis=0)           # the same patient, moved by two voxels: not a copy
    for key, arr in {**images, "copy": copy, "shifted": shifted}.items():
        save(arr, tmp_path / f"{key}.nii.gz")
    fp = {k: fingerprint(tmp_path / f"{k}.nii.gz") for k in [*images, "copy", "shifted"]}
    pairs = near_duplicates({"copy": fp["copy"], "shifted": fp["shifted"]}, {k: fp[k] for k in images})
    assert list(pairs) == ["copy"] and list(pairs["copy"]) == ["p2"] and pairs["copy"]["p2"] >= 0.99
    distinct = near_duplicates({k: fp[k] for k in images}, {k: fp[k] for k in images}, threshold=THRESHOLD)
    assert all(list(v) == [k] for k, v in distinct.items())     # every patient matches itself only
