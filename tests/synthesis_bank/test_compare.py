"""`synthesis-bank compare` end to end on fabricated banks and real datasets (tiny volumes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from synthesis_bank.cli import main
from synthesis_bank.compare import load_bank, run_compare

FAKES = Path(__file__).resolve().parent.parent / "evaluation" / "fake_datasets.py"


@pytest.fixture(scope="module")
def fakes():
    spec = importlib.util.spec_from_file_location("ld_eval_fake_datasets_sb", FAKES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bank_rows_carry_manifest_metadata(tmp_path: Path, fakes) -> None:
    bank = fakes.make_dataset(tmp_path / "Dataset500_Bank", kind="ball", n_cases=2, bank=True)
    s = load_bank(bank, (1.5, 1.5, 1.5))
    assert s.rows and all(r["organ"] == "liver" and r["lesion_type"] == "metastasis" for r in s.rows)
    assert all(r["attr_density"] == "hypodense lesion" for r in s.rows)


def test_same_kind_is_indistinguishable_and_box_lesions_are_caught(tmp_path: Path, fakes) -> None:
    real = fakes.make_dataset(tmp_path / "Dataset001_Real", kind="ball", n_cases=7, seed=1)
    good = fakes.make_dataset(tmp_path / "Dataset500_Good", kind="ball", n_cases=7, seed=2, bank=True)
    bad = fakes.make_dataset(tmp_path / "Dataset501_Box", kind="box", n_cases=7, seed=3, bank=True)
    same = run_compare(good, real, tmp_path / "same", spacing=(1.5, 1.5, 1.5), plots=False)[0]
    differ = run_compare(bad, real, tmp_path / "differ", spacing=(1.5, 1.5, 1.5))[0]
    assert same.n_real >= 10 and same.n_synthetic >= 10
    assert max(same.auc["logistic"], same.auc["random_forest"]) < 0.8
    assert min(differ.auc["logistic"], differ.auc["random_forest"]) > 0.9
    assert 0.25 < differ.auc["shuffled_control"] < 0.75
    flat = {t["feature"]: t for t in differ.table}["flat_face_fraction"]
    assert flat["inside_real_iqr"] is False  # the box's faces are what gives it away
    report = (tmp_path / "differ" / "report.md").read_text()
    assert "distinguishable" in report and "| flat_face_fraction |" in report
    assert "Most telling features alone" in report  # what gives the bank away, for the user to fix
    lo, hi = differ.auc["interval"]["random_forest"]  # how far another draw of the bank could move the AUC
    assert lo <= differ.auc["random_forest"] <= hi and f"95 % interval {lo:.2f}-{hi:.2f}" in report
    assert "without the label-convention features" in report  # a box differs in its lesions, not just its label
    assert differ.auc["without_label_convention"]["logistic"] > 0.9
    assert (tmp_path / "differ" / "features_liver_metastasis.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "differ" / "summary.json").read_text())
    assert summary["groups"][0]["n_real"] == differ.n_real


def test_cli_says_too_few_real_lesions(tmp_path: Path, fakes, capsys) -> None:
    real = fakes.make_dataset(tmp_path / "Dataset001_Real", kind="ball", n_cases=2, seed=1)
    bank = fakes.make_dataset(tmp_path / "Dataset500_Bank", kind="ball", n_cases=4, seed=2, bank=True)
    rc = main(["compare", "--bank", str(bank), "--real", str(real), "--spacing", "2", "--out", str(tmp_path / "o")])
    assert rc == 0
    assert "too few real lesions to conclude" in capsys.readouterr().out
    assert "too few real lesions to conclude" in (tmp_path / "o" / "report.md").read_text()


def test_cli_refuses_a_folder_that_is_no_dataset(tmp_path: Path, fakes, capsys) -> None:
    bank = fakes.make_dataset(tmp_path / "Dataset500_Bank", kind="ball", n_cases=1, bank=True)
    (tmp_path / "empty").mkdir()
    rc = main(["compare", "--bank", str(bank), "--real", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "empty" in err and "nnU-Net raw dataset" in err and "Traceback" not in err
