"""Training data layouts: the original's eight list files and nnU-Net raw datasets, validated up front."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import InputError
from ld_augment.training import CropDataset, read_list_files, read_nnunet_dataset, read_training_data
from ld_augment.training.data import load_case

LISTS = {"img": "ct.nii.gz", "label": "label.nii.gz", "type": "report.json", "seg": "totalseg.nii.gz"}


def _write_lists(folder: Path, cases: list[Path], split: str = "train", relative: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for infix, name in LISTS.items():
        rows = [str((c / name).relative_to(folder)) if relative else str(c / name) for c in cases]
        (folder / f"{split}_{infix}_list.txt").write_text("\n".join(rows) + "\n")


def test_list_files_give_row_aligned_cases(cases_dir: Path, tmp_path: Path) -> None:
    cases = sorted(cases_dir.iterdir())
    lists = cases_dir  # relative paths from the lists' own folder
    _write_lists(lists, cases)
    _write_lists(lists, cases[:1], split="val", relative=False)
    train = read_list_files(lists, split="train", need=("label", "seg", "report", "ct"))
    assert [c.label for c in train] == [c / "label.nii.gz" for c in cases]
    assert [c.ct for c in train] == [c / "ct.nii.gz" for c in cases] and train[0].report == cases[0] / "report.json"
    assert len(read_list_files(lists, split="val")) == 1
    assert read_training_data(lists, need=("label", "seg", "report")) == train  # recognised by its files


def test_list_file_problems_name_row_file_and_reason(cases_dir: Path, tmp_path: Path, make_case,
                                                      case_affine) -> None:
    cases = sorted(cases_dir.iterdir())
    lists = tmp_path / "lists"
    _write_lists(lists, cases, relative=False)
    (lists / "train_seg_list.txt").write_text(str(cases[0] / "totalseg.nii.gz") + "\n")
    with pytest.raises(InputError, match=r"not row-aligned .*train_seg_list.txt 1"):
        read_list_files(lists)
    _write_lists(lists, cases, relative=False)
    (cases[1] / "report.json").write_text("{not json")
    (cases[0] / "totalseg.nii.gz").rename(cases[0] / "moved.nii.gz")
    with pytest.raises(InputError) as err:
        read_list_files(lists)
    text = str(err.value)
    assert "2 problem(s)" in text
    assert f"row 1: seg file {cases[0] / 'totalseg.nii.gz'} does not exist" in text
    assert "row 2:" in text and "report.json is not valid JSON" in text
    (cases[0] / "moved.nii.gz").rename(cases[0] / "totalseg.nii.gz")
    shutil.copy(cases[0] / "report.json", cases[1] / "report.json")
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 41), np.uint8), case_affine), str(cases[1] / "totalseg.nii.gz"))
    with pytest.raises(InputError, match=r"row 2: .*totalseg.nii.gz"):
        read_list_files(lists)
    (lists / "train_type_list.txt").unlink()
    with pytest.raises(InputError, match="train_type_list.txt is missing"):
        read_list_files(lists)


def _nnunet(root: Path, cases: list[Path], *, reports: bool) -> Path:
    for sub in ("imagesTr", "labelsTr", "totalsegTr", "reportsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for c in cases:
        shutil.copy(c / "ct.nii.gz", root / "imagesTr" / f"{c.name}_0000.nii.gz")
        shutil.copy(c / "label.nii.gz", root / "labelsTr" / f"{c.name}.nii.gz")
        shutil.copy(c / "totalseg.nii.gz", root / "totalsegTr" / f"{c.name}.nii.gz")
        if reports:
            shutil.copy(c / "report.json", root / "reportsTr" / f"{c.name}.json")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "liver": 1, "lesion": 2},
                                                   "numTraining": len(cases)}))
    return root


def test_nnunet_dataset_with_and_without_reports(cases_dir: Path, tmp_path: Path) -> None:
    cases = sorted(cases_dir.iterdir())
    root = _nnunet(tmp_path / "Dataset501_Liver", cases[:1], reports=True)
    _nnunet(root, cases[1:], reports=False)
    got = read_nnunet_dataset(root, need=("label", "seg", "report", "ct"))
    assert [c.case_id for c in got] == ["case_0", "case_1"]
    assert got[0].report is not None and not got[0].derive_report
    assert got[1].report is None and got[1].derive_report
    derived = load_case(got[1], need_ct=True).report
    assert derived is not None and derived.organ_id == 5  # the liver (v1 id) under the label
    assert derived.density == "hypodense lesion"  # the generated lesion is 20 HU in a 60 HU liver
    lesion = np.argwhere(np.asarray(nib.load(str(cases[1] / "label.nii.gz")).dataobj) == 2)
    assert derived.bbox_sizes == [tuple(int(v) for v in lesion.max(0) - lesion.min(0) + 1)]
    assert read_training_data(root, need=("label", "seg", "report")) == got
    CropDataset(got, "lmnet", (8, 16, 16))[0]  # the derived report conditions a crop


def test_nnunet_dataset_errors(cases_dir: Path, tmp_path: Path) -> None:
    cases = sorted(cases_dir.iterdir())
    root = _nnunet(tmp_path / "Dataset502", cases, reports=False)
    (root / "imagesTr" / "case_1_0000.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case case_1: ct file .*imagesTr/case_1_0000.nii.gz does not exist"):
        read_nnunet_dataset(root, need=("label", "seg", "report", "ct"))
    assert len(read_nnunet_dataset(root, need=("label", "seg", "report"))) == 2  # LMNet needs no CT
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "kidney": 1, "tumor": 2,
                                                              "cyst": 3}}))
    with pytest.raises(InputError, match="dataset.json: labels .* must be 0 background, 1 organ, 2 lesion"):
        read_nnunet_dataset(root)


def test_sequential_sampling_visits_every_case_once_per_epoch(tmp_path: Path, make_case) -> None:
    for i in range(3):
        make_case(tmp_path / "d" / f"c{i}", seed=i, with_ct=False)
    from ld_augment.training import find_cases

    cases = find_cases(tmp_path / "d")
    seq = CropDataset(cases, "lmnet", (8, 16, 16), seed=4, sampling="sequential")
    rng = np.random.default_rng(0)
    for epoch in range(2):
        picked = [seq.case_index(epoch * 3 + i, rng) for i in range(3)]
        assert sorted(picked) == [0, 1, 2]
    assert seq.epoch_length == 3
    assert CropDataset(cases, "lmnet", (8, 16, 16), iter_num=50).epoch_length == 50
