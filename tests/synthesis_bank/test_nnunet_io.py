"""Bank manifest reading, leakage split and prepare records (the contract between prepare and the trainer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ld_augment.errors import ConfigError, InputError
from synthesis_bank.nnunet_io import (BankCase, load_prepared_record, preprocessing_sha256, read_bank_cases,
                                      record_key, split_leaking)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nnunet_trainers"))


def _manifest(tmp_path, text):
    (tmp_path / "manifest.jsonl").write_text(text)
    return tmp_path


def test_reads_ok_cases_latest_line_wins(tmp_path):
    lines = [{"case_id": "a", "source_id": "s1", "status": "failed"}, {"case_id": "b", "source_id": "s2"},
             {"case_id": "a", "source_id": "s1", "status": "ok"}, {"case_id": "c", "status": "failed"}]
    bank = _manifest(tmp_path, "".join(json.dumps(x) + "\n" for x in lines) + '{"case_id": "d", "sta')
    cases = read_bank_cases(bank)
    assert [c.case_id for c in cases] == ["b", "a"]       # torn last line ignored, failed skipped


def test_corrupt_line_is_an_error(tmp_path):
    bank = _manifest(tmp_path, '{"case_id": "a"}\nnot json\n{"case_id": "b"}\n')
    with pytest.raises(InputError, match="line 2"):
        read_bank_cases(bank)
    with pytest.raises(InputError, match="manifest not found"):
        read_bank_cases(tmp_path / "nothing")


def test_split_leaking_matches_ids_verbatim_and_content():
    val_sha = "a" * 64
    cases = [BankCase("x1", "case_000", None),                                   # same id
             BankCase("x2", "renamed", "/elsewhere/scan.nii.gz", val_sha),        # same image under another name
             BankCase("x3", "amos_0001", "/raw/amos_0001_0000.nii.gz", "b" * 64),  # no suffix stripping
             BankCase("x4", "case_0001", None), BankCase("x5", None, None)]
    usable, excluded = split_leaking(cases, ["case_000", "amos", "case"], [val_sha])
    assert [c.case_id for c in excluded] == ["x1", "x2"]
    assert [c.case_id for c in usable] == ["x3", "x4", "x5"]


def test_manifest_sha256_reaches_bank_cases(tmp_path):
    bank = _manifest(tmp_path, json.dumps({"case_id": "a", "source_id": "s", "source_sha256": "c" * 64}) + "\n")
    assert read_bank_cases(bank)[0].source_sha256 == "c" * 64


def _plans(spacing, batch_size=2, patch=(12, 12, 12)):
    return ({"transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "image_reader_writer": "SimpleITKIO",
             "foreground_intensity_properties_per_channel": {"0": {"mean": 50.0}}},
            {"data_identifier": "nnUNetPlans_3d_fullres", "spacing": list(spacing), "batch_size": batch_size,
             "patch_size": list(patch), "normalization_schemes": ["CTNormalization"]})


def test_preprocessing_hash_follows_preprocessing_only():
    ds = {"labels": {"background": 0, "liver": 1, "cancer": 2}}
    base = preprocessing_sha256(*_plans((2.0, 1.5, 1.5)), ds)
    assert preprocessing_sha256(*_plans((2.0, 1.5, 1.5), batch_size=8, patch=(32, 32, 32)), ds) == base
    assert preprocessing_sha256(*_plans((3.0, 1.5, 1.5)), ds) != base                 # re-planned spacing
    plans, cfg = _plans((2.0, 1.5, 1.5))
    plans["foreground_intensity_properties_per_channel"]["0"]["mean"] = 60.0
    assert preprocessing_sha256(plans, cfg, ds) != base                                 # other intensities
    assert preprocessing_sha256(*_plans((2.0, 1.5, 1.5)), {"labels": {"background": 0, "liver": 1}}) != base
    assert record_key("nnUNetResEncUNetMPlans", "3d_fullres") != record_key("nnUNetResEncUNetLPlans", "3d_fullres")


def test_unprepared_bank_error_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_prepared_record(tmp_path, "Dataset501_Tiny", configuration="3d_fullres", plans_identifier="nnUNetPlans")
    assert f"synthesis-bank prepare --bank {tmp_path} --target Dataset501_Tiny -c 3d_fullres" in str(err.value)


def test_unmerged_shards_point_to_merge(tmp_path):
    (tmp_path / "manifest.shard-0-of-2.jsonl").write_text('{"case_id": "a"}\n')
    with pytest.raises(InputError, match="synthesis-bank merge"):
        read_bank_cases(tmp_path)
