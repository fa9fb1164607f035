"""expand_dataset: a copy with bank cases that only ever train, never validate, and never leak."""

from __future__ import annotations

import json

import pytest

from ld_augment.errors import ConfigError, InputError
from nnunet_fixtures import make_bank, make_raw_dataset


@pytest.fixture()
def setup(tmp_path):
    raw = tmp_path / "raw"
    src = make_raw_dataset(raw, 501, "Tiny", n_train=6, n_test=1, shape=(12, 12, 10))
    sources = ["case_000", "case_001", "case_002", "case_003", "case_004", "case_005", "external_ct"]
    bank = make_bank(tmp_path / "bank", sources, variants=2, failed=1, shape=(12, 12, 10))
    return tmp_path, raw, src, bank


def test_expand_writes_copy_and_leak_free_splits(setup, expand_dataset_mod):
    tmp_path, raw, src, bank = setup
    pre = tmp_path / "pre"
    rc = expand_dataset_mod.main(["--dataset", "501", "--raw-root", str(raw), "--bank", str(bank),
                                  "--out-id", "502", "--preprocessed-root", str(pre)])
    assert rc == 0
    dest = raw / "Dataset502_TinyLD"
    ds = json.loads((dest / "dataset.json").read_text())
    assert ds["numTraining"] == 6 + 14 and ds["labels"] == json.loads((src / "dataset.json").read_text())["labels"]
    assert len(list((dest / "imagesTr").iterdir())) == 20 and len(list((dest / "labelsTr").iterdir())) == 20
    assert (dest / "imagesTs" / "test_000_0000.nii.gz").is_file()
    assert not (dest / "imagesTr" / "ld_failed_0_0000.nii.gz").exists()       # failed cases are not bank cases
    splits = json.loads((pre / "Dataset502_TinyLD" / "splits_final.json").read_text())
    assert splits == json.loads((dest / "splits_final.json").read_text())
    assert len(splits) == 5
    real = {f"case_{i:03d}" for i in range(6)}
    assert sorted(k for s in splits for k in s["val"]) == sorted(real)           # each real case validates once
    for s in splits:
        assert set(s["val"]) <= real                                             # synthetic never validates
        bank_train = {k for k in s["train"] if k.startswith("ld_")}
        leaked = {k for k in bank_train if k.split("_v")[0][3:] in s["val"]}
        assert not leaked
        assert len(bank_train) == 14 - 2 * len(s["val"])                         # all others do train
        assert set(s["train"]) - bank_train == real - set(s["val"])


def test_matches_nnunet_split_of_real_cases(setup, expand_dataset_mod):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    tmp_path, raw, src, bank = setup
    summary = expand_dataset_mod.expand_dataset(src, bank, raw, 503, "X", preprocessed_root=None)
    assert summary["splits_file"] is None and summary["synthetic_cases"] == 14
    splits = json.loads((raw / "Dataset503_X" / "splits_final.json").read_text())
    stock = generate_crossval_split(sorted(f"case_{i:03d}" for i in range(6)), seed=12345, n_splits=5)
    assert [s["val"] for s in splits] == [list(s["val"]) for s in stock]


def test_refuses_label_mismatch_and_existing_target(setup, expand_dataset_mod):
    tmp_path, raw, src, bank = setup
    bad = make_bank(tmp_path / "bad", ["case_000"], labels={"background": 0, "cancer": 1, "tumor": 2},
                    shape=(12, 12, 10))
    with pytest.raises(ConfigError, match="would all be the bank's lesion class"):
        expand_dataset_mod.expand_dataset(src, bad, raw, 504, "Bad", preprocessed_root=None)
    assert not (raw / "Dataset504_Bad").exists()
    expand_dataset_mod.expand_dataset(src, bank, raw, 505, "Once", preprocessed_root=None)
    with pytest.raises(ConfigError, match="already exists"):
        expand_dataset_mod.expand_dataset(src, bank, raw, 505, "Once", preprocessed_root=None)


# --- the README's example on the two standard layouts --------------------------------------------------------

def _relabel(root, labels, **extra):
    ds = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(dict(ds, labels=labels, **extra)))


def _verify(folder):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)          # nnU-Net's own check of labels and files


