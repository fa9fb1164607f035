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
