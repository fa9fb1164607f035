"""benchmark_gain: the command plan (dry run), arms per ratio, and the results table and plot."""

from __future__ import annotations

import csv
import math

import pytest


def test_dry_run_prints_one_train_and_predict_per_arm_and_fold(benchmark_gain_mod, capsys, tmp_path):
    rc = benchmark_gain_mod.main(["--dataset", "501", "--bank", str(tmp_path / "bank"), "--out", str(tmp_path / "o"),
                                  "--ratios", "0.25", "0.5", "--folds", "0", "1", "--epochs", "50",
                                  "--device", "cpu", "--dry-run"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 * 2 * 2
    real = [ln for ln in lines if "-tr nnUNetTrainer_50epochs" in ln]
    mixed = [ln for ln in lines if "-tr nnUNetTrainerLesionDiffusion_50epochs" in ln]
    assert len(real) == 4 and len(mixed) == 8
    assert all("LD_BANK_DIR" not in ln for ln in real)
    assert all("LD_BANK_RATIO=0 " in ln for ln in real)  # a LesionDiffusion variant can be the real-only arm
    assert sum("LD_BANK_RATIO=0.25 " in ln for ln in mixed) == 4 and sum("LD_BANK_RATIO=0.5 " in ln for ln in mixed) == 4
    # every arm trains into its own nnUNet_results, so two ratios of one trainer never overwrite each other
    roots = {ln.split("nnUNet_results=")[1].split()[0] for ln in lines}
    assert len(roots) == 3
    assert all("nnUNet_extTrainer=" in ln for ln in lines)


def test_arms_reject_bad_epochs_and_ratios(benchmark_gain_mod):
    with pytest.raises(SystemExit):
        benchmark_gain_mod.arms_for([0.5], 7, None, None)
    with pytest.raises(SystemExit):
        benchmark_gain_mod.arms_for([0.0], None, None, None)
    arms = benchmark_gain_mod.arms_for([0.5], 1, None, "nnUNetTrainerLesionDiffusion_5iters")
    assert [a.trainer for a in arms] == ["nnUNetTrainer_1epoch", "nnUNetTrainerLesionDiffusion_5iters"]


def test_tables_and_plot(benchmark_gain_mod, tmp_path):
    rows = [
        {"arm": "real", "ratio": 0.0, "fold": 0, "dice_lesion": 0.5, "lesion_sensitivity": 0.4, "n_ref_lesions": 5},
        {"arm": "real", "ratio": 0.0, "fold": 1, "dice_lesion": 0.7, "lesion_sensitivity": math.nan,
         "n_ref_lesions": 0},
        {"arm": "mixed_r0.50", "ratio": 0.5, "fold": 0, "dice_lesion": 0.8, "lesion_sensitivity": 0.6,
         "n_ref_lesions": 5},
        {"arm": "mixed_r0.50", "ratio": 0.5, "fold": 1, "dice_lesion": 0.6, "lesion_sensitivity": 0.8,
         "n_ref_lesions": 5},
    ]
    benchmark_gain_mod.write_tables(rows, tmp_path)
    benchmark_gain_mod.plot(rows, tmp_path, ["dice_lesion", "lesion_sensitivity"])
    table = list(csv.DictReader((tmp_path / "results.csv").open()))
    means = {r["arm"]: r for r in table if r["fold"] == "mean"}
    assert float(means["real"]["dice_lesion"]) == pytest.approx(0.6)
    assert float(means["real"]["lesion_sensitivity"]) == pytest.approx(0.4)      # NaN folds are skipped
    assert float(means["mixed_r0.50"]["lesion_sensitivity"]) == pytest.approx(0.7)
    md = (tmp_path / "results.md").read_text()
    assert "(+0.1000)" in md and "(+0.3000)" in md
    assert (tmp_path / "gain.png").stat().st_size > 1000