def test_readme_example_on_msd_like_liver(tmp_path, monkeypatch, capsys, expand_dataset_mod):
    """`python scripts/expand_dataset.py --dataset 3 --bank BANK --out-id 503` on {background, liver, cancer}."""
    raw = tmp_path / "nnUNet_raw"
    src = make_raw_dataset(raw, 3, "Liver", n_train=5, n_test=1, shape=(12, 12, 10))
    _relabel(src, {"background": 0, "liver": 1, "cancer": 2})
    bank = make_bank(tmp_path / "bank", [f"case_{i:03d}" for i in range(5)], shape=(12, 12, 10), seed=4,
                     organ="liver", lesion_type="hepatocellular carcinoma")
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "nnUNet_preprocessed"))
    assert expand_dataset_mod.main(["--dataset", "3", "--bank", str(bank), "--out-id", "503"]) == 0
    dest = raw / "Dataset503_LiverLD"
    ds = json.loads((dest / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "liver": 1, "cancer": 2} and ds["numTraining"] == 10
    (pair,) = ds["ld_augment"]["label_mapping"]["pairs"]
    assert (pair["organ"]["target"], pair["lesion"]["target"]) == ("liver", "cancer")
    _verify(dest)
    assert (tmp_path / "nnUNet_preprocessed" / "Dataset503_LiverLD" / "splits_final.json").is_file()


def test_readme_example_on_kits_like_regions(tmp_path, monkeypatch, capsys, expand_dataset_mod):
    """KiTS regions {kidney: [1, 2, 3], masses: [2, 3], tumor: 2}: RCC goes to tumor by itself, a cyst needs the
    user's word, and the other kidney comes from the organ maps (or the case is left out)."""
    import nibabel as nib
    import numpy as np

    from nnunet_fixtures import save

    raw, shape = tmp_path / "nnUNet_raw", (16, 16, 12)
    src = make_raw_dataset(raw, 4, "KiTS", n_train=5, shape=shape)
    _relabel(src, {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}, regions_class_order=[1, 3, 2])
    bank = make_bank(tmp_path / "bank", ["scan0", "scan1", "scan2"], shape=shape, seed=4, organ="kidney_left",
                     lesion_type="renal cell carcinoma")
    lines = [json.loads(x) for x in (bank / "manifest.jsonl").read_text().splitlines()]
    lines[2]["lesion_type"] = "cyst"
    (bank / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    maps = tmp_path / "totalseg"
    for src_id in ("scan0", "scan2"):                                   # scan1 has no organ map
        label = np.asarray(nib.load(str(bank / "labelsTr" / f"ld_{src_id}_v0.nii.gz")).dataobj)
        organ_map = np.where(label > 0, 3, 0).astype(np.uint8)          # kidney_left = 3
        organ_map[:3, :3, :3] = 2                                       # kidney_right = 2
        save(organ_map, maps / f"{src_id}.nii.gz")
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    base = ["--dataset", "4", "--bank", str(bank), "--out-id", "504"]
    with pytest.raises(SystemExit) as exit_:
        expand_dataset_mod.main(base)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "lesion type 'cyst'" in err and "--lesion-map cyst=<label>" in err
    assert "['kidney', 'masses', 'tumor']" in err
    with pytest.raises(SystemExit):
        expand_dataset_mod.main(base + ["--lesion-map", "cyst=masses"])       # no organ maps: every case refused
    assert "every bank case was refused" in capsys.readouterr().err
    assert expand_dataset_mod.main(base + ["--lesion-map", "cyst=masses", "--organ-maps", str(maps)]) == 0
    dest = raw / "Dataset504_KiTSLD"
    ds = json.loads((dest / "dataset.json").read_text())
    assert ds["numTraining"] == 7 and list(ds["ld_augment"]["refused"]) == ["ld_scan1_v0"]
    rcc = np.asarray(nib.load(str(dest / "labelsTr" / "ld_scan0_v0.nii.gz")).dataobj)
    cyst = np.asarray(nib.load(str(dest / "labelsTr" / "ld_scan2_v0.nii.gz")).dataobj)
    assert set(np.unique(rcc)) == {0, 1, 2} and set(np.unique(cyst)) == {0, 1, 3}
    assert (rcc[:3, :3, :3] == 1).all()                                 # the other kidney is kidney too
    assert not (dest / "labelsTr" / "ld_scan1_v0.nii.gz").exists()
    _verify(dest)


def test_near_duplicate_bank_case_never_trains_with_its_validation_twin(setup, expand_dataset_mod):
    import nibabel as nib
    import numpy as np

    from nnunet_fixtures import save

    tmp_path, raw, src, bank = setup
    twin = np.asarray(nib.load(str(src / "imagesTr" / "case_003_0000.nii.gz")).dataobj).copy()
    twin.reshape(-1)[:1] -= 40                                        # 1 of 1440 voxels edited
    save(twin, bank / "imagesTr" / "ld_external_ct_v0_0000.nii.gz")
    summary = expand_dataset_mod.expand_dataset(src, bank, raw, 506, "Near", preprocessed_root=None)
    splits = json.loads((raw / "Dataset506_Near" / "splits_final.json").read_text())
    for s in splits:
        assert ("ld_external_ct_v0" in s["train"]) == ("case_003" not in s["val"])
    assert summary["synthetic_cases"] == 14


def test_bank_without_a_finished_case_is_one_clear_line(setup, expand_dataset_mod, capsys):
    """A bank killed before its first case has bank.json but no dataset.json: exit 2 naming the file, no traceback."""
    from synthesis_bank.bank_folder import MARKER

    tmp_path, raw, src, _ = setup
    empty = tmp_path / "empty_bank"
    empty.mkdir()
    (empty / MARKER).write_text("{}")
    with pytest.raises(SystemExit) as exc:
        expand_dataset_mod.main(["--dataset", "501", "--raw-root", str(raw), "--bank", str(empty),
                                 "--out-id", "506"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "dataset.json" in err and "no finished case yet" in err and "Traceback" not in err
    with pytest.raises(InputError, match="not found; expected a bank folder"):
        expand_dataset_mod.expand_dataset(src, tmp_path / "nowhere", raw, 507, "X", preprocessed_root=None)
    assert not (raw / "Dataset506_TinyLD").exists()
