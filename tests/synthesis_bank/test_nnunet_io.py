"""Bank manifest reading, leakage split and prepare records (the contract between prepare and the trainer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ld_augment.errors import ConfigError, InputError
from synthesis_bank.nnunet_io import (BankCase, load_prepared_record, normalize_case_id, read_bank_cases,
                                      split_leaking)

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


@pytest.mark.parametrize("value,expected", [("liver_003", "liver_003"), ("/d/imagesTr/liver_003_0000.nii.gz", "liver_003"),
                                            ("C:\\d\\liver_3.nii", "liver_3"), ("case_12_0001.mha", "case_12")])
def test_normalize_case_id(value, expected):
    assert normalize_case_id(value) == expected


def test_split_leaking_uses_source_id_and_file():
    cases = [BankCase("x1", "case_000", None), BankCase("x2", None, "/raw/imagesTr/case_001_0000.nii.gz"),
             BankCase("x3", "case_002", "/raw/case_002_0000.nii.gz"), BankCase("x4", "ext", None),
             BankCase("x5", None, None)]
    usable, excluded = split_leaking(cases, ["case_000", "case_001"])
    assert [c.case_id for c in excluded] == ["x1", "x2"]
    assert [c.case_id for c in usable] == ["x3", "x4", "x5"]


def test_unprepared_bank_error_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_prepared_record(tmp_path, "Dataset501_Tiny", "nnUNetPlans_3d_fullres", configuration="3d_fullres",
                             plans_identifier="nnUNetPlans")
    assert f"synthesis-bank prepare --bank {tmp_path} --target Dataset501_Tiny -c 3d_fullres" in str(err.value)


def test_unmerged_shards_point_to_merge(tmp_path):
    (tmp_path / "manifest.shard-0-of-2.jsonl").write_text('{"case_id": "a"}\n')
    with pytest.raises(InputError, match="synthesis-bank merge"):
        read_bank_cases(tmp_path)
