"""Standard lesion-dataset layouts, fabricated from the shared REAL CT, through nnU-Net's own tools (slow tier).

* `Dataset003_Liver`, MSD Task03's layout `{background, liver, cancer}`: bank built from its own training cases,
  `synthesis-bank prepare --bank B --target 3` exactly as in the README (labels mapped by name), 5-iteration
  training on 3d_fullres, the cascade refused before the first epoch, re-planning with another spacing then
  `prepare` changes the prepared shapes.
* `Dataset004_KiTS`, KiTS23's region-based layout `{kidney: [1, 2, 3], masses: [2, 3], tumor: 2}`: a bank from
  plain CTs of the kidney, prepared as is (renal cell carcinoma -> tumor; both kidneys from the segmentation the
  bank was built with), trained region-based.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnunet_fixtures import nnunet_cmd, nnunet_env, run
from nnunet_trainers.identity import run_name
from nnunet_trainers.shim import ext_trainer_dir

TRAINER = "nnUNetTrainerLesionDiffusion_5iters"
LIVER, KIDNEY_RIGHT, KIDNEY_LEFT = 5, 2, 3          # TotalSegmentator v2 ids in the shared segmentation


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def _crop(ct_img, seg, lo, size):
    """A crop of the real CT (and its segmentation) with the affine moved to the crop's origin."""
    sl = tuple(slice(a, a + s) for a, s in zip(lo, size))
    affine = ct_img.affine.copy()
    affine[:3, 3] = ct_img.affine[:3, :3] @ np.array(lo) + ct_img.affine[:3, 3]
    return np.asarray(ct_img.dataobj)[sl].astype(np.int16), seg[sl].astype(np.uint8), affine


def _save(arr, affine, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def _lesion_in(organ: np.ndarray, rng, radius: float) -> np.ndarray:
    inner = np.argwhere(organ)
    centre = inner[rng.integers(len(inner))] if len(inner) else np.array(organ.shape) // 2
    return _ball(organ.shape, centre, radius) & organ


def _write_dataset_json(root: Path, labels: dict, n: int, **extra) -> None:
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                   "numTraining": n, "file_ending": ".nii.gz", **extra}))


def _liver_dataset(raw: Path, segs: Path, real_ct: Path, real_seg: Path, rng) -> list[str]:
    """MSD-Task03-like: liver = 1, cancer = 2 (a darker ball inside the real liver), 4 training + 1 test case."""
    ct_img, seg = nib.load(str(real_ct)), np.asarray(nib.load(str(real_seg)).dataobj)
    root = raw / "Dataset003_Liver"
    cases = []
    for i, lo in enumerate([(40, 24, 0), (44, 28, 0), (48, 22, 0), (52, 30, 0), (46, 26, 0)]):
        ct, organs, affine = _crop(ct_img, seg, lo, (56, 56, 30))
        liver = organs == LIVER
        cancer = _lesion_in(liver, rng, 3.0)
        ct = ct.copy()
        ct[cancer] -= 40
        label = liver.astype(np.uint8)
        label[cancer] = 2
        test = i == 4
        case = f"liver_{i:03d}"
        _save(ct, affine, root / ("imagesTs" if test else "imagesTr") / f"{case}_0000.nii.gz")
        _save(label, affine, root / ("labelsTs" if test else "labelsTr") / f"{case}.nii.gz")
        _save(organs, affine, segs / f"{case}.nii.gz")                  # TotalSegmentator's segmentation
        if not test:
            cases.append(case)
    _write_dataset_json(root, {"background": 0, "liver": 1, "cancer": 2}, len(cases))
    return cases


def _kits_dataset(raw: Path, cts: Path, segs: Path, real_ct: Path, real_seg: Path, rng) -> list[str]:
    """KiTS-like region-based dataset: kidney 1, tumor 2, cyst 3 in label files; bank sources: plain kidney CTs."""
    ct_img, seg = nib.load(str(real_ct)), np.asarray(nib.load(str(real_seg)).dataobj)
    root = raw / "Dataset004_KiTS"
    cases = []
    for i, lo in enumerate([(16, 22, 0), (64, 24, 0), (20, 26, 0), (66, 20, 0)]):
        ct, organs, affine = _crop(ct_img, seg, lo, (34, 34, 30))
        kidney = np.isin(organs, (KIDNEY_LEFT, KIDNEY_RIGHT))
        tumor = _lesion_in(kidney, rng, 2.5)
        cyst = _lesion_in(kidney & ~tumor, rng, 1.5) & ~tumor
        plain, ct = ct, ct.copy()
        ct[tumor] -= 30
        ct[cyst] = 5
        label = kidney.astype(np.uint8)
        label[tumor], label[cyst] = 2, 3
        case = f"kits_{i:03d}"
        _save(ct, affine, root / "imagesTr" / f"{case}_0000.nii.gz")
        _save(label, affine, root / "labelsTr" / f"{case}.nii.gz")
        cases.append(case)
        if i in (0, 2):   # bank sources: plain CTs of the left kidney (other names than the nnU-Net ids) + TotalSeg
            _save(plain, affine, cts / f"scan{i}.nii.gz")
            _save(organs, affine, segs / f"scan{i}.nii.gz")
    _write_dataset_json(root, {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}, len(cases),
                        regions_class_order=[1, 3, 2])
    return cases


