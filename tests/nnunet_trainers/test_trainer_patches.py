"""The trainer with a patches bank: composed at load time from nnUNet_preprocessed, same guards as a full bank."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ld_augment.errors import ConfigError
from ld_augment.io.nifti import sha256_file
from nnunet_fixtures import AFFINE, LABELS, make_case, make_planned_target, save

pytest.importorskip("nnunetv2")
from nnunet_trainers import trainer as T  # noqa: E402
from synthesis_bank import patch_store  # noqa: E402
from synthesis_bank.manifest import file_record  # noqa: E402
from synthesis_bank.patch_io import patch_prepared_folder  # noqa: E402
from synthesis_bank.prepare import prepare_bank  # noqa: E402

SHAPE = (12, 12, 10)
REAL = [f"case_{i:03d}" for i in range(5)]


def make_patch_bank(bank: Path, sources: dict[str, tuple[Path, Path]], variants: int = 2) -> Path:
    """A `storage: patches` bank made the builder's way (cut_patch against each source) from real cases."""
    rng = np.random.default_rng(3)
    bases = patch_store.BaseLabels(bank)
    work = bank / ".work"
    lines = []
    for src_id, (image, label) in sources.items():
        src_img = nib.load(str(image))
        ct, lab = np.asarray(src_img.dataobj).copy(), np.asarray(nib.load(str(label)).dataobj).copy()
        lab[lab == 2] = 1                                    # the source's lesion-free label
        for v in range(variants):
            c = ct.copy()
            lc = lab.copy()
            x, y, z = (int(rng.integers(4, n - 4)) for n in SHAPE)
            c[x - 1:x + 2, y - 1:y + 2, z - 1:z + 1] -= 50
            lc[x - 1:x + 2, y - 1:y + 2, z - 1:z + 1] = 2
            case_id = f"ld_{src_id}_v{v}"
            save(c, work / "ct.nii.gz")
            save(lc.astype(np.uint8), work / "label.nii.gz")
            sha = sha256_file(image)
            patch, base = patch_store.cut_patch(work / "ct.nii.gz", work / "label.nii.gz", image, sha, bases, [2],
                                                 fill_value=1)
            target = patch_store.patch_path(bank, case_id)
            patch_store.save_patch(target, patch)
            lines.append({"case_id": case_id, "source_id": src_id, "source_file": str(image), "source_sha256": sha,
                          "seed": v, "status": "ok", "organ": None, "lesion_type": None,
                          "files": {"image": file_record(work / "ct.nii.gz"),
                                    "label": file_record(work / "label.nii.gz")},
                          "storage": {"mode": "patches", "patch": f"patches/{case_id}.npz",
                                      "patch_sha256": sha256_file(target), "box": patch.box.tolist(),
                                      "base_label": base, "source": patch_store.source_reference(image, sha)}})
    (bank / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                   "numTraining": 0, "file_ending": ".nii.gz"}))
    (bank / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return bank


@pytest.fixture()
def target(tmp_path, monkeypatch):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = make_planned_target(tmp_path, spacing=(2.0, 1.5, 1.5))
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
    # the bank's sources are copies of the real cases under other names: the content guard must see through it
    sources = {}
    for case in REAL:
        copy = tmp_path / "sources" / f"src_{case}_0000.nii.gz"
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes((raw / "imagesTr" / f"{case}_0000.nii.gz").read_bytes())
        sources[f"src_{case}"] = (copy, raw / "labelsTr" / f"{case}.nii.gz")
    bank = make_patch_bank(tmp_path / "bank", sources)
    prepare_bank(bank, name, num_processes=1, progress=False)
    monkeypatch.setenv("LD_BANK_DIR", str(bank))
    return tmp_path, name, plans, ds_json, bank


def _trainer(cls, target, fold=0):
    _, _, plans, ds_json, _ = target
    return cls(plans=dict(plans, continue_training=False), configuration="3d_fullres", fold=fold,
               dataset_json=ds_json, device=torch.device("cpu"))


def test_trainer_composes_patch_bank_cases(target):
    root, name, _, _, bank = target
    folder = patch_prepared_folder(root / "nnUNet_preprocessed", name, "nnUNetPlans_3d_fullres", bank)
    assert (folder / "ldbank.json").is_file() and not list((bank / "nnUNet_preprocessed").glob("*/*_ldbank_*"))
    tr = _trainer(T.nnUNetTrainerLesionDiffusion_ratio75, target)
    tr.on_train_start()
    rec = json.loads(Path(tr.output_folder, "lesiondiffusion_bank.json").read_text())
    assert rec["excluded_ids"] == ["ld_src_case_000_v0", "ld_src_case_000_v1"]      # validation by content
    assert rec["n_bank_used"] == 8 and rec["prepared_folder"] == str(folder)
    tr.on_train_epoch_start()
    outputs = [tr.train_step(next(tr.dataloader_train)) for _ in range(6)]
    tr.on_train_epoch_end(outputs)
    assert all(np.isfinite(o["loss"]) for o in outputs)
    assert json.loads(Path(tr.output_folder, "lesiondiffusion_bank.json").read_text())["epochs"][0]["synthetic"] > 0


def test_unprepared_or_stale_patch_bank_is_refused(target):
    root, name, _, _, bank = target
    with open(bank / "manifest.jsonl", "a") as fh:
        fh.write(json.dumps({"case_id": "extra", "status": "failed"}) + "\n")
    tr = _trainer(T.nnUNetTrainerLesionDiffusion, target)
    with pytest.raises(ConfigError, match="manifest changed"):
        tr.get_tr_and_val_datasets()
    folder = patch_prepared_folder(root / "nnUNet_preprocessed", name, "nnUNetPlans_3d_fullres", bank)
    (folder / "ldbank.json").unlink()
    with pytest.raises(ConfigError, match="synthesis-bank prepare"):
        _trainer(T.nnUNetTrainerLesionDiffusion, target).get_tr_and_val_datasets()
