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
    assert "(+0.1000 [-0.1000, +0.3000])" in md                     # paired gain with its CI
    assert "(+0.2000 [" in md                                        # paired: only folds both arms have
    assert "0.6000 ± 0.1414" in md                                   # real-only dice_lesion mean ± SD
    assert {r["fold"] for r in table} == {"0", "1", "mean", "sd"}
    assert (tmp_path / "gain.png").stat().st_size > 1000


def test_bootstrap_ci_brackets_the_paired_mean(benchmark_gain_mod):
    lo, hi = benchmark_gain_mod.bootstrap_ci([0.1, 0.2, 0.3, 0.05, 0.15])
    assert lo < 0.16 < hi and lo > 0.0
    assert benchmark_gain_mod.bootstrap_ci([0.1, 0.2]) == benchmark_gain_mod.bootstrap_ci([0.1, 0.2])   # seeded
    assert all(math.isnan(v) for v in benchmark_gain_mod.bootstrap_ci([math.nan]))


def test_lesion_label_by_name(benchmark_gain_mod, tmp_path):
    f = tmp_path / "dataset.json"
    assert benchmark_gain_mod.lesion_values({"background": 0, "liver": 1, "cancer": 2}, f) == [2]
    assert benchmark_gain_mod.lesion_values({"background": 0, "kidney": [1, 2, 3], "tumor": 2}, f) == [2]
    with pytest.raises(SystemExit, match="--lesion-label"):
        benchmark_gain_mod.lesion_values({"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}, f)
    with pytest.raises(SystemExit, match="no label"):
        benchmark_gain_mod.lesion_values({"background": 0, "liver": 1}, f)


def test_test_set_overlapping_bank_sources_is_refused(benchmark_gain_mod, tmp_path):
    import json

    ts = tmp_path / "imagesTs"
    ts.mkdir()
    (ts / "test_000_0000.nii.gz").write_bytes(b"image a")
    (ts / "test_001_0000.nii.gz").write_bytes(b"image b")
    bank = tmp_path / "bank"
    bank.mkdir()
    from ld_augment.io.nifti import sha256_file
    lines = [{"case_id": "ld_x", "source_id": "renamed", "source_sha256": "0" * 64, "status": "ok"}]
    (bank / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    benchmark_gain_mod.check_test_set_is_unseen(bank, ts)                     # no overlap: fine
    lines.append({"case_id": "ld_y", "source_id": "scan_9", "source_sha256": sha256_file(ts / "test_001_0000.nii.gz"),
                  "status": "ok"})
    (bank / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(SystemExit, match=r"overlaps the bank's sources \(1: \['test_001_0000.nii.gz'\]\)"):
        benchmark_gain_mod.check_test_set_is_unseen(bank, ts)


def test_ensemble_is_predicted_and_reported_apart(benchmark_gain_mod, capsys, tmp_path):
    rc = benchmark_gain_mod.main(["--dataset", "501", "--bank", str(tmp_path / "bank"), "--out", str(tmp_path / "o"),
                                  "--folds", "0", "1", "--epochs", "5", "--ensemble", "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 2 * (2 * 2 + 1)
    ensemble = [ln for ln in lines if "/ensemble " in ln]
    assert len(ensemble) == 2 and all(" -f 0 1 " in ln for ln in ensemble)
    rows = [{"arm": a, "ratio": r, "fold": f, "dice_lesion": d} for a, r, f, d in (
        ("real", 0.0, 0, 0.5), ("real", 0.0, 1, 0.7), ("real", 0.0, "ensemble", 0.9),
        ("mixed_r0.50", 0.5, 0, 0.6), ("mixed_r0.50", 0.5, 1, 0.8), ("mixed_r0.50", 0.5, "ensemble", 0.95))]
    benchmark_gain_mod.write_tables(rows, tmp_path)
    table = list(csv.DictReader((tmp_path / "results.csv").open()))
    means = {r["arm"]: r for r in table if r["fold"] == "mean"}
    assert float(means["real"]["dice_lesion"]) == pytest.approx(0.6)         # the ensemble is not a fold
    assert [r["dice_lesion"] for r in table if r["fold"] == "ensemble"] == ["0.9000", "0.9500"]
    assert "Ensemble of the folds" in (tmp_path / "results.md").read_text()