def _build(recipe_dict: dict, bank: Path):
    from synthesis_bank.builder import build_bank
    from synthesis_bank.recipe import Recipe

    summary = build_bank(Recipe.from_dict(recipe_dict, origin="test recipe"), bank, progress=False)
    assert summary.ok, summary.format_table()
    return [json.loads(x) for x in (bank / "manifest.jsonl").read_text().splitlines() if x.strip()]


def _prepare(bank: Path, target: str, env, cwd, *extra: str):
    return run([sys.executable, "-m", "synthesis_bank.prepare", "--bank", str(bank), "--target", target, "-np", "1",
                "--no-progress", *extra], env, cwd)


def _prepared_shape(bank: Path, dataset: str, case_id: str) -> tuple:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = bank / "nnUNet_preprocessed" / dataset / "nnUNetPlans_3d_fullres"
    return tuple(infer_dataset_class(str(folder))(str(folder)).load_case(case_id)[0].shape)


def _bank_env(tmp_path: Path, bank: Path) -> dict:
    """nnU-Net's environment with our trainer and the bank mixed in at ratio 0.5."""
    return nnunet_env(tmp_path, nnUNet_n_proc_DA="0", nnUNet_extTrainer=str(ext_trainer_dir()),
                      LD_BANK_DIR=str(bank), LD_BANK_RATIO="0.5")


