"""The trainer's bank handling in-process on a tiny hand-planned target (seconds, not minutes).

The real-nnU-Net subprocess run lives in test_e2e_nnunet.py (slow); this one drives the same hooks directly:
`on_train_start` (datasets, loaders, record), `train_step` (counting) and `on_train_epoch_end` (logging).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ld_augment.errors import ConfigError
from nnunet_fixtures import make_bank, make_case, make_planned_target, save

pytest.importorskip("nnunetv2")
from nnunet_trainers import trainer as T  # noqa: E402
from synthesis_bank.prepare import prepare_bank  # noqa: E402

SHAPE = (12, 12, 10)
REAL = [f"case_{i:03d}" for i in range(5)]


@pytest.fixture()
def target(tmp_path, monkeypatch):
    """Raw + preprocessed tiny target (our hand plan, nnU-Net's preprocessor), a prepared bank, env set."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = make_planned_target(tmp_path)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.delenv("LD_BANK_RATIO", raising=False)
    raw, pre = tmp_path / "nnUNet_raw" / name, tmp_path / "nnUNet_preprocessed" / name
    rng = np.random.default_rng(0)
    for case in REAL:
        ct, lab = make_case(rng, SHAPE)
        save(ct, raw / "imagesTr" / f"{case}_0000.nii.gz")
        save(lab, raw / "labelsTr" / f"{case}.nii.gz")
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    ds_json = json.loads((pre / "dataset.json").read_text())
    (pre / cm.data_identifier).mkdir()
    for case in REAL:
        cm.preprocessor_class(verbose=False).run_case_save(
            str(pre / cm.data_identifier / case), [str(raw / "imagesTr" / f"{case}_0000.nii.gz")],
            str(raw / "labelsTr" / f"{case}.nii.gz"), pm, cm, ds_json)
    (pre / "dataset_fingerprint.json").write_text("{}")
    (pre / "splits_final.json").write_text(json.dumps([{"train": REAL[1:], "val": REAL[:1]}]))
    bank = make_bank(tmp_path / "bank", REAL + ["external_x"], failed=1, shape=SHAPE)
    prepare_bank(bank, name, num_processes=1)
    monkeypatch.setenv("LD_BANK_DIR", str(bank))
    return tmp_path, name, plans, ds_json, bank


def _trainer(cls, target, fold=0):
    _, _, plans, ds_json, _ = target
    return cls(plans=dict(plans, continue_training=False), configuration="3d_fullres", fold=fold,
               dataset_json=ds_json, device=torch.device("cpu"))


def test_mixes_counts_and_records(target):
    tr = _trainer(T.nnUNetTrainerLesionDiffusion_ratio75, target)
    tr.on_train_start()
    rec_file = tr.output_folder + "/lesiondiffusion_bank.json"
    rec = json.loads(open(rec_file).read())
    assert rec["excluded_ids"] == ["ld_case_000_v0"] and rec["n_bank_used"] == 5 and rec["n_real_train"] == 4
    assert rec["ratio"] == 0.75 and rec["ratio_source"] == "variant"
    assert list(tr.dataloader_val.data_loader._data.identifiers) == ["case_000"]     # validation: real only
    loader = tr.dataloader_train.data_loader                    # nnU-Net's own loader, two-stage probabilities
    assert type(loader).__name__ == "nnUNetDataLoader"
    assert loader.sampling_probabilities[4:].sum() == pytest.approx(0.75)
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as parent_module
    assert parent_module.nnUNetDataLoader is type(loader)      # the stand-in was put back
    tr.on_train_epoch_start()
    outputs = [tr.train_step(next(tr.dataloader_train)) for _ in range(30)]
    tr.on_train_epoch_end(outputs)
    assert all(np.isfinite(o["loss"]) for o in outputs)
    rec = json.loads(open(rec_file).read())
    (epoch,) = rec["epochs"]
    assert epoch["samples"] == 30 * tr.batch_size
    assert abs(epoch["fraction"] - 0.75) <= 4 * np.sqrt(0.75 * 0.25 / epoch["samples"])
    assert "realized synthetic fraction" in open(tr.log_file).read()


def test_ratio_zero_trains_real_only_without_bank(target, monkeypatch):
    monkeypatch.delenv("LD_BANK_DIR")
    monkeypatch.setenv("LD_BANK_RATIO", "0")
    tr = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    tr_ds, val_ds = tr.get_tr_and_val_datasets()
    assert sorted(set(tr_ds.identifiers)) == REAL[1:] and list(val_ds.identifiers) == REAL[:1]


def test_stale_bank_and_replanned_target_are_refused(target):
    tmp_path, name, plans, _, bank = target
    tr = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    tr.dataset_class = None
    with open(bank / "manifest.jsonl", "a") as fh:
        fh.write('{"case_id": "late", "status": "failed"}\n')
    with pytest.raises(ConfigError, match="manifest changed") as err:
        tr.get_tr_and_val_datasets()
    assert f"synthesis-bank prepare --bank {bank} --target {name}" in str(err.value)
    prepare_bank(bank, name, num_processes=1)
    changed = dict(plans, continue_training=False)
    changed["foreground_intensity_properties_per_channel"] = {"0": dict(
        plans["foreground_intensity_properties_per_channel"]["0"], mean=0.0)}
    tr2 = T.nnUNetTrainerLesionDiffusion(plans=changed, configuration="3d_fullres", fold=0,
                                         dataset_json=target[3], device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="other preprocessing settings of nnUNetPlans"):
        tr2.get_tr_and_val_datasets()
    batch_only = dict(plans, continue_training=False)          # a batch size change needs no new prepare
    batch_only["configurations"] = {"3d_fullres": dict(plans["configurations"]["3d_fullres"], batch_size=3)}
    tr3 = T.nnUNetTrainerLesionDiffusion(plans=batch_only, configuration="3d_fullres", fold=0,
                                         dataset_json=target[3], device=torch.device("cpu"))
    assert tr3.get_tr_and_val_datasets()[0].bank_keys


def test_unprepared_bank_is_refused(target, monkeypatch, tmp_path):
    other = make_bank(tmp_path / "other_bank", ["x"], shape=SHAPE)
    monkeypatch.setenv("LD_BANK_DIR", str(other))
    with pytest.raises(ConfigError, match="not prepared for Dataset501_Tiny"):
        _trainer(T.nnUNetTrainerLesionDiffusion, target).get_tr_and_val_datasets()


def test_runs_are_named_by_ratio_and_bank(target, monkeypatch):
    """Two ratios never share a results folder; the named variant finds its own run (`--c`)."""
    from nnunet_trainers.identity import bank_tag

    tmp_path, name, _, _, bank = target
    tag = bank_tag(bank)
    monkeypatch.setenv("LD_BANK_RATIO", "0.5")
    half = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    assert type(half).__name__ == f"nnUNetTrainerLesionDiffusion_r050_{tag}"
    assert half.output_folder.endswith(f"/{name}/nnUNetTrainerLesionDiffusion_r050_{tag}__nnUNetPlans__3d_fullres/fold_0")
    half.get_tr_and_val_datasets()
    monkeypatch.setenv("LD_BANK_RATIO", "0.3")
    other = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    assert type(other).__name__ == f"nnUNetTrainerLesionDiffusion_r030_{tag}" and other.output_folder != half.output_folder
    named = _trainer(getattr(T, f"nnUNetTrainerLesionDiffusion_r050_{tag}"), target)   # env ratio 0.3 ignored
    assert named.output_folder == half.output_folder
    assert named.get_tr_and_val_datasets()[0].ratio > 0 and json.loads(
        open(named.output_folder + "/lesiondiffusion_bank.json").read())["ratio"] == 0.5
    short = _trainer(T.nnUNetTrainerLesionDiffusion_ratio75, target)                    # a variant's own ratio
    assert type(short).__name__ == f"nnUNetTrainerLesionDiffusion_ratio75_r075_{tag}"
    monkeypatch.delenv("LD_BANK_DIR")
    monkeypatch.setenv("LD_BANK_RATIO", "0")
    assert type(_trainer(T.nnUNetTrainerLesionDiffusion, target)).__name__ == "nnUNetTrainerLesionDiffusion_r000"


def test_named_run_refuses_another_bank(target, monkeypatch, tmp_path):
    from nnunet_trainers.identity import bank_tag

    _, name, _, _, bank = target
    named = getattr(T, f"nnUNetTrainerLesionDiffusion_r050_{bank_tag(bank)}")
    other = make_bank(tmp_path / "other_bank", REAL, seed=5, shape=SHAPE)
    prepare_bank(other, name, num_processes=1, progress=False)
    monkeypatch.setenv("LD_BANK_DIR", str(other))
    with pytest.raises(ConfigError, match=f"but LD_BANK_DIR={other} is bank {bank_tag(other)}") as err:
        _trainer(named, target).get_tr_and_val_datasets()
    assert f"-tr nnUNetTrainerLesionDiffusion_r050_{bank_tag(other)}" in str(err.value)


def test_continuation_with_changed_settings_is_refused_then_recorded(target, monkeypatch, tmp_path):
    """`--c` of a named run with the same bank copied elsewhere: refused, or continued and recorded."""
    import shutil

    monkeypatch.setenv("LD_BANK_RATIO", "0.5")
    bank = target[4]
    first = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    first.get_tr_and_val_datasets()
    moved = tmp_path / "moved_bank"
    shutil.copytree(bank, moved)
    monkeypatch.setenv("LD_BANK_DIR", str(moved))
    resumed = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    assert resumed.output_folder == first.output_folder             # same manifest: the same run
    resumed.current_epoch = 3                                   # as after load_checkpoint (nnUNetv2_train --c)
    with pytest.raises(ConfigError, match=r"--c continues .*bank_dir was .*LD_BANK_ALLOW_CHANGE=1"):
        resumed.get_tr_and_val_datasets()
    monkeypatch.setenv("LD_BANK_DIR", str(bank))                  # the same settings continue silently
    same = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    same.current_epoch = 3
    same.get_tr_and_val_datasets()
    assert json.loads(open(same.output_folder + "/lesiondiffusion_bank.json").read())["changes"] == []
    monkeypatch.setenv("LD_BANK_DIR", str(moved))
    monkeypatch.setenv("LD_BANK_ALLOW_CHANGE", "1")
    allowed = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    allowed.current_epoch = 3
    allowed.get_tr_and_val_datasets()
    rec = json.loads(open(allowed.output_folder + "/lesiondiffusion_bank.json").read())
    assert rec["bank_dir"] == str(moved) and rec["changes"] == [
        {"epoch": 3, "changed": {"bank_dir": {"was": str(bank), "now": str(moved)}}}]


def test_bank_source_renamed_copy_of_a_validation_image_is_excluded(target):
    """Leakage by content: the bank's source file has another name than the validation case it copies."""
    from ld_augment.io.nifti import sha256_file

    tmp_path, name, _, _, bank = target
    val_image = tmp_path / "nnUNet_raw" / name / "imagesTr" / "case_000_0000.nii.gz"
    lines = [json.loads(x) for x in (bank / "manifest.jsonl").read_text().splitlines()]
    for line in lines:
        if line["case_id"] == "ld_external_x_v0":
            line.update(source_id="scan_17", source_file="/elsewhere/scan_17.nii.gz",
                        source_sha256=sha256_file(val_image))
    (bank / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    prepare_bank(bank, name, num_processes=1, progress=False)
    tr = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    tr_ds, _ = tr.get_tr_and_val_datasets()
    rec = json.loads(open(tr.output_folder + "/lesiondiffusion_bank.json").read())
    assert rec["excluded"]["validation"] == ["ld_case_000_v0", "ld_external_x_v0"]
    assert "ld_external_x_v0" not in tr_ds.bank_keys and len(tr_ds.bank_keys) == 4


def test_composes_with_another_variant(target):
    """The README's recipe: ours first, then any nnU-Net variant (here DA5's heavier augmentation)."""
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5

    class Composed(T.nnUNetTrainerLesionDiffusion, nnUNetTrainerDA5):
        bank_ratio = 0.5

    tr = _trainer(Composed, target)
    tr.on_train_start()
    loader = tr.dataloader_train.data_loader
    assert loader.sampling_probabilities is not None

    def pipeline(cls):
        return [type(t).__name__ for t in cls.get_training_transforms(
            tr.configuration_manager.patch_size, (0, 0), tr._get_deep_supervision_scales(), (0, 1, 2), False,
            use_mask_for_norm=[False],
            is_cascaded=False, foreground_labels=[1, 2], regions=None, ignore_label=None).transforms]
    used = [type(t).__name__ for t in loader.transforms.transforms]
    assert used == pipeline(nnUNetTrainerDA5) and used != pipeline(T.nnUNetTrainer)   # DA5's augmentation
    tr.on_train_epoch_start()
    outputs = [tr.train_step(next(tr.dataloader_train)) for _ in range(3)]
    assert all(np.isfinite(o["loss"]) for o in outputs) and tr._drawn_total == 3 * tr.batch_size


def test_cascade_is_refused_before_training(target):
    _, _, plans, ds_json, _ = target
    cascade = json.loads(json.dumps(plans))
    cascade["configurations"].update({
        "3d_lowres": {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                      "spacing": [4.0, 3.0, 3.0], "next_stage": "3d_cascade_fullres"},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}})
    tr = T.nnUNetTrainerLesionDiffusion(plans=dict(cascade, continue_training=False),
                                        configuration="3d_cascade_fullres", fold=0, dataset_json=ds_json,
                                        device=torch.device("cpu"))
    assert tr.is_cascaded
    with pytest.raises(ConfigError, match=r"cascade stage: it needs previous-stage \(3d_lowres\).*3d_fullres"):
        tr.get_tr_and_val_datasets()


def test_bank_case_near_duplicate_of_a_validation_image_is_excluded(target):
    """Leakage by content: a bank case whose image is 99.9 % voxel-identical to the validation case case_000
    (another source id, another file hash) leaves this fold's training, and the log gives the measure."""
    import nibabel as nib

    tmp_path, name, _, _, bank = target
    val_img = nib.load(str(tmp_path / "nnUNet_raw" / name / "imagesTr" / "case_000_0000.nii.gz"))
    copy = np.asarray(val_img.dataobj).copy()
    copy.reshape(-1)[:2] -= 40                                      # 2 of 1440 voxels edited: 99.86 % identical
    save(copy, bank / "imagesTr" / "ld_external_x_v0_0000.nii.gz")
    prepare_bank(bank, name, num_processes=1, progress=False)
    tr = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    tr_ds, _ = tr.get_tr_and_val_datasets()
    rec = json.loads(open(tr.output_folder + "/lesiondiffusion_bank.json").read())
    assert rec["excluded"]["validation"] == ["ld_case_000_v0", "ld_external_x_v0"]
    assert "ld_external_x_v0" not in tr_ds.bank_keys and len(tr_ds.bank_keys) == 4
    log = open(tr.log_file).read()
    assert "ld_external_x_v0 excluded, its image is a near-duplicate of validation case case_000 (r=0.99" in log
    fold1 = _trainer(T.nnUNetTrainerLesionDiffusion, target, fold="all")   # nothing held out: it trains
    assert "ld_external_x_v0" in fold1.get_tr_and_val_datasets()[0].bank_keys