def _train_with_bank(tmp_path: Path, bank: Path, dataset_id: str, dataset: str) -> tuple[Path, dict]:
    """nnUNetv2_train fold 0 with the bank; the fold folder and its bank record."""
    run(nnunet_cmd("nnUNetv2_train") + [dataset_id, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"],
        _bank_env(tmp_path, bank), tmp_path)
    fold = tmp_path / "nnUNet_results" / dataset / f"{run_name(TRAINER, 0.5, bank)}__nnUNetPlans__3d_fullres" / "fold_0"
    return fold, json.loads((fold / "lesiondiffusion_bank.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_msd_liver_layout(tmp_path, real_ct, real_seg):
    rng = np.random.default_rng(0)
    cases = _liver_dataset(tmp_path / "nnUNet_raw", tmp_path / "totalseg", real_ct, real_seg, rng)
    bank = tmp_path / "Dataset501_LiverSynth"
    # no segmentations: the dataset's own liver label is the organ segmentation (TotalSegmentator not needed)
    entries = _build({"sources": {"nnunet_raw": str(tmp_path / "nnUNet_raw" / "Dataset003_Liver")},
                      "organs": ["liver"], "lesion_types": {"metastasis": 1.0}, "spacing": [3.0, 3.0, 3.0],
                      "attributes": {"size": "[[4 4 4]] pixel"}, "segmentation": "error", "seed": 1,
                      "dataset_name": "LiverSynth"}, bank)
    assert sorted(e["source_id"] for e in entries if e["status"] == "ok") == cases
    assert {e["organ_segmentation"] for e in entries} == {"source label"}

    env = nnunet_env(tmp_path)
    run(nnunet_cmd("nnUNetv2_plan_and_preprocess") + ["-d", "3", "-c", "3d_fullres", "-np", "1",
                                                      "--verify_dataset_integrity"], env, tmp_path)
    splits = [{"train": cases[1:], "val": cases[:1]}, {"train": cases[:3], "val": cases[3:]}]   # 4 cases: 2 folds
    (tmp_path / "nnUNet_preprocessed" / "Dataset003_Liver" / "splits_final.json").write_text(json.dumps(splits))
    out = _prepare(bank, "3", env, tmp_path)                        # the README's command, unchanged
    assert "prepared 4 case(s)" in out.stdout and "GB uncompressed" in out.stdout
    prepared = json.loads((bank / "nnUNet_preprocessed" / "Dataset003_Liver" / "prepared.json").read_text())
    (pair,) = prepared["records"]["nnUNetPlans/3d_fullres"]["label_mapping"]["pairs"]
    assert (pair["organ"]["target"], pair["lesion"]["target"]) == ("liver", "cancer")
    assert sorted(prepared["target_images"]["imagesTs"]) == ["liver_004"]

    fold, rec = _train_with_bank(tmp_path, bank, "3", "Dataset003_Liver")
    train_env = _bank_env(tmp_path, bank)
    val = set(splits[0]["val"])
    assert sorted(rec["excluded"]["validation"]) == sorted(e["case_id"] for e in entries if e["source_id"] in val)
    assert rec["n_bank_used"] == 4 - len(val) and sum(e["synthetic"] for e in rec["epochs"]) > 0

    # the cascade: refused before the first epoch, saying what to run (no IndexError mid-training)
    plans_file = tmp_path / "nnUNet_preprocessed" / "Dataset003_Liver" / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                                            "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    plans_file.write_text(json.dumps(plans))
    with pytest.raises(AssertionError) as err:
        run(nnunet_cmd("nnUNetv2_train") + ["3", "3d_cascade_fullres", "0", "-tr", TRAINER, "-device", "cpu"],
            train_env, tmp_path)
    assert "cascade stage" in str(err.value) and "3d_fullres" in str(err.value)
    assert "IndexError" not in str(err.value) and "Epoch 0" not in str(err.value)

    # re-planning with another spacing: training refuses the stale bank, prepare re-prepares with new shapes
    before = _prepared_shape(bank, "Dataset003_Liver", entries[0]["case_id"])
    run(nnunet_cmd("nnUNetv2_plan_experiment") + ["-d", "3", "-overwrite_target_spacing", "6", "6", "6"],
        env, tmp_path)
    with pytest.raises(AssertionError) as err:
        run(nnunet_cmd("nnUNetv2_train") + ["3", "3d_fullres", "1", "-tr", TRAINER, "-device", "cpu"],
            train_env, tmp_path)
    assert "re-planned since" in str(err.value)
    assert "prepared 4 case(s)" in _prepare(bank, "3", env, tmp_path).stdout
    after = _prepared_shape(bank, "Dataset003_Liver", entries[0]["case_id"])
    assert all(a < b for a, b in zip(after[1:], before[1:])), (before, after)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_kits_region_based_layout(tmp_path, real_ct, real_seg):
    rng = np.random.default_rng(1)
    cases = _kits_dataset(tmp_path / "nnUNet_raw", tmp_path / "cts", tmp_path / "totalseg", real_ct, real_seg, rng)
    bank = tmp_path / "Dataset502_KidneySynth"
    entries = _build({"sources": {"folder": str(tmp_path / "cts"), "segmentations": str(tmp_path / "totalseg")},
                      "organs": ["kidney_left"], "lesion_types": {"renal cell carcinoma": 1.0},
                      "spacing": [3.0, 3.0, 3.0], "attributes": {"size": "[[3 3 3]] pixel"},
                      "segmentation": "error", "seed": 2, "dataset_name": "KidneySynth"}, bank)
    env = nnunet_env(tmp_path)
    run(nnunet_cmd("nnUNetv2_plan_and_preprocess") + ["-d", "4", "-c", "3d_fullres", "-np", "1",
                                                      "--verify_dataset_integrity"], env, tmp_path)
    (tmp_path / "nnUNet_preprocessed" / "Dataset004_KiTS" / "splits_final.json").write_text(json.dumps(
        [{"train": cases[1:], "val": cases[:1]}]))
    # RCC is malignant: KiTS's one tumour label without a flag (masses is not one); `kidney` is both kidneys, so
    # what the bank case does not label comes from the TotalSegmentator map it was built with (source_seg)
    assert all(e["source_seg"] for e in entries if e["status"] == "ok")
    _prepare(bank, "4", env, tmp_path)
    prepared = json.loads((bank / "nnUNet_preprocessed" / "Dataset004_KiTS" / "prepared.json").read_text())
    rec = prepared["records"]["nnUNetPlans/3d_fullres"]
    assert rec["refused"] == {} and {p["lesion"]["target"] for p in rec["label_mapping"]["pairs"]} == {"tumor"}
    table = prepared["data"]["nnUNetPlans_3d_fullres"]
    assert all(table[c]["organ_fill"] == [["kidney", 1]] for c in rec["cases"])
    case_id = entries[0]["case_id"]
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = bank / "nnUNet_preprocessed" / "Dataset004_KiTS" / "nnUNetPlans_3d_fullres"
    seg = np.asarray(infer_dataset_class(str(folder))(str(folder)).load_case(case_id)[1][...])
    assert set(np.unique(seg)) - {-1} == {0, 1, 2}                  # kidney -> 1, tumor -> 2 (regions: all three)

    fold, rec = _train_with_bank(tmp_path, bank, "4", "Dataset004_KiTS")
    # scan0 is kits_000 before its tumour and cyst were drawn (99.8 % voxel-identical, another name and hash):
    # kits_000 validates fold 0, so the bank case made from scan0 is excluded by content (issue 20, item 5)
    scan0 = [e["case_id"] for e in entries if e["status"] == "ok" and e["source_id"] == "scan0"]
    assert rec["excluded"]["validation"] == scan0 and rec["n_bank_used"] == 1
    assert "near-duplicate of validation case kits_000 (r=" in next(fold.glob("training_log_*.txt")).read_text()
    assert rec["label_mapping"]["region_based"] and sum(e["synthetic"] for e in rec["epochs"]) > 0
    assert (fold / "checkpoint_final.pth").is_file()
